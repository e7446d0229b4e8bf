"""The loop's state is a value: every step returns a new `LoopState` and leaves the old one as it was.
Also the records at the flow's edges (export check, migration result) and the round directory name."""

import json

import pytest
from pydantic import ValidationError

from llamaduo.loop import LoopState
from llamaduo.records import (Artifact, Evaluation, ExportCheck, GateDecision, Invocation, MigrationResult,
                              RoundRecord, ServiceStats, Summary)
from llamaduo.store import round_dir

PAID = ServiceStats(calls=3, cached=1, prompt_tokens=300, completion_tokens=90, cost_usd=0.25)


def _round(k: int, value: float = 50.0) -> RoundRecord:
    return RoundRecord(round=k, train_rows=10 * k, synthetic_rows_added=5,
                       gate=GateDecision(passed=False, metric="judge_score", value=value, threshold=70))


def _artifact(name: str) -> Artifact:
    return Artifact(path=name, sha256="0" * 64)


def test_the_state_cannot_be_changed_in_place():
    state = LoopState()
    with pytest.raises(ValidationError):
        state.seed_offset = 3
    with pytest.raises(ValidationError):
        state.invocation.service_calls = 1


def test_charged_adds_spending_and_counts_only_fresh_calls():
    start = LoopState(spent=ServiceStats(calls=2, cost_usd=0.5))
    fresh = start.charged(PAID, True)
    cached = fresh.charged(PAID, False)
    assert fresh.spent.calls == 5 and fresh.spent.cost_usd == pytest.approx(0.75)
    assert fresh.invocation.service_calls == 3
    assert cached.spent.calls == 8 and cached.invocation.service_calls == 3, "Prefect's cache: spent, not called now"
    assert start.spent == ServiceStats(calls=2, cost_usd=0.5) and start.invocation == Invocation()


def test_trained_counts_this_invocations_steps():
    state = LoopState().charged(PAID, True).trained(4).trained(6)
    assert state.invocation == Invocation(service_calls=3, training_steps=10)


def test_stopped_sets_the_reason_and_keeps_everything_else():
    state = LoopState(train_rows=7).charged(PAID, True)
    stopped = state.stopped("budget", "budget reached in evaluate")
    assert (stopped.stop_reason, stopped.stop_detail) == ("budget", "budget reached in evaluate")
    assert stopped.spent == state.spent and stopped.train_rows == 7 and state.stop_reason is None
    assert stopped.stopped("max_rounds").stop_detail is None


def test_with_baseline_adds_metrics_and_the_evaluation_when_given():
    ev = Evaluation(items=4, judged_items=2, judged_share=0.5)
    state = LoopState().with_baseline("service", {"judge_score": 80.0}, ev)
    both = state.with_baseline("base_student", {"judge_score": 20.0})
    assert both.baselines == {"service": {"judge_score": 80.0}, "base_student": {"judge_score": 20.0}}
    assert both.baseline_evaluations == {"service": ev}, "the base student's evaluation is its round 0"
    assert state.baselines == {"service": {"judge_score": 80.0}}


def test_with_round_replaces_a_round_recorded_again_and_keeps_validation_scores():
    val = _artifact("rounds/round_01/val_judged.jsonl")
    state = LoopState().with_round(_round(0), None).with_round(_round(1, 40.0), val)
    again = state.with_round(_round(1, 60.0), None)
    assert [r.round for r in state.rounds] == [0, 1] and state.last_val_judged == val
    assert [(r.round, r.gate.value) for r in again.sorted_rounds()] == [(0, 50.0), (1, 60.0)]
    assert again.last_val_judged is None and state.rounds[1].gate.value == 40.0


def test_previous_round_is_the_latest_before():
    state = LoopState().with_round(_round(2), None).with_round(_round(0), None).with_round(_round(1), None)
    assert state.previous_round(2).round == 1 and state.previous_round(1).round == 0
    assert state.previous_round(0) is None
    assert [r.round for r in state.sorted_rounds()] == [0, 1, 2]


def test_with_training_is_what_the_next_round_builds_on():
    coverage, curated, adapter = _artifact("data/train.jsonl"), _artifact("c.jsonl"), _artifact("adapter")
    start = LoopState(train_parts=[coverage], train_rows=10)
    nxt = start.with_training([curated], 15, adapter).with_seed_offset(4)
    assert nxt.train_parts == [coverage, curated] and nxt.train_rows == 15 and nxt.last_adapter == adapter
    assert nxt.seed_offset == 4
    assert start.train_parts == [coverage] and start.train_rows == 10 and start.last_adapter is None


def test_the_state_and_the_flow_result_survive_the_result_serializer():
    from tasks._results import RecordJSONSerializer

    ser = RecordJSONSerializer()
    state = LoopState().charged(PAID, True).trained(5).with_round(_round(1), None).stopped("max_rounds")
    assert ser.loads(ser.dumps(state)) == state
    result = MigrationResult(summary_path="runs/x/summary.json", passed=False, stop_reason="max_rounds",
                             final_model_dir="runs/x/final_model", exported_round=1, invocation=state.invocation)
    assert ser.loads(ser.dumps(result)) == result


def test_export_check_keeps_the_summary_keys():
    compared = ExportCheck(checked=3, matched=3, reproduces=True)
    sampled = ExportCheck(checked=0, matched=0, reproduces=None, note="sampled answers: not comparable")
    assert compared.model_dump(mode="json") == {"checked": 3, "matched": 3, "reproduces": True}
    assert sampled.model_dump(mode="json") == {"checked": 0, "matched": 0, "reproduces": None,
                                               "note": "sampled answers: not comparable"}
    summary = Summary(name="x", passed=True, stop_reason="passed", final_model_dir="f", teacher="t", judge="j",
                      student="s", export_check=compared)
    dumped = json.loads(json.dumps(summary.model_dump(mode="json")))
    assert dumped["export_check"] == {"checked": 3, "matched": 3, "reproduces": True}
    assert Summary.model_validate(dumped).export_check == compared


def test_round_dir_is_relative_and_two_digits():
    assert round_dir(0) == "rounds/round_00" and round_dir(3) == "rounds/round_03"
    assert round_dir(12) == "rounds/round_12"
