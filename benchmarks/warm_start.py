"""Warm-started rounds vs retraining from the base every round: seconds per round and the metric.

    python benchmarks/warm_start.py [--rounds 3] [--first 32] [--add 24] [--test 24] [--replay-ratio 1.0]

Data: ../shared/data/no_robots_classify.jsonl (real No Robots "Classify" pairs), shuffled once:
a test set, the rows of round 1, then `--add` rows per later round (human pairs standing in for
the teacher's synthetic rows, so both modes see exactly the same data). The student is the real
SmolLM2-135M-Instruct, trained by the project's training (`llamaduo.train.run_training`, child
process) with the default TrainConfig apart from epochs=1.

- full: round k trains a fresh adapter on every row so far (what `train.warm_start: false` does);
- warm: round k > 1 continues round k-1's adapter on the new rows plus `replay_ratio` earlier rows
  per new row (`train.warm_start: true`). Round 1 is the same training in both modes (run once).

Metrics after each round, on the test set: ROUGE-L F1 of greedy answers (`rougeL`, a gate
metric that needs no judge) and the mean completion-token NLL (lower is better; steadier than
ROUGE on a small test set). No result is assumed; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = ROOT.parent / "shared" / "data" / "no_robots_classify.jsonl"


def evaluate(model: str, adapter: Path, test: list[dict], max_new_tokens: int) -> dict:
    from train_speed import heldout_loss

    from llamaduo.infer import generate_answers
    from llamaduo.similarity import rouge_l

    answers, _ = generate_answers(model, str(adapter), test, system_prompt=None, max_new_tokens=max_new_tokens,
                                  batch_size=8, progress=False)
    rouge = statistics.mean(rouge_l(a[0], t["response"])["f"] for a, t in zip(answers, test))
    return {"rougeL": round(rouge, 4), "test_nll": round(heldout_loss(model, adapter, test), 4)}


def train(model: str, rows: list[dict], out: Path, init: Path | None) -> float:
    from llamaduo.config import TrainConfig
    from llamaduo.store import atomic_write_jsonl
    from llamaduo.train import TrainSpec, run_training

    data = atomic_write_jsonl(out.with_suffix(".jsonl"), rows)
    spec = TrainSpec(base_model=model, data_path=str(data), output_dir=str(out),
                     train=TrainConfig(epochs=1, save_steps=10_000), init_adapter=str(init) if init else None)
    return run_training(spec).seconds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--first", type=int, default=32)
    ap.add_argument("--add", type=int, default=24)
    ap.add_argument("--test", type=int, default=24)
    ap.add_argument("--replay-ratio", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    a = ap.parse_args()

    from llamaduo.data import load_examples
    from llamaduo.lineage import replay_sample
    from llamaduo.models import resolve_student

    rows = [e.to_dict() for e in load_examples(DATA)]
    random.Random(0).shuffle(rows)
    test, pool = rows[:a.test], rows[a.test:]
    added = [pool[:a.first]] + [pool[a.first + i * a.add: a.first + (i + 1) * a.add] for i in range(a.rounds - 1)]
    model = resolve_student("smollm2-135m-instruct")
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        first = work / "r1"
        secs = train(model, added[0], first, None)
        m = evaluate(model, first, test, a.max_new_tokens)
        for mode in ("full", "warm"):
            table.append({"mode": mode, "round": 1, "rows": len(added[0]), "seconds": secs, **m})
        prev = first
        for k in range(2, a.rounds + 1):
            so_far = [r for part in added[:k] for r in part]
            full = work / f"full{k}"
            secs = train(model, so_far, full, None)
            table.append({"mode": "full", "round": k, "rows": len(so_far), "seconds": secs,
                          **evaluate(model, full, test, a.max_new_tokens)})
            warm_rows = replay_sample([r for part in added[:k - 1] for r in part], added[k - 1], a.replay_ratio, k)
            warm = work / f"warm{k}"
            secs = train(model, warm_rows, warm, prev)
            table.append({"mode": "warm", "round": k, "rows": len(warm_rows), "seconds": secs,
                          **evaluate(model, warm, test, a.max_new_tokens)})
            prev = warm
            print(json.dumps(table[-2:]), flush=True)
    print(f"{a.test} test items, round 1: {a.first} rows, +{a.add} per round, replay ratio {a.replay_ratio}, "
          f"1 epoch, SmolLM2-135M on this machine")
    print("| mode | round | rows trained | train s | rougeL | test NLL |\n|---|---|---|---|---|---|")
    for t in sorted(table, key=lambda t: (t["mode"], t["round"])):
        print(f"| {t['mode']} | {t['round']} | {t['rows']} | {t['seconds']:.1f} | {t['rougeL']:.3f} | "
              f"{t['test_nll']:.3f} |")
    tot = {mode: sum(t["seconds"] for t in table if t["mode"] == mode) for mode in ("full", "warm")}
    last = {mode: max((t for t in table if t["mode"] == mode), key=lambda t: t["round"]) for mode in tot}
    print(f"total train seconds: full {tot['full']:.0f}, warm {tot['warm']:.0f} ({tot['full'] / tot['warm']:.2f}x); "
          f"final rougeL full {last['full']['rougeL']:.3f} vs warm {last['warm']['rougeL']:.3f}; "
          f"final test NLL full {last['full']['test_nll']:.3f} vs warm {last['warm']['test_nll']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
