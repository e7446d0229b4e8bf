"""Training-set lineage: every row says where it came from; each round's set is saved as a
Hugging Face `datasets` directory with a short data card."""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

from .records import Artifact, TrainingSetResult, WarmStartSetResult
from .store import atomic_write_jsonl, atomic_write_text, read_jsonl, staged_dir

LINEAGE_COLUMNS = ["id", "instruction", "response", "category", "system", "origin", "round", "seed_id",
                   "generator", "template_sha256"]


def normalise_rows(rows: list[dict]) -> list[dict]:
    """Same columns for every row (coverage rows have no round/seed/generator: None)."""
    return [{c: r.get(c, "coverage" if c == "origin" else None) for c in LINEAGE_COLUMNS} for r in rows]


def save_dataset(rows: list[dict], dest: str | Path) -> Path:
    from datasets import Dataset, Features, Value

    features = Features({c: Value("int64") if c == "round" else Value("string") for c in LINEAGE_COLUMNS})
    with staged_dir(dest) as tmp:
        Dataset.from_list(normalise_rows(rows), features=features).save_to_disk(str(tmp))
    return Path(dest)


def data_card(rows: list[dict], dropped: dict[str, int], round_no: int) -> str:
    by_origin = Counter(r.get("origin", "coverage") for r in rows)
    by_round = Counter(r.get("round") for r in rows if r.get("origin") == "synthetic")
    generators = Counter(r.get("generator") for r in rows if r.get("generator"))
    lines = [f"# Training set, round {round_no}", "", f"{len(rows)} rows.", "", "## By origin", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(by_origin.items())]
    lines += ["", "## Synthetic rows by round", ""] + [f"- round {k}: {v}" for k, v in sorted(by_round.items())]
    lines += ["", "## Generators", ""] + [f"- {k}: {v}" for k, v in sorted(generators.items())]
    lines += ["", f"## Dropped in round {round_no} curation", ""]
    lines += [f"- {k}: {v}" for k, v in sorted(dropped.items())] or ["- none"]
    lines += ["", "Columns: " + ", ".join(LINEAGE_COLUMNS), ""]
    return "\n".join(lines)


def build_training_set(root: str | Path, parts: list[Artifact], dropped: dict[str, int], round_no: int,
                       out: str) -> TrainingSetResult:
    """Coverage train + every curated synthetic row so far, with lineage; also written as a
    Hugging Face `datasets` directory with a short data card."""
    t0 = time.time()
    root = Path(root)
    rows = [r for a in parts for r in read_jsonl(a.at(root))]
    atomic_write_jsonl(root / out, rows)
    ds_dir = save_dataset(rows, root / out.replace(".jsonl", "_dataset"))
    atomic_write_text(ds_dir / "DATA_CARD.md", data_card(rows, dropped, round_no))
    return TrainingSetResult(train=Artifact.of(root, out), rows=len(rows),
                             dataset_dir=out.replace(".jsonl", "_dataset"), seconds=round(time.time() - t0, 3))


def replay_sample(earlier: list[dict], new: list[dict], ratio: float, seed: int) -> list[dict]:
    """The new rows plus `ratio` earlier rows per new row (a seeded sample, at most all of them): a
    warm-started round revisits old data so it does not forget it, at a cost that follows what it adds."""
    k = min(len(earlier), round(ratio * len(new)))
    return new + random.Random(seed).sample(earlier, k)


def build_warm_start_set(root: str | Path, earlier: list[Artifact], new: list[Artifact], replay_ratio: float,
                         seed: int, out: str) -> WarmStartSetResult:
    t0 = time.time()
    root = Path(root)
    old_rows = [r for a in earlier for r in read_jsonl(a.at(root))]
    new_rows = [r for a in new for r in read_jsonl(a.at(root))]
    rows = replay_sample(old_rows, new_rows, replay_ratio, seed)
    atomic_write_jsonl(root / out, rows)
    return WarmStartSetResult(train=Artifact.of(root, out), new_rows=len(new_rows),
                              replayed_rows=len(rows) - len(new_rows), seconds=round(time.time() - t0, 3))
