"""Prefect policy shared by the stage tasks: cache keys from what determines the output, safe
persisted results, and refresh when an output is gone.

A plain @task does not cache across runs (its default policy includes the run id). A stage's
key is the hash of its parameters as *fingerprints* plus the code version:
- config sections: `fingerprint()` — operational fields (rate limits, timeouts, key variables)
  dropped, file-valued fields (templates, data, the stand-in pool) replaced by their content hash;
- artifacts: their path relative to the run directory and their content hash;
- the student: its configured id (not where its converted weights lie);
- unkeyed parameters (a stage's declared traits, tasks/_stage.py; by default the run directory, the
  running spend, the budget) never enter a key: they cannot change what a completed stage produced.
Tasks return small typed records (paths, hashes, stats), never datasets or models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llamaduo import CODE_VERSION
from llamaduo.pacing import TEMPORARY_SERVER_ENV
from llamaduo.records import StudentRef
from llamaduo.runstore import RunStore
from llamaduo.store import sha256_json

from ._results import RESULT_OPTIONS, results_storage

UNKEYED = frozenset({"root", "spent", "budget"})


def fingerprint(value: Any) -> Any:
    if hasattr(value, "fingerprint"):
        return value.fingerprint()
    if isinstance(value, StudentRef):
        return value.id
    if isinstance(value, BaseModel):
        return fingerprint(value.model_dump(mode="python"))
    if isinstance(value, dict):
        return {k: fingerprint(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    return value


def cache_key_for(unkeyed: frozenset[str] = UNKEYED):
    """A stage's cache key function: its parameters' fingerprints but `unkeyed` (its declared traits)."""
    def key(context, parameters: dict) -> str:
        keyed = {k: fingerprint(v) for k, v in parameters.items() if k not in unkeyed}
        if os.environ.get("LLAMADUO_DEBUG_CACHE_KEYS"):  # what a key is made of, one JSON line per task
            with open(os.environ["LLAMADUO_DEBUG_CACHE_KEYS"], "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"task": context.task.name, "inputs": keyed}, default=str) + "\n")
        return sha256_json({"task": context.task.name, "inputs": keyed, "code": CODE_VERSION})

    return key


stage_cache_key = cache_key_for(UNKEYED)


STAGE_OPTIONS = dict(cache_key_fn=stage_cache_key, **RESULT_OPTIONS)


def run_stage(task, out: str | Path | None, /, **params) -> tuple[Any, bool]:
    """Call a stage task; returns (result, fresh). `fresh` is False when Prefect answered from
    its cache. When the stage's output (`out`, relative to `root`) is gone — deleted, or never
    written because the stage stopped at a budget cap — the cache is refreshed instead of
    returning a result that points at nothing."""
    traits = getattr(task.fn, "traits", None)  # tasks/_stage.StageTraits; prepare-student has none
    root = params.get(traits.run_dir if traits else "root", ".")
    if out is not None and not RunStore(root).exists(out):
        task = task.with_options(refresh_cache=True)
    if (storage := results_storage(str(root))) is not None:
        task = task.with_options(result_storage=storage)  # a stage run on any machine finds it cached
    if os.environ.get(TEMPORARY_SERVER_ENV):
        # The tags are there for the operator's tag concurrency limits, which a server started for
        # this one run cannot hold; asking for slots anyway cost ~1-3 s a stage (benchmarks/README.md).
        task = task.with_options(tags=set())
    state = task(**params, return_state=True)
    return state.result(), state.name != "Cached"


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
