"""Money: prices come in pairs, $0 is only believed for local endpoints, and the reservation is a
real worst case (every attempt reserved before it is sent, tokens bounded from the text)."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llamaduo.config import BudgetConfig, Endpoint, ServiceConfig, config_from_dict
from llamaduo.errors import InputError
from llamaduo.service import (Request, ServiceClient, check_pricing, is_local_endpoint, price_usd,
                              prompt_token_bound, utf8_token_bound)
from tests.fake_service import FakeBehaviour, FakeOpenAIServer


def _bundled(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    return Path(list(spec.submodule_search_locations)[0]) / "litellm_core_utils" / "tokenizers" / name


def _tokenizers() -> dict:
    """Real tokenizers available offline: OpenAI's two (tiktoken files litellm ships), and the
    Claude (NFKC-normalising) and DeepSeek tokenizers litellm ships."""
    from tokenizers import Tokenizer

    from llamaduo.service import model_tokenizer

    out = {name: lambda text, enc=model_tokenizer(model): enc.encode(text, disallowed_special=())
           for name, model in (("o200k (gpt-4o)", "openai/gpt-4o"), ("cl100k (gpt-4)", "gpt-4"))}
    for name in ("anthropic_tokenizer.json", "deepseek_tokenizer.json"):
        tok = Tokenizer.from_file(str(_bundled(name)))
        out[name] = lambda text, tok=tok: tok.encode(text, add_special_tokens=False).ids
    return out


TOKENIZERS = _tokenizers()


# -- point 9: prices come in pairs; $0 only for local endpoints ----------------------------------
@pytest.mark.parametrize("section", ["service", "judge"])
@pytest.mark.parametrize("given_price,missing", [("input_cost_per_mtok", "output"), ("output_cost_per_mtok", "input")])
def test_one_price_alone_is_a_config_error_naming_the_missing_one(section, given_price, missing):
    raw = {"data": {"path": "x.jsonl"}, "service": {"model": "openai/gpt-4o"}}
    raw.setdefault(section, {})[given_price] = 2.5
    with pytest.raises(InputError) as err:
        config_from_dict(raw)
    assert err.value.field.startswith(f"{section}.") and err.value.field.endswith("_cost_per_mtok")
    assert f"{section}.{missing}_cost_per_mtok" in str(err.value)


def test_a_lone_price_never_makes_the_other_side_free():
    """Before: input_cost_per_mtok alone priced 1M completion tokens of gpt-4o at $0."""
    lone = Endpoint(model="openai/gpt-4o", input_cost_per_mtok=2.5)
    assert price_usd(lone, 0, 1_000_000) is None
    with pytest.raises(InputError, match="output_cost_per_mtok"):
        check_pricing(lone, BudgetConfig(max_usd=5))
    assert price_usd(Endpoint(model="openai/gpt-4o", input_cost_per_mtok=2.5, output_cost_per_mtok=10), 0,
                     1_000_000) == 10


@pytest.mark.parametrize("field", ["service", "judge"])
def test_zero_priced_hosted_model_needs_explicit_prices(field):
    hf = Endpoint(model="huggingface/meta-llama/Llama-3-8B", field=field)
    assert price_usd(hf, 1000, 1000) == 0.0, "litellm prices it at $0: the premise of the check"
    with pytest.raises(InputError) as err:
        check_pricing(hf, BudgetConfig(max_usd=5))
    assert err.value.field == f"{field}.input_cost_per_mtok" and "$0" in str(err.value)
    remote = hf.model_copy(update={"api_base": "http://10.1.2.3:8080"})
    with pytest.raises(InputError):  # a private address may be a paid gateway
        check_pricing(remote, BudgetConfig(max_usd=5))
    # explicit prices (0 and 0 when it really is free), a local endpoint, or a $0 cap: allowed
    check_pricing(hf.model_copy(update={"input_cost_per_mtok": 0, "output_cost_per_mtok": 0}), BudgetConfig(max_usd=5))
    check_pricing(hf.model_copy(update={"api_base": "http://localhost:8080"}), BudgetConfig(max_usd=5))
    check_pricing(hf, BudgetConfig(max_usd=0))
    check_pricing(Endpoint(model="ollama/llama3", field=field), BudgetConfig(max_usd=5))


@pytest.mark.parametrize("api_base,local", [("http://localhost:8000/v1", True), ("http://127.0.0.1:9/v1", True),
                                            ("http://127.9.9.9/v1", True), ("http://[::1]:8000/v1", True),
                                            ("http://10.0.0.5:8000/v1", False), ("https://api.example.com/v1", False),
                                            ("http://localhost.example.com/v1", False), (None, False)])
def test_local_endpoint_is_loopback_or_a_self_hosted_provider(api_base, local):
    assert is_local_endpoint(Endpoint(model="openai/x", api_base=api_base)) is local
    assert is_local_endpoint(Endpoint(model="hosted_vllm/x", api_base=api_base or "http://10.0.0.5/v1"))
    assert is_local_endpoint(Endpoint(model="ollama/llama3", api_base=api_base))


def _student_and_data(tmp: Path) -> dict:
    rows = [{"instruction": f"Route ticket {i}: my parcel number {i * 17} is late", "response": "shipping"}
            for i in range(20)]
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "student").mkdir()
    (tmp / "student" / "config.json").write_text("{}")
    return {"name": "money", "data": {"path": str(tmp / "data.jsonl"), "test_size": 4},
            "service": {"model": "openai/local-teacher", "api_base": "http://127.0.0.1:9/v1"},
            "student": {"model": str(tmp / "student")}, "budget": {"max_usd": 0}}


@pytest.mark.parametrize("case", ["service-lone-input-price", "judge-lone-output-price", "judge-zero-priced-hosted"])
def test_cli_validate_exits_2_naming_the_price_field(case, tmp_path, capsys):
    from flows.cli import main

    cfg = _student_and_data(tmp_path)
    if case == "service-lone-input-price":
        cfg["service"]["input_cost_per_mtok"], expect = 3.0, "service.output_cost_per_mtok"
    elif case == "judge-lone-output-price":
        cfg["judge"], expect = {"output_cost_per_mtok": 3.0}, "judge.input_cost_per_mtok"
    else:
        cfg["service"].update(input_cost_per_mtok=1, output_cost_per_mtok=2)
        cfg["budget"]["max_usd"] = 5
        cfg["judge"], expect = {"model": "huggingface/meta-llama/Llama-3-8B"}, "judge.input_cost_per_mtok"
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and expect in err and "Traceback" not in err, err


# -- point 10: token counts that cannot undercount --------------------------------------------
def test_cjk_prompt_is_reserved_at_its_real_token_count(tmp_path):
    """8,000 CJK characters are 8,000 tokens for OpenAI's tokenizers; the old estimate said 2,000."""
    text = "中" * 8000
    msgs = [{"role": "user", "content": text}]
    exact = len(TOKENIZERS["o200k (gpt-4o)"](text))
    assert exact == 8000
    assert exact <= prompt_token_bound("openai/gpt-4o", msgs) <= exact + 40, "gpt-4o: its own tokenizer"
    assert prompt_token_bound("openai/unknown-model", msgs) >= 3 * 8000, "no tokenizer: the UTF-8 bound"
    ep = Endpoint(model="openai/some-model", input_cost_per_mtok=1000, output_cost_per_mtok=2000)
    client = ServiceClient(ep, ServiceConfig(model=ep.model), tmp_path, progress=False)
    assert client.attempt_cost_usd(Request(msgs, max_tokens=500)) >= price_usd(ep, 8000, 500) == 9.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
