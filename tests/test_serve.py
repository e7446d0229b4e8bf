"""`llamaduo serve`: a tiny student exported by the library's export stage, served by the real CLI in a
child process, called with the `openai` client; greedy answers equal the evaluated ones. Also the bad
inputs (no exported model: exit 2), the vLLM engine's plumbing (stand-in `vllm` package: same prompt
token ids) and `measure_student` (numbers from the same endpoint)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llamaduo.config import InferConfig
from llamaduo.export import export_model, model_card
from llamaduo.infer import generate_answers
from llamaduo.models import load_tokenizer
from llamaduo.records import Artifact, GateDecision, RoundRecord, StudentRef, Summary
from llamaduo.store import atomic_write_jsonl, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
NAME, MODEL_ID = "tiny-serve", "llamaduo-tiny-serve"
SYSTEM = "You sort support tickets into one category."
MAX_NEW = 8
ITEMS = [{"id": f"t{i}", "instruction": text, "response": "x"} for i, text in enumerate(
    ["My invoice shows the wrong amount.", "The app crashes when I open settings on my phone.",
     "How do I reset my password?", "Please cancel my subscription"])]


def _adapter(base: Path, dest: Path) -> Path:
    """A LoRA adapter that changes the weights (B not zero): the served model must be the merged one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=2, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM", init_lora_weights=False))
    model.save_pretrained(dest)
    load_tokenizer(str(base)).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory) -> dict:
    """A run directory as the flow leaves it: test split, the round's answers (evaluated with the
    adapter, as `infer` does), and final_model/ written by `export_model`."""
    root = tmp_path_factory.mktemp("run") / NAME
    adapter = _adapter(tiny_model_dir, root / "rounds/round_01/adapter")
    atomic_write_jsonl(root / "data/test.jsonl", ITEMS)
    answers, _ = generate_answers(str(tiny_model_dir), str(adapter), ITEMS, system_prompt=SYSTEM,
                                  max_new_tokens=MAX_NEW, batch_size=2, progress=False)
    evaluated = {it["id"]: a[0] for it, a in zip(ITEMS, answers)}
    atomic_write_jsonl(root / "rounds/round_01/answers.jsonl", [{"id": k, "answer": v} for k, v in evaluated.items()])
    best = RoundRecord(round=1, train_rows=4, synthetic_rows_added=0,
                       gate=GateDecision(passed=True, metric="judge_score", value=80.0, threshold=70.0),
                       adapter=Artifact.of(root, "rounds/round_01/adapter"),
                       answers=Artifact.of(root, "rounds/round_01/answers.jsonl"))
    summary = Summary(name=NAME, passed=True, stop_reason="passed", final_model_dir=None, teacher="stand-in",
                      judge="stand-in", student="tiny")
    infer = InferConfig(max_new_tokens=MAX_NEW, batch_size=2, backend="hf")
    result = export_model(root, StudentRef(id="tiny", path=str(tiny_model_dir)), best,
                          lambda check, hub: model_card(summary, best, "stand-in", check, hub), infer, SYSTEM,
                          Artifact.of(root, "data/test.jsonl"), best.answers, "final_model", name=NAME)
    assert result.check.checked == len(ITEMS), result.check  # the export check itself
    # What `merged/` (16-bit) answered as exported and as judged: what serving it must reproduce. (A tiny
    # random model's near-uniform logits flip under bf16 rounding, so these may differ from the adapter's.)
    shipped = {r["id"]: r["answer"] for r in read_jsonl(root / "final_model/answers/merged.jsonl")}
    return {"root": root, "evaluated": shipped, "adapter_answers": evaluated, "check": result.check,
            "formats": result.formats}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict | None = None):
    """`llamaduo serve` through the real CLI module; returns (process, base_url) once it answers."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", *args, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llamaduo serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.3)
    _stop(proc)
    pytest.fail("llamaduo serve did not answer within 180 s")


def _stop(proc) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@pytest.fixture(scope="module")
def server(run_dir):
    proc, base = _start([str(run_dir["root"])])
    yield base
    _stop(proc)


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_lists_the_runs_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]


def test_greedy_answers_equal_the_evaluated_ones(client, run_dir):
    """No max_tokens, no temperature: the run's max_new_tokens, greedy, the run's system prompt."""
    for it in ITEMS:
        reply = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": it["instruction"]}])
        assert reply.choices[0].message.content == run_dir["evaluated"][it["id"]], it["id"]
        assert reply.model == MODEL_ID and reply.choices[0].finish_reason in ("stop", "length")
        assert 0 < reply.usage.completion_tokens <= MAX_NEW


def test_concurrent_requests_answer_as_one_at_a_time(client, run_dir):
    def ask(it):
        return client.chat.completions.create(model=MODEL_ID, temperature=0, max_tokens=MAX_NEW,
                                              messages=[{"role": "user", "content": it["instruction"]}])

    with ThreadPoolExecutor(len(ITEMS)) as pool:
        replies = list(pool.map(ask, ITEMS))
    assert [r.choices[0].message.content for r in replies] == [run_dir["evaluated"][it["id"]] for it in ITEMS]


def test_streamed_chunks_join_to_the_answer_with_usage_last(client, run_dir):
    """The openai client streams (SSE); the joined deltas equal the non-streamed answer; usage comes in a
    last chunk without choices, only when asked."""
    for it in ITEMS[:2]:
        msgs = [{"role": "user", "content": it["instruction"]}]
        chunks = list(client.chat.completions.create(model=MODEL_ID, messages=msgs, stream=True,
                                                     stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip() == run_dir["evaluated"][it["id"]]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
        assert all(c.model == MODEL_ID for c in chunks)
        plain = list(client.chat.completions.create(model=MODEL_ID, messages=msgs, stream=True))
        assert all(c.usage is None for c in plain) and all(c.choices for c in plain)


def test_stop_ends_the_answer_before_the_stop_string(client, run_dir):
    it = next(i for i in ITEMS if len(run_dir["evaluated"][i["id"]]) > 3)
    answer = run_dir["evaluated"][it["id"]]
    stop = answer[2:4]  # a string the answer contains
    msgs = [{"role": "user", "content": it["instruction"]}]
    reply = client.chat.completions.create(model=MODEL_ID, messages=msgs, stop=[stop])
    assert stop not in reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
    assert answer.startswith(reply.choices[0].message.content.strip())
    streamed = client.chat.completions.create(model=MODEL_ID, messages=msgs, stop=stop, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_tokens_cuts_the_answer(client, run_dir):
    reply = client.chat.completions.create(model=MODEL_ID, max_tokens=2,
                                           messages=[{"role": "user", "content": ITEMS[1]["instruction"]}])
    assert reply.usage.completion_tokens <= 2
    if reply.choices[0].finish_reason == "length":
        assert run_dir["evaluated"][ITEMS[1]["id"]].startswith(reply.choices[0].message.content)


@pytest.mark.parametrize("extra", [{"response_format": {"type": "json_object"}}, {"logprobs": True},
                                   {"tools": [{"type": "function", "function": {"name": "f"}}]}, {"n": 2},
                                   {"presence_penalty": 1}, {"user": "u"}, {"max_tokens": MAX_NEW + 1},
                                   {"temperature": 3}, {"stop": ["a", "b", "c", "d", "e"]}])
def test_what_the_endpoint_does_not_honour_is_a_400_naming_it(server, extra):
    import httpx

    r = httpx.post(f"{server}/v1/chat/completions", timeout=30,
                   json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == next(iter(extra))


def test_wrong_model_body_size_and_engine_routes_are_refused(client, server):
    import httpx
    import openai

    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError, match=MODEL_ID):
        client.chat.completions.create(model="gpt-4o", messages=msgs)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=MODEL_ID, messages=[])
    t0 = time.monotonic()
    big = httpx.post(f"{server}/v1/chat/completions", content=b"x" * 2_000_000, timeout=30)
    assert big.status_code == 413 and time.monotonic() - t0 < 5
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200
    assert httpx.post(f"{server}/load_model", json={"model": "gpt2"}, timeout=5).status_code == 404
    assert httpx.post(f"{server}/reset", timeout=5).status_code == 404


def test_a_caller_who_hangs_up_stops_its_generation_and_a_short_request_goes_through(server, run_dir):
    """A long request whose caller leaves after 1 s: its generation ends (nothing in flight), and an
    8-token request sent meanwhile is answered beside it, not after it."""
    import httpx

    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": ITEMS[0]["instruction"]}], "max_tokens": 8}
    t0 = time.monotonic()
    httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    alone = time.monotonic() - t0
    with httpx.stream("POST", f"{server}/v1/chat/completions", timeout=60,
                      json={**body, "stream": True, "max_tokens": MAX_NEW}) as r:
        next(r.iter_lines())
    # the caller is gone: the front closes the engine's stream
    deadline = time.monotonic() + 20
    while httpx.get(f"{server}/health", timeout=5).json()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{server}/health", timeout=5).json()["in_flight"] == 0
    metrics = httpx.get(f"{server}/metrics", timeout=5).text
    assert "llamaduo_requests_total" in metrics and "llamaduo_tokens_total" in metrics
    assert "llamaduo_requests_in_flight 0.0" in metrics
    assert alone < 30


def test_model_card_and_export_record_the_swap_in(run_dir):
    final = run_dir["root"] / "final_model"
    card = (final / "README.md").read_text()
    assert 'base_url="http://127.0.0.1:8000/v1"' in card and f'model="{MODEL_ID}"' in card
    meta = json.loads((final / "llamaduo.json").read_text())
    assert meta["system_prompt"] == SYSTEM and meta["model_id"] == MODEL_ID and meta["max_new_tokens"] == MAX_NEW


@pytest.mark.parametrize("where", ["folder", "url"])
def test_a_run_without_an_exported_model_exits_2_naming_the_path(tmp_path, where):
    (tmp_path / "run").mkdir()
    target = str(tmp_path / "run") if where == "folder" else f"file://{tmp_path}/run"
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "serve", target, "--port", str(_free_port())],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LLAMADUO_SCRATCH": str(tmp_path / "scratch")})
    assert proc.returncode == 2, proc.stderr
    assert f"{target}/final_model/merged" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_a_run_directory_at_a_url_is_pulled_into_the_scratch_copy(run_dir, tmp_path, monkeypatch):
    import shutil

    from llamaduo.serve import locate

    monkeypatch.setenv("LLAMADUO_SCRATCH", str(tmp_path / "scratch"))
    store = tmp_path / "bucket" / NAME
    shutil.copytree(run_dir["root"] / "final_model", store / "final_model")
    served = locate(f"file://{store}")
    assert served.model_dir.is_relative_to(tmp_path / "scratch") and (served.model_dir / "model.safetensors").is_file()
    assert (served.model_id, served.system_prompt, served.max_new_tokens) == (MODEL_ID, SYSTEM, MAX_NEW)


def test_an_export_without_llamaduo_json_takes_the_runs_config(run_dir, tmp_path):
    """Exports made before llamaduo.json: the run's invocation (its config) has the same settings."""
    import shutil

    from llamaduo.serve import locate

    root = tmp_path / "old-run"
    shutil.copytree(run_dir["root"] / "final_model", root / "final_model",
                    ignore=shutil.ignore_patterns("llamaduo.json"))
    (root / ".llamaduo").mkdir()
    (root / ".llamaduo/invocation.json").write_text(json.dumps({"config": {
        "name": "old", "student": {"model": "tiny", "system_prompt": SYSTEM},
        "infer": {"max_new_tokens": 5, "batch_size": 3, "backend": "auto"}}}))
    served = locate(root)
    assert (served.model_id, served.system_prompt, served.max_new_tokens) == ("llamaduo-old", SYSTEM, 5)
    (root / ".llamaduo/invocation.json").unlink()
    served = locate(root / "final_model")
    assert (served.model_id, served.system_prompt, served.recorded) == ("llamaduo-old-run", None, False)


