"""Judge accounting (issue 19): the judged share counts judgements, the service baseline is judged
only on answers it gave, gate settings are checked against the metric's scale, and small
validation splits are not trusted beyond their noise."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamaduo.config import (BudgetConfig, Endpoint, GateConfig, InferConfig, JudgeConfig, ServiceConfig,
                             config_from_dict)
from llamaduo.errors import InputError
from llamaduo.gate import best_round, clearly_better, decide, selection_value
from llamaduo.records import Artifact, Evaluation, GateDecision, RoundRecord, ServiceStats
from llamaduo.service import Result, failing_reason
from llamaduo.store import atomic_write_jsonl, read_jsonl
from tests.fake_service import FakeBehaviour, FakeOpenAIServer
from tests.test_decisions import small_run  # noqa: F401 - the fixture, for the end-to-end test

KEY = "sk-accounting-secret-123456"
GOOD = {"similarity": 90, "precision": 90, "reason": ""}


# -- 1. the judged share counts judgements, not items -----------------------------------------------

class _OneValidJudgementPerItem:
    """A judge client whose only valid reply per item is the first repeat of the first sample."""

    def __init__(self, *args, **kwargs):
        self.stats, self.budget_hit = ServiceStats(), False

    def run(self, requests, parse, **kw):
        per_item = 4 * 3  # samples x repeats
        return [Result(True, GOOD) if i % per_item == 0 else Result(False, error="unusable reply: x", kind="parse")
                for i in range(len(requests))]


def _items(root: Path, n: int, samples: int, answered=None):
    items = [{"id": f"t{i}", "instruction": f"Q{i}", "response": "the cat sat on the mat"} for i in range(n)]
    atomic_write_jsonl(root / "test.jsonl", items)
    atomic_write_jsonl(root / "answers.jsonl", [{"id": it["id"], "answer": "the cat sat",
                                                 "samples": ["the cat sat"] * samples}
                                                for k, it in enumerate(items) if answered is None or k in answered])
    return Artifact.of(root, "test.jsonl"), Artifact.of(root, "answers.jsonl")


def test_ten_valid_judgements_of_120_are_a_judged_share_of_one_in_twelve(tmp_path, monkeypatch):
    """samples_per_prompt 4 x repeats 3 x 10 items = 120 requested; 10 valid (one per item) used to
    read as judged_share 1.0 and pass the gate."""
    from llamaduo import judge, service_stage

    monkeypatch.setattr(service_stage, "ServiceClient", _OneValidJudgementPerItem)
    items, answers = _items(tmp_path, 10, samples=4)
    ev = judge.evaluate_answers(tmp_path, JudgeConfig(repeats=3, embedding_model=None),
                                Endpoint(model="openai/fake"), ServiceConfig(model="openai/fake", max_failure_rate=1),
                                BudgetConfig(max_usd=0), ServiceStats(), items, answers, "t", "judged.jsonl")
    assert (ev.valid_judgments, ev.requested_judgments, ev.judged_items) == (10, 120, 10)
    assert ev.judged_share == pytest.approx(10 / 120)
    decision = decide(ev.metrics, GateConfig(threshold=50), ev.per_item["judge_score"], judged_share=ev.judged_share)
    assert not decision.passed and "not evaluable" in decision.reason
    assert decision.criteria[0].value == pytest.approx(10 / 120, abs=1e-4)
    record = Evaluation.of(ev)  # what the round entry of summary.json carries
    assert (record.judged_items, record.valid_judgments, record.requested_judgments) == (10, 10, 120)
    assert record.judged_share == pytest.approx(0.0833, abs=1e-4)
    rows = read_jsonl(tmp_path / "judged.jsonl")
    assert all(row["judge_requested"] == 12 and row["judge_valid"] == 1 for row in rows)


# -- 3. the service baseline is judged only on answers it gave --------------------------------------

def test_failed_baseline_answers_are_excluded_and_counted_not_judged_as_empty(tmp_path, monkeypatch):
    from llamaduo.baseline import service_answers
    from llamaduo.judge import evaluate_answers

    monkeypatch.setenv("FAKE_KEY", KEY)
    items = [{"id": f"t{i}", "instruction": f"Q{i}", "response": "blue"} for i in range(20)]
    atomic_write_jsonl(tmp_path / "test.jsonl", items)
    test = Artifact.of(tmp_path, "test.jsonl")
    lim = ServiceConfig(model="openai/fake", api_base="http://127.0.0.1:1", api_key_env="FAKE_KEY", rpm=6000,
                        max_concurrency=1, max_retries=0, max_failure_rate=0.9)
    with FakeOpenAIServer(FakeBehaviour(p_500=0.3, seed=4, plain_answer="blue")) as server:
        lim = lim.model_copy(update={"api_base": server.url})
        ep = Endpoint(model="openai/fake", api_base=server.url, api_key_env="FAKE_KEY")
        sa = service_answers(tmp_path, ep, lim, InferConfig(), BudgetConfig(max_usd=0), ServiceStats(), test, None,
                             "answers.jsonl")
        answered = read_jsonl(tmp_path / "answers.jsonl")
        assert 0 < sa.stats.unanswered < 20 and len(answered) == sa.stats.answered == 20 - sa.stats.unanswered
        assert all(a["answer"] == "blue" for a in answered), "no failed call is written as an answer"
    with FakeOpenAIServer(FakeBehaviour()) as judge_server:
        jep = Endpoint(model="openai/fake", api_base=judge_server.url, api_key_env="FAKE_KEY", field="judge")
        jlim = lim.model_copy(update={"api_base": judge_server.url})
        ev = evaluate_answers(tmp_path, JudgeConfig(embedding_model=None), jep, jlim, BudgetConfig(max_usd=0),
                              ServiceStats(), test, sa.answers, "service baseline", "judged.jsonl")
        assert judge_server.kinds["judge"] == len(answered), "only the answers it gave are judged"
    assert ev.metrics["judge_score"] == 100 and ev.metrics["rougeL"] == 1.0, "not lowered by unanswered items"
    assert ev.unanswered_items == sa.stats.unanswered and ev.items == 20
    assert ev.judged_share == pytest.approx(len(answered) / 20)


def test_parity_is_not_decided_on_a_thinly_judged_service_baseline():
    g = GateConfig(threshold=10, min_parity=0.9, min_judged_share=0.9)
    thin = decide({"judge_score": 72}, g, [72], {"judge_score": 40}, judged_share=1.0, service_share=0.5)
    assert not thin.passed and thin.criteria[1].value is None and "not decided" in thin.criteria[1].detail
    assert "50%" in thin.reason
    assert decide({"judge_score": 72}, g, [72], {"judge_score": 78}, judged_share=1.0, service_share=0.95).passed
    ref = GateConfig(metric="rougeL", threshold=0.1, min_parity=0.9)
    assert "answered" in decide({"rougeL": 0.5}, ref, [0.5], {"rougeL": 0.5}, service_share=0.2).criteria[1].detail


def test_round_record_refuses_parity_on_a_baseline_with_few_valid_judgements():
    """The flow's wiring: the baseline's own judged share reaches the parity criterion."""
    from flows.stages import round_record
    from llamaduo.loop import LoopState
    from llamaduo.metrics import BASELINE_SERVICE
    from llamaduo.records import AnswersResult, EvalResult

    cfg = config_from_dict({"data": {"path": "x"}, "service": {"model": "m"}, "judge": {"service_baseline": True},
                            "gate": {"threshold": 50, "min_parity": 0.8}})
    state = LoopState(baselines={BASELINE_SERVICE: {"judge_score": 60}},
                      baseline_evaluations={BASELINE_SERVICE: Evaluation(items=10, judged_items=4, judged_share=0.4,
                                                                          valid_judgments=4, requested_judgments=10,
                                                                          unanswered_items=6)})
    ev = EvalResult(metrics={"judge_score": 70}, per_item={"judge_score": [70] * 10},
                    per_item_by_id={"judge_score": {f"t{i}": 70 for i in range(10)}}, items=10, judged_items=10,
                    valid_judgments=10, requested_judgments=10)
    rec = round_record(cfg, state, 1, ev, AnswersResult(), None, ServiceStats(), {}, train_rows=1,
                       synthetic_rows_added=0)
    assert not rec.gate.passed and rec.gate.criteria[-1].value is None
    assert rec.selection_split == "test" and rec.selection_items == {f"t{i}": 70 for i in range(10)}


# -- 4. scale checks -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,field", [
    ({"budget": {"max_usd": math.inf}}, "budget.max_usd"),
    ({"budget": {"max_usd": math.nan}}, "budget.max_usd"),
    ({"gate": {"plateau_margin": math.inf}}, "gate.plateau_margin"),
    ({"gate": {"threshold": math.nan}}, "gate.threshold"),
    ({"gate": {"metric": "rougeL", "threshold": 0.5, "plateau_margin": 0.5 + 0.5}}, "gate.plateau_margin"),
    ({"gate": {"plateau_margin": 120}}, "gate.plateau_margin"),
    ({"gate": {"min_parity": 90}, "judge": {"service_baseline": True}}, "gate.min_parity"),
    ({"gate": {"min_parity": math.inf}, "judge": {"service_baseline": True}}, "gate.min_parity"),
    ({"gate": {"metric": "embedding_cosine", "threshold": 0.5, "min_parity": 0.9},
      "judge": {"service_baseline": True}}, "gate.min_parity"),
    ({"gate": {"metric": "embedding_cosine", "threshold": 0.5}, "judge": {"embedding_model": None}}, "gate.metric"),
])
def test_off_scale_or_infinite_gate_and_budget_settings_are_input_errors(raw, field):
    with pytest.raises(InputError, match=field.replace(".", r"\.")):
        config_from_dict({"data": {"path": "x"}, "service": {"model": "m"}, **raw})


def test_plateau_margin_default_is_on_the_metric_scale():
    assert GateConfig().margin == pytest.approx(0.5)
    assert GateConfig(metric="rougeL", threshold=0.5).margin == pytest.approx(1 / 198)
    assert GateConfig(metric="rougeL", threshold=0.5, plateau_margin=0.01).margin == 0.01


def test_infinite_budget_from_the_command_line_exits_2_naming_the_field(tmp_path, capsys):
    from flows.cli import main

    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"instruction": f"q{i}", "response": "a"}) + "\n"
                                              for i in range(10)))
    (tmp_path / "c.yaml").write_text(f"data: {{path: {tmp_path / 'd.jsonl'}}}\nservice: {{model: m}}\n")
    for override in ("budget.max_usd=.inf", "gate.plateau_margin=.nan", "gate.min_parity=90"):
        code = main(["validate", str(tmp_path / "c.yaml"), "--set", override, "--set", "judge.service_baseline=true"])
        err = capsys.readouterr().err
        assert code == 2 and override.split("=")[0] in err and "Traceback" not in err, (override, err)


# -- 5. small validation splits --------------------------------------------------------------------

def _round(k, val_mean, items=None, passed=False, split="validation"):
    return RoundRecord(round=k, train_rows=1, synthetic_rows_added=0, metrics={"judge_score": 50},
                       val_metrics={"judge_score": val_mean} if split == "validation" else {},
                       gate=GateDecision(passed=passed, metric="judge_score", value=50, threshold=70),
                       selection_split=split, selection_items=items or {})


def test_a_four_item_validation_difference_is_noise_the_later_round_is_kept():
    """Coding data, 44 train rows: round 1 validation 17.9 vs round 2 15.8 on 4 items."""
    r1 = _round(1, 17.9, {"a": 10.0, "b": 30.0, "c": 20.0, "d": 11.6})
    r2 = _round(2, 15.8, {"a": 14.0, "b": 18.0, "c": 16.0, "d": 15.2})
    assert not clearly_better(r1.selection_items, r2.selection_items)
    assert best_round([r1, r2], "judge_score").round == 2


def test_an_earlier_round_better_beyond_noise_is_kept():
    r1 = _round(1, 60.0, {f"i{k}": 60.0 + k % 3 for k in range(30)})
    r2 = _round(2, 40.0, {f"i{k}": 40.0 + k % 5 for k in range(30)})
    assert clearly_better(r1.selection_items, r2.selection_items)
    assert best_round([r1, r2], "judge_score").round == 1
    # a passed round still wins over a better one that did not pass
    assert best_round([r1, _round(2, 40.0, r2.selection_items, passed=True)], "judge_score").round == 2


@settings(max_examples=60, deadline=None)
@given(diffs=st.lists(st.floats(-50, 50, allow_nan=False), min_size=0, max_size=12))
def test_clearly_better_needs_the_whole_interval_above_zero(diffs):
    a = {str(i): d for i, d in enumerate(diffs)}
    b = {str(i): 0.0 for i in range(len(diffs))}
    verdict = clearly_better(a, b)
    if verdict:
        assert len(diffs) >= 2 and sum(diffs) > 0
    if len(diffs) >= 2 and min(diffs) > 0:
        assert verdict, "every item better: beyond any bootstrap interval"
    if len(diffs) < 2:
        assert not verdict


def test_without_a_validation_split_selection_says_it_uses_the_test_split():
    rec = _round(1, 0.0, {"t0": 50.0}, split="test")
    assert selection_value(rec, "judge_score") == 50 and rec.selection_split == "test"
    from llamaduo.gate import selection_split

    assert selection_split(False) == "test" and selection_split(True) == "validation"


def test_selection_warnings_for_missing_and_small_validation_splits():
    from llamaduo.gate import MIN_VAL_ROWS_TO_CHOOSE, selection_warnings

    none = selection_warnings(0, "failure")
    assert len(none) == 1 and "compare test scores" in none[0] and "uniform" in none[0]
    small = selection_warnings(4, "uniform")
    assert len(small) == 1 and "4 rows" in small[0] and "data.val_size" in small[0]
    assert selection_warnings(MIN_VAL_ROWS_TO_CHOOSE, "failure") == []


def test_validate_warns_that_a_small_validation_split_cannot_choose_between_rounds(tmp_path, capsys):
    from flows.cli import main

    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"instruction": f"question number {i}?", "response": "a"})
                                              + "\n" for i in range(55)))
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "config.json").write_text("{}")
    (tmp_path / "c.yaml").write_text(f"data: {{path: {tmp_path / 'd.jsonl'}}}\n"
                                     "service: {model: openai/local-teacher, api_base: 'http://127.0.0.1:9/v1'}\n"
                                     f"student: {{model: {tmp_path / 'student'}}}\nbudget: {{max_usd: 0}}\n")
    assert main(["validate", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "validation split has only 4 rows" in out, out
    assert main(["validate", str(tmp_path / "c.yaml"), "--set", "data.val_size=0"]) == 0
    assert "keep-best and plateau compare test" in capsys.readouterr().out


def test_breaker_needs_a_minimum_of_calls_before_a_share_trips_it():
    fail, ok = Result(False, error="x", kind="parse"), Result(True, GOOD)
    assert failing_reason("val judging", [fail, fail, fail, ok], 0.5) is None, "3 of 4: noise, not a failing judge"
    assert failing_reason("val judging", [fail] * 4, 0.5), "nothing usable at all still trips"
    assert failing_reason("judging", [fail] * 8 + [ok] * 4, 0.5), "8 of 12 beyond the minimum trips"
    assert failing_reason("judging", [fail] * 3 + [ok], 0.5, min_calls=4)


def test_failure_weights_are_tempered_by_how_little_a_small_split_can_tell():
    from llamaduo.synth import temper_weights

    raw = [0.05, 0.05, 1.05, 0.05]
    four, hundred = temper_weights(raw, 4), temper_weights(raw, 100)
    assert max(four) / min(four) < max(hundred) / min(hundred) < max(raw) / min(raw)
    assert temper_weights(raw, 0) == [1.0] * 4 and temper_weights([], 5) == []
    assert sum(four) == pytest.approx(4) and min(four) > 0


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.floats(0.01, 10), min_size=1, max_size=20), n=st.integers(1, 400))
def test_tempered_weights_stay_positive_and_never_sharper_than_the_raw_ones(weights, n):
    from llamaduo.synth import temper_weights

    out = temper_weights(weights, n)
    assert min(out) > 0 and max(out) / min(out) <= max(weights) / min(weights) + 1e-9


# -- end to end: a thinly judged round does not pass, and summary.json says how thin ----------------

@pytest.mark.slow
def test_run_with_mostly_invalid_judgements_is_not_evaluable_and_summary_counts_judgements(small_run):
    """samples 2 x repeats 3 per test item and half of the judge's replies unusable: nearly every
    item still has one valid judgement (the old item-based share was ~1.0 and a threshold of 1
    passed), but only about half of the requested judgements are valid."""
    import yaml

    from tests.test_decisions import KEY as DKEY
    from tests.test_decisions import POOL, _cli

    tmp_path, config = small_run
    config["judge"] = {"model": None, "embedding_model": None, "repeats": 3, "temperature": 0.5,
                       "service_baseline": True}
    config["infer"].update({"samples_per_prompt": 2})
    config["service"].update({"max_failure_rate": 1.0, "max_concurrency": 1})
    config["gate"].update({"threshold": 1, "max_rounds": 1, "baseline": False, "min_judged_share": 0.9})
    config["budget"]["max_calls"] = 2000
    with FakeOpenAIServer(FakeBehaviour(p_judge_malformed=0.5, judge_good_first=1, seed=3, pool=POOL)) as server:
        config["service"]["api_base"] = server.url
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        out = _cli(["run", str(tmp_path / "run.yaml"), "--workdir", str(tmp_path / "w")], {"FAKE_SERVICE_KEY": DKEY},
                   timeout=600)
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    entry = summary["rounds"][-1]
    ev = entry["evaluation"]
    assert ev["requested_judgments"] == 4 * 2 * 3 and ev["valid_judgments"] < 0.9 * ev["requested_judgments"]
    assert ev["judged_share"] == round(ev["valid_judgments"] / ev["requested_judgments"], 4)
    assert ev["judged_items"] >= 3, "most items have a valid judgement: the old share would have passed"
    assert entry["gate"]["passed"] is False and "not evaluable" in entry["gate"]["reason"]
    assert entry["selection_split"] == "validation" and entry["val_evaluation"]["requested_judgments"] == 2 * 2 * 3
    base = summary["baseline_evaluations"]["service LLM"]
    assert base["requested_judgments"] == 4 * 3 and base["unanswered_items"] == 0
    report = (tmp_path / "w" / "rounds" / "round_01" / "report.md").read_text()
    assert f"{ev['valid_judgments']} of {ev['requested_judgments']} requested judgements valid" in report
