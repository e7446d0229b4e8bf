"""summary.json (the design contract), written from the typed `Summary`, atomically, after every round."""

from __future__ import annotations

import json

from .records import Summary
from .runstore import RunStore

SUMMARY = "summary.json"


def write_summary(root: str, summary: Summary) -> str:
    """Write summary.json into the run directory (a folder or a URL); returns where it is."""
    store = RunStore(root)
    store.write_text(SUMMARY, json.dumps(summary.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    return store.where(SUMMARY)
