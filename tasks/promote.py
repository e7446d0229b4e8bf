"""Promotion tasks: the champion frozen into the run, and a promotion written (network I/O: retried,
never cached — a promotion is an act)."""

from __future__ import annotations

from prefect import task

from llamaduo.promotion import PromotionStore, freeze_champion, promotion_record

from ._results import RESULT_OPTIONS


@task(name="freeze-champion", retries=2, retry_delay_seconds=5, tags=["io"], **RESULT_OPTIONS)
def champion_for_run(cfg, run_local: str, remote_run: str | None = None) -> dict | None:
    """The champion this run compares with (frozen in the run directory the first time)."""
    from pathlib import Path

    from llamaduo.runstore import RunStore

    store = RunStore(remote_run) if remote_run else None
    return freeze_champion(cfg, Path(run_local), pull=store.pull if store else None,
                           push=store.push if store else None)


@task(name="promote", retries=2, retry_delay_seconds=5, tags=["io"], **RESULT_OPTIONS)
def promote(location: str, run: str, final_model_dir: str, student: str, name: str, verdict: dict,
            versus: dict | None, previous: dict | None) -> dict:
    """promoted.json (and its history entry) at `location`, unless another model was promoted since the
    run froze `previous`: {"record": the record in force, "refused": why not written, or None}."""
    from pathlib import Path

    record = promotion_record(run=run, final_model=Path(final_model_dir), student=student, name=name,
                              verdict=verdict, versus=versus, previous=previous)
    in_force, refused = PromotionStore(location).promote(
        record, champion_sha=previous["model_sha256"] if previous else None)
    return {"record": in_force, "refused": refused, "written_time": record["time"]}
