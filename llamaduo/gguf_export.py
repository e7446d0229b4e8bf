"""GGUF files for llama.cpp and Ollama, made with llama.cpp's own converter, and their answers.

The converter (`convert_hf_to_gguf.py`, its `conversion/` package and the `gguf-py` it was written
against) comes from the llama-cpp-python source package, which vendors llama.cpp: `make install`
unpacks those files into `.venv/share/llama.cpp/` (`python -m llamaduo.llama_cpp_tools`). f16, bf16
and q8_0 come straight from the converter; k-quants (q4_k_m) need llama.cpp's `llama-quantize`.

A GGUF's answers come from llama.cpp (llama-cpp-python) when it is installed, else from transformers,
which loads a GGUF by dequantizing it (the same weights, computed in float32): the engine is recorded
with the answers, so the page says which runtime produced what was judged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import InputError

CONVERTER_TYPES = {"f16", "bf16", "q8_0"}  # written by convert_hf_to_gguf.py itself
QUANTIZER_TYPES = {"q4_k_m": "Q4_K_M"}  # llama-quantize from an f16 file


def tools_dir() -> Path:
    """Where llama.cpp's converter lies: $LLAMADUO_LLAMA_CPP_DIR, else this environment's share/llama.cpp."""
    return Path(os.environ.get("LLAMADUO_LLAMA_CPP_DIR") or Path(sys.prefix) / "share" / "llama.cpp")


def quantizer() -> str | None:
    return shutil.which("llama-quantize") or (str(q) if (q := tools_dir() / "bin" / "llama-quantize").is_file()
                                              else None)


def check_tools(types: list[str]) -> None:
    """Before anything is spent: every asked-for type can be written on this machine."""
    if types and not (tools_dir() / "convert_hf_to_gguf.py").is_file():
        raise InputError(f"export.gguf needs llama.cpp's converter at {tools_dir()} (make install puts it there: "
                         "python -m llamaduo.llama_cpp_tools); or set export.gguf: []", field="export.gguf")
    needs_quantizer = [t for t in types if t in QUANTIZER_TYPES]
    if needs_quantizer and quantizer() is None:
        raise InputError(f"GGUF type(s) {needs_quantizer} need llama.cpp's llama-quantize on PATH (build llama.cpp); "
                         f"the converter alone writes {sorted(CONVERTER_TYPES)}", field="export.gguf")


def _run(cmd: list[str], what: str) -> None:
    from .redact import safe_message

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tools_dir() / "gguf-py"), str(tools_dir())])}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tools_dir())
    if proc.returncode != 0:
        raise RuntimeError(safe_message(f"{what} failed (exit {proc.returncode}): {proc.stderr[-2000:]}", 2500))


def convert(model_dir: Path, dest: Path, gguf_type: str) -> Path:
    """`model_dir` (safetensors + tokenizer, chat template included) as one GGUF file at `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    converter = [sys.executable, str(tools_dir() / "convert_hf_to_gguf.py"), str(model_dir)]
    if gguf_type in CONVERTER_TYPES:
        _run(converter + ["--outtype", gguf_type, "--outfile", str(tmp)], f"llama.cpp conversion to {gguf_type}")
    else:
        f16 = dest.with_name(dest.name + ".f16.partial")
        _run(converter + ["--outtype", "f16", "--outfile", str(f16)], "llama.cpp conversion to f16")
        q = quantizer()
        if q is None:
            raise InputError("llama-quantize is not installed", field="export.gguf")
        proc = subprocess.run([q, str(f16), str(tmp), QUANTIZER_TYPES[gguf_type]], capture_output=True, text=True)
        f16.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise RuntimeError(f"llama-quantize {gguf_type} failed: {proc.stderr[-2000:]}")
    os.replace(tmp, dest)
    return dest


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def answer_gguf(path: Path, tokenizer_dir: Path, prompts: list[str], *, max_new_tokens: int,
                system_prompt: str | None, engine: str = "auto") -> tuple[list[str], list[float], str]:
    """Greedy answers of the GGUF at `path`, one request at a time as an application sends them (a user
    message only: the run's system prompt must come from the file's chat template), their latencies in
    seconds, and the engine's name. `system_prompt` is sent only for a model without it in its template."""
    if engine == "auto":
        engine = "llama.cpp" if llama_cpp_available() else "transformers-gguf"
    messages = [[*([{"role": "system", "content": system_prompt}] if system_prompt else []),
                 {"role": "user", "content": p}] for p in prompts]
    if engine == "llama.cpp":
        return (*_answer_llama_cpp(path, messages, max_new_tokens), "llama.cpp (llama-cpp-python)")
    return (*_answer_transformers(path, tokenizer_dir, messages, max_new_tokens),
            "transformers (GGUF dequantized, float32)")


def _answer_llama_cpp(path: Path, messages: list[list[dict]], max_new_tokens: int) -> tuple[list[str], list[float]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=os.cpu_count() or 1, seed=0, verbose=False)
    if messages:  # warm-up (first-call allocations are not latency); greedy, so its answer is the same
        llm.create_chat_completion(messages=messages[0], temperature=0.0, max_tokens=max_new_tokens)
    answers, seconds = [], []
    for m in messages:
        t0 = time.perf_counter()
        out = llm.create_chat_completion(messages=m, temperature=0.0, max_tokens=max_new_tokens)
        seconds.append(time.perf_counter() - t0)
        answers.append((out["choices"][0]["message"]["content"] or "").strip())
    return answers, seconds


def _answer_transformers(path: Path, tokenizer_dir: Path, messages: list[list[dict]], max_new_tokens: int
                         ) -> tuple[list[str], list[float]]:
    """Batched (not a serving engine: no per-request latency), length-sorted as `llamaduo.infer` does."""
    import torch
    from transformers import AutoModelForCausalLM

    from .infer import _generate_batch, length_sorted_batches
    from .models import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    ids = [tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"] for m in messages]
    answers: list[str] = [""] * len(ids)
    for batch in length_sorted_batches([len(x) for x in ids], 16):
        gen = _generate_batch(model, tok, [ids[i] for i in batch], max_new_tokens=max_new_tokens, samples=1,
                              sampling=dict(do_sample=False))
        for k, text in zip(batch, tok.batch_decode(gen, skip_special_tokens=True)):
            answers[k] = text.strip()
    return answers, []
