"""A paid reply whose cache write fails: the flow charges it and stops (cache_write_failed, exit 1),
instead of a crash whose spend is lost (issue 19, point 11; the client side is in test_service.py)."""

import pytest


def test_unsaved_paid_replies_are_charged_and_stop_the_loop(tmp_path, prefect_env):
    from prefect import flow, task

    from flows.stages import service_stage
    from flows.state import StopLoop
    from llamaduo.loop import LoopState
    from llamaduo.gate import STOP_CACHE_WRITE_FAILED
    from llamaduo.records import ServiceStats
    from llamaduo.service import ReplyCacheError
    from tasks._policy import STAGE_OPTIONS

    paid = ServiceStats(calls=3, prompt_tokens=300, completion_tokens=90, cost_usd=0.25)

    @task(name="paid-then-unsaved", **STAGE_OPTIONS)
    def paid_then_unsaved(root: str, spent: ServiceStats, out: str):
        raise ReplyCacheError("service: the reply cache cannot be written (No space left on device)", paid)

    @flow
    def one_stage() -> dict:
        try:
            service_stage(LoopState(), paid_then_unsaved, "x.jsonl", root=str(tmp_path), out="x.jsonl")
        except StopLoop as stop:
            state = stop.state
            return {"reason": state.stop_reason, "detail": state.stop_detail, "spent": state.spent.model_dump(),
                    "calls": state.invocation.service_calls}
        return {"reason": None}

    got = one_stage()
    assert got["reason"] == STOP_CACHE_WRITE_FAILED
    assert "No space left" in got["detail"]
    assert got["spent"]["calls"] == 3 and got["spent"]["cost_usd"] == pytest.approx(0.25)
    assert got["calls"] == 3