def test_measure_student_through_the_endpoint(run_dir):
    from llamaduo.latency import measure_student

    t0 = time.monotonic()
    stats = measure_student(run_dir["root"], [it["instruction"] for it in ITEMS], system_prompt=SYSTEM, batch_size=2,
                            max_new_tokens=4, requests=6, backend="transformers")
    took = time.monotonic() - t0
    assert 0 < stats.p50_s <= stats.p95_s < took
    assert stats.throughput_rps > 0 and stats.concurrency == 2 and stats.requests == 6
    assert stats.backend in ("transformers on cpu", "transformers on cuda") and stats.hardware
    assert 0 < stats.completion_tokens_mean <= 4 and stats.prompt_tokens_mean > 10
    print(f"\nmeasured on the tiny model: {stats.model_dump_json()} (in {took:.1f} s)")


# -- the formats final_model/ ships (issue 27) -------------------------------------------------------

def test_merged_is_16_bit_and_answers_with_the_run_system_prompt_unasked(run_dir):
    """Another engine given merged/ and no system message answers as with the run's system prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    merged = run_dir["root"] / "final_model/merged"
    assert AutoModelForCausalLM.from_pretrained(merged).dtype == torch.bfloat16
    tok = load_tokenizer(str(merged))
    asked = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(asked, tokenize=False) == tok.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, *asked], tokenize=False)
    # a system message of the caller's own replaces the default
    own = [{"role": "system", "content": "other"}, *asked]
    assert SYSTEM not in tok.apply_chat_template(own, tokenize=False)
    with_prompt, _ = generate_answers(str(merged), None, ITEMS, system_prompt=SYSTEM, max_new_tokens=MAX_NEW,
                                      batch_size=2, progress=False)
    assert {it["id"]: a[0] for it, a in zip(ITEMS, with_prompt)} == run_dir["evaluated"]


def test_adapter_names_a_resolvable_base_and_says_what_it_is(run_dir):
    adapter = run_dir["root"] / "final_model/adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    # "tiny" is neither a Hub id nor a directory: the base stays as trained, never this machine's cache path
    assert not cfg["base_model_name_or_path"].startswith(str(Path.home() / ".cache"))
    readme = (adapter / "README.md").read_text()
    assert "LoRA adapter" in readme and "--enable-lora" in readme


def test_gguf_modelfile_card_and_hashes(run_dir):
    import gguf
    import yaml

    final = run_dir["root"] / "final_model"
    files = sorted((final / "gguf").glob("*.gguf"))
    assert [f.name for f in files] == [f"{NAME}-q8_0.gguf"]
    reader = gguf.GGUFReader(files[0])
    template = bytes(reader.fields["tokenizer.chat_template"].parts[-1]).decode()
    assert SYSTEM in template  # llama.cpp and Ollama read the default system message from the file
    modelfile = (final / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./gguf/{NAME}-q8_0.gguf\n")
    assert f'SYSTEM """{SYSTEM}"""' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    card = (final / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "transformers" and "model-index" in meta
    recorded = json.loads((final / "llamaduo.json").read_text())["files"]
    assert f"gguf/{NAME}-q8_0.gguf" in recorded and "merged/model.safetensors" in recorded
    names = [f.name for f in run_dir["formats"]]
    assert names == ["adapter", "merged", "gguf-q8_0"]
    assert all(f.answers is not None for f in run_dir["formats"])


def test_beyond_loopback_needs_a_key_which_every_route_but_health_asks_for(run_dir, tmp_path):
    import httpx

    proc = subprocess.run([sys.executable, "-m", "flows.cli", "serve", str(run_dir["root"]), "--host", "0.0.0.0",
                           "--port", str(_free_port())], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--api-key-env" in proc.stderr and "Traceback" not in proc.stderr
    proc, base = _start([str(run_dir["root"]), "--host", "0.0.0.0", "--api-key-env", "SERVE_KEY"],
                        env={"SERVE_KEY": "s3cret-key"})
    try:
        body = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60).status_code == 401
        assert httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
        ok = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60,
                        headers={"Authorization": "Bearer s3cret-key"})
        assert ok.status_code == 200, ok.text
    finally:
        out = _stop(proc)  # SIGTERM: a clean stop
    assert proc.returncode == 0 and "stopped" in out and "s3cret-key" not in out


def test_only_the_exported_files_are_served(run_dir, tmp_path, monkeypatch):
    """A file that differs from the sha256 recorded at export is refused (exit 2); a scratch copy of an
    earlier export (same sizes, other bytes) is replaced by a fresh pull, never served."""
    import shutil

    from llamaduo.errors import InputError
    from llamaduo.serve import locate

    copy = tmp_path / "run"
    shutil.copytree(run_dir["root"] / "final_model", copy / "final_model")
    meta = json.loads((copy / "final_model/llamaduo.json").read_text())
    assert "merged/tokenizer_config.json" in meta["files"]
    template = copy / "final_model/merged/chat_template.jinja"
    target = template if template.is_file() else copy / "final_model/merged/tokenizer_config.json"
    original = target.read_bytes()
    target.write_bytes(original.replace(SYSTEM.encode(), SYSTEM.upper().encode()))  # same size, other prompt
    with pytest.raises(InputError, match="sha256"):
        locate(copy)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "serve", str(copy), "--port", str(_free_port())],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "sha256" in proc.stderr
    # at a URL: the stale scratch copy (the tampered one) is pulled again from the store
    target.write_bytes(original)
    monkeypatch.setenv("LLAMADUO_SCRATCH", str(tmp_path / "scratch"))
    served = locate(f"file://{copy}")
    scratch_target = served.model_dir.parent / target.relative_to(copy / "final_model")
    scratch_target.write_bytes(original.replace(SYSTEM.encode(), SYSTEM.upper().encode()))
    served = locate(f"file://{copy}")
    assert scratch_target.read_bytes() == original and served.system_prompt == SYSTEM


def test_push_to_hub_sends_only_what_ships_and_never_the_token(run_dir, monkeypatch):
    """export.push_to_hub against a fake Hub on loopback (HF_ENDPOINT): private repo, the shipped formats
    only (a format marked do-not-ship stays behind), no per-format answers; a wrong token's error
    carries no token."""
    from llamaduo.hub import push_export
    from tests.fake_hub import FakeHub

    final = run_dir["root"] / "final_model"
    with FakeHub("hf_fake_token_123") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", "hf_fake_token_123")
        url = push_export(final, "acme/triage", private=True, shipped=["adapter", "merged"],
                          formats=["adapter", "merged", "gguf-q8_0"], message="test")
        files = hub.repos["acme/triage"]["files"]
        assert hub.repos["acme/triage"]["private"] is True and url.startswith(hub.url)
        assert "merged/model.safetensors" in files and "adapter/adapter_config.json" in files
        assert "README.md" in files and "llamaduo.json" in files
        assert hub.cards and hub.cards[0]["library_name"] == "transformers"  # the card's metadata validated
        assert not any(f.startswith(("gguf/", "answers/")) for f in files) and "Modelfile" not in files
        monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_456")
        with pytest.raises(RuntimeError) as e:
            push_export(final, "acme/other", private=True, shipped=["merged"], formats=["merged"], message="x")
        assert "hf_wrong_token_456" not in str(e.value) and "acme/other" in str(e.value)
