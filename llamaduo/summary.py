"""summary.json (the design contract), written from the typed `Summary`, atomically, after every round."""

from __future__ import annotations

import json

from .capture_coverage import MANIFEST as CAPTURE_MANIFEST
from .records import Summary
from .runstore import RunStore

SUMMARY = "summary.json"


# What a finished run decided: an in-progress summary carries these from the last one on disk.
VERDICT_FIELDS = ("passed", "stop_reason", "stop_detail", "final_model_dir", "exported_round",
                  "exported_round_passed", "export_check")


def write_summary(root: str, summary: Summary, *, in_progress: bool = False) -> str:
    """Write summary.json into the run directory (a folder or a URL); returns where it is.
    `in_progress` (after a round, before the run finishes): the rounds so far, with the verdict of
    the last finished run on disk (a re-run of a passed run must not read `passed: false`,
    `final_model_dir: null` while it re-checks its rounds), or no verdict when none finished yet."""
    store = RunStore(root)
    if in_progress:
        last = _on_disk(store)
        verdict = {k: getattr(last, k) for k in VERDICT_FIELDS} if last is not None else {
            "passed": False, "stop_reason": None, "stop_detail": None, "final_model_dir": None,
            "exported_round": None, "exported_round_passed": None, "export_check": None}
        summary = summary.model_copy(update={**verdict, "in_progress": True})
    else:
        summary = summary.model_copy(update={"in_progress": False})
    snapshot = store.read_bytes(CAPTURE_MANIFEST)  # a run on captured traffic: which shards it read
    if snapshot is not None:
        summary = summary.model_copy(update={"capture_snapshot": json.loads(snapshot)})
    store.write_text(SUMMARY, json.dumps(summary.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    return store.where(SUMMARY)


def _on_disk(store: RunStore) -> Summary | None:
    """The summary.json the run directory holds, or None (none, or unreadable: nothing to keep)."""
    try:
        data = store.read_bytes(SUMMARY)
        return Summary.model_validate_json(data) if data is not None else None
    except Exception:  # noqa: BLE001 - a summary from another version or a torn copy: no verdict to keep
        return None
