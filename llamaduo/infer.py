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
from .models import load_student
from .store import atomic_write_jsonl, read_jsonl

if TYPE_CHECKING:
    from .config import InferConfig
    from .records import AnswersResult, Artifact, InferStats, StudentRef


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


# padded/real prompt tokens above which prompts prefill one at a time (any padding: measured 3.06x
# vs 2.57x with a batched masked prefill at 1.44 on benchmarks/infer_speed.py)
SEPARATE_PREFILL_PADDING = 1.0
MOSTLY_PADDED = 1.5  # padded/real prompt tokens above which the static path pays even for short answers


def _padding_ratio(rows: list[list[int]]) -> float:
    """Padded over real tokens of the prompts' prefill part (all but each prompt's last token)."""
    lengths = [len(r) - 1 for r in rows]
    return max(lengths) * len(rows) / max(sum(lengths), 1)


def prefill_static_cache(model, rows: list[list[int]], *, pad_token_id: int, max_new_tokens: int, repeats: int = 1):
    """A preallocated (static) KV cache holding every prompt token but the last, left-padded, each
    prompt's rows repeated `repeats` times; None where the model's cache is not one plain key/value
    pair per layer (sliding windows, state-space layers).

    Why, on a CPU (profiled on 32 shared Classify prompts, SmolLM2-135M): the default growing cache
    re-copies itself every decoding step (`aten::cat` 59% of a decode step at 16 x 1389 tokens); and
    a padded batch's prefill runs attention through the explicit padding mask (math kernel,
    quadratic memory: 7.7 s for 8 prompts that take 0.35 s each alone), so a padded batch prefills
    one prompt at a time; prompts of equal length take one batched (unmasked) forward."""
    import torch
    import torch.nn.functional as F
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    lengths = [len(r) - 1 for r in rows]  # the last token is generate's first input
    if min(lengths) < 1:
        return None
    width = max(lengths)
    if _padding_ratio(rows) > SEPARATE_PREFILL_PADDING:
        parts = [_prefill(model, [r[:-1]]) for r in rows]
        if any(p is None for p in parts):
            return None
        keys = [torch.cat([F.pad(p[0][n], (0, 0, width - m, 0)) for p, m in zip(parts, lengths)])
                for n in range(len(parts[0][0]))]
        values = [torch.cat([F.pad(p[1][n], (0, 0, width - m, 0)) for p, m in zip(parts, lengths)])
                  for n in range(len(parts[0][1]))]
    else:
        kv = _prefill(model, [[pad_token_id] * (width - m) + r[:-1] for r, m in zip(rows, lengths)],
                      [[0] * (width - m) + [1] * m for m in lengths])
        if kv is None:
            return None
        keys, values = kv
    static = StaticCache(config=model.config, max_cache_len=width + max_new_tokens)
    if len(static.layers) != len(keys) or any(type(layer) is not StaticLayer for layer in static.layers):
        return None
    positions = torch.arange(width, device=model.device)
    for layer, k, v in zip(static.layers, keys, values):
        layer.update(k.repeat_interleave(repeats, dim=0), v.repeat_interleave(repeats, dim=0),
                     {"cache_position": positions})  # older 5.x StaticLayer reads the positions from here
    return static if static.get_seq_length() == width else None


def _prefill(model, ids: list[list[int]], mask: list[list[int]] | None = None):
    """Per-layer keys and values of one forward pass over (left-padded) `ids`; None unless the
    model's cache is one plain key/value pair per layer."""
    import inspect

    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    kw = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    if mask is not None:  # positions count real tokens only, as generate counts them from the mask
        m = torch.tensor(mask, device=model.device)
        kw.update(attention_mask=m, position_ids=(m.cumsum(-1) - 1).clamp(min=0))
    with torch.inference_mode():
        cache = getattr(model(input_ids=torch.tensor(ids, device=model.device), use_cache=True, **kw), _cache_kw())
    if not isinstance(cache, DynamicCache) or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    return [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]


