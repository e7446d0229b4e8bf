"""Coverage data: load, validate, normalise and split.

A row is either `messages` (user/assistant, optional system) or `instruction` +
`response` columns, with an optional `category`. Every row becomes an Example.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import InputError
from .store import sha256_text

if TYPE_CHECKING:
    from .config import CurateConfig, DataConfig
    from .records import SplitResult

log = logging.getLogger(__name__)

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
        try:
            from datasets import load_from_disk

            ds = load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - any folder `datasets` cannot read
            raise InputError(f"not a `datasets` directory ({type(exc).__name__})", file=str(path)) from None
        if hasattr(ds, "keys"):  # DatasetDict: take 'train' or the only split
            ds = ds["train"] if "train" in ds else ds[next(iter(ds.keys()))]
        yield from _arrow_rows(ds.with_format("arrow")[:], path)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                line = _decode(raw, path, lineno)
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"invalid JSON ({exc.msg})", file=str(path), line=lineno) from None
    elif suffix == ".json":
        text = _decode(path.read_bytes(), path, None)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg})", file=str(path), line=exc.lineno) from None
        if not isinstance(rows, list):
            raise InputError("a .json dataset must be a list of rows", file=str(path))
        yield from enumerate(rows, start=1)
    elif suffix == ".csv":
        data = path.read_bytes()
        text = _decode(data, path, None, bom_ok=True)
        # Row numbers count the header as line 1, as a spreadsheet shows them.
        try:
            for rowno, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
                yield rowno, row
        except csv.Error as exc:
            raise InputError(f"invalid CSV ({exc})", file=str(path)) from None
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - corrupt or not parquet
            raise InputError(f"unreadable parquet file ({type(exc).__name__})", file=str(path)) from None
        yield from _arrow_rows(table, path)
    else:
        raise InputError(f"unsupported data format {suffix!r} (use .jsonl, .json, .csv, .parquet or a datasets dir)",
                         file=str(path))


def _arrow_rows(table, path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of an Arrow table (Parquet, `datasets`). Arrow does not check that a string column
    holds UTF-8 when it reads one; Python's decoding then fails: name the row and column."""
    try:
        rows = table.to_pylist()
    except UnicodeDecodeError:
        for name in table.column_names:
            column = table.column(name)
            for i in range(len(column)):
                try:
                    column[i].as_py()
                except UnicodeDecodeError:
                    raise InputError("not UTF-8 text (re-save the data as UTF-8)", file=str(path), line=i + 1,
                                     field=name) from None
        raise InputError("not UTF-8 text (re-save the data as UTF-8)", file=str(path)) from None
    yield from enumerate(rows, start=1)


def _decode(raw: bytes, path: Path, line: int | None, *, bom_ok: bool = False) -> str:
    """UTF-8 only (a BOM is accepted); other encodings are an error naming the line."""
    try:
        return raw.decode("utf-8-sig" if bom_ok or line in (None, 1) else "utf-8")
    except UnicodeDecodeError as exc:
        if line is None:
            line = raw[:exc.start].count(b"\n") + 1
        raise InputError("not UTF-8 text (re-save the file as UTF-8)", file=str(path), line=line) from None


def _invalid_text_field(value: Any, field: str = "") -> str | None:
    """Where a string in a parsed row is not valid Unicode text (a lone surrogate, which JSON's
    `"\\ud800"` escape produces): the field path, e.g. `messages[1].content`, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return field or "(row)"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # the key itself: name it printably
                printable = ascii(name)[1:-1]  # `\udc80` written out, without repr's quotes
                return f"{field}.{printable}" if field else printable
            found = _invalid_text_field(item, f"{field}.{name}" if field else name)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _invalid_text_field(item, f"{field}[{i}]")
            if found:
                return found
    return None


def iter_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Raw rows of a JSONL/JSON/CSV/Parquet file or a `datasets` directory as (line or row number,
    row), each checked to be valid UTF-8 text in every field. Readers of user files (coverage data,
    the stand-in pool, calibration ratings) go through here."""
    path = Path(path)
    for line, raw in _iter_raw_rows(path):
        field = _invalid_text_field(raw)
        if field:
            raise InputError("not valid UTF-8 text (a lone surrogate such as \\ud800; remove or fix it)",
                             file=str(path), line=line, field=field)
        yield line, raw


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
                   category=(category.strip() or None) if category else None, system=system)  # "  " = none


def load_examples(path: str | Path, *, max_chars: int | None = None, need_category: bool = False) -> list[Example]:
    """Every row of a coverage file as an Example. `need_category` (data.stratify: true): a row
    without a category is an input error naming it, not a silent plain shuffle."""
    path = Path(path)
    if not path.exists():
        raise InputError("data file not found", file=str(path))
    rows, uncategorised = [], []
    for line, raw in iter_rows(path):
        ex = parse_row(raw, file=str(path), line=line)
        if need_category and not ex.category:
            uncategorised.append(line)
        if max_chars is not None:
            for name in ("instruction", "response"):
                if len(getattr(ex, name)) > max_chars:
                    raise InputError(f"{len(getattr(ex, name))} characters is over data.max_row_chars ({max_chars})",
                                     file=str(path), line=line, field=name)
        rows.append(ex)
    if not rows:
        raise InputError("dataset is empty", file=str(path))
    if uncategorised:
        lines = ", ".join(map(str, uncategorised[:10])) + (", …" if len(uncategorised) > 10 else "")
        raise InputError(f"missing: data.stratify: true shares the splits out by category, so every row needs one "
                         f"({len(uncategorised)} without: lines {lines}); add them or set data.stratify: false",
                         file=str(path), line=uncategorised[0], field="category")
    return rows


