"""The decision page (llamaduo/decision.py): verdicts, quality per category, latency, money.

Unit tests build the inputs by hand (a Summary, judged rows, a LatencyStats); the service-latency
tests run the real baseline stage against the fake HTTP service; the slow e2e test runs the CLI with
the tiny student and checks decision.json against DESIGN.md's contract.
"""

from __future__ import annotations

import json
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamaduo.config import Endpoint, GateConfig, InferConfig, ServiceConfig
from llamaduo.decision import (MIN_CATEGORY_ITEMS, NOT_CALIBRATED, UNCATEGORISED, VERDICT_NOT_YET, VERDICT_PARTIAL,
                               VERDICT_REPLACE, items_to_decide,
                               break_even, build_decision, percentile, render_markdown, service_latency,
                               student_usd_per_1k, usd, write_decision)
from llamaduo.markdown import escape_inline
from llamaduo.records import (Artifact, Calibration, Criterion, Decision, GateDecision, LatencyStats, RoundRecord,
                              ServiceStats, Summary)

GATE = GateConfig(metric="judge_score", threshold=70, bootstrap_samples=200)
PRICED = Endpoint(model="openai/some-model", input_cost_per_mtok=10.0, output_cost_per_mtok=30.0)
STANDIN = Endpoint(model="llamaduo-standin/teacher", standin_pool="pool.jsonl")
LATENCY = LatencyStats(p50_s=0.12, p95_s=0.31, throughput_rps=2.0, concurrency=4, requests=20,
                       hardware="Test CPU (2 cores)", backend="transformers on cpu",
                       endpoint_note="measured through `llamaduo serve` in a test")


def gate_decision(passed: bool, value: float = 75.0, *, judged_share: bool = False) -> GateDecision:
    if judged_share:
        return GateDecision(passed=False, metric="judge_score", value=value, threshold=70,
                            reason="not evaluable: only 40% of the requested judgements are valid",
                            criteria=[Criterion(name="judged share", value=0.4, threshold=0.9, passed=False)])
    return GateDecision(passed=passed, metric="judge_score", value=value, threshold=70,
                        reason=f"all: judge_score mean {value:g} {'>=' if passed else '<'} 70",
                        criteria=[Criterion(name="judge_score mean", value=value, threshold=70, passed=passed)])


def calibration(tau: float = 0.62) -> Calibration:
    return Calibration(source="calibration.jsonl", sha256="0" * 64, judge="openai/judge", kind="score", rows=12, n=12,
                       computed=True, judge_metric="judge_score", pass_score=70, kendall_tau=tau,
                       tau_ci=(0.41, 0.8), spearman_rho=0.77, rho_ci=(0.5, 0.9))


def summary(*, passed: bool = True, value: float = 75.0, exported: bool = True, stop: str | None = None,
            cal: Calibration | None = None, finetune_s: float = 1800.0, spend: float = 0.5,
            judged_share: bool = False) -> Summary:
    r0 = RoundRecord(round=0, train_rows=0, synthetic_rows_added=0, gate=gate_decision(False, 20.0),
                     judged=Artifact(path="rounds/round_00/judged.jsonl", sha256="a"))
    r1 = RoundRecord(round=1, train_rows=40, synthetic_rows_added=40,
                     gate=gate_decision(passed, value, judged_share=judged_share),
                     durations_s={"finetune": finetune_s, "infer": 10.0},
                     judged=Artifact(path="rounds/round_01/judged.jsonl", sha256="b"))
    return Summary(name="demo", passed=passed and exported, stop_reason=stop or ("passed" if passed else "max_rounds"),
                   final_model_dir="/runs/demo/final_model" if exported else None,
                   exported_round=1 if exported else None, exported_round_passed=passed if exported else None,
                   teacher="openai/some-model", judge="openai/some-model", student="tiny",
                   service_total=ServiceStats(calls=100, prompt_tokens=20000, completion_tokens=3000, cost_usd=spend),
                   rounds=[r0, r1] if exported else [r0], calibration=cal)