def _cache_kw() -> str:
    """transformers renamed `past_key_values` to `cache` within 5.x; use whichever this one has."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _static_pays(model, rows: list[list[int]], batch: int, max_new_tokens: int, chunk: int) -> bool:
    """Static cache and chunked decoding on a CPU where they were measured to win: answers longer than
    one chunk (finished rows can leave) or a batch that is mostly padding. Otherwise (the demo: 16
    tokens, similar prompts) one plain `generate` is as fast and simpler."""
    return model.device.type == "cpu" and batch > 1 and (max_new_tokens > chunk or _padding_ratio(rows) > MOSTLY_PADDED)


def _generate_batch(model, tok, rows: list[list[int]], *, max_new_tokens: int, samples: int, sampling: dict,
                    chunk: int = 16, eos_token_id: int | None = None):
    """New tokens for one batch of prompts, `samples` rows per prompt, padded after each row's EOS.

    On a CPU the batch decodes in chunks of `chunk` tokens from a prefilled static cache, and rows that
    reached EOS leave the batch between chunks: a batch otherwise decodes every row until its longest
    answer ends. CUDA keeps one `generate` call (fused attention takes the padding mask in its stride)."""
    import torch

    repeated = [r for r in rows for _ in range(samples)]  # as num_return_sequences would, kept explicit
    batch = tok.pad({"input_ids": repeated}, return_tensors="pt").to(model.device)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache = prefill_static_cache(model, rows, pad_token_id=tok.pad_token_id, max_new_tokens=max_new_tokens,
                                 repeats=samples) if _static_pays(model, rows, len(repeated), max_new_tokens, chunk) \
        else None  # generate would repeat the prompts for samples, not a given cache: repeated explicitly
    eos_token_id = tok.eos_token_id if eos_token_id is None else eos_token_id
    eos = torch.tensor([eos_token_id], device=model.device)
    tokens: list[list[int]] = [[] for _ in repeated]
    alive = list(range(len(repeated)))
    left = max_new_tokens
    while left > 0 and alive:
        step = min(chunk, left) if cache is not None else left
        extra = {_cache_kw(): cache} if cache is not None else {}
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=step,
                                 pad_token_id=tok.pad_token_id, eos_token_id=eos_token_id, **sampling, **extra)
        new = out[:, ids.shape[1]:]
        for k, row in zip(alive, new.tolist()):
            tokens[k].extend(row)
        left -= new.shape[1]
        keep = ~torch.isin(new, eos).any(dim=1)
        if cache is None or new.shape[1] < step or not keep.any():
            break
        if not keep.all():
            for layer in cache.layers:  # static layers: drop the finished rows in place of a batch_select
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
                layer.batch_size = int(keep.sum())
            alive = [k for k, kept in zip(alive, keep.tolist()) if kept]
        ids = out[keep]
        mask = torch.cat([mask, torch.ones_like(new)], dim=1)[keep]
    width = max(len(t) for t in tokens)
    return torch.tensor([t + [tok.pad_token_id] * (width - len(t)) for t in tokens])


def _generate_hf(base_model: str, adapter_dir: str | None, tok, ids: list[list[int]], *, max_new_tokens: int,
                 batch_size: int, samples: int, temperature: float, progress: bool) -> tuple[list[list[str]], int]:
    import torch
    from tqdm.auto import tqdm

    tok.padding_side = "left"  # decoder-only batches pad on the left
    model = load_student(base_model, adapter_dir)
    sampling = dict(do_sample=True, temperature=temperature) if samples > 1 else dict(do_sample=False)
    answers: list[list[str] | None] = [None] * len(ids)
    new_tokens = 0
    torch.manual_seed(0)
    # disable=None: a bar on a terminal only (a log file would get every update as a line)
    for batch_idx in tqdm(length_sorted_batches([len(x) for x in ids], batch_size), desc="infer", unit="batch",
                          disable=None if progress else True, leave=False):
        gen = _generate_batch(model, tok, [ids[i] for i in batch_idx], max_new_tokens=max_new_tokens,
                              samples=samples, sampling=sampling)
        new_tokens += int((gen != tok.pad_token_id).sum())
        texts = [t.strip() for t in tok.batch_decode(gen, skip_special_tokens=True)]
        for k, i in enumerate(batch_idx):
            answers[i] = texts[k * samples:(k + 1) * samples]
    return answers, new_tokens


def generate_answers(base_model: str, adapter_dir: str | None, items: list[dict], *, system_prompt: str | None,
                     max_new_tokens: int, batch_size: int, samples: int = 1, temperature: float = 0.4,
                     progress: bool = True, backend: str = "hf") -> tuple[list[list[str]], InferStats]:
    """`samples` answers per item, in the order of `items`: greedy when 1, sampled at `temperature`
    otherwise (seeded)."""
    from .models import load_tokenizer
    from .records import InferStats

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
    return answers, InferStats(items=len(items), new_tokens=new_tokens, seconds=round(seconds, 2), backend=engine,
                               tokens_per_s=round(new_tokens / seconds, 1) if seconds else None)


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
