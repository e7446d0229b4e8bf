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
    kw = dict(system_prompt=None, max_new_tokens=6, batch_size=1, progress=False)
    together, stats = generate_answers(str(tiny_model_dir), None, ITEMS, **kw)
    one_by_one = [generate_answers(str(tiny_model_dir), None, [it], **kw)[0][0] for it in ITEMS]
    assert together == one_by_one
    assert stats["backend"] == "hf" and stats["items"] == len(ITEMS)


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
    assert stats["backend"] == "vllm" and stats["new_tokens"] == len(ITEMS) * 2 * 3
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
