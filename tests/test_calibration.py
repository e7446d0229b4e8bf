"""Judge calibration: people's ratings against the judge, before any training.

Units: loading and validating rated rows (file, line, field named), the agreement statistics
(Kendall tau-b, Spearman rho, bootstrap intervals, Cohen's kappa, worst rows), the flow's stop
decision, the estimate, the config keys. The stage runs against the fake HTTP judge (word
overlap). End to end (slow): the real CLI stops with exit 3 / judge_disagrees and writes no
adapter when people's ratings run against the judge's; with ratings that agree it trains on.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from unittest.mock import patch

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from llamaduo.calibration import (MIN_ROWS, Rating, agreement_stop, bootstrap_interval, calibrate_judge,
                                  cohen_kappa, describe, judge_metric_for, kendall_tau_b, load_ratings, measure,
                                  pass_score_for, rater_phrase, spearman_rho, worst_rows)
from llamaduo.config import (BudgetConfig, Endpoint, GateConfig, JudgeConfig, ServiceConfig, config_from_dict,
                             load_config)
from llamaduo.errors import InputError
from llamaduo.records import ServiceStats
from tests.fake_service import FakeBehaviour, FakeOpenAIServer, overlap_score

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "parcel 4411 stuck at depot since monday storm delayed every truck"  # 11 distinct words
WORDS = REFERENCE.split()


def overlap_rows(agree: bool, n: int = 12) -> list[dict]:
    """Candidates sharing 0..all words of the reference: the fake judge's overlap score rises with k.
    agree=True rates them the same way round (people like overlap), False the opposite."""
    rows = []
    for i in range(n):
        k = round(i * len(WORDS) / (n - 1))
        cand = " ".join(WORDS[:k] + [f"filler{j}" for j in range(len(WORDS) - k)])
        human = 1 + round(98 * i / (n - 1))
        rows.append({"instruction": f"Why is order {i} late?", "reference": REFERENCE, "candidate": cand,
                     "human_score": human if agree else 101 - human})
    return rows


def rating(line, score=None, passed=None, candidate="c"):
    return Rating(line=line, instruction="q", reference="r", candidate=candidate, human_score=score,
                  human_pass=passed)


# -- loading ---------------------------------------------------------------------------------------
def test_loads_jsonl_and_csv_rows_scores_and_pass_flags(tmp_path, write_jsonl):
    rows = [{"instruction": f"q{i}", "reference": "r", "candidate": "c", "human_score": 10 * i + 5,
             "rated_by": "alice"} for i in range(9)]
    rows.append({"instruction": "q9", "reference": "r", "candidate": "c", "human_pass": False})
    got = load_ratings(write_jsonl("cal.jsonl", rows))
    assert len(got) == 10 and got[0].human_score == 5 and got[0].line == 1
    assert got[9].human_pass is False and got[9].human_score is None and got[9].human_value == 1.0
    csv = tmp_path / "cal.csv"
    csv.write_text("instruction,reference,candidate,human_score,human_pass\n"
                   + "".join(f"q{i},r,c,{50 + i},{'true' if i % 2 else 'no'}\n" for i in range(10))
                   + "q10,r,c,,yes\n")
    got = load_ratings(csv)
    assert got[0].human_score == 50.0 and got[0].human_pass is False and got[1].human_pass is True
    assert got[10].human_score is None and got[10].human_pass is True and got[10].line == 12


@pytest.mark.parametrize("bad,line,field", [
    ({"instruction": "q", "reference": "r", "human_score": 50}, 3, "candidate"),
    ({"instruction": "q", "reference": "r", "candidate": "", "human_score": 50}, 3, "candidate"),
    ({"instruction": "q", "reference": 7, "candidate": "c", "human_score": 50}, 3, "reference"),
    ({"instruction": "q", "reference": "r", "candidate": "c", "human_score": 0}, 3, "human_score"),
    ({"instruction": "q", "reference": "r", "candidate": "c", "human_score": 100.5}, 3, "human_score"),
    ({"instruction": "q", "reference": "r", "candidate": "c", "human_score": "great"}, 3, "human_score"),
    ({"instruction": "q", "reference": "r", "candidate": "c", "human_score": True}, 3, "human_score"),
    ({"instruction": "q", "reference": "r", "candidate": "c", "human_pass": "maybe"}, 3, "human_pass"),
    ({"instruction": "q", "reference": "r", "candidate": "c", "human_scor": 80}, 3, "human_score"),
])
def test_bad_rows_name_file_line_and_field(write_jsonl, bad, line, field):
    good = {"instruction": "q", "reference": "r", "candidate": "c", "human_score": 50}
    path = write_jsonl("cal.jsonl", [good, good, bad] + [good] * 10)
    with pytest.raises(InputError) as err:
        load_ratings(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), line, field)
    assert f"cal.jsonl, line {line}, field '{field}'" in str(err.value)


def test_nan_score_and_too_few_rows_and_missing_file_are_input_errors(tmp_path, write_jsonl):
    good = {"instruction": "q", "reference": "r", "candidate": "c", "human_score": 50}
    path = write_jsonl("nan.jsonl", [good, '{"instruction": "q", "reference": "r", "candidate": "c", '
                                           '"human_score": NaN}'] + [good] * 10)
    with pytest.raises(InputError, match="line 2, field 'human_score'"):
        load_ratings(path)
    few = [{**good, "instruction": f"q{i}"} for i in range(9)]
    with pytest.raises(InputError, match=f"9 distinct rated rows; agreement needs at least {MIN_ROWS}") as err:
        load_ratings(write_jsonl("few.jsonl", few))
    assert err.value.field == "judge.calibration_path"
    with pytest.raises(InputError, match="not found"):
        load_ratings(tmp_path / "nope.jsonl")


# -- duplicates and who rated (issue 28, points 11 and 13) -----------------------------------------
def test_duplicate_rows_are_one_rating_and_are_counted(write_jsonl):
    """3 ratings repeated 4 times are 3 ratings, not 12 independent ones (they passed the 10-row floor
    and read as tau 1.00 [1.00, 1.00])."""
    three = [{"instruction": f"q{i}", "reference": "r", "candidate": f"c{i}", "human_score": 10 + 40 * i}
             for i in range(3)]
    with pytest.raises(InputError, match="3 distinct rated rows \\(9 duplicate rows collapsed\\)"):
        load_ratings(write_jsonl("dup.jsonl", three * 4))
    rows = overlap_rows(True)
    got = load_ratings(write_jsonl("cal.jsonl", rows + rows[:2] + [{**rows[5], "human_score": 1}]))
    assert len(got) == len(rows) and [r.copies for r in got[:3]] == [2, 2, 1] and got[5].copies == 2
    assert got[5].human_score == pytest.approx((rows[5]["human_score"] + 1) / 2), "two ratings of one answer: mean"
    cal = measure(got, [float(r.human_value) for r in got], judge_metric="judge_score", pass_score=70)
    assert cal.rows == len(rows) and cal.duplicate_rows == 3
    assert "3 duplicate rows collapsed" in describe(cal)


@pytest.mark.parametrize("rated_by,raters", [
    (None, "people"), ("alice", "people"), ("support team lead", "people"),
    ("rubric: the ticket's queue is known by construction (demo data; not people's ratings)", "rubric"),
    ("Model: gpt-4o", "model"), ("LLM", "llm"),
    ("made from a checklist, not people's judgement", "other"),
])
def test_who_rated_is_read_from_rated_by(write_jsonl, rated_by, raters):
    rows = [{**r, **({"rated_by": rated_by} if rated_by else {})} for r in overlap_rows(True)]
    got = load_ratings(write_jsonl("cal.jsonl", rows))
    cal = measure(got, [float(r.human_value) for r in got], judge_metric="judge_score", pass_score=70)
    assert cal.raters == raters and rater_phrase(cal.model_dump()) == (
        "people" if raters == "people" else f"{raters} ratings (not people's)")
    mixed = load_ratings(write_jsonl("mixed.jsonl", rows[:6] + [{**r, "rated_by": "bob"} for r in rows[6:]]))
    if raters != "people":
        cal = measure(mixed, [float(r.human_value) for r in mixed], judge_metric="judge_score", pass_score=70)
        assert cal.raters == "mixed" and "6 of 12 rows people's" in rater_phrase(cal.model_dump())


def test_tau_and_its_interval_take_seconds_at_10000_rows():
    """The bootstrap was quadratic (0.1-0.3 s per resample at 3,000 rows: minutes for a feedback log)."""
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    human = rng.integers(1, 101, 10_000).astype(float)
    judge = np.clip(human + rng.normal(0, 25, 10_000), 1, 100).round()
    ratings = [rating(i + 1, score=float(h), candidate=f"c{i}") for i, h in enumerate(human)]
    start = time.perf_counter()
    cal = measure(ratings, judge.tolist(), judge_metric="judge_score", pass_score=70)
    elapsed = time.perf_counter() - start
    assert cal.computed and cal.tau_ci[0] < cal.kendall_tau < cal.tau_ci[1] and cal.tau_ci[1] - cal.tau_ci[0] < 0.05
    assert elapsed < 20, f"{elapsed:.1f} s"
    # continuous scores (no small table of distinct values): still seconds
    judge = human + rng.normal(0, 25, 10_000)
    start = time.perf_counter()
    ci = bootstrap_interval(human.tolist(), judge.tolist(), "kendall")
    assert ci is not None and time.perf_counter() - start < 20


# -- statistics ------------------------------------------------------------------------------------
def test_tau_and_rho_match_hand_computed_values():
    # 4 rows: pairs (1,2) concordant ... one swap in the judge's order: tau = (5 - 1) / 6
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(4 / 6)
    assert spearman_rho([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    # ties in both lists: tau-b divides by the untied pairs of each
    assert kendall_tau_b([1, 1, 2, 2], [1, 2, 3, 4]) == pytest.approx(4 / math.sqrt(4 * 6))
    assert kendall_tau_b([5, 5, 5], [1, 2, 3]) is None and spearman_rho([1, 2, 3], [7, 7, 7]) is None


distinct_scores = st.lists(st.integers(min_value=1, max_value=100), min_size=2, max_size=40).filter(
    lambda xs: len(set(xs)) >= 2)


@settings(max_examples=60, deadline=None)
@given(distinct_scores, st.sampled_from([lambda x: x ** 3, lambda x: math.log(x) + 7, lambda x: 2 * x - 500]))
def test_monotone_transform_agrees_fully_and_reversed_disagrees_fully(human, transform):
    """Ranking agreement is about order only: any increasing transform of the people's scores
    (ties kept) agrees fully, the reversed order disagrees fully."""
    judge = [transform(h) for h in human]
    assert kendall_tau_b(human, judge) == pytest.approx(1.0)
    assert spearman_rho(human, judge) == pytest.approx(1.0)
    assert kendall_tau_b(human, [-j for j in judge]) == pytest.approx(-1.0)
    assert spearman_rho(human, [-j for j in judge]) == pytest.approx(-1.0)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate():
    human = [1, 5, 9, 14, 20, 33, 41, 50, 64, 70, 81, 95]
    judge = [3, 2, 15, 9, 30, 25, 50, 44, 60, 80, 70, 99]
    a = bootstrap_interval(human, judge, "kendall", seed=0)
    assert a == bootstrap_interval(human, judge, "kendall", seed=0)
    assert a != bootstrap_interval(human, judge, "kendall", seed=1)
    assert a[0] < kendall_tau_b(human, judge) < a[1] <= 1
    assert bootstrap_interval(human, human, "spearman") == pytest.approx((1.0, 1.0))
    assert bootstrap_interval([5] * 12, judge, "kendall") is None, "undefined in every resample"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.floats(1, 100, allow_nan=False)), min_size=2, max_size=30),
       st.data())
def test_resample_statistics_from_counts_equal_scipy(pairs, data):
    """The bootstrap computes tau-b and rho of every resample from its counts of each distinct
    (human, judge) pair: the same numbers as scipy on the resampled rows."""
    import numpy as np

    from llamaduo.calibration import _resample_statistics

    x, y = np.array([p[0] for p in pairs], float), np.array([p[1] for p in pairs], float)
    idx = np.array([data.draw(st.lists(st.integers(0, len(pairs) - 1), min_size=len(pairs), max_size=len(pairs)))
                    for _ in range(3)])
    for statistic, reference in (("kendall", kendall_tau_b), ("spearman", spearman_rho)):
        got = _resample_statistics(x, y, idx, statistic)
        with patch("llamaduo.calibration.TABLE_CELLS", 0):  # the path for many distinct values
            assert np.allclose(got, _resample_statistics(x, y, idx, statistic), equal_nan=True, atol=1e-9)
        for row, value in zip(idx, got):
            want = reference(x[row].tolist(), y[row].tolist())
            assert (want is None and not np.isfinite(value)) or value == pytest.approx(want, abs=1e-9)


def test_cohen_kappa():
    # 10 rows: 4 both pass, 4 both fail, 2 disagree: po 0.8, pe 0.5 -> kappa 0.6
    a = [True] * 5 + [False] * 5
    b = [True] * 4 + [False] + [True] + [False] * 4
    assert cohen_kappa(a, b) == pytest.approx(0.6)
    assert cohen_kappa(a, a) == 1.0 and cohen_kappa(a, [not x for x in a]) == -1.0
    assert cohen_kappa([True] * 4, [True] * 4) is None, "chance agreement is certain: undefined"


def test_worst_rows_are_the_largest_rank_gaps():
    ratings = [rating(i + 1, score=s) for i, s in enumerate([10, 20, 30, 40, 90])]
    worst = worst_rows(ratings, [10, 20, 30, 40, 1], k=3)
    assert worst[0].line == 5 and worst[0].human_rank == 5 and worst[0].judge_rank == 1
    assert worst[0].rank_gap == pytest.approx(4 / 5)
    assert worst_rows(ratings, [1, 2, 3, 4, 5]) == [], "rows in the same place are never listed"


def test_measure_refuses_below_min_rows_and_without_an_order():
    ratings = [rating(i + 1, score=10 + i) for i in range(12)]
    few = measure(ratings, [10.0 + i if i < 9 else None for i in range(12)], judge_metric="judge_score",
                  pass_score=70)
    assert not few.computed and few.n == 9 and few.kendall_tau is None
    assert f"only 9 of 12 rated rows got a valid judgement (agreement needs at least {MIN_ROWS})" in few.note
    flat = measure([rating(i + 1, score=50) for i in range(12)], [float(i) for i in range(12)],
                   judge_metric="judge_score", pass_score=70)
    assert not flat.computed and "same human rating" in flat.note
    blind = measure(ratings, [60.0] * 12, judge_metric="judge_score", pass_score=70)
    assert not blind.computed and "same score" in blind.note


def test_measure_scores_and_pass_rows():
    # pass rows read as 100 / 1 for ranking; kappa on the pass rows with judge pass = score >= 70
    ratings = [rating(i + 1, passed=i % 2 == 0) for i in range(12)]
    judge = [90.0 if i % 2 == 0 else 20.0 for i in range(12)]
    judge[0] = 40.0  # one passing row the judge fails
    cal = measure(ratings, judge, judge_metric="judge_score", pass_score=70, source="c.jsonl")
    assert cal.computed and cal.kind == "pass" and cal.pass_rows == 12
    assert cal.accuracy == pytest.approx(11 / 12, abs=1e-4) and cal.kappa == pytest.approx(cohen_kappa(
        [i % 2 == 0 for i in range(12)], [j >= 70 for j in judge]), abs=1e-4)
    assert 0 < cal.kendall_tau < 1 and cal.tau_ci[0] <= cal.kendall_tau <= cal.tau_ci[1]
    assert cal.worst[0].line == 1
    assert "Kendall tau-b" in describe(cal) and "Cohen's kappa" in describe(cal)
    mixed = measure(ratings[:6] + [rating(i + 7, score=50) for i in range(6)], judge, judge_metric="judge_score",
                    pass_score=70)
    assert mixed.kind == "mixed" and mixed.pass_rows == 6


def test_judge_metric_and_pass_score_follow_the_gate():
    assert (judge_metric_for(GateConfig(threshold=80)), pass_score_for(GateConfig(threshold=80))) == \
        ("judge_score", 80.0)
    assert judge_metric_for(GateConfig(metric="judge_precision", threshold=60)) == "judge_precision"
    rouge = GateConfig(metric="rougeL", threshold=0.4)
    assert (judge_metric_for(rouge), pass_score_for(rouge)) == ("judge_score", 50.0)


def test_agreement_stop_decides_on_the_floor():
    ratings = [rating(i + 1, score=1 + 8 * i, candidate=f"answer {i}") for i in range(12)]
    against = measure(ratings, [100.0 - 8 * i for i in range(12)], judge_metric="judge_score", pass_score=70,
                      source="cal.jsonl")
    assert against.kendall_tau == -1.0
    cal, why = agreement_stop(against, 0.3)
    assert cal.agrees is False and cal.min_agreement == 0.3
    assert "Kendall tau-b -1.00" in why and "95% interval [-1.00, -1.00]" in why and "below judge.min_agreement 0.3" in why
    assert "worst-agreeing rows: line 1 (human 1, judge 100" in why
    cal, why = agreement_stop(against, None)
    assert why is None and cal.agrees is None, "no floor: report only"
    fine = measure(ratings, [float(1 + 8 * i) for i in range(12)], judge_metric="judge_score", pass_score=70)
    cal, why = agreement_stop(fine, 0.3)
    assert why is None and cal.agrees is True
    unmeasured = measure(ratings, [None] * 12, judge_metric="judge_score", pass_score=70, source="cal.jsonl")
    cal, why = agreement_stop(unmeasured, 0.3)
    assert cal.agrees is False and "could not be measured" in why and "0 of 12" in why


# -- config and estimate ---------------------------------------------------------------------------
BASE = {"data": {"path": "x"}, "service": {"model": "openai/gpt-4o-mini"}}


def test_config_keys_validate():
    cfg = config_from_dict(BASE)
    assert cfg.judge.calibration_path is None and cfg.judge.min_agreement == 0.3 and cfg.decision.usd_per_hour is None
    for bad, field in (({"judge": {"min_agreement": 1.5}}, "judge.min_agreement"),
                       ({"judge": {"min_agreement": float("nan")}}, "judge.min_agreement"),
                       ({"decision": {"usd_per_hour": -1}}, "decision.usd_per_hour"),
                       ({"decision": {"usd_per_hour": float("inf")}}, "decision.usd_per_hour"),
                       ({"decision": {"usd_per_hour_": 1}}, "decision.usd_per_hour_")):
        with pytest.raises(InputError) as err:
            config_from_dict({**BASE, **bad})
        assert err.value.field == field
    assert config_from_dict({**BASE, "judge": {"min_agreement": None}}).judge.min_agreement is None


def test_calibration_path_is_relative_to_the_config_and_leaves_judge_keys_alone(tmp_path, write_jsonl):
    rows = overlap_rows(True)
    write_jsonl("cal.jsonl", rows)
    (tmp_path / "c.yaml").write_text("data: {path: d.jsonl}\nservice: {model: openai/gpt-4o-mini}\n"
                                     "judge: {calibration_path: cal.jsonl}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert Path(cfg.judge.calibration_path) == tmp_path / "cal.jsonl"
    # editing a rating must not re-key every judging stage (the calibration stage keys it by content)
    assert cfg.judge.fingerprint() == JudgeConfig().fingerprint()


def test_estimate_counts_calibration_calls_and_a_bad_row_fails_validate(tmp_path, write_jsonl):
    from llamaduo.data import Example
    from llamaduo.estimate import run_estimate, warnings_for

    cal = write_jsonl("cal.jsonl", overlap_rows(True, n=15))
    rows = [Example(id=str(i), instruction=f"q{i}", response="a") for i in range(10)]
    without = config_from_dict({**BASE, "judge": {"repeats": 2}})
    with_cal = config_from_dict({**BASE, "judge": {"repeats": 2, "calibration_path": str(cal)}})
    a, b = run_estimate(without, rows, rows[:2], rows[:4]), run_estimate(with_cal, rows, rows[:2], rows[:4])
    assert a.calibration_calls == 0 and b.calibration_calls == 15 * 2
    assert b.run_calls_max == a.run_calls_max + 30 and b.run_cost_usd_max > a.run_cost_usd_max
    tight = config_from_dict({**BASE, "judge": {"repeats": 2, "calibration_path": str(cal)},
                              "budget": {"max_calls": 20}})
    assert any("calibration set takes 30 calls" in w for w in warnings_for(tight))
    bad = write_jsonl("bad.jsonl", overlap_rows(True)[:5] + [{"instruction": "q", "reference": "r",
                                                               "candidate": "c", "human_score": 0}] * 6)
    with pytest.raises(InputError, match="bad.jsonl, line 6, field 'human_score'"):
        run_estimate(config_from_dict({**BASE, "judge": {"calibration_path": str(bad)}}), rows, rows[:2], rows[:4])


def test_shipped_demo_calibration_set():
    """The demo's ratings follow a rubric from the known queue: correct alone 100 / in a sentence 90
    (pass), a hedge 30, a wrong queue 1 (fail)."""
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    ratings = load_ratings(cfg.judge.calibration_path)
    assert len(ratings) >= 20 and cfg.judge.min_agreement is not None and cfg.decision.usd_per_hour
    queues = {"billing", "shipping", "technical", "account", "returns"}
    for r in ratings:
        named = {q for q in queues if q in r.candidate.lower()}
        if named == {r.reference}:
            assert r.human_pass and r.human_score == (100 if r.candidate == r.reference else 90)
        else:
            assert not r.human_pass and r.human_score == (30 if r.reference in named else 1)
    raw = [json.loads(line) for line in Path(cfg.judge.calibration_path).read_text().splitlines()]
    assert all("not people's ratings" in row["rated_by"] for row in raw), "labelled as rubric ratings"


# -- the stage against the fake HTTP judge ---------------------------------------------------------
def _stage(tmp_path, server, rows, *, budget=None, judge=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cal = tmp_path / "cal.jsonl"
    cal.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lim = ServiceConfig(model="openai/fake", api_base=server.url, api_key_env="FAKE_KEY", rpm=6000,
                        max_concurrency=4, max_retries=0)
    ep = Endpoint(model="openai/fake", api_base=server.url, api_key_env="FAKE_KEY", field="judge")
    return calibrate_judge(tmp_path, judge or JudgeConfig(embedding_model=None), ep, lim,
                           budget or BudgetConfig(max_usd=0), ServiceStats(), str(cal), "judge_score", 70.0,
                           "calibration/judged.jsonl")


def test_stage_scores_rows_like_the_judge_stage_and_reruns_free(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-cal")
    rows = overlap_rows(agree=True)
    with FakeOpenAIServer(FakeBehaviour()) as server:
        res = _stage(tmp_path, server, rows)
        sent = server.requests
        again = _stage(tmp_path, server, rows)
        assert server.requests == sent, "a re-run is answered from the reply cache"
    cal = res.calibration
    assert res.service.calls == len(rows) == sent and again.service.cached == len(rows)
    assert cal.computed and cal.kendall_tau == 1.0 and cal.n == len(rows) and cal.judge == "openai/fake"
    judged = [json.loads(line) for line in (tmp_path / "calibration" / "judged.jsonl").read_text().splitlines()]
    assert [j["judge_score"] for j in judged] == [overlap_score(r["candidate"], r["reference"]) for r in rows]
    assert judged[0]["line"] == 1 and judged[0]["human_score"] == 1 and judged[0]["rank_gap"] == 0
    assert res.judged.path == "calibration/judged.jsonl"


def test_stage_with_repeats_and_a_budget_stop(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-cal")
    rows = overlap_rows(agree=False)
    with FakeOpenAIServer(FakeBehaviour()) as server:
        res = _stage(tmp_path, server, rows, judge=JudgeConfig(embedding_model=None, repeats=2, temperature=0.3))
        assert server.kinds["judge"] == 2 * len(rows) and res.calibration.kendall_tau == -1.0
        stopped = _stage(tmp_path / "b", server, rows, budget=BudgetConfig(max_calls=5, max_usd=0))
    assert stopped.budget_hit and stopped.calibration is None and stopped.service.calls <= 5
    assert not (tmp_path / "b" / "calibration" / "judged.jsonl").exists(), "redone when resumed"


# -- end to end: the real CLI (slow) ---------------------------------------------------------------
def run_cli(args, env_extra):
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture
def cli_setup(tmp_path, tiny_model_dir):
    coverage = [{"instruction": f"What colour is item number {i}?", "response": "blue"} for i in range(16)]
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in coverage))
    config = {
        "name": "calibration-e2e",
        "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 0, "split_seed": 1},
        "service": {"model": "openai/fake-teacher", "api_base": "http://127.0.0.1:9/v1",  # loopback: free
                    "api_key_env": "FAKE_SERVICE_KEY", "rpm": 6000,
                    "max_concurrency": 4, "max_retries": 1, "timeout_s": 10},
        "synth": {"rows_per_round": 8, "pairs_per_request": 4, "max_waves": 2},
        "judge": {"calibration_path": str(tmp_path / "cal.jsonl"), "min_agreement": 0.3, "embedding_model": None},
        "student": {"model": str(tiny_model_dir)},
        "train": {"epochs": 1, "batch_size": 4, "max_length": 64, "lora_r": 4, "lora_alpha": 8,
                  "quantization": "none"},
        "infer": {"max_new_tokens": 4, "batch_size": 4}, "export": {"gguf": []},
        "gate": {"metric": "judge_score", "threshold": 50, "max_rounds": 1},
        "budget": {"max_calls": 200, "max_usd": 0},
    }
    env = {"FAKE_SERVICE_KEY": "sk-cal-e2e", "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "prefect" / "results")}
    return tmp_path, config, env


def _write(tmp_path, config, rows):
    (tmp_path / "cal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return str(tmp_path / "run.yaml")


def test_bad_calibration_row_exits_2_naming_file_line_field(cli_setup):
    tmp_path, config, env = cli_setup
    rows = overlap_rows(True)
    rows[6] = {**rows[6], "human_pass": "sometimes"}
    cfg = _write(tmp_path, config, rows)
    out = run_cli(["validate", cfg], env)
    assert out.returncode == 2 and "cal.jsonl, line 7, field 'human_pass'" in out.stderr, out.stderr[-2000:]
    out = run_cli(["run", cfg, "--workdir", str(tmp_path / "w")], env)
    assert out.returncode == 2 and "line 7, field 'human_pass'" in out.stderr
    assert not (tmp_path / "w" / "summary.json").exists()


@pytest.mark.slow
def test_judge_that_disagrees_stops_before_training_with_exit_3(cli_setup):
    tmp_path, config, env = cli_setup
    with FakeOpenAIServer(FakeBehaviour(pool=[{"instruction": f"Colour of thing {i}?", "response": "blue"}
                                              for i in range(100)])) as server:
        config["service"]["api_base"] = server.url
        workdir = tmp_path / "work"
        cfg = _write(tmp_path, config, overlap_rows(agree=False))
        out = run_cli(["run", cfg, "--workdir", str(workdir)], env)
        assert out.returncode == 3, out.stdout[-3000:] + out.stderr[-3000:]
        assert server.kinds["synth"] == 1, "only the preflight probe: no synthesis, no training"
        sent, first = server.requests, (workdir / "summary.json").read_text()
        again = run_cli(["run", cfg, "--workdir", str(workdir)], env)
        assert again.returncode == 3 and server.requests == sent, "a re-run pays nothing: cached like every call"
        assert "this invocation: 0 service calls" in again.stdout and (workdir / "summary.json").read_text() == first
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["stop_reason"] == "judge_disagrees" and summary["passed"] is False
    cal = summary["calibration"]
    assert cal["kendall_tau"] == -1.0 and cal["agrees"] is False and cal["n"] == 12 and cal["worst"]
    assert "Kendall tau-b -1.00" in summary["stop_detail"] and "worst-agreeing rows: line" in summary["stop_detail"]
    assert "judge_disagrees" in out.stdout and "Kendall tau-b -1.00" in out.stdout
    assert summary["rounds"] == [] and summary["final_model_dir"] is None
    assert not list(workdir.glob("rounds/*/adapter*")) and not (workdir / "final_model").exists()
    assert summary["service_total"]["calls"] == summary["preflight"]["calls"] + cal["service"]["calls"] == 2 + 12


@pytest.mark.slow
def test_judge_that_agrees_lets_the_run_train(cli_setup):
    tmp_path, config, env = cli_setup
    with FakeOpenAIServer(FakeBehaviour(pool=[{"instruction": f"Colour of thing {i}?", "response": "blue"}
                                              for i in range(100)])) as server:
        config["service"]["api_base"] = server.url
        workdir = tmp_path / "work"
        out = run_cli(["run", _write(tmp_path, config, overlap_rows(agree=True)), "--workdir", str(workdir)], env)
        assert out.returncode in (0, 3), out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["stop_reason"] in ("passed", "max_rounds")
    assert summary["calibration"]["kendall_tau"] == 1.0 and summary["calibration"]["agrees"] is True
    assert [r["round"] for r in summary["rounds"]] == [1] and list(workdir.glob("rounds/round_01/adapter"))
