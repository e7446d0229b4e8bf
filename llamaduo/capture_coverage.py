"""A run whose `data.path` names a capture location migrates what the application asked.

The run takes a snapshot once — which shards, each with its sha256 — and keeps it in its directory
(`data/capture/snapshot.json`, the rows as coverage in `data/capture/coverage.jsonl`); from then on
`data.path` is that file, so every stage's cache key is the snapshot's content, and re-running the
run reads the same shards (new traffic goes to the next run, never into this one's test split).

An exchange becomes a coverage row when it is one turn of text (an optional system message, one user
message, the service's answer) that ended on its own. The others are counted by reason in the
snapshot and the plan, never dropped silently: multi-turn, non-text content (images, tool results),
tool calls, no answer, cut at max_tokens.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .capture_store import CaptureStore, is_capture_location
from .errors import InputError

SNAPSHOT_DIR = "data/capture"
MANIFEST = f"{SNAPSHOT_DIR}/snapshot.json"
COVERAGE = f"{SNAPSHOT_DIR}/coverage.jsonl"


def coverage_row(exchange: dict) -> tuple[dict | None, str | None]:
    """(row, None) or (None, why it is not one)."""
    messages = exchange.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, "no_messages"
    if any(not isinstance(m, dict) or not isinstance(m.get("content"), str) for m in messages):
        return None, "non_text"
    roles = [m.get("role") for m in messages]
    if roles.count("user") != 1 or roles[-1] != "user" or set(roles) - {"system", "developer", "user"} \
            or roles.count("system") + roles.count("developer") > 1:
        return None, "multi_turn"
    if exchange.get("tool_calls"):
        return None, "tool_calls"
    answer = exchange.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        return None, "no_answer"
    if exchange.get("finish_reason") == "length":
        return None, "truncated"
    user = next(m["content"] for m in messages if m["role"] == "user")
    if not user.strip():
        return None, "no_answer"
    system = next((m["content"] for m in messages if m["role"] in ("system", "developer")), None)
    row = {"messages": ([{"role": "system", "content": system}] if system and system.strip() else [])
           + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
           "capture_id": exchange.get("id")}
    category = exchange.get("category")
    if isinstance(category, str) and category.strip():
        row["category"] = category.strip()
    return row, None


def _rows(records: list[dict]) -> tuple[list[dict], Counter]:
    rows, skipped = [], Counter()
    for record in records:
        row, why = coverage_row(record)
        if row is None:
            skipped[why] += 1
        else:
            rows.append(row)
    return rows, skipped


def uses_capture(cfg) -> bool:
    return is_capture_location(cfg.data.path)


def resolve_capture_data(cfg, run_local: Path, *, pull=None, push=None):
    """`cfg` reading the run's capture snapshot, taking it now when the run has none; the config
    unchanged when `data.path` is not a capture location. `pull`/`push` (a run directory at a URL)
    bring the snapshot from the store first and send a new one to it."""
    if not uses_capture(cfg):
        return cfg, None
    store = CaptureStore(cfg.data.path, field="data.path")
    if pull is not None:
        pull(SNAPSHOT_DIR)
    manifest_path, coverage_path = run_local / MANIFEST, run_local / COVERAGE
    if manifest_path.is_file() and coverage_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        # The run's own file: re-reading the shards would only prove they are still there; their
        # rows are in coverage.jsonl, which the stages key by content.
    else:
        manifest = write_snapshot(store, cfg, run_local)
        if push is not None:
            push(SNAPSHOT_DIR)
    return _reading(cfg, coverage_path), manifest


def write_snapshot(store: CaptureStore, cfg, root: Path) -> dict:
    from .store import atomic_write_json, atomic_write_jsonl

    snap = store.snapshot()
    rows, skipped = _rows(snap.records)
    if not rows:
        raise InputError(f"{snap.location} holds no exchange a run can learn from ({len(snap.records)} captured"
                         + (f"; not usable: {_reasons(skipped)}" if skipped else "") + ")", field="data.path")
    if cfg.data.stratify:
        missing = [r.get("capture_id") for r in rows if "category" not in r]
        if missing:
            raise InputError(f"data.stratify: true needs a category on every exchange; {len(missing)} captured "
                             f"without one (exchange {missing[0]}): tag them with the "
                             f"{cfg.capture.category_header} header or set data.stratify: false", field="data.path")
    manifest = {**snap.manifest(), "rows": len(rows), "skipped": dict(sorted(skipped.items())),
                "categories": dict(sorted(Counter(r.get("category", "(none)") for r in rows).items()))}
    atomic_write_jsonl(root / COVERAGE, rows)
    atomic_write_json(root / MANIFEST, manifest)  # last: a manifest means a whole snapshot
    return manifest


def validate_view(cfg, scratch: Path):
    """For `validate`: the coverage a run started now would read (written to `scratch`, not the store)."""
    if not uses_capture(cfg):
        return cfg, None
    store = CaptureStore(cfg.data.path, field="data.path")
    manifest = write_snapshot(store, cfg, scratch)
    return _reading(cfg, scratch / COVERAGE), manifest


def describe(manifest: dict) -> str:
    skipped = manifest.get("skipped") or {}
    return (f"captured traffic: {manifest['exchanges']} exchanges in {len(manifest['shards'])} shards of "
            f"{manifest['location']} (snapshot {manifest['taken_at']}), {manifest['rows']} usable"
            + (f"; not usable: {_reasons(skipped)}" if skipped else ""))


def _reasons(skipped: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(skipped.items()))


def _reading(cfg, coverage_path: Path):
    data = cfg.data.model_copy(update={"path": str(coverage_path)})
    return cfg.model_copy(update={"data": data})