@example("\ufdfa" * 20)  # NFKC: 3 bytes -> 18 characters (Claude's tokenizer: 15 tokens each)
@example("한국어 텍스트" * 30)  # Hangul: NFD splits each syllable into 3 jamo
@example("中" * 300)
@example("👩‍👩‍👧‍👦🏳️‍🌈" * 20)
@example("<|endoftext|><|im_start|>" * 10)
def test_bound_never_undercounts_a_real_tokenizer(text):
    bound = utf8_token_bound(text)
    for name, encode in TOKENIZERS.items():
        assert len(encode(text)) <= bound, name


# The tokenizer each model is billed with, where the library counts with it exactly (tiktoken);
# every other model may be billed by any tokenizer: the bound must cover all of them.
EXACT = {"openai/gpt-4o": "o200k (gpt-4o)", "gpt-4": "cl100k (gpt-4)"}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text(max_size=200)), min_size=1,
                max_size=4))
# Hypothesis found it: Claude's tokenizer makes 37 tokens of this (NFKC: ¨ ¯ ¸ -> space + combining
# mark, ¼ -> 1⁄4), gpt-4o's o200k 18. gpt-4o's bound (40) counts with o200k, the tokenizer OpenAI
# bills it with; the old oracle held it to Claude's count (37 + 4 = 41) — not a tokenizer gpt-4o uses.
@example([("system", ":?¤¨¬¯¸¸¸¸¼ÄÝ÷ÿƏ∆≈≤")])
@example([("user", "\ufdfa" * 20), ("assistant", "한국어" * 20)])
def test_prompt_bound_covers_every_message_for_any_model(messages):
    msgs = [{"role": r, "content": c} for r, c in messages]
    for model in ("openai/gpt-4o", "gpt-4", "anthropic/claude-3-5-sonnet-20240620", "gemini/gemini-1.5-pro"):
        billed_by = [EXACT[model]] if model in EXACT else list(TOKENIZERS)
        content_tokens = max(sum(len(TOKENIZERS[name](c)) for _, c in messages) for name in billed_by)
        # + 4 a message: the chat template's tokens around it (OpenAI: 3 + the role)
        assert prompt_token_bound(model, msgs) >= content_tokens + len(msgs) * 4, (model, billed_by)