def rows(scores: dict[str, list[float | None]]) -> list[dict]:
    """Judged rows: category -> per-item scores (None = not judged)."""
    out = []
    for cat, values in scores.items():
        for i, v in enumerate(values):
            r = {"id": f"{cat}-{i}", "instruction": f"ticket {cat} {i}", "reference": cat, "answer": cat, "rougeL": 1.0}
            if cat != UNCATEGORISED:
                r["category"] = cat
            if v is not None:
                r["score"] = v
            out.append(r)
    return out


def decide(s: Summary, student: dict, *, service: dict | None = None, base: dict | None = None, **kw) -> Decision:
    judged = {"student": rows(student)}
    if service is not None:
        judged["service"] = rows(service)
    if base is not None:
        judged["base"] = rows(base)
    args = dict(summary=s, gate=GATE, judged=judged, categories={}, service_endpoint=PRICED, min_items=1,
                student_latency=LATENCY, service_records=[{"latency_s": 0.8, "prompt_tokens": 100,
                                                           "completion_tokens": 10}] * 4, usd_per_hour=3.6)
    return build_decision(**{**args, **kw})


# -- verdicts ------------------------------------------------------------------------------------------
def test_replace_when_the_gate_passed_and_every_category_is_ready():
    d = decide(summary(cal=calibration()), {"billing": [80, 90], "shipping": [75, 85]})
    assert d.verdict == VERDICT_REPLACE and d.ready_categories == ["billing", "shipping"] and not d.not_ready_categories
    assert d.verdict_line.startswith("replace — judge calibrated against people: Kendall τ 0.62 [0.41, 0.80]")
    md = render_markdown(d)
    assert md.splitlines()[2] == f"**Verdict: {escape_inline(d.verdict_line)}**", "the verdict comes first"


def test_replace_for_the_ready_categories_names_the_others():
    d = decide(summary(), {"billing": [80, 90], "Coding": [30, 40, 50], "shipping": [75, 85]})
    assert d.verdict == VERDICT_PARTIAL
    assert d.verdict_line.startswith("replace for categories billing, shipping (not: Coding)")
    assert any("Coding (mean 40, n=3)" in r for r in d.reasons)


def test_a_failed_gate_still_names_the_categories_that_reach_it_on_their_own():
    d = decide(summary(passed=False, value=55.0), {"billing": [80, 90], "Coding": [20, 30]})
    assert d.verdict == VERDICT_PARTIAL and d.ready_categories == ["billing"] and d.not_ready_categories == ["Coding"]
    assert "did not pass the gate" in d.reasons[0] and "billing reaches judge_score >= 70 on its own" in d.reasons[1]


def test_not_yet_when_the_gate_failed_on_a_single_category():
    d = decide(summary(passed=False, value=55.0), {UNCATEGORISED: [50, 60]})
    assert d.verdict == VERDICT_NOT_YET and d.verdict_line.startswith("not yet")


def test_not_yet_when_the_round_could_not_be_evaluated():
    d = decide(summary(passed=False, judged_share=True), {"billing": [80], "shipping": [90]})
    assert d.verdict == VERDICT_NOT_YET and "could not be evaluated" in d.reasons[0]


def test_not_yet_when_the_judge_disagrees_with_people():
    s = summary(exported=False, stop="judge_disagrees", cal=calibration(tau=-0.4))
    d = build_decision(summary=s, gate=GATE, judged={}, categories={}, service_endpoint=PRICED, min_agreement=0.3)
    assert d.verdict == VERDICT_NOT_YET
    assert "judge disagrees with people's ratings" in d.reasons[0] and "τ -0.40 below judge.min_agreement 0.3" in \
        d.reasons[0]
    md = render_markdown(d)
    assert "No model was exported." in md and "Kendall τ-b **-0.40** [0.41, 0.80]" in md
    assert d.latency.student is None and "| student | – | – | – | not measured: no exported model |" in md


