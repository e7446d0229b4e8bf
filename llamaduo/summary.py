"""summary.json (the design contract), written from the typed `Summary`, atomically, after every round."""

from __future__ import annotations

from .records import Summary
from .store import RunDir, atomic_write_json


def write_summary(rundir: RunDir, summary: Summary) -> None:
    atomic_write_json(rundir.summary, summary.model_dump(mode="json"))
