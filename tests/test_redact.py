"""Secrets: redacted before any cut, whatever the key looks like and wherever it sits (issue 19, point 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from llamaduo.redact import MASK, redact, safe_message, secret_values
from tests.fake_service import FakeBehaviour, FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
LITELLM_PREFIX = 68  # "litellm.AuthenticationError: AuthenticationError: OpenAIException - " before the body
CUT = 300


def pieces(key: str, n: int = 8) -> set[str]:
    """Every part of `key` that would identify it: all substrings of length n (the key if shorter)."""
    return {key[i:i + n] for i in range(len(key) - n + 1)} or {key}


def leaked(key: str, text: str) -> set[str]:
    return {p for p in pieces(key) if p in text}


# Real key shapes, none of them `sk-` only (issue: tests with non-sk keys).
KEY_SHAPES = st.one_of(
    st.from_regex(r"AIza[0-9A-Za-z_\-]{35}", fullmatch=True),  # Google / Gemini
    st.from_regex(r"hf_[A-Za-z0-9]{34}", fullmatch=True),  # Hugging Face
    st.from_regex(r"gsk_[A-Za-z0-9]{52}", fullmatch=True),  # Groq
    st.from_regex(r"sk-ant-api03-[A-Za-z0-9_\-]{40}", fullmatch=True),  # Anthropic
    st.from_regex(r"AKIA[0-9A-Z]{16}", fullmatch=True),  # AWS access key id
    st.from_regex(r"eyJ[A-Za-z0-9_\-]{10,40}\.eyJ[A-Za-z0-9_\-]{10,40}\.[A-Za-z0-9_\-]{10,40}", fullmatch=True),
)
ENV_VALUES = st.text(min_size=8, max_size=48).filter(lambda v: "\x00" not in v and len(v.strip()) >= 8)
KEY_VARS = st.sampled_from(["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "TOGETHERAI_API_KEY",
                            "ACME_GATEWAY_SECRET", "MY_LLM_KEY", "COHERE_API_KEY"])


def _check(key: str, prefix: str, suffix: str, cut: int) -> None:
    context = prefix + MASK + "…" + suffix
    assume(not leaked(key, context) and not leaked(key, prefix + suffix))  # the text itself holds no part of it
    out = safe_message(prefix + key + suffix, cut)
    assert not leaked(key, out), (key, out)
    assert len(out) <= cut + 1


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=KEY_SHAPES, prefix=st.text(max_size=400), suffix=st.text(max_size=80), cut=st.integers(0, 520))
def test_no_part_of_a_key_shaped_secret_survives_any_cut(key, prefix, suffix, cut):
    """Keys we do not know the value of (not in the environment): found by their shape, before the cut."""
    _check(key, prefix, suffix, cut)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=KEY_VARS, key=ENV_VALUES, prefix=st.text(max_size=400), suffix=st.text(max_size=80),
       cut=st.integers(0, 520))
def test_no_part_of_a_key_variable_value_survives_any_cut(name, key, prefix, suffix, cut):
    """Any value >= 8 characters of a variable litellm (or boto3, huggingface_hub) reads on its own,
    or whose name ends in _API_KEY/_KEY/_TOKEN/_SECRET, even when the config names no key variable."""
    old = os.environ.get(name)
    os.environ[name] = key
    try:
        _check(key, prefix, suffix, cut)
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def test_key_crossing_the_300_character_cut_leaked_its_prefix_before():
    """The old order (cut, then redact) left the first characters of a key that crossed the cut."""
    key = "AIzaSyD" + "Qx7vK2mN9pL4rT8wZ1bC5eF3hJ6kM0nP"
    text = "x" * (CUT - 12) + key + " rest of the provider's message"
    old_order = redact(text[:CUT])
    assert leaked(key, old_order), "the scenario: a cut key no rule recognises"
    assert not leaked(key, safe_message(text, CUT)) and MASK[:5] in safe_message(text, CUT)


def test_secret_values_cover_the_variables_litellm_reads(monkeypatch):
    for name in ("OPENAI_API_KEY", "GEMINI_API_KEY", "HF_TOKEN", "AWS_SESSION_TOKEN", "ZZ_CUSTOM_SECRET"):
        monkeypatch.setenv(name, f"value-of-{name.lower()}-123")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # a flag, not a key: left alone
    monkeypatch.setenv("ZZ_SHORT_KEY", "1")
    values = secret_values([])
    assert all(f"value-of-{n.lower()}-123" in values for n in ("OPENAI_API_KEY", "GEMINI_API_KEY", "HF_TOKEN",
                                                               "AWS_SESSION_TOKEN", "ZZ_CUSTOM_SECRET"))
    assert "false" not in values and "1" not in values
    assert redact("tokenizers parallelism: false; max_tokens: 12345678") == \
        "tokenizers parallelism: false; max_tokens: 12345678", "ordinary text is kept"


# -- end to end: a provider that echoes the key ~290 characters into its error -------------------------
@pytest.mark.parametrize("key_var,configured,key", [
    ("GEMINI_API_KEY", True, "AIzaSyD" + "Qx7vK2mN9pL4rT8wZ1bC5eF3hJ6kM0nP"),
    # not named by the config: litellm reads OPENAI_API_KEY on its own; a key of no known shape
    ("OPENAI_API_KEY", False, "live-7f3a9c2e8b1d4f6a0c5e9b2d7f1a3c8e"),
])
@pytest.mark.parametrize("status", [401, 500])
def test_key_echoed_across_the_cut_reaches_no_result_log_or_failure_file(tmp_path, monkeypatch, caplog, key_var,
                                                                         configured, key, status):
    from llamaduo.config import Endpoint, ServiceConfig
    from llamaduo.service import Request, ServiceClient, write_failure_log

    monkeypatch.setenv(key_var, key)
    offset = CUT - LITELLM_PREFIX - 10  # 10 characters of the key before the cut, the rest after it
    with FakeOpenAIServer(FakeBehaviour(reject_models={"fake": status}, echo_key_at=offset)) as server:
        env = key_var if configured else None
        lim = ServiceConfig(model="openai/fake", api_base=server.url, api_key_env=env, max_retries=0, rpm=6000)
        client = ServiceClient(Endpoint(model="openai/fake", api_base=server.url, api_key_env=env), lim,
                               tmp_path / "cache", progress=False)
        raw = []
        send = client._send

        async def spy(req):
            try:
                return await send(req)
            except Exception as exc:
                raw.append(str(exc))
                raise

        client._send = spy
        res = client.run([Request([{"role": "user", "content": "hi"}])], lambda t: t)[0]
    start = raw[0].index(key)
    assert start < CUT < start + len(key), "the provider's text puts the key across the cut"
    write_failure_log(tmp_path / "x.failures.jsonl", "synthesize", [res], ["k"])
    assert not res.ok and res.kind == "call"
    for text in (res.error, (tmp_path / "x.failures.jsonl").read_text(), caplog.text):
        assert not leaked(key, text), text


def _cli(args, env_extra, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({**env_extra, "PYTHONUNBUFFERED": "1"})
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _run_config(tmp: Path, url: str, key_var: str) -> Path:
    rows = [{"instruction": f"What colour is thing number {i} in box {i * 7}?", "response": "blue"} for i in range(16)]
    (tmp / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "student").mkdir(exist_ok=True)
    (tmp / "student" / "config.json").write_text("{}")
    cfg = {"name": "leak", "data": {"path": str(tmp / "coverage.jsonl"), "test_size": 4, "val_size": 0},
           "service": {"model": "openai/fake", "api_base": url, "api_key_env": key_var, "rpm": 6000,
                       "max_retries": 0, "timeout_s": 10, "max_parse_retries": 0},
           "judge": {"embedding_model": None}, "student": {"model": str(tmp / "student")},
           "gate": {"metric": "judge_score", "threshold": 60, "max_rounds": 1},
           "budget": {"max_calls": 50, "max_usd": 0}}
    (tmp / "run.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "run.yaml"


KEY = "AIzaSyD" + "Qx7vK2mN9pL4rT8wZ1bC5eF3hJ6kM0nP"


def _assert_nowhere(key: str, out: subprocess.CompletedProcess, workdir: Path) -> int:
    assert not leaked(key, out.stdout + out.stderr), out.stderr[-3000:]
    checked = 0
    for f in workdir.rglob("*") if workdir.exists() else []:
        if f.is_file():
            checked += 1
            data = f.read_bytes().decode("utf-8", "replace")
            assert not leaked(key, data), f
    return checked


def test_llamaduo_run_refused_at_preflight_prints_no_part_of_the_key(tmp_path, monkeypatch, capfd):
    """`llamaduo run` (the real entry point, in-process: the preflight runs before any child): the
    probe gets a 401 whose body carries the key across the cut."""
    from flows.cli import main

    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    offset = CUT - LITELLM_PREFIX - 10
    with FakeOpenAIServer(FakeBehaviour(reject_models={"fake": 401}, echo_key_at=offset)) as server:
        cfg = _run_config(tmp_path, server.url, "GEMINI_API_KEY")
        rc = main(["run", str(cfg), "--workdir", str(tmp_path / "w")])
        assert server.statuses[401] >= 1
    captured = capfd.readouterr()
    out = subprocess.CompletedProcess([], rc, captured.out, captured.err)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    assert "service.api_key_env" in out.stderr and "preflight" in out.stderr
    _assert_nowhere(KEY, out, tmp_path / "w")


@pytest.mark.slow
def test_llamaduo_run_stopped_mid_run_leaves_no_part_of_the_key_in_logs_or_summary(tmp_path):
    """The key is refused (and echoed ~290 characters in) after the preflight: synthesis fails, the
    run stops (exit 4) with a summary and failure logs that hold no part of the key."""
    offset = CUT - LITELLM_PREFIX - 10
    pool = [{"instruction": f"Which colour has object {i} of batch {i * 11}?", "response": "blue"} for i in range(30)]
    with FakeOpenAIServer(FakeBehaviour(reject_after=2, echo_key_at=offset, pool=pool)) as server:
        cfg = _run_config(tmp_path, server.url, "GEMINI_API_KEY")
        out = _cli(["run", str(cfg), "--workdir", str(tmp_path / "w")], {"GEMINI_API_KEY": KEY}, timeout=600)
        assert server.statuses[401] >= 1
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["stop_reason"] == "service_failing" and "AuthenticationError" in summary["stop_detail"]
    failures = "".join(p.read_text() for p in (tmp_path / "w").rglob("*.failures.jsonl"))
    assert "AuthenticationError" in failures
    assert _assert_nowhere(KEY, out, tmp_path / "w") > 3


# -- issue 28, point 5: URL credentials, re-encoded and re-cased forms of a known key -----------------------
def _b64_core(text: str, start: int, length: int) -> str:
    """The base64 characters of `text` (bytes start..start+length) that depend on those bytes alone."""
    import base64

    encoded = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return "".join(c for i, c in enumerate(encoded) if 6 * i >= 8 * start and 6 * i + 6 <= 8 * (start + length))


ASCII_KEYS = st.from_regex(r"[A-Za-z0-9_\-/+]{16,48}", fullmatch=True)
FORMS = st.sampled_from(["lower", "upper", "slash_escaped", "basic_user", "basic_empty", "b64_embedded"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=ASCII_KEYS, form=FORMS, user=st.from_regex(r"[a-z]{0,12}", fullmatch=True),
       prefix=st.text(alphabet="abc xyz:{}\"", max_size=60), suffix=st.text(alphabet="abc xyz:{}\"", max_size=60))
def test_a_configured_key_echoed_in_another_form_is_redacted(key, form, user, prefix, suffix):
    """A provider echoes the configured key lower- or upper-cased, JSON-escaped with `\\/`, or
    base64-encoded (an HTTP Basic header of "user:key" or ":key", or inside any longer string at
    any of the three byte alignments)."""
    import base64

    if form in ("lower", "upper"):
        echoed = getattr(key, form)()
        body, pieces_of = prefix + echoed + suffix, {p.lower() for p in pieces(key)}
        out = redact(body, [key]).lower()
    elif form == "slash_escaped":
        echoed = json.dumps(key)[1:-1].replace("/", "\\/")
        body, pieces_of = prefix + echoed + suffix, pieces(echoed)
        out = redact(body, [key])
    else:
        plain = {"basic_user": f"{user}:{key}", "basic_empty": f":{key}", "b64_embedded": f"{user}{key}{user}"}[form]
        start = len(plain) - len(key) if form != "b64_embedded" else len(user)
        encoded = base64.b64encode(plain.encode()).decode()
        body = prefix + ("Authorization: Basic " if form != "b64_embedded" else "blob=") + encoded + suffix
        core = _b64_core(plain, start, len(key))
        # a piece that the text around the key encodes to on its own is not the key's ("aaaaaa" around a
        # key holding "aaaaaa" encodes to the same characters)
        around = base64.b64encode(plain.replace(key, "\0" * len(key)).encode()).decode()
        pieces_of = {p for p in pieces(core) if p not in around}
        out = redact(body, [key])
    assume(not any(p in (prefix + suffix).lower() for p in {q.lower() for q in pieces_of}))
    assert not any(p in out for p in pieces_of), (form, body, out)


def test_url_credentials_are_redacted_but_the_address_kept():
    from llamaduo.redact import redact_url

    assert redact("memory://user:S3cr3t@bucket/run/summary.json") == f"memory://{MASK}@bucket/run/summary.json"
    assert redact_url("s3://:pw-only@bucket/x") == f"s3://{MASK}@bucket/x"
    assert redact_url("s3://bucket/run") == "s3://bucket/run"


def test_run_store_addresses_for_people_carry_no_url_password(tmp_path):
    """`summary:`, `decision:`, `report:` and `model:` lines, and summary.json's final_model_dir, are
    built from RunStore.where: it printed `memory://user:S3cr3t@bucket/run/summary.json`."""
    from llamaduo.runstore import RunStore

    store = RunStore("s3://user:S3cr3t@bucket/run")
    assert "S3cr3t" not in store.where("summary.json") and store.where("summary.json").endswith("bucket/run/summary.json")
