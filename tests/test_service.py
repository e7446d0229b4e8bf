"""The service layer against a real HTTP server (the fake OpenAI-compatible one), through litellm."""

import json
import time
from pathlib import Path

import pytest

from llamaduo.config import BudgetConfig, Endpoint, ServiceConfig
from llamaduo.errors import InputError
from llamaduo.parsing import parse_judge_reply, parse_synth_reply
from llamaduo.records import ServiceStats
from llamaduo.service import Request, ServiceClient, budget_left
from llamaduo.templates import judge_template
from tests.fake_service import FakeBehaviour, FakeOpenAIServer

SECRET = "sk-test-secret-1234567890"


def judge_requests(n):
    t = judge_template(None)
    return [Request([{"role": "user", "content": t.render(instruction=f"Q{i}", reference="the cat sat",
                                                          candidate="the cat" if i % 2 else "a dog")}])
            for i in range(n)]


def client(server, tmp_path, monkeypatch, **kw):
    monkeypatch.setenv("FAKE_KEY", SECRET)
    cfg = ServiceConfig(model="openai/fake-teacher", api_base=server.url, api_key_env="FAKE_KEY",
                        **{"max_retries": 3, "timeout_s": 5, "rpm": 6000, "max_concurrency": 8, **kw})
    endpoint = Endpoint(model=cfg.model, api_base=cfg.api_base, api_key_env=cfg.api_key_env)
    return ServiceClient(endpoint, cfg, tmp_path / "cache", progress=False)


def test_calls_parse_and_cache_so_rerun_costs_nothing(tmp_path, monkeypatch):
    with FakeOpenAIServer() as server:
        c1 = client(server, tmp_path, monkeypatch)
        res = c1.run(judge_requests(6), parse_judge_reply)
        assert all(r.ok for r in res) and {k: res[1].value[k] for k in ("similarity", "precision")} == {"similarity": 67, "precision": 67}
        assert c1.stats.calls == 6 and c1.stats.cached == 0 and c1.stats.prompt_tokens > 0
        assert server.requests == 6
        c2 = client(server, tmp_path, monkeypatch)
        res2 = c2.run(judge_requests(6), parse_judge_reply)
        assert [r.value for r in res2] == [r.value for r in res]
        assert server.requests == 6 and c2.stats.calls == 0 and c2.stats.cached == 6


def test_secret_never_written_to_cache(tmp_path, monkeypatch):
    with FakeOpenAIServer() as server:
        client(server, tmp_path, monkeypatch).run(judge_requests(2), parse_judge_reply)
    for f in (tmp_path / "cache").rglob("*.json"):
        assert SECRET not in f.read_text()


def test_faults_end_as_produced_or_counted_failed(tmp_path, monkeypatch):
    behaviour = FakeBehaviour(p_500=0.15, p_hang=0.05, hang_s=1.5, p_malformed=0.1, seed=3)  # 30% faults
    with FakeOpenAIServer(behaviour) as server:
        c = client(server, tmp_path, monkeypatch, max_retries=1, max_parse_retries=1, timeout_s=1)
        res = c.run(judge_requests(40), parse_judge_reply)
    ok = sum(r.ok for r in res)
    failed_call = sum(r.kind == "call" for r in res)
    failed_parse = sum(r.kind == "parse" for r in res)
    print(f"\n30% faults over 40 judge requests: {ok} produced, {failed_call} failed calls, {failed_parse} parse "
          f"failures; {c.stats.retries} retries; server saw {dict(server.statuses)}")
    assert ok + failed_call + failed_parse == 40
    assert c.stats.failed == failed_call and c.stats.retries > 0 and server.statuses[500] > 0
    assert ok > 20


def test_rate_limit_429_retry_after_is_honoured(tmp_path, monkeypatch):
    with FakeOpenAIServer(FakeBehaviour(rpm=3, retry_after_s=0.3)) as server:
        # the fake's window is 60 s, so the 4th request can only succeed if ours retries; shrink it
        server._window.clear()
        c = client(server, tmp_path, monkeypatch, max_retries=2, max_concurrency=1)
        t0 = time.time()
        res = c.run(judge_requests(4), parse_judge_reply)
    assert sum(r.ok for r in res) == 3 and res[3].kind == "call"
    assert server.statuses[429] == 3 and c.stats.retries == 2
    assert time.time() - t0 >= 0.6, "waited at least Retry-After between attempts"


def test_budget_caps_calls(tmp_path, monkeypatch):
    with FakeOpenAIServer() as server:
        c = client(server, tmp_path, monkeypatch, max_concurrency=1)
        c.budget = BudgetConfig(max_calls=5, max_usd=1)
        res = c.run(judge_requests(8), parse_judge_reply)
    assert server.requests == 5 and c.budget_hit and sum(r.kind == "budget" for r in res) == 3


def test_budget_left_pure():
    assert budget_left(ServiceStats(calls=4), BudgetConfig(max_calls=5, max_usd=1))
    assert not budget_left(ServiceStats(calls=5), BudgetConfig(max_calls=5, max_usd=1))
    assert not budget_left(ServiceStats(cost_usd=1.0), BudgetConfig(max_calls=5, max_usd=1))
    assert not budget_left(ServiceStats(cost_usd=0.01), BudgetConfig(max_calls=5, max_usd=0))


def test_missing_key_env_is_input_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE_KEY", raising=False)
    with pytest.raises(InputError, match="NOPE_KEY"):
        ServiceClient(Endpoint(model="openai/x", api_key_env="NOPE_KEY"), ServiceConfig(model="openai/x"), tmp_path)