def test_judge_not_calibrated_is_the_first_line_of_the_verdict():
    d = decide(summary(cal=None), {"billing": [80, 90]})
    assert d.verdict == VERDICT_REPLACE and not d.calibrated
    assert d.verdict_line.startswith(f"replace — {NOT_CALIBRATED}")
    md = render_markdown(d)
    first = next(line for line in md.splitlines() if line.startswith("**Verdict"))
    assert NOT_CALIBRATED in first
    assert "set `judge.calibration_path`" in md


def test_a_calibration_that_could_not_be_computed_is_not_a_calibration():
    cal = calibration().model_copy(update={"computed": False, "kendall_tau": None, "tau_ci": None, "n": 4,
                                           "note": "only 4 rows judged (at least 10)"})
    d = decide(summary(cal=cal), {"billing": [80]})
    assert d.verdict_line == f"replace — {NOT_CALIBRATED}: only 4 rows judged (at least 10)"
    assert "agreement not computed: only 4 rows judged" in render_markdown(d)


# -- quality per category -------------------------------------------------------------------------------
def test_quality_per_category_for_student_service_and_base():
    d = decide(summary(), {"billing": [80, 60, None], UNCATEGORISED: [90]},
               service={"billing": [100, 100], UNCATEGORISED: [95]}, base={"billing": [10, 30], UNCATEGORISED: [5]})
    assert [q.category for q in d.quality] == ["billing", UNCATEGORISED], "uncategorised last"
    billing = d.quality[0]
    assert billing.student.n == 2, "an unjudged item is left out, not scored 0"
    assert billing.student.mean == 70 and billing.student.pass_rate == 0.5
    lo, hi = billing.student.ci95
    assert 60 <= lo <= 70 <= hi <= 80
    assert billing.service.mean == 100 and billing.service.pass_rate == 1 and billing.base.mean == 20
    assert d.overall["student"].n == 3 and d.overall["base"].mean == pytest.approx(15)
    md = render_markdown(d)
    assert re.search(r"\| billing \| 2 \| 70 \[6\d(\.\d+)?, [78]\d(\.\d+)?\] \| 50% \| 100 \[100, 100\] \| 100% \| "
                     r"20 \[10, 30\] \| 0% \| undecided \|", md), md


def test_category_comes_from_the_test_items_when_a_judged_row_lacks_it():
    judged = {"student": [{"id": "a", "score": 80, "instruction": "x", "answer": "y", "reference": "y"},
                          {"id": "b", "score": 40, "instruction": "x", "answer": "y", "reference": "z"}]}
    d = build_decision(summary=summary(), gate=GATE, judged=judged, categories={"a": "billing", "b": None},
                       service_endpoint=PRICED)
    assert [q.category for q in d.quality] == ["billing", UNCATEGORISED]
    assert d.worst_items[0]["id"] == "b" and d.worst_items[0]["category"] == UNCATEGORISED


def test_pass_rate_uses_min_item_score_when_the_gate_sets_one():
    gate = GateConfig(metric="judge_score", threshold=70, min_item_score=85, min_share=0.5, bootstrap_samples=200)
    d = decide(summary(), {"billing": [80, 90], "shipping": [80, 84]}, gate=gate)
    assert d.pass_score == 85 and d.quality[0].student.pass_rate == 0.5 and d.quality[1].student.pass_rate == 0
    assert d.ready_categories == ["billing"], "shipping's mean is 82 but no item reaches 85 (min_share 50%)"