# -- point 10: every attempt reserved before it is sent; spent + reserved <= cap -------------------
def _errors():
    import litellm

    return {"500": lambda: litellm.InternalServerError(message="boom", llm_provider="openai", model="m"),
            "429": lambda: litellm.RateLimitError(message="slow down", llm_provider="openai", model="m"),
            "timeout": lambda: litellm.Timeout(message="timed out", model="m", llm_provider="openai"),
            "401": lambda: litellm.AuthenticationError(message="no", llm_provider="openai", model="m")}


OUTCOME = st.one_of(st.sampled_from(["500", "429", "timeout", "401"]),
                    st.tuples(st.floats(0, 1), st.floats(0, 1)))  # a reply using these shares of the bound


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_usd=st.floats(0.01, 3.0), max_calls=st.integers(1, 25), concurrency=st.integers(1, 6),
       retries=st.integers(0, 3), max_tokens=st.integers(1, 400),
       plans=st.lists(st.tuples(st.text(max_size=60), st.lists(OUTCOME, min_size=1, max_size=5)), min_size=1,
                      max_size=14))
def test_spent_plus_reserved_never_exceeds_the_cap(max_usd, max_calls, concurrency, retries, max_tokens, plans):
    """Any sequence of calls, retries, refusals, timeouts and replies, run concurrently: at every
    send and every settlement, what was spent plus what is reserved stays within budget.max_usd;
    every attempt is reserved before it is sent; nothing stays reserved at the end."""
    errors = _errors()
    ep = Endpoint(model="openai/some-model", input_cost_per_mtok=500, output_cost_per_mtok=1500)
    limits = ServiceConfig(model=ep.model, max_concurrency=concurrency, max_retries=retries, rpm=10**6,
                           max_parse_retries=0, max_failure_rate=1.0)
    budget = BudgetConfig(max_usd=max_usd, max_calls=max_calls)
    requests = [Request([{"role": "user", "content": f"q{i} {text}"}], max_tokens=max_tokens)
                for i, (text, _) in enumerate(plans)]
    outcomes = {r.messages[0]["content"]: list(o) for r, (_, o) in zip(requests, plans)}
    sent: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as cache:
        client = ServiceClient(ep, limits, cache, budget=budget, progress=False)
        client._backoff_s = lambda n, exc: 0.0

        def within_cap() -> None:
            assert client.used_usd() + client._reserved_usd <= max_usd + 1e-9
            assert client._reserved_usd >= -1e-12

        settle = client._settle

        def checked_settle(*a, **kw):
            settle(*a, **kw)
            within_cap()

        client._settle = checked_settle

        async def fake_send(req: Request) -> dict:
            worst = client.attempt_cost_usd(req)
            assert client._reserved_usd >= worst - 1e-12, "this attempt was reserved before it was sent"
            within_cap()
            await asyncio.sleep(0)  # let other calls interleave
            content = req.messages[0]["content"]
            sent[content] = sent.get(content, 0) + 1
            plan = outcomes[content]
            outcome = plan.pop(0) if len(plan) > 1 else plan[0]
            if isinstance(outcome, str):
                raise errors[outcome]()
            pt = int(outcome[0] * prompt_token_bound(ep.model, req.messages))
            ct = int(outcome[1] * req.max_tokens)
            return {"content": "ok", "model": ep.model, "finish_reason": "stop", "prompt_tokens": pt,
                    "completion_tokens": ct, "cost_usd": price_usd(ep, pt, ct), "created": 0}

        client._send = fake_send
        results = client.run(requests, lambda t: t)
    within_cap()
    assert abs(client._reserved_usd) < 1e-9
    assert client.stats.calls <= max_calls and len(results) == len(requests)
    assert all(n <= retries + 1 for n in sent.values())
    assert client.stats.calls == len(sent) and client.stats.retries == sum(sent.values()) - len(sent)


