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