def test_synthesis_reply_through_http(tmp_path, monkeypatch):
    pool = [{"instruction": f"I{i}", "response": f"R{i}"} for i in range(10)]
    with FakeOpenAIServer(FakeBehaviour(pool=pool)) as server:
        res = client(server, tmp_path, monkeypatch).run(
            [Request([{"role": "user", "content": 'Please generate 3 more pairs as {"contents": []}'}])],
            parse_synth_reply)
    assert res[0].ok and len(res[0].value) == 3


def test_kill_9_mid_synthesis_then_rerun_repeats_only_in_flight_requests(tmp_path):
    import signal
    import subprocess
    import sys

    pool = [{"instruction": f"I{i}", "response": f"R{i}"} for i in range(20)]
    worker = [sys.executable, "tests/service_worker.py"]
    with FakeOpenAIServer(FakeBehaviour(latency_s=0.1, pool=pool)) as server:
        args = [server.url, str(tmp_path / "cache"), "60"]
        proc = subprocess.Popen(worker + args, cwd=str(Path(__file__).resolve().parents[1]))
        deadline = time.time() + 60
        while sum(server.answered.values()) < 12 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)  # let replies that were in flight at the kill fail to deliver
        before_kill = dict(server.answered)
        assert 12 <= len(before_kill) < 60, "killed in the middle"
        out = subprocess.run(worker + args, cwd=str(Path(__file__).resolve().parents[1]), capture_output=True,
                             text=True, timeout=120)
        assert out.stdout.strip() == "ok 60", out.stderr[-2000:]
    repeated = [b for b, c in server.answered.items() if c > 1]
    print(f"\nkill -9 after {len(before_kill)} answered of 60; re-run: {len(server.answered)} distinct bodies, "
          f"{len(repeated)} answered twice")
    assert len(server.answered) == 60
    # only requests in flight at the kill (at most max_concurrency=4) may be answered twice
    assert len(repeated) <= 4 and all(b in before_kill for b in repeated)


def test_faults_without_retries_are_counted_not_dropped(tmp_path, monkeypatch):
    behaviour = FakeBehaviour(p_500=0.2, p_malformed=0.1, seed=11)
    with FakeOpenAIServer(behaviour) as server:
        c = client(server, tmp_path, monkeypatch, max_retries=0, max_parse_retries=0)
        res = c.run(judge_requests(40), parse_judge_reply)
    ok = sum(r.ok for r in res)
    failed_call, failed_parse = sum(r.kind == "call" for r in res), sum(r.kind == "parse" for r in res)
    print(f"\nno retries, 30% faults: {ok} produced, {failed_call} failed calls (counted), {failed_parse} parse "
          f"failures (counted)")
    assert ok + failed_call + failed_parse == 40 and failed_call > 0 and failed_parse > 0
    assert c.stats.failed == failed_call == server.statuses[500]


# -- a paid reply is never lost to a cache write (issue 19, point 11) --------------------------------
def _priced_client(server, tmp_path, monkeypatch, cache_dir, **kw):
    monkeypatch.setenv("FAKE_KEY", SECRET)
    cfg = ServiceConfig(model="openai/fake-teacher", api_base=server.url, api_key_env="FAKE_KEY", rpm=6000,
                        max_retries=0, max_parse_retries=0, **kw)
    ep = Endpoint(model=cfg.model, api_base=cfg.api_base, api_key_env=cfg.api_key_env, input_cost_per_mtok=100,
                  output_cost_per_mtok=100)
    return ServiceClient(ep, cfg, cache_dir, budget=BudgetConfig(max_usd=5), progress=False)


def test_reply_with_a_lone_surrogate_is_charged_cached_and_free_on_rerun(tmp_path, monkeypatch):
    """JSON lets a provider send "\\ud800" (no UTF-8 encoding exists for it): before, writing the
    paid reply to the cache crashed the batch, so every re-run paid for it again."""
    req = [Request([{"role": "user", "content": "What colour is the sky?"}])]
    with FakeOpenAIServer(FakeBehaviour(plain_answer="blue \ud800 sky")) as server:
        c1 = _priced_client(server, tmp_path, monkeypatch, tmp_path / "cache")
        res = c1.run(req, lambda t: t)[0]
        assert res.ok and res.value == "blue \ufffd sky" and c1.stats.cost_usd > 0
        c2 = _priced_client(server, tmp_path, monkeypatch, tmp_path / "cache")
        again = c2.run(req, lambda t: t)[0]
    assert server.requests == 1 and c2.stats.cached == 1 and again.value == res.value
    assert c2.stats.cost_usd == c1.stats.cost_usd, "the cached reply still carries what it cost"


@pytest.mark.parametrize("how", ["cache-dir-is-a-file", "disk-full"])
def test_unwritable_cache_stops_with_a_clear_error_after_charging(tmp_path, monkeypatch, how):
    import errno

    from llamaduo import service
    from llamaduo.service import ReplyCacheError

    cache = tmp_path / "cache"
    if how == "cache-dir-is-a-file":
        cache.write_text("not a directory")  # unwritable whoever runs the test (root ignores chmod)
    else:
        def full(*a, **kw):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(service, "atomic_write_text", full)
    reqs = [Request([{"role": "user", "content": f"question {i}"}]) for i in range(4)]
    with FakeOpenAIServer() as server:
        client = _priced_client(server, tmp_path, monkeypatch, cache, max_concurrency=1)
        with pytest.raises(ReplyCacheError) as err:
            client.run(reqs, lambda t: t)
    message = str(err.value)
    assert "cache" in message and "re-run" in message and "charged" in message, message
    assert server.requests == 1, "no further paid call once a reply could not be saved"
    assert err.value.stats.calls == 1 and err.value.stats.cost_usd > 0, "the paid reply is charged"
    assert SECRET not in message
