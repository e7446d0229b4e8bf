"""summary.json (DESIGN.md contract), rewritten atomically after every round."""

from __future__ import annotations

from .store import RunDir, atomic_write_json

ROUND_KEYS = ("round", "train_rows", "synthetic_rows_added", "dropped", "metrics", "gate", "service", "durations_s")


def build_summary(name: str, rounds: list[dict], *, passed: bool, stop_reason: str | None,
                  final_model_dir: str | None, teacher: str, judge: str, student: str,
                  baselines: dict[str, dict] | None = None, service_total: dict | None = None) -> dict:
    return {
        "name": name,
        "passed": passed,
        "stop_reason": stop_reason,
        "final_model_dir": final_model_dir,
        "teacher": teacher,
        "judge": judge,
        "student": student,
        "baselines": baselines or {},
        "service_total": service_total or {},
        "rounds": sorted(rounds, key=lambda r: r["round"]),
    }


def write_summary(rundir: RunDir, summary: dict) -> None:
    atomic_write_json(rundir.summary, summary)
