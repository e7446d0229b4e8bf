"""Stages on a run directory at a URL: pull inputs into this machine's scratch copy, run, push.

`on_store(traits)` wraps a stage function (tasks/_stage.stage does): with a local run directory it does nothing;
with a URL (`s3://…`) the function runs on the scratch copy (`llamaduo.runstore.RunStore.local`)
after the artifacts among its parameters are pulled; the reply cache and finished training
checkpoints are pushed while it runs; what it wrote is pushed after, its `out` committed last
(a directory under an upload marker), so a stage that dies mid-way is recomputed, never read
half-written. Which parameter is the run directory, the output, the endpoint (its reply cache is
pulled and synced) and whether checkpoints exist come from the stage's declared traits.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
import inspect
import os
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from llamaduo.records import Artifact, StudentRef
from llamaduo.runstore import RunStore, is_url, syncing_checkpoints

SERVICE_CACHE = "cache/service"
# How often paid replies and finished checkpoints reach the store while a stage runs.
SYNC_EVERY_S = float(os.environ.get("LLAMADUO_SYNC_EVERY_S", "10"))


def artifact_paths(value: Any) -> list[str]:
    """The run-directory paths of every artifact inside a parameter value."""
    if isinstance(value, Artifact):
        return [value.path]
    if isinstance(value, BaseModel):
        return [p for name in type(value).model_fields for p in artifact_paths(getattr(value, name, None))]
    if isinstance(value, dict):
        return [p for v in value.values() for p in artifact_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in artifact_paths(v)]
    return []


def local_student(student: StudentRef) -> StudentRef:
    """The student's weights on this machine (a stage on another worker converts its own copy)."""
    if Path(student.path).exists():
        return student
    from llamaduo.models import resolve_student

    return StudentRef(id=student.id, path=resolve_student(student.id))


def on_store(traits) -> Callable:
    """The decorator for a stage with these traits (tasks/_stage.StageTraits)."""
    return functools.partial(_on_store, traits=traits)


def _on_store(fn: Callable, traits) -> Callable:
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def staged(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        params = bound.arguments
        for name, value in params.items():
            if isinstance(value, StudentRef):
                params[name] = local_student(value)
        root = params.get(traits.run_dir)
        if root is None or not is_url(root):
            return fn(*bound.args, **bound.kwargs)
        store = RunStore(root)
        store.local.mkdir(parents=True, exist_ok=True)
        out = params.get(traits.writes) if traits.writes else None
        for rel in dict.fromkeys(artifact_paths(list(params.values()))):
            store.pull(rel)
        service = traits.calls is not None
        if service:
            store.pull(SERVICE_CACHE)  # replies paid before (this run, a crashed one, another machine)
        checkpoints = f"{out}.checkpoints" if out and traits.checkpoints else None
        if checkpoints:
            store.pull(checkpoints)  # a stage killed mid-training resumes from its last checkpoint
        before = store.snapshot()
        params[traits.run_dir] = str(store.local)
        try:
            with store.syncing(SERVICE_CACHE, SYNC_EVERY_S) if service else nullcontext(), \
                    syncing_checkpoints(store, checkpoints, SYNC_EVERY_S) if checkpoints else nullcontext():
                result = fn(*bound.args, **bound.kwargs)
        except BaseException:
            store.push_changed(before, exclude=[o for o in (out, checkpoints) if o])  # paid replies, failure logs
            raise
        store.push_changed(before, exclude=[o for o in (out, checkpoints) if o])
        if out:
            store.push(out)
        if checkpoints and not (store.local / checkpoints).exists():
            store.remove(checkpoints)  # training finished: nothing left to resume
        return result

    return staged
