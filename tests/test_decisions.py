"""Decisions you can trust, driven through the fake HTTP service: malformed judge replies,
a judge that refuses its key, a mostly-unparseable judge, duplicated coverage rows, code
answers, money caps, and failure-driven seeding that never reads a test score."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from llamaduo.config import BudgetConfig, DataConfig, Endpoint, JudgeConfig, ServiceConfig, SynthConfig
from llamaduo.errors import InputError
from llamaduo.judge import evaluate_answers
from llamaduo.records import Artifact, ServiceStats
from llamaduo.service import Request, ServiceClient, check_pricing
from llamaduo.store import atomic_write_jsonl
from tests.fake_service import FakeBehaviour, FakeOpenAIServer
from tests.prefect_db import query

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-decisions-secret-123456"
POOL = [{"instruction": f"Which colour has object {i} of batch {i * 11}?", "response": "blue"} for i in range(60)]


def _judge_setup(root: Path, n=6):
    items = [{"id": f"t{i}", "instruction": f"Q{i}", "response": "the cat sat on the mat"} for i in range(n)]
    atomic_write_jsonl(root / "test.jsonl", items)
    atomic_write_jsonl(root / "answers.jsonl", [{"id": f"t{i}", "answer": "the cat sat", "samples": ["the cat sat"]}
                                                for i in range(n)])
    return Artifact.of(root, "test.jsonl"), Artifact.of(root, "answers.jsonl")


def _evaluate(root, server, monkeypatch, n=6, **limits):
    monkeypatch.setenv("FAKE_KEY", KEY)
    items, answers = _judge_setup(root, n)
    lim = ServiceConfig(model="openai/fake", api_base=server.url, api_key_env="FAKE_KEY", rpm=6000,
                        max_concurrency=2, max_retries=0, **limits)
    ep = Endpoint(model="openai/fake", api_base=server.url, api_key_env="FAKE_KEY", field="judge")
    return evaluate_answers(root, JudgeConfig(embedding_model=None), ep, lim, BudgetConfig(max_usd=0), ServiceStats(),
                            items, answers, "t", "judged.jsonl")


@pytest.mark.parametrize("bad", ["null", "list", "string"])
def test_wrong_typed_judge_scores_are_reasked_with_the_error_never_a_crash(tmp_path, monkeypatch, bad):
    with FakeOpenAIServer(FakeBehaviour(judge_score_as=bad)) as server:
        ev = _evaluate(tmp_path, server, monkeypatch, max_parse_retries=1)
        assert ev.judged_items == 6 and ev.parse_failures == 0, "the re-ask (with the error) got a valid reply"
        assert server.kinds["judge"] == 12
        # without re-asks: counted parse failures, the stage reports the judge as failing, no crash
        ev2 = _evaluate(tmp_path / "noreask", server, monkeypatch, max_parse_retries=0)
        assert ev2.failing and "100%" in ev2.failing and ev2.judged is None
    # the bad replies stay in the cache for audit, marked invalid; a re-run never serves them as valid
    records = [json.loads(p.read_text()) for p in (tmp_path / "noreask" / "cache").rglob("*.json")]
    # the breaker stopped sending after the first few failures (the provider is failing)
    assert 4 <= len(records) < 6 and all(r.get("invalid") for r in records)
    with FakeOpenAIServer(FakeBehaviour()) as server:
        again = _evaluate(tmp_path / "noreask", server, monkeypatch, max_parse_retries=0)
        assert again.failing and server.requests == 0


def test_reask_is_its_own_request_telling_the_model_what_was_wrong(tmp_path, monkeypatch):
    with FakeOpenAIServer(FakeBehaviour(judge_score_as="null")) as server:
        _evaluate(tmp_path, server, monkeypatch, max_parse_retries=1)
    bodies = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("*.json")]
    assert len(bodies) == 12, "first replies and re-asks are separate cache entries"


def test_mostly_unparseable_judge_trips_the_breaker(tmp_path, monkeypatch):
    with FakeOpenAIServer(FakeBehaviour(p_judge_malformed=0.7, seed=5)) as server:
        ev = _evaluate(tmp_path, server, monkeypatch, n=30, max_parse_retries=0, max_failure_rate=0.5)
    assert ev.failing and ev.judged is None


def test_money_is_reserved_before_each_call_even_with_calls_in_flight(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", KEY)
    with FakeOpenAIServer(FakeBehaviour(latency_s=0.2)) as server:
        lim = ServiceConfig(model="openai/fake", api_base=server.url, api_key_env="FAKE_KEY", rpm=60000,
                            max_concurrency=8, max_retries=0, max_tokens=1000)
        ep = Endpoint(model="openai/fake", api_base=server.url, api_key_env="FAKE_KEY", input_cost_per_mtok=1000,
                      output_cost_per_mtok=1000)
        # each call reserves ~(prompt + 1000 max tokens) x $0.001 = ~$1.0: a $3.5 cap allows 3 at once
        client = ServiceClient(ep, lim, tmp_path / "cache", budget=BudgetConfig(max_usd=3.5), progress=False)
        reqs = [Request([{"role": "user", "content": f"q{i}"}], max_tokens=1000) for i in range(8)]
        res = client.run(reqs, lambda t: t)
    assert server.requests == 3 and client.budget_hit and sum(r.kind == "budget" for r in res) == 5
    assert client.stats.cost_usd <= 3.5
    # a paid reply carries its cost in the cache: a resumed run reports the true total
    resumed = ServiceClient(ep, lim, tmp_path / "cache", budget=BudgetConfig(max_usd=3.5), progress=False)
    resumed.run(reqs[:3], lambda t: t)
    assert resumed.stats.calls == 0 and resumed.stats.cost_usd == client.stats.cost_usd > 0


def test_unpriced_model_with_a_money_cap_is_an_input_error():
    with pytest.raises(InputError, match="input_cost_per_mtok"):
        check_pricing(Endpoint(model="openai/my-private-model"), BudgetConfig(max_usd=5))
    check_pricing(Endpoint(model="openai/my-private-model", input_cost_per_mtok=1, output_cost_per_mtok=2),
                  BudgetConfig(max_usd=5))
    check_pricing(Endpoint(model="openai/my-vllm", api_base="http://localhost:8000/v1"), BudgetConfig(max_usd=0))
    check_pricing(Endpoint(model="openai/gpt-4o-mini"), BudgetConfig(max_usd=5))


def test_duplicated_coverage_rows_are_collapsed_before_the_split(tmp_path):
    from llamaduo.data import load_coverage
    from llamaduo.similarity import normalize

    base = [{"instruction": f"Classify ticket {i}: my parcel number {i * 13} never arrived at the depot.",
             "response": "shipping"} for i in range(30)]
    dup = base + [dict(r) for r in base[:10]] + [{"instruction": r["instruction"].upper() + "  ",
                                                  "response": r["response"]} for r in base[10:20]]
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in dup))
    s = load_coverage(DataConfig(path=str(path), test_size=10, val_size=3))
    assert s.removed.get("duplicate") == 20 and len(s.train) + len(s.val) + len(s.test) == 30
    test_keys = {normalize(e.instruction) for e in s.test}
    assert not any(normalize(e.instruction) in test_keys for e in s.train + s.val)


def test_failure_seeding_reads_validation_scores_not_test_scores(tmp_path):
    from llamaduo.data import Example
    from llamaduo.synth import choose_seeds

    train = [Example(f"s{i}", f"topic {'alpha' if i < 10 else 'beta'} question {i}", "a") for i in range(20)]
    val_bad_alpha = [{"instruction": "topic alpha question x", "score": 1.0},
                     {"instruction": "topic beta question y", "score": 100.0}]
    cfg = SynthConfig(seed_strategy="failure")
    seeds = choose_seeds(train, cfg, 6, seed_offset=0, split_seed=1, round_no=1, wave=0, val_judged=val_bad_alpha)
    assert sum("alpha" in s.instruction for s in seeds) >= 5, "seeds follow the failed validation items"
    import inspect

    from llamaduo.synth import synthesize_wave

    params = inspect.signature(synthesize_wave).parameters
    assert "val_judged" in params and not any("test" in p for p in params), "no test split can reach synthesis"


def test_quality_filters_keep_every_human_written_row():
    """Every human-written row of the shared data and the demo set, run as if synthetic: none dropped."""
    from collections import Counter

    from llamaduo.config import CurateConfig
    from llamaduo.curate import quality_issue
    from llamaduo.data import load_examples

    paths = [p for p in (ROOT.parent / "shared" / "data").glob("*.jsonl")] + [ROOT / "examples/demo/coverage.jsonl"]
    dropped, total = Counter(), 0
    for p in paths:
        for e in load_examples(p):
            total += 1
            reason = quality_issue({"instruction": e.instruction, "response": e.response}, CurateConfig())
            if reason:
                dropped[reason] += 1
    print(f"\nquality filters over {total} human-written rows: dropped {dict(dropped) or 0}")
    assert not dropped


@pytest.mark.parametrize("answer", ["int main() {\n  return 0;\n};", "print(sorted(xs, key=len))",
                                    "I'm sorry to hear about the delay. Your parcel ships tomorrow.", "billing",
                                    "Use:\n```python\nx = f(a, b)\n```"])
def test_complete_answers_are_kept(answer):
    from llamaduo.config import CurateConfig
    from llamaduo.curate import quality_issue

    assert quality_issue({"instruction": "Please help with this task", "response": answer}, CurateConfig()) is None


@pytest.mark.parametrize("answer", ["I'm sorry, but I can't help with that.", "I cannot assist with this request.",
                                    "As an AI language model, I cannot do that.", "The answer depends on the",
                                    "```python\nx = 1"])
def test_refusals_and_truncations_are_dropped(answer):
    from llamaduo.config import CurateConfig
    from llamaduo.curate import quality_issue

    assert quality_issue({"instruction": "Please help with this task", "response": answer}, CurateConfig())
    off = CurateConfig(drop_refusals=False, drop_truncated=False)
    assert quality_issue({"instruction": "Please help with this task", "response": answer}, off) is None


def _cli(args, env_extra, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({**env_extra, "PYTHONUNBUFFERED": "1"})
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def small_run(tmp_path, tiny_model_dir):
    rows = [{"instruction": f"What colour is thing number {i} in box {i * 7}?", "response": "blue"} for i in range(16)]
    rows += rows[:4]  # exact duplicates: collapsed before the split
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path, {
        "name": "decisions", "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 2},
        "service": {"model": "openai/fake-teacher", "api_key_env": "FAKE_SERVICE_KEY", "rpm": 6000,
                    "max_retries": 0, "timeout_s": 10, "max_parse_retries": 0},
        "judge": {"model": "openai/fake-judge", "embedding_model": None},
        "student": {"model": str(tiny_model_dir)},
        "train": {"epochs": 1, "batch_size": 4, "max_length": 64, "quantization": "none"},
        "infer": {"max_new_tokens": 4, "batch_size": 4}, "export": {"gguf": []},
        "gate": {"metric": "judge_score", "threshold": 60, "max_rounds": 2, "baseline": True},
        "budget": {"max_calls": 200, "max_usd": 0},
    }


def test_judge_refusing_its_key_stops_before_any_training_with_exit_2(small_run):
    tmp_path, config = small_run
    with FakeOpenAIServer(FakeBehaviour(reject_models={"fake-judge": 401}, pool=POOL)) as server:
        config["service"]["api_base"] = server.url
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        t0 = time.time()
        out = _cli(["run", str(tmp_path / "run.yaml"), "--workdir", str(tmp_path / "w")], {"FAKE_SERVICE_KEY": KEY})
        elapsed = time.time() - t0
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert "judge.api_key_env" in out.stderr and ("401" in out.stderr or "Authentication" in out.stderr)
    assert KEY not in out.stdout + out.stderr, "the provider echoed the key; we must not"
    assert elapsed < 60 and not (tmp_path / "w" / "rounds").exists(), "nothing trained, nothing judged"
    for f in (tmp_path / "w").rglob("*") if (tmp_path / "w").exists() else []:
        if f.is_file():
            assert KEY not in f.read_text(errors="ignore"), f


def test_failing_judge_mid_run_stops_with_exit_4_and_a_summary(small_run):
    tmp_path, config = small_run
    config["judge"]["model"] = None
    with FakeOpenAIServer(FakeBehaviour(p_judge_malformed=0.8, judge_good_first=1, seed=2, pool=POOL)) as server:
        config["service"]["api_base"] = server.url
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        # the preflight probe gets a good reply; then 80% of judgements are unparseable
        attempt = 0
        out = _cli(["run", str(tmp_path / "run.yaml"), "--workdir", str(tmp_path / "w0")], {"FAKE_SERVICE_KEY": KEY},
                   timeout=600)
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / f"w{attempt}" / "summary.json").read_text())
    assert summary["stop_reason"] == "service_failing" and "judging" in summary["stop_detail"]
    assert summary["data"]["removed"] == {"duplicate": 4} and summary["data"]["test_rows"] == 4
    assert not list((tmp_path / f"w{attempt}").glob("rounds/round_01/adapter")), "stopped before training"


def _prefect_logs(workdir: Path) -> str:
    return "\n".join(query(workdir, "print(json.dumps([l.message for l in await c.read_logs(limit=200)]))"))


def test_key_echoed_by_a_provider_mid_run_reaches_no_file_log_or_stream(small_run):
    """The key is revoked mid-run and the gateway echoes it in its 401: the run stops (exit 4) and
    the key is in no file of the run directory, no Prefect log row and no output stream."""
    tmp_path, config = small_run
    config["judge"]["model"] = None
    with FakeOpenAIServer(FakeBehaviour(reject_after=6, pool=POOL)) as server:
        config["service"]["api_base"] = server.url
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        out = _cli(["run", str(tmp_path / "run.yaml"), "--workdir", str(tmp_path / "w")], {"FAKE_SERVICE_KEY": KEY},
                   timeout=600)
        assert server.statuses[401] > 0, "the provider did refuse (and echo the key)"
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-3000:]
    assert KEY not in out.stdout + out.stderr
    logs = _prefect_logs(tmp_path / "w")
    assert "failed" in logs and KEY not in logs
    checked = 0
    for f in (tmp_path / "w").rglob("*"):
        if f.is_file():  # the Prefect database and result files included
            checked += 1
            assert KEY.encode() not in f.read_bytes(), f
    failures = "".join(p.read_text() for p in (tmp_path / "w").rglob("*.failures.jsonl"))
    assert "[REDACTED]" in failures and checked > 5


def test_provider_truncation_signal_drops_the_cut_off_pair(tmp_path, monkeypatch):
    """finish_reason == "length": the reply stopped at max_tokens, so its last pair is incomplete."""
    from llamaduo.data import Example
    from llamaduo.synth import synthesize_wave

    monkeypatch.setenv("FAKE_KEY", KEY)
    atomic_write_jsonl(tmp_path / "train.jsonl", [Example(f"s{i}", f"Seed question {i}", "blue").to_dict()
                                                  for i in range(4)])
    with FakeOpenAIServer(FakeBehaviour(pool=POOL, synth_finish_reason="length")) as server:
        lim = ServiceConfig(model="openai/fake", api_base=server.url, api_key_env="FAKE_KEY", rpm=6000)
        ep = Endpoint(model="openai/fake", api_base=server.url, api_key_env="FAKE_KEY")
        res = synthesize_wave(tmp_path, SynthConfig(pairs_per_request=3), ep, lim, BudgetConfig(max_usd=0),
                              ServiceStats(), Artifact.of(tmp_path, "train.jsonl"), round_no=1, wave=0,
                              n_requests=2, seed_offset=0, split_seed=1, val_judged=None, out="cand.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "cand.jsonl").read_text().splitlines()]
    assert res.rows == 6 and sum(r.get("invalid") == "truncated" for r in rows) == 2


@pytest.mark.parametrize("mode,sent", [("on", True), ("off", False), ("auto", False)])
def test_structured_output_sends_the_reply_schema_where_supported(tmp_path, monkeypatch, mode, sent):
    """auto asks litellm: the fake model is unknown to it, so prompt-only JSON; on forces it."""
    with FakeOpenAIServer(FakeBehaviour()) as server:
        _evaluate(tmp_path, server, monkeypatch, n=1, structured_output=mode)
        body = server.bodies[0]
    assert ("response_format" in body) is sent
    if sent:
        schema = body["response_format"]["json_schema"]["schema"]
        assert {"similarity_assessment", "precision_assessment"} <= set(schema["properties"])


def test_model_card_verdict_is_the_exported_rounds():
    from llamaduo.export import model_card
    from llamaduo.records import ExportCheck, GateDecision, RoundRecord, Summary

    failed = RoundRecord(round=2, train_rows=10, synthetic_rows_added=5, metrics={"judge_score": 60.0},
                         gate=GateDecision(passed=False, metric="judge_score", value=60.0, threshold=70))
    summary = Summary(name="x", passed=False, stop_reason="max_rounds", final_model_dir=None, teacher="t",
                      judge="j", student="s", rounds=[failed])
    card = model_card(summary, failed, "service LLM", ExportCheck(checked=3, matched=3, reproduces=True))
    assert "Verdict for this model: **did not pass**" in card and "3/3" in card


def test_estimate_counts_samples_repeats_validation_waves_and_baselines():
    from llamaduo.config import RunConfig
    from llamaduo.data import Example
    from llamaduo.estimate import run_estimate, warnings_for

    rows = [Example(str(i), f"question {i}", "answer") for i in range(10)]
    base = {"data": {"path": "x"}, "service": {"model": "openai/gpt-4o-mini"}, "synth": {"rows_per_round": 10,
            "pairs_per_request": 5, "max_waves": 3}, "gate": {"max_rounds": 2}}
    one = run_estimate(RunConfig.model_validate(base), rows, rows[:2], rows[:4])
    assert one.judge_calls == 6 and one.synth_calls == 2 and one.synth_calls_max == 6
    paper = RunConfig.model_validate({**base, "infer": {"samples_per_prompt": 4}, "judge": {"repeats": 3,
                                      "service_baseline": True}, "gate": {"max_rounds": 2, "baseline": True}})
    est = run_estimate(paper, rows, rows[:2], rows[:4])
    assert est.judge_calls == (4 + 2) * 4 * 3, "test + validation items x samples x repeats"
    assert est.baseline_calls == (4 + 2) * 4 * 3 + 4 * (1 + 3)
    assert est.run_calls_max == (6 + est.judge_calls) * 2 + est.baseline_calls
    assert est.run_cost_usd_max > 2 * est.cost_usd > 0
    assert any("temperature 0" in w for w in warnings_for(paper))


def test_budget_stop_is_a_normal_outcome_with_its_spend_recorded(small_run):
    """The cap is reached while judging round 0: exit 3, stop_reason budget, no traceback, and the
    calls of the stage that hit the cap are in the summary."""
    tmp_path, config = small_run
    config["judge"]["model"] = None
    config["budget"]["max_calls"] = 5  # 2 preflight probes + 3 of round 0's 6 judgements
    with FakeOpenAIServer(FakeBehaviour(pool=POOL)) as server:
        config["service"]["api_base"] = server.url
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        out = _cli(["run", str(tmp_path / "run.yaml"), "--workdir", str(tmp_path / "w")], {"FAKE_SERVICE_KEY": KEY},
                   timeout=600)
        sent = server.requests
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stdout + out.stderr and "stop_reason=budget" in out.stdout
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["stop_reason"] == "budget" and summary["service_total"]["calls"] == sent == 5
