import pytest

from llamaduo.config import GateConfig
from llamaduo.gate import STOP_BUDGET, STOP_MAX_ROUNDS, STOP_PASSED, best_round, decide, stop_reason


def test_pass_at_threshold_inclusive():
    d = decide({"judge_score": 80.0}, GateConfig(metric="judge_score", threshold=80))
    summary = d.model_dump(exclude={"criteria", "reason"})
    assert d.passed and summary == {"passed": True, "metric": "judge_score", "value": 80.0, "threshold": 80}


def test_fail_below_and_reason_explains():
    d = decide({"judge_score": 79.9, "rougeL": 0.9}, GateConfig(threshold=80))
    assert not d.passed and "79.9 < 80" in d.reason


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


def _rec(k, value, passed=False, val=None):
    from llamaduo.records import GateDecision, RoundRecord

    return RoundRecord(round=k, train_rows=1, synthetic_rows_added=0, metrics={"rougeL": value},
                       val_metrics={"rougeL": val} if val is not None else {},
                       gate=GateDecision(passed=passed, metric="rougeL", value=value, threshold=0.5))


def test_best_round_ignores_baseline_and_prefers_earlier_tie():
    rounds = [_rec(0, 0.99), _rec(1, 0.7), _rec(2, 0.8), _rec(3, 0.8)]
    assert best_round(rounds, "rougeL").round == 2
    assert best_round([_rec(0, 0.1)], "rougeL") is None


def test_best_round_is_one_that_passed_even_when_another_has_a_higher_mean():
    # with use_ci_lower / min_share a round can have the best mean and still fail its gate
    rounds = [_rec(1, 0.9, passed=False), _rec(2, 0.8, passed=True)]
    assert best_round(rounds, "rougeL").round == 2
    assert best_round([_rec(1, 0.9), _rec(2, 0.8)], "rougeL").round == 1, "none passed: the best, labelled"


def test_keep_best_compares_validation_not_test_scores():
    rounds = [_rec(1, 0.9, val=0.5), _rec(2, 0.6, val=0.7)]
    assert best_round(rounds, "rougeL").round == 2


def test_gate_fails_when_too_few_items_were_judged():
    g = GateConfig(threshold=50, min_judged_share=0.9)
    d = decide({"judge_score": 95}, g, [95], judged_share=1 / 16)
    assert not d.passed and "not evaluable" in d.reason and d.criteria[0].name == "judged share"
    assert decide({"judge_score": 95}, g, [95] * 15, judged_share=15 / 16).passed
    # a reference metric does not need judgements
    assert decide({"rougeL": 0.9}, GateConfig(metric="rougeL", threshold=0.5), judged_share=0.0).passed


@pytest.mark.parametrize("metric,threshold", [("rougeL", 70), ("judge_score", 150), ("exact_match", 1.5),
                                              ("judge_score", 0), ("embedding_cosine", 2), ("judge_spread", 1)])
def test_threshold_off_the_metric_scale_is_an_input_error(metric, threshold):
    from llamaduo.config import config_from_dict
    from llamaduo.errors import InputError

    with pytest.raises(InputError, match="gate"):
        config_from_dict({"data": {"path": "x"}, "service": {"model": "m"},
                          "gate": {"metric": metric, "threshold": threshold}})


def test_ci_lower_bound_criterion():
    items = [40, 100, 60, 100, 80, 100]
    g = GateConfig(threshold=75, use_ci_lower=True)
    d = decide({"judge_score": 80}, g, items)
    assert not d.passed and d.criteria[0].value < 75 and "CI" in d.criteria[0].name
    assert decide({"judge_score": 80}, GateConfig(threshold=75), items).passed


def test_share_criterion_and_combine():
    items = [90, 90, 40, 95]
    g_all = GateConfig(threshold=70, min_item_score=80, min_share=0.8)
    d = decide({"judge_score": 78.75}, g_all, items)
    assert not d.passed and [c.passed for c in d.criteria] == [True, False] and d.criteria[1].value == 0.75
    d_any = decide({"judge_score": 78.75}, g_all.model_copy(update={"combine": "any"}), items)
    assert d_any.passed


def test_parity_criterion():
    g = GateConfig(threshold=10, min_parity=0.9)
    assert decide({"judge_score": 72}, g, [72], {"judge_score": 82}).passed is False
    assert decide({"judge_score": 72}, g, [72], {"judge_score": 78}).passed is True
    missing = decide({"judge_score": 72}, g, [72], None)
    assert not missing.passed and missing.criteria[1].value is None


def test_plateau():
    from llamaduo.gate import STOP_PLATEAU, plateaued

    assert not plateaued([50, 60], 2, 0.5)
    assert plateaued([50, 60, 60.2, 59], 2, 0.5)
    assert not plateaued([50, 60, 61, 59], 2, 0.5)
    fail = decide({"judge_score": 1}, GateConfig(threshold=50))
    g = GateConfig(threshold=50, plateau_rounds=1, plateau_margin=1)
    assert stop_reason(fail, 2, 5, True, [40, 40.5], g) == STOP_PLATEAU
    assert stop_reason(fail, 2, 5, True, [40, 45], g) is None


def test_min_parity_requires_service_baseline():
    import pytest

    from llamaduo.config import config_from_dict
    from llamaduo.errors import InputError

    with pytest.raises(InputError, match="service_baseline"):
        config_from_dict({"data": {"path": "x"}, "service": {"model": "m"}, "gate": {"min_parity": 0.9}})
