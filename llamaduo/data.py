"""Coverage data: load, validate, normalise and split.

A row is either `messages` (user/assistant, optional system) or `instruction` +
`response` columns, with an optional `category`. Every row becomes an Example.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError
from .store import sha256_text


@dataclass(frozen=True)
class Example:
    id: str
    instruction: str
    response: str
    category: str | None = None
    system: str | None = None
    origin: str = "coverage"

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        return cls(**{k: d.get(k) for k in ("id", "instruction", "response", "category", "system")},
                   origin=d.get("origin", "coverage"))


def example_id(instruction: str, response: str) -> str:
    return sha256_text(instruction + "\x1f" + response)[:16]


def _iter_raw_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line_or_row_number, raw_row). Numbers are 1-based as an editor shows them."""
    if path.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(path))
        if hasattr(ds, "keys"):  # DatasetDict: take 'train' or the only split
            ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
        for i, row in enumerate(ds, start=1):
            yield i, row
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"invalid JSON ({exc.msg})", file=str(path), line=lineno) from None
    elif suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise InputError("a .json dataset must be a list of rows", file=str(path))
        yield from enumerate(rows, start=1)
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            # Row numbers count the header as line 1, as a spreadsheet shows them.
            for rowno, row in enumerate(csv.DictReader(fh), start=2):
                yield rowno, row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, row
    else:
        raise InputError(f"unsupported data format {suffix!r} (use .jsonl, .json, .csv, .parquet or a datasets dir)",
                         file=str(path))


def _text(value: Any, *, file: str, line: int, field: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", file=file, line=line, field=field)
    if not value.strip():
        raise InputError("must not be empty", file=file, line=line, field=field)
    return value.strip()


def parse_row(raw: Any, *, file: str, line: int) -> Example:
    if not isinstance(raw, dict):
        raise InputError(f"row must be an object, got {type(raw).__name__}", file=file, line=line)
    category = raw.get("category")
    if category is not None and not isinstance(category, str):
        raise InputError("expected a string", file=file, line=line, field="category")
    system = None
    if "messages" in raw and raw["messages"] is not None:
        msgs = raw["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise InputError("must be a non-empty list of {role, content}", file=file, line=line, field="messages")
        by_role: dict[str, str] = {}
        for i, m in enumerate(msgs):
            where = f"messages[{i}]"
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise InputError("must have 'role' and 'content'", file=file, line=line, field=where)
            role = m["role"]
            if role not in ("system", "user", "assistant"):
                raise InputError(f"unknown role {role!r}", file=file, line=line, field=f"{where}.role")
            if role in by_role:
                raise InputError(f"more than one {role!r} message (multi-turn rows are not supported)",
                                 file=file, line=line, field=f"{where}.role")
            by_role[role] = _text(m["content"], file=file, line=line, field=f"{where}.content")
        for role in ("user", "assistant"):
            if role not in by_role:
                raise InputError(f"missing a {role!r} message", file=file, line=line, field="messages")
        instruction, response, system = by_role["user"], by_role["assistant"], by_role.get("system")
    elif "instruction" in raw or "response" in raw:
        instruction = _text(raw.get("instruction"), file=file, line=line, field="instruction")
        response = _text(raw.get("response"), file=file, line=line, field="response")
    else:
        raise InputError("row needs 'messages' or 'instruction' and 'response'", file=file, line=line,
                         field="messages")
    return Example(example_id(instruction, response), instruction, response,
                   category=category.strip() if category else None, system=system)


def load_examples(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.exists():
        raise InputError("data file not found", file=str(path))
    rows = [parse_row(raw, file=str(path), line=line) for line, raw in _iter_raw_rows(path)]
    if not rows:
        raise InputError("dataset is empty", file=str(path))
    return rows


def split_examples(examples: list[Example], test_size: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic split: same rows + size + seed give the same split on any machine."""
    n_test = int(test_size) if test_size >= 1 else max(1, round(len(examples) * test_size))
    if n_test >= len(examples):
        raise InputError(f"test_size {test_size} leaves no training rows ({len(examples)} rows)",
                         field="data.test_size")
    order = sorted(range(len(examples)), key=lambda i: examples[i].id)  # independent of file order
    random.Random(seed).shuffle(order)
    test_idx = set(order[:n_test])
    train = [e for i, e in enumerate(examples) if i not in test_idx]
    test = [e for i, e in enumerate(examples) if i in test_idx]
    return train, test


def load_coverage(path: str, test_path: str | None, test_size: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Train and test splits; with `test_path`, test rows found in `path` are dropped from train."""
    examples = load_examples(path)
    if test_path:
        test = load_examples(test_path)
        test_keys = {e.instruction for e in test}
        train = [e for e in examples if e.instruction not in test_keys]
        if not train:
            raise InputError("no training rows left after removing test rows", file=str(path))
        return train, test
    return split_examples(examples, test_size, seed)


def to_chat(example: Example, system_prompt: str | None = None) -> dict:
    """Conversational prompt/completion row: TRL trains on the completion only."""
    system = example.system or system_prompt
    prompt = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": example.instruction}]
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": example.response}]}