def _count(size: float, n: int) -> int:
    return int(size) if size >= 1 else round(n * size)


def split_examples(examples: list[Example], test_size: float, seed: int, *, stratify: bool = False
                   ) -> tuple[list[Example], list[Example]]:
    """Deterministic split: same rows + size + seed give the same split on any machine. With
    `stratify` and a category on every row, each category gets its share of the split (largest
    remainder), so a small split cannot miss a category by chance."""
    n_test = max(1, _count(test_size, len(examples)))
    if n_test >= len(examples):
        raise InputError(f"test_size {test_size} leaves no training rows ({len(examples)} rows)",
                         field="data.test_size")
    order = sorted(range(len(examples)), key=lambda i: examples[i].id)  # independent of file order
    rng = random.Random(seed)
    rng.shuffle(order)
    uncategorised = [e.id for e in examples if not e.category] if stratify else []
    if uncategorised:  # config asked for it checks this at load time (exit 2); a library caller is told
        log.warning("%d row%s without a category (%s%s): the split is not stratified", len(uncategorised),
                    "" if len(uncategorised) == 1 else "s", ", ".join(uncategorised[:10]),
                    ", …" if len(uncategorised) > 10 else "")
    if stratify and not uncategorised:
        groups: dict[str, list[int]] = {}
        for i in order:
            groups.setdefault(examples[i].category, []).append(i)
        quotas = stratified_quotas({c: len(g) for c, g in groups.items()}, n_test, rng=rng)
        test_idx = {i for c, g in groups.items() for i in g[:quotas[c]]}
    else:
        test_idx = set(order[:n_test])
    train = [e for i, e in enumerate(examples) if i not in test_idx]
    test = [e for i, e in enumerate(examples) if i in test_idx]
    return train, test


def stratified_quotas(sizes: dict[str, int], n: int, *, rng: random.Random | None = None) -> dict[str, int]:
    """`n` rows shared out over groups in proportion to their sizes: floors, then one more each to
    the largest remainders (ties: the larger group, then a draw from `rng`, so that which of many
    equal groups gets a leftover slot follows the split's seed, not the alphabet; without `rng`,
    the name)."""
    total = sum(sizes.values())
    quotas = {c: n * k // total for c, k in sizes.items()}
    draw = {c: rng.random() for c in sorted(sizes)} if rng is not None else {}
    by_remainder = sorted(sizes, key=lambda c: (-(n * sizes[c] % total), -sizes[c], draw.get(c, 0.0), c))
    for c in by_remainder[:n - sum(quotas.values())]:
        quotas[c] += 1
    return quotas


@dataclass
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    removed: dict[str, int]


def load_coverage(data: "DataConfig", curate: "CurateConfig | None" = None) -> Splits:
    """Train, validation and test splits of clean evaluation data.

    Exact, normalised and near-duplicate coverage rows are collapsed *before* the split (a
    duplicate on both sides would put test answers into training); train rows that copy or
    nearly copy a test item are then removed from train, also with a separate `test_path`.
    The validation split is carved from train (adaptive choices learn from it)."""
    from .config import CurateConfig
    from .curate import collapse_duplicates, overlapping_test

    curate = curate or CurateConfig()
    examples = load_examples(data.path, max_chars=data.max_row_chars, need_category=data.stratify)
    removed: dict[str, int] = {}
    examples, dups = collapse_duplicates(examples, curate)
    removed.update({k: v for k, v in dups.items() if v})
    if data.test_path:
        test, test_dups = collapse_duplicates(load_examples(data.test_path, max_chars=data.max_row_chars),
                                              curate)
        removed.update({f"test_{k}": v for k, v in test_dups.items() if v})
        train = examples
    else:
        train, test = split_examples(examples, data.test_size, data.split_seed, stratify=data.stratify)
    train, overlap = overlapping_test(train, test, curate)
    if overlap:
        removed["test_overlap"] = overlap
    if not train:
        raise InputError("no training rows left after removing copies of test rows", file=data.path)
    val: list[Example] = []
    n_val = _count(data.val_size, len(train)) if data.val_size else 0
    if n_val:
        if n_val >= len(train):
            raise InputError(f"val_size {data.val_size} leaves no training rows ({len(train)} rows)",
                             field="data.val_size")
        train, val = split_examples(train, n_val, data.split_seed + 1, stratify=data.stratify)
    return Splits(train, val, test, removed)


def prepare_splits(root: str | Path, data: "DataConfig", curate: "CurateConfig", out_dir: str = "data"
                   ) -> "SplitResult":
    from .records import Artifact, SplitResult
    from .store import atomic_write_jsonl

    s = load_coverage(data, curate)
    root = Path(root)
    arts = {}
    for name, rows in (("train", s.train), ("val", s.val), ("test", s.test)):
        rel = f"{out_dir}/{name}.jsonl"
        atomic_write_jsonl(root / rel, [e.to_dict() for e in rows])
        arts[name] = Artifact.of(root, rel)
    return SplitResult(**arts, train_rows=len(s.train), val_rows=len(s.val), test_rows=len(s.test),
                       removed=s.removed)


def to_chat(example: Example, system_prompt: str | None = None) -> dict:
    """Conversational prompt/completion row: TRL trains on the completion only."""
    system = example.system or system_prompt
    prompt = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": example.instruction}]
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": example.response}]}