def test_category_survives_splitting_and_judging(tmp_path, write_jsonl):
    from llamaduo.config import CurateConfig, DataConfig
    from llamaduo.data import load_coverage
    from llamaduo.judge import score_items
    from llamaduo.service import Result

    path = write_jsonl("cov.jsonl", [{"instruction": f"Route ticket {i} about {w}", "response": w,
                                      **({"category": w} if i % 3 else {"category": "  "})}
                                     for i, w in enumerate(["billing", "shipping", "returns"] * 4)])
    s = load_coverage(DataConfig(path=str(path), test_size=6, val_size=0), CurateConfig())
    assert {e.category for e in s.test} <= {"billing", "shipping", "returns", None}
    assert any(e.category is None for e in s.train + s.test), "a blank category is no category"
    items = [e.to_dict() for e in s.test]
    scored = score_items(items, [[it["response"]] for it in items],
                         [Result(True, value={"similarity": 90, "precision": 90, "reason": ""}) for _ in items], 1)
    assert [r.get("category") for r in scored] == [it.get("category") for it in items]


# -- latency and money ----------------------------------------------------------------------------------
def test_cost_per_1k_migration_and_break_even_arithmetic():
    d = decide(summary(finetune_s=1800, spend=0.5), {"billing": [80]})
    c = d.cost
    # student: $3.60/h / (2 req/s x 3600) = $0.0005 a request; service: (100 x $10 + 10 x $30) / 1e6 = $0.0013
    assert c.student_per_1k_usd == pytest.approx(0.5) and c.service_per_1k_usd == pytest.approx(1.3)
    assert c.training_hours == 0.5 and c.training_usd == pytest.approx(1.8) and c.migration_usd == pytest.approx(2.3)
    assert d.break_even.requests == pytest.approx(2875) and not d.break_even.never
    md = render_markdown(d)
    assert "**Break-even after 2,875 requests**" in md
    assert "| service LLM | $1.30 |" in md and "| student | $0.500 |" in md
    assert d.latency.service.p50_s == 0.8 and d.latency.service.prompt_tokens_mean == 100


def test_missing_rate_says_exactly_what_to_set():
    d = decide(summary(), {"billing": [80]}, usd_per_hour=None)
    assert d.cost.student_per_1k_usd is None and d.cost.migration_usd is None and d.break_even.requests is None
    md = render_markdown(d)
    assert "set `decision.usd_per_hour` to the hourly price of the serving hardware" in md
    assert "Break-even: not computed" in md
    assert d.cost.service_per_1k_usd == pytest.approx(1.3), "the service's cost is still shown"


def test_student_not_cheaper_is_never_not_a_negative_number():
    d = decide(summary(), {"billing": [80]}, usd_per_hour=360.0)  # $50 per 1k vs the service's $1.30
    assert d.break_even.never and d.break_even.requests is None
    md = render_markdown(d)
    assert "**Break-even: never** — never: the student is not cheaper per request" in md
    assert not re.search(r"-\$|\$-|\binf\b|\bnan\b", md, re.IGNORECASE)


def test_service_latency_from_records_and_the_standin_label():
    recs = [{"latency_s": v, "prompt_tokens": 10, "completion_tokens": 2} for v in (0.1, 0.2, 0.3, 0.4, 1.0)]
    recs.append({"prompt_tokens": 10, "completion_tokens": 2})  # a record from before latency was recorded
    lat = service_latency(recs, standin=True)
    assert lat.records == 6 and lat.timed == 5 and lat.p50_s == 0.3 and lat.p95_s == pytest.approx(0.88)
    assert percentile([1, 2, 3, 4], 50) == 2.5
    d = decide(summary(), {"billing": [80]}, service_endpoint=STANDIN, service_records=recs)
    md = render_markdown(d)
    assert "| service LLM (stand-in) | 300 ms | 880 ms |" in md
    assert d.cost.service_per_1k_usd == 0 and "set service.input_cost_per_mtok" in d.cost.service_pricing
    priced = STANDIN.model_copy(update={"input_cost_per_mtok": 2.5, "output_cost_per_mtok": 10.0})
    d2 = decide(summary(), {"billing": [80]}, service_endpoint=priced, service_records=recs)
    assert d2.cost.service_per_1k_usd == pytest.approx((10 * 2.5 + 2 * 10.0) / 1000)
    assert d2.cost.service_spend_usd == pytest.approx((20000 * 2.5 + 3000 * 10.0) / 1e6), "its tokens, priced"