def test_a_retry_is_reserved_before_it_is_sent_and_a_timeout_is_charged(tmp_path, monkeypatch):
    """The provider hangs: the first attempt times out (it may have run: charged its worst case),
    and the retry no longer fits the cap, so it is never sent. Before, one reservation covered
    every retry and a timed-out attempt cost nothing."""
    monkeypatch.setenv("FAKE_KEY", "fake-key-for-money")
    with FakeOpenAIServer(FakeBehaviour(p_hang=1.0, hang_s=3)) as server:
        lim = ServiceConfig(model="openai/fake", api_base=server.url, api_key_env="FAKE_KEY", rpm=6000,
                            max_retries=2, timeout_s=0.5, max_concurrency=1)
        ep = Endpoint(model="openai/fake", api_base=server.url, api_key_env="FAKE_KEY", input_cost_per_mtok=1000,
                      output_cost_per_mtok=1000)
        client = ServiceClient(ep, lim, tmp_path / "cache", budget=BudgetConfig(max_usd=1.5), progress=False)
        client._backoff_s = lambda n, exc: 0.0
        req = Request([{"role": "user", "content": "q"}], max_tokens=1000)
        worst = client.attempt_cost_usd(req)
        assert 1.0 < worst < 0.75 * 1.5 * 2, "one attempt fits the cap, two do not"
        res = client.run([req], lambda t: t)[0]
    assert server.requests == 1, "the retry did not fit the cap, so it was not sent"
    assert res.kind == "budget" and "Timeout" in res.error and client.budget_hit
    assert client.stats.cost_usd == pytest.approx(worst) and client.stats.cost_usd <= 1.5


# -- issue 28, point 8: a judge on another model is priced from its own pair or litellm's map ---------------
def _judge_cfg(judge: dict, service_model: str = "openai/gpt-4o-mini"):
    return config_from_dict({"data": {"path": "d.jsonl"}, "student": {"model": "s"},
                             "service": {"model": service_model, "input_cost_per_mtok": 0.15,
                                         "output_cost_per_mtok": 0.60},
                             "judge": judge, "budget": {"max_usd": 5}})


@pytest.mark.parametrize("service_model", ["openai/gpt-4o-mini", "gpt-4o-mini"])
def test_a_judge_on_another_model_never_inherits_the_service_prices(service_model):
    """service gpt-4o-mini at 0.15/0.60 (explicit), judge openai/gpt-4o with no prices: it was priced
    at 0.15/0.60 ($0.75 per 1M+1M tokens against litellm's $12.50): the budget undercounted ~16x."""
    judge = _judge_cfg({"model": "openai/gpt-4o"}, service_model).judge_endpoint()
    assert judge.input_cost_per_mtok is None and judge.output_cost_per_mtok is None
    assert price_usd(judge, 1_000_000, 1_000_000) == pytest.approx(12.5)
    same = _judge_cfg({}).judge_endpoint()  # the service's own model judges: its prices hold
    assert (same.input_cost_per_mtok, same.output_cost_per_mtok) == (0.15, 0.60)
    own = _judge_cfg({"model": "openai/gpt-4o", "input_cost_per_mtok": 2, "output_cost_per_mtok": 8}).judge_endpoint()
    assert price_usd(own, 1_000_000, 1_000_000) == pytest.approx(10)


def test_an_unpriced_judge_model_is_an_input_error_not_the_service_price():
    judge = _judge_cfg({"model": "openai/acme-judge-unknown-7"}).judge_endpoint()
    with pytest.raises(InputError, match="judge.input_cost_per_mtok") as e:
        check_pricing(judge, BudgetConfig(max_usd=5))
    assert e.value.field == "judge.model"


def test_the_plan_prices_the_stand_in_as_the_decision_page_does():
    """Issue 28, point 16: `validate` printed ~$0.0000 for the demo while its decision page priced the
    stand-in's tokens at the configured service prices ($0.285)."""
    from types import SimpleNamespace

    from flows.cli import plan
    from llamaduo.config import load_config
    from llamaduo.data import load_coverage
    from llamaduo.estimate import run_estimate

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    splits = load_coverage(cfg.data, cfg.curate)
    est = run_estimate(cfg, splits.train, splits.val, splits.test)
    pf = SimpleNamespace(estimate=est, splits=splits, warnings=[])
    assert est.cost_usd == 0, "nothing is paid to a stand-in"
    assert est.standin_cost_usd and est.standin_cost_usd > 0 and est.standin_run_cost_usd_max > est.standin_cost_usd
    text = plan(cfg, pf)
    assert f"~${est.standin_cost_usd:.4f}" in text and "as the decision page prices it" in text
    assert "service.input_cost_per_mtok" in text
