from llamaduo.config import GateConfig
from llamaduo.gate import STOP_BUDGET, STOP_MAX_ROUNDS, STOP_PASSED, best_round, decide, stop_reason


def test_pass_at_threshold_inclusive():
    d = decide({"judge_score": 80.0}, GateConfig(metric="judge_score", threshold=80))
    assert d.passed and d.value == 80.0 and d.to_summary() == {"passed": True, "metric": "judge_score",
                                                               "value": 80.0, "threshold": 80}


def test_fail_below_and_reason_explains():
    d = decide({"judge_score": 79.9, "rougeL": 0.9}, GateConfig(threshold=80))
    assert not d.passed and "79.90 < 80" in d.reason


def test_missing_metric_fails_not_crashes():
    d = decide({"rougeL": 0.5}, GateConfig(metric="judge_score", threshold=10))
    assert not d.passed and d.value is None


def test_other_metric():
    assert decide({"rougeL": 0.7}, GateConfig(metric="rougeL", threshold=0.6)).passed


def test_stop_reasons():
    fail = decide({"judge_score": 1}, GateConfig(threshold=50))
    ok = decide({"judge_score": 99}, GateConfig(threshold=50))
    assert stop_reason(ok, 1, 3, True) == STOP_PASSED
    assert stop_reason(fail, 1, 3, True) is None
    assert stop_reason(fail, 3, 3, True) == STOP_MAX_ROUNDS
    assert stop_reason(fail, 1, 3, False) == STOP_BUDGET


def test_best_round_ignores_baseline_and_prefers_earlier_tie():
    rounds = [{"round": 0, "metrics": {"m": 99}}, {"round": 1, "metrics": {"m": 70}},
              {"round": 2, "metrics": {"m": 80}}, {"round": 3, "metrics": {"m": 80}}]
    assert best_round(rounds, "m")["round"] == 2
    assert best_round([{"round": 0, "metrics": {"m": 1}}], "m") is None
