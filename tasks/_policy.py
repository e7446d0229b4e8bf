"""Prefect policy shared by the stage tasks: explicit cache keys and result storage.

A plain @task does not cache across runs (its default policy includes the run id).
Every stage's key is the hash of its parameters — config section, input artifacts'
content hashes, round/wave numbers, output path — plus the code version. Tasks return
small values (paths, hashes, stats), never datasets or models.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from llamaduo import CODE_VERSION
from llamaduo.store import sha256_json


def stage_cache_key(context, parameters: dict) -> str:
    key = sha256_json({"task": context.task.name, "params": parameters, "code": CODE_VERSION})
    out = parameters.get("out_dir") or parameters.get("out_path")
    if out and not Path(out).exists():
        # The artifact a cached result points at is gone: run again rather than return a dangling path.
        return f"{key}-rebuild-{uuid.uuid4().hex}"
    return key


def artifact(path: str | Path) -> dict:
    from llamaduo.store import sha256_path

    return {"path": str(path), "sha256": sha256_path(path)}


STAGE_OPTIONS = dict(cache_key_fn=stage_cache_key, persist_result=True)