def test_page_sections_in_order_and_json_contract(tmp_path):
    d = decide(summary(cal=calibration()), {"billing": [80, 90], "shipping": [40]},
               service={"billing": [100], "shipping": [100]}, base={"billing": [10], "shipping": [5]})
    j, m = write_decision(tmp_path, d, plot_rel="report/metrics.png")
    md = m.read_text()
    heads = ["**Verdict", "## Quality per category", "## Judge calibration", "## Latency", "## Cost per 1,000",
             "## Break-even", "## Worst items", "## What was spent", "## Switching an application"]
    pos = [md.index(h) for h in heads]
    assert pos == sorted(pos), md
    assert 'base_url="http://127.0.0.1:8000/v1"' in md and 'model="llamaduo-demo"' in md
    assert "![metrics per round](report/metrics.png)" in md
    data = json.loads(j.read_text())
    assert data["verdict"] == VERDICT_PARTIAL
    assert set(data["quality"][0]) == {"category", "student", "service", "base"}
    assert data["calibration"]["kendall_tau"] == 0.62 and data["calibration"]["tau_ci"] == [0.41, 0.8]
    for who in ("student", "service"):
        assert {"p50_s", "p95_s"} <= set(data["latency"][who])
    assert {"service_per_1k_usd", "student_per_1k_usd"} <= set(data["cost"]) and "requests" in data["break_even"]
    assert Decision.model_validate(data) == d


# -- money: properties ------------------------------------------------------------------------------------
money = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(migration=money, service_1k=money, student_1k=money)
def test_break_even_times_saving_is_the_migration_cost(migration, service_1k, student_1k):
    be = break_even(migration, service_1k, student_1k)
    saving = (service_1k - student_1k) / 1000
    if be.requests is None:
        assert be.never and (saving <= 0 or not math.isfinite(migration / saving))
    else:
        assert math.isfinite(be.requests) and be.requests >= 0 and saving > 0
        assert be.requests * saving == pytest.approx(migration, rel=1e-9, abs=1e-12)
    assert not re.search(r"\binf\b|\bnan\b|-\$|\$-", be.note, re.IGNORECASE)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.one_of(st.none(), st.floats(min_value=1e-6, max_value=1e4)),
       rps=st.floats(min_value=1e-3, max_value=1e5), pt=st.integers(0, 100_000), ct=st.integers(0, 10_000),
       price_in=st.floats(min_value=0, max_value=100), price_out=st.floats(min_value=0, max_value=100),
       finetune_s=st.floats(min_value=0, max_value=1e6), spend=st.floats(min_value=0, max_value=1e4))
def test_the_page_never_shows_a_negative_or_infinite_amount(rate, rps, pt, ct, price_in, price_out, finetune_s, spend):
    ep = Endpoint(model="openai/x", input_cost_per_mtok=price_in, output_cost_per_mtok=price_out)
    lat = LATENCY.model_copy(update={"throughput_rps": rps})
    d = decide(summary(finetune_s=finetune_s, spend=spend), {"billing": [80]}, service_endpoint=ep,
               student_latency=lat, usd_per_hour=rate,
               service_records=[{"latency_s": 0.1, "prompt_tokens": pt, "completion_tokens": ct}])
    c = d.cost
    for v in (c.service_per_1k_usd, c.student_per_1k_usd, c.migration_usd, d.break_even.requests):
        assert v is None or (math.isfinite(v) and v >= 0)
    if c.student_per_1k_usd is not None:
        assert c.student_per_1k_usd == pytest.approx(rate / (rps * 3600) * 1000)
    if d.break_even.requests is not None:
        saving = (c.service_per_1k_usd - c.student_per_1k_usd) / 1000
        assert d.break_even.requests * saving == pytest.approx(c.migration_usd, rel=1e-9, abs=1e-12)
    md = render_markdown(d)
    assert not re.search(r"\binf\b|\bnan\b|-\$|\$-|after -", md, re.IGNORECASE), md


