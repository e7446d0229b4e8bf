"""Batched generation by the (fine-tuned) student on the test prompts.

Two engines, one contract (same chat template, same prompt tokens, greedy for one answer, seeded
sampling for several): transformers (`hf`, any device) and vLLM (`vllm`, CUDA, in a child process
so its GPU memory is released before the next training).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from .data import Example, to_chat
from .store import atomic_write_jsonl, read_jsonl

if TYPE_CHECKING:
    from .config import InferConfig
    from .records import AnswersResult, Artifact, StudentRef


def load_student(base_model: str, adapter_dir: str | None):
    """Base model with the LoRA adapter merged in: the same weights the export ships."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    if adapter_dir:
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():  # peft asks the model a deprecated transformers question
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.eval()
    return model.to("cuda") if cuda else model


def save_merged(base_model: str, adapter_dir: str, dest: Path) -> Path:
    """Base + adapter merged and saved with the adapter's tokenizer: what the export ships and vLLM loads."""
    from .models import load_tokenizer

    load_student(base_model, adapter_dir).to("cpu").save_pretrained(dest, safe_serialization=True)
    load_tokenizer(adapter_dir).save_pretrained(dest)
    return dest


def resolve_backend(backend: str) -> str:
    """`auto` is vLLM only where it can run (CUDA and the package); otherwise transformers."""
    if backend != "auto":
        return backend
    import importlib.util

    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None else "hf"


def prompt_token_ids(tok, items: list[dict], system_prompt: str | None) -> list[list[int]]:
    """The chat-templated prompts as token ids: both engines are given exactly these."""
    texts = [tok.apply_chat_template(to_chat(Example.from_dict(it), system_prompt)["prompt"], tokenize=False,
                                     add_generation_prompt=True) for it in items]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length (longest first, so an out-of-memory shows at once):
    a batch pads to its longest prompt, so mixing lengths wastes compute on padding."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def _generate_hf(base_model: str, adapter_dir: str | None, tok, ids: list[list[int]], *, max_new_tokens: int,
                 batch_size: int, samples: int, temperature: float, progress: bool) -> tuple[list[list[str]], int]:
    import torch
    from tqdm.auto import tqdm

    tok.padding_side = "left"  # decoder-only batches pad on the left
    model = load_student(base_model, adapter_dir)
    sampling = dict(do_sample=True, temperature=temperature, num_return_sequences=samples) if samples > 1 else \
        dict(do_sample=False)
    answers: list[list[str] | None] = [None] * len(ids)
    new_tokens = 0
    torch.manual_seed(0)
    # disable=None: a bar on a terminal only (a log file would get every update as a line)
    for batch_idx in tqdm(length_sorted_batches([len(x) for x in ids], batch_size), desc="infer", unit="batch",
                          disable=None if progress else True, leave=False):
        batch = tok.pad({"input_ids": [ids[i] for i in batch_idx]}, return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id, **sampling)
        gen = out[:, batch["input_ids"].shape[1]:]
        new_tokens += int((gen != tok.pad_token_id).sum())
        texts = [t.strip() for t in tok.batch_decode(gen, skip_special_tokens=True)]
        for k, i in enumerate(batch_idx):
            answers[i] = texts[k * samples:(k + 1) * samples]
    return answers, new_tokens


def generate_answers(base_model: str, adapter_dir: str | None, items: list[dict], *, system_prompt: str | None,
                     max_new_tokens: int, batch_size: int, samples: int = 1, temperature: float = 0.4,
                     progress: bool = True, backend: str = "hf") -> tuple[list[list[str]], dict]:
    """`samples` answers per item, in the order of `items`: greedy when 1, sampled at `temperature`
    otherwise (seeded)."""
    from .models import load_tokenizer

    engine = resolve_backend(backend)
    tok = load_tokenizer(adapter_dir or base_model)
    ids = prompt_token_ids(tok, items, system_prompt)
    t0 = time.time()
    if engine == "vllm":
        from .vllm_backend import generate_vllm

        answers, new_tokens = generate_vllm(base_model, adapter_dir, ids, max_new_tokens=max_new_tokens,
                                            samples=samples, temperature=temperature)
    else:
        answers, new_tokens = _generate_hf(base_model, adapter_dir, tok, ids, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size, samples=samples, temperature=temperature,
                                           progress=progress)
    seconds = time.time() - t0
    return answers, {"items": len(items), "new_tokens": new_tokens, "seconds": round(seconds, 2), "backend": engine,
                     "tokens_per_s": round(new_tokens / seconds, 1) if seconds else None}


def answer_items(root: str | Path, infer: "InferConfig", student: "StudentRef", adapter: "Artifact | None",
                 items: "Artifact", system_prompt: str | None, out: str, *, batch_size: int | None = None
                 ) -> "AnswersResult":
    """The student's answers to `items` (test or validation split), written to `out`."""
    from .records import AnswersResult, Artifact

    t0 = time.time()
    root = Path(root)
    rows = read_jsonl(items.at(root))
    answers, stats = generate_answers(student.path, str(adapter.at(root)) if adapter else None, rows,
                                      system_prompt=system_prompt, max_new_tokens=infer.max_new_tokens,
                                      batch_size=batch_size or infer.batch_size, samples=infer.samples_per_prompt,
                                      temperature=infer.temperature, backend=infer.backend)
    atomic_write_jsonl(root / out, [{"id": it["id"], "answer": a[0], "samples": a} for it, a in zip(rows, answers)])
    return AnswersResult(answers=Artifact.of(root, out), stats=stats, seconds=round(time.time() - t0, 3))
