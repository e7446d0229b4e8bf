"""Generation: length-sorted batches come back in the caller's order; backend selection; the vLLM
backend's plumbing (child process, same prompt tokens) with a stand-in `vllm` package."""

import json
import os
from pathlib import Path

import pytest

from llamaduo.errors import InputError
from llamaduo.infer import generate_answers, length_sorted_batches, prompt_token_ids, resolve_backend
from llamaduo.models import load_tokenizer
from llamaduo.preflight import check_backend

ITEMS = [{"id": str(i), "instruction": "word " * n, "response": "x"} for i, n in enumerate([3, 40, 1, 17, 9])]


def test_length_sorted_batches_group_similar_lengths_and_cover_every_index():
    batches = length_sorted_batches([5, 50, 1, 30, 9, 50], 2)
    assert batches == [[1, 5], [3, 4], [0, 2]]
    assert sorted(i for b in batches for i in b) == list(range(6))


def test_sorted_batches_answer_in_the_callers_order(tiny_model_dir):
    kw = dict(system_prompt=None, max_new_tokens=6, progress=False)
    together, stats = generate_answers(str(tiny_model_dir), None, ITEMS, batch_size=3, **kw)
    one_by_one = [generate_answers(str(tiny_model_dir), None, [it], batch_size=1, **kw)[0][0] for it in ITEMS]
    assert together == one_by_one
    assert stats.backend == "hf" and stats.items == len(ITEMS)


def _student(model_dir):
    from llamaduo.infer import load_student

    tok = load_tokenizer(str(model_dir))
    tok.padding_side = "left"
    return load_student(str(model_dir), None), tok, prompt_token_ids(tok, ITEMS, None)


def _alone(model, tok, row, n, eos):
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([row]), max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=eos)
    return out[0, len(row):].tolist()


@pytest.mark.parametrize("separate", [True, False], ids=["one-prompt-at-a-time", "one-batched-forward"])
def test_prefilled_static_cache_holds_each_prompt_left_padded(tiny_model_dir, monkeypatch, separate):
    import torch

    import llamaduo.infer as infer

    monkeypatch.setattr(infer, "SEPARATE_PREFILL_PADDING", 0.0 if separate else float("inf"))
    model, tok, rows = _student(tiny_model_dir)
    cache = infer.prefill_static_cache(model, rows, pad_token_id=tok.pad_token_id, max_new_tokens=5, repeats=2)
    width = max(map(len, rows)) - 1
    assert cache.get_seq_length() == width
    keys = cache.layers[0].keys
    assert keys.shape[0] == 2 * len(rows) and keys.shape[2] == width + 5
    with torch.inference_mode():
        alone = model(input_ids=torch.tensor([rows[2][:-1]]), use_cache=True).cache.layers[0].keys
    n = len(rows[2]) - 1
    assert torch.allclose(keys[4, :, width - n:width], alone[0], atol=1e-5) and torch.equal(keys[4], keys[5])
    assert not keys[4, :, width:].any(), "room for the answer stays empty"


@pytest.mark.parametrize("separate", [True, False], ids=["one-prompt-at-a-time", "one-batched-forward"])
def test_finished_rows_leave_the_batch_and_answers_match_one_by_one(tiny_model_dir, monkeypatch, separate):
    """A frequent token of the random model stands in for EOS, so rows stop at different steps and
    leave the batch between chunks; each answer must equal that prompt generated alone."""
    import llamaduo.infer as infer

    monkeypatch.setattr(infer, "SEPARATE_PREFILL_PADDING", 0.0 if separate else float("inf"))
    model, tok, rows = _student(tiny_model_dir)
    first = [_alone(model, tok, r, 12, None) for r in rows]
    eos = max(set(first[0]), key=first[0].count)
    expected = [_alone(model, tok, r, 12, eos) for r in rows]
    assert len({len(e) for e in expected}) > 1, "the stand-in EOS must end rows at different steps"
    got = infer._generate_batch(model, tok, rows, max_new_tokens=12, samples=1, sampling={"do_sample": False},
                                chunk=2, eos_token_id=eos).tolist()
    assert [g[:len(e)] for g, e in zip(got, expected)] == expected
    assert all(set(g[len(e):]) <= {tok.pad_token_id} for g, e in zip(got, expected))


def test_sliding_window_models_take_the_plain_batched_path():
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from llamaduo.infer import prefill_static_cache

    cfg = MistralConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, sliding_window=4)
    torch.manual_seed(0)
    model = MistralForCausalLM(cfg).eval()
    for rows in ([[1, 2, 3, 4, 5, 6], [7, 8, 9]], [[1, 2, 3], [4, 5, 6]]):  # either prefill
        assert prefill_static_cache(model, rows, pad_token_id=0, max_new_tokens=3) is None


def test_auto_backend_is_transformers_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    assert resolve_backend("auto") == "hf"
    assert resolve_backend("vllm") == "vllm"


def test_vllm_backend_needs_cuda_says_which_field(monkeypatch):
    import torch

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent / "fake_vllm"))
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fake_vllm"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError) as e:
        check_backend("vllm")
    assert e.value.field == "infer.backend" and "CUDA" in str(e.value)
    check_backend("auto")


def test_vllm_backend_gets_the_same_prompt_tokens_and_keeps_order(tiny_model_dir, tmp_path, monkeypatch):
    fake = Path(__file__).parent / "fake_vllm"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_VLLM_LOG", str(tmp_path / "vllm.log"))
    adapter = fresh_adapter(tiny_model_dir, tmp_path / "adapter")
    answers, stats = generate_answers(str(tiny_model_dir), str(adapter), ITEMS, system_prompt=None, max_new_tokens=4,
                                      batch_size=2, samples=2, temperature=0.7, progress=False, backend="vllm")
    ids = prompt_token_ids(load_tokenizer(str(tiny_model_dir)), ITEMS, None)
    assert answers == [[f"{len(p)} tokens, sample {k}, t=0.7" for k in range(2)] for p in ids]
    assert stats.backend == "vllm" and stats.new_tokens == len(ITEMS) * 2 * 3
    engine_saw = json.loads((tmp_path / "vllm.log").read_text())
    assert engine_saw["config"] and engine_saw["model"] != str(tiny_model_dir), "vLLM loads the merged model"
    assert not Path(engine_saw["model"]).exists(), "the merged copy is removed afterwards"


def fresh_adapter(base: Path, dest: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.save_pretrained(dest)
    load_tokenizer(str(base)).save_pretrained(dest)
    return dest