def test_student_cost_needs_a_rate_and_a_throughput():
    assert student_usd_per_1k(None, 2.0) is None and student_usd_per_1k(1.0, 0.0) is None
    assert student_usd_per_1k(7.2, 2.0) == pytest.approx(1.0)
    assert usd(0.0005) == "$0.000500" and usd(7.08e-05) == "$0.0000708" and usd(1234.5) == "$1,234.50"
    assert usd(None) == "–" and usd(float("inf")) == "–"


# -- the service's recorded calls ----------------------------------------------------------------------
def test_baseline_calls_record_latency_and_are_found_again(tmp_path, monkeypatch):
    """The real baseline stage against the fake HTTP service: every reply-cache record carries the
    attempt's wall time, and `service_call_records` rebuilds the same cache keys."""
    from llamaduo.baseline import service_answers
    from llamaduo.config import BudgetConfig
    from llamaduo.decision import service_call_records
    from llamaduo.records import Artifact
    from llamaduo.store import atomic_write_jsonl
    from tests.fake_service import FakeBehaviour, FakeOpenAIServer

    items = [{"id": f"t{i}", "instruction": f"Route ticket {i}", "response": "blue", "category": "c"} for i in range(5)]
    atomic_write_jsonl(tmp_path / "data" / "test.jsonl", items)
    test = Artifact.of(tmp_path, "data/test.jsonl")
    infer = InferConfig(max_new_tokens=8)
    monkeypatch.setenv("FAKE_KEY", "sk-decision-test-123456")
    with FakeOpenAIServer(FakeBehaviour(latency_s=0.05)) as server:
        limits = ServiceConfig(model="openai/fake-teacher", api_base=server.url, api_key_env="FAKE_KEY", rpm=6000)
        ep = Endpoint(model=limits.model, api_base=server.url, api_key_env="FAKE_KEY")
        res = service_answers(tmp_path, ep, limits, infer, BudgetConfig(max_usd=0), ServiceStats(), test,
                              "You triage.", "baselines/service/answers.jsonl")
        assert res.answers is not None
    records = service_call_records(tmp_path, ep, limits, infer, items, "You triage.")
    assert len(records) == 5 and all(0.05 <= r["latency_s"] < 5 for r in records)
    assert service_call_records(tmp_path, ep, limits, infer, items, "another prompt") == [], "keys are exact"
    lat = service_latency(records, standin=False)
    assert lat.timed == 5 and lat.p50_s >= 0.05 and lat.prompt_tokens_mean > 0


def test_standin_calls_record_latency_too(tmp_path):
    from llamaduo.service import Request, ServiceClient
    from llamaduo.templates import judge_template

    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"instruction": "q", "response": "a"}) + "\n")
    ep = Endpoint(model="llamaduo-standin/teacher", standin_pool=str(pool))
    client = ServiceClient(ep, ServiceConfig(model=ep.model, standin_pool=str(pool)), tmp_path / "cache",
                           progress=False)
    prompt = judge_template(None).render(instruction="Route it", reference="billing", candidate="billing")
    [res] = client.run([Request([{"role": "user", "content": prompt}])], lambda t: t)
    assert res.ok
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("*.json")]
    assert 0 <= record["latency_s"] < 5


