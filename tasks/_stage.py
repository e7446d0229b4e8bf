"""A stage's traits, declared once where the stage is defined: what it writes, which endpoint it calls,
whether it leaves resumable checkpoints, which parameters never key its cache, and its kind (the tag
the operator's concurrency limits and the GPU placement key on). The store (`_store.on_store`), the
cache key (`_policy.cache_key_for`) and the flows read these traits; nothing is inferred from a
parameter's name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from prefect import task

from ._policy import cache_key_for
from ._results import RESULT_OPTIONS
from ._store import on_store

DEFAULT_UNKEYED = frozenset({"root", "spent", "budget"})  # the run directory, the running spend, the budget


@dataclass(frozen=True)
class StageTraits:
    kind: Literal["io", "cpu", "service", "gpu"]  # its Prefect tag; "gpu" stages may run on the GPU pool
    writes: str | None = "out"  # the parameter naming the output it commits last (relative to the run dir)
    calls: str | None = None  # the parameter holding the Endpoint it calls: its reply cache travels with it
    checkpoints: bool = False  # writes `<out>.checkpoints` while it runs (a killed stage resumes from them)
    run_dir: str = "root"  # the parameter holding the run directory (a folder or a URL)
    unkeyed: frozenset[str] = DEFAULT_UNKEYED  # parameters that cannot change its output: never in its key


def stage(name: str, traits: StageTraits, **options) -> Callable:
    """`@task` for a stage: cache key, JSON results, tag and run-store handling from `traits`."""
    def wrap(fn: Callable):
        staged = on_store(traits)(fn)
        staged.traits = traits
        return task(name=name, cache_key_fn=cache_key_for(traits.unkeyed), **RESULT_OPTIONS, tags=[traits.kind],
                    **options)(staged)

    return wrap


def traits_of(stage_task) -> StageTraits | None:
    return getattr(stage_task.fn, "traits", None)
