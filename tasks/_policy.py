"""Prefect policy shared by the stage tasks: explicit cache keys and result storage.

A plain @task does not cache across runs (its default policy includes the run id).
Every stage's key is the hash of its parameters — config section, input artifacts'
content hashes, round/wave numbers, output path — plus the code version. Tasks return
small values (paths, hashes, stats), never datasets or models.
"""

from __future__ import annotations

from pathlib import Path

from llamaduo import CODE_VERSION
from llamaduo.store import sha256_json


def stage_cache_key(context, parameters: dict) -> str:
    return sha256_json({"task": context.task.name, "params": parameters, "code": CODE_VERSION})


def stage(task, out: str | Path):
    """The task as the flow should call it: when its output artifact is gone (deleted run
    files), refresh the cache instead of returning a result that points at nothing."""
    return task if Path(out).exists() else task.with_options(refresh_cache=True)


def artifact(path: str | Path) -> dict:
    from llamaduo.store import sha256_path

    return {"path": str(path), "sha256": sha256_path(path)}


STAGE_OPTIONS = dict(cache_key_fn=stage_cache_key, persist_result=True)


def progress_reporter(description: str):
    """A Prefect progress artifact for a long call batch, updated every 10%; None outside a run."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    try:
        artifact_id = create_progress_artifact(progress=0.0, description=description, _sync=True)
    except Exception:  # noqa: BLE001 - progress is a nicety, never a failure
        return None
    last = [0.0]

    def report(done: int, total: int) -> None:
        pct = 100.0 * done / max(total, 1)
        if pct - last[0] >= 10 or done == total:
            last[0] = pct
            try:
                update_progress_artifact(artifact_id, pct, _sync=True)  # called from inside the event loop
            except Exception:  # noqa: BLE001
                pass

    return report


def failure_records(stage: str, results, keys: list[str]) -> list[dict]:
    """Failed calls as rows (stage, key, kind, reason) for the round's failure log."""
    return [{"stage": stage, "key": k, "kind": r.kind, "reason": r.error} for k, r in zip(keys, results) if not r.ok]