# -- end to end ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_run_writes_the_decision_page(tmp_path, tiny_model_dir):
    """The CLI on the tiny student and the fake service: decision.json holds every field of the
    contract, the student measured through `llamaduo serve`, the service from its recorded calls."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.fake_service import FakeBehaviour, FakeOpenAIServer
    from tests.test_e2e import ROOT, prefect_artifacts

    cats = ["billing", "shipping"]
    cov = [{"instruction": f"What colour is ticket {i} about {cats[i % 2]}?", "response": "blue",
            "category": cats[i % 2]} for i in range(20)]
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cov))
    pool = [{"instruction": f"What colour is the ticket number {i}?", "response": "blue"} for i in range(1000, 1100)]
    with FakeOpenAIServer(FakeBehaviour(pool=pool)) as server:
        config = {
            "name": "decide", "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 0},
            "service": {"model": "openai/fake-teacher", "api_base": server.url, "api_key_env": "FAKE_SERVICE_KEY",
                        "rpm": 6000, "max_concurrency": 4, "input_cost_per_mtok": 5.0, "output_cost_per_mtok": 15.0},
            "synth": {"rows_per_round": 8, "pairs_per_request": 4, "max_waves": 2},
            "judge": {"repeats": 1, "service_baseline": True},
            "student": {"model": str(tiny_model_dir), "system_prompt": "Answer with a colour."},
            "train": {"epochs": 1, "batch_size": 4, "learning_rate": 0.01, "max_length": 96, "lora_r": 8,
                      "lora_alpha": 16, "quantization": "none"},
            "infer": {"max_new_tokens": 4, "batch_size": 2},
            "gate": {"metric": "judge_score", "threshold": 1, "max_rounds": 1, "baseline": True},
            "budget": {"max_calls": 200, "max_usd": 1},
            "decision": {"usd_per_hour": 0.5},
        }
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "FAKE_SERVICE_KEY": "sk-decision-e2e", "PREFECT_HOME": str(tmp_path / "prefect"),
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "prefect" / "results"), "PYTHONUNBUFFERED": "1"}
        work = tmp_path / "work"
        out = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(tmp_path / "run.yaml"), "--workdir",
                              str(work)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    d = json.loads((work / "decision.json").read_text())
    # 2 test items per category: each reaches threshold 1 on its mean, none on enough items to sign
    assert d["verdict"] == VERDICT_NOT_YET and NOT_CALIBRATED in d["verdict_line"]
    assert set(d["undecided"]) == {q["category"] for q in d["quality"]} and not d["ready_categories"]
    assert {q["category"] for q in d["quality"]} <= set(cats) and d["quality"]
    assert all(q["student"]["n"] >= 1 and q["service"] and q["base"] for q in d["quality"])
    s = d["latency"]["student"]
    assert s["p50_s"] > 0 and s["p95_s"] >= s["p50_s"] and s["throughput_rps"] > 0 and s["hardware"]
    v = d["latency"]["service"]
    assert v["timed"] == v["records"] == 4 and v["p50_s"] > 0 and not v["standin"]
    assert d["cost"]["service_per_1k_usd"] > 0 and d["cost"]["student_per_1k_usd"] > 0
    assert d["cost"]["migration_usd"] > 0 and "requests" in d["break_even"]
    assert d["calibration"] is None and d["endpoint"]["model"] == 'model="llamaduo-decide"'
    md = (work / "decision.md").read_text()
    assert md.splitlines()[2].startswith("**Verdict: ") and "## Quality per category" in md
    assert "decision" in prefect_artifacts(env)["keys"]


# -- data cannot forge the page (issue 28, point 12) ------------------------------------------------------
def test_data_in_the_page_is_escaped_no_forged_row_no_image_no_html():
    markdown_it = pytest.importorskip("markdown_it")
    forged = "returns | 8 | 97 [95, 99] | 100% | yes\n| forged"
    judged = rows({forged: [80, 90], "billing": [40]})
    judged[0]["instruction"] = "hi ![x](https://attacker.example/pixel.png) <img src=x onerror=alert(1)>"
    judged[2]["answer"] = "<script>alert('x')</script> [click](javascript:alert(1))"
    d = build_decision(summary=summary(cal=calibration()), gate=GATE, judged={"student": judged}, categories={},
                       service_endpoint=PRICED, student_latency=LATENCY, usd_per_hour=3.6)
    page = markdown_it.MarkdownIt("commonmark").enable("table").render(render_markdown(d))
    assert "<img" not in page and "<script" not in page and "<a " not in page, page
    assert page.count("<td>forged") == 0 and page.count("<tr>") == sum(
        1 for line in render_markdown(d).splitlines() if line.startswith("|") and not line.startswith("|---"))
    assert "returns | 8 | 97 [95, 99] | 100% | yes | forged" in page, "the category shows as what it is"


# -- who rated and how sure a category is (issue 28, points 13 and 14) ------------------------------------
def test_the_headline_says_people_only_when_the_ratings_are_peoples():
    rubric = calibration().model_copy(update={"raters": "rubric", "rater_rows": {"rubric": 12}})
    d = decide(summary(cal=rubric), {"billing": [80, 90]})
    assert "calibrated against people" not in d.verdict_line
    assert "judge calibrated against rubric ratings (not people's): Kendall τ 0.62" in d.verdict_line
    people = decide(summary(cal=calibration()), {"billing": [80, 90]})
    assert "judge calibrated against people: Kendall τ 0.62" in people.verdict_line


def test_the_demo_calibration_file_is_not_called_people():
    from pathlib import Path

    from llamaduo.calibration import load_ratings, measure

    ratings = load_ratings(Path(__file__).resolve().parents[1] / "examples/demo/calibration.jsonl")
    cal = measure(ratings, [r.human_value for r in ratings], judge_metric="judge_score", pass_score=75)
    d = decide(summary(cal=cal), {"billing": [80, 90]})
    assert "against people" not in d.verdict_line and "rubric ratings (not people's)" in d.verdict_line


def test_a_category_is_ready_only_when_its_interval_clears_the_threshold_on_enough_items():
    """n = 5 with an interval [40.6, 100] was called ready on its mean."""
    few = {"account": [100, 100, 100, 100, 3], "billing": [100] * 5}
    d = build_decision(summary=summary(cal=calibration()), gate=GATE, judged={"student": rows(few)}, categories={},
                       service_endpoint=PRICED)
    assert d.min_category_items == MIN_CATEGORY_ITEMS == 10
    assert d.ready_categories == [] and set(d.undecided) == {"account", "billing"}
    assert d.verdict == VERDICT_NOT_YET and "replace" not in d.verdict_line
    assert d.undecided["account"] == ("n=5; n ≈ (1.96 × sd 43.4 / (mean 80.6 − 70))² = 64.3; at least 10 items → "
                                      "about 60 more test items")
    assert "every item scored the same" in d.undecided["billing"] and "about 5 more test items" in d.undecided["billing"]
    md = render_markdown(d)
    assert "| account | 5 |" in md and "| undecided |" in md and "## Quality per category" in md
    assert "1.96 × sd" in md
    enough = {"account": [100, 95, 90] * 4, "billing": [100] * 5, "returns": [20, 30] * 6}
    d = build_decision(summary=summary(cal=calibration()), gate=GATE, judged={"student": rows(enough)},
                       categories={}, service_endpoint=PRICED)
    assert d.verdict == VERDICT_PARTIAL and d.ready_categories == ["account"]
    assert d.verdict_line.startswith("replace for categories account (undecided: billing; not: returns)")


def test_items_to_decide_shows_the_arithmetic():
    from llamaduo.records import QualityStats

    more, note = items_to_decide(QualityStats(n=5, mean=85.0, sd=20.0, ci95=(70.0, 95.0)), 75, 10)
    assert more == 11 and "n ≈ (1.96 × sd 20 / (mean 85 − 75))² = 15.4" in note  # ceil(15.37) = 16 - 5
