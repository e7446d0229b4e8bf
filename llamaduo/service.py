"""The service LLM: async litellm calls with limits, retries, a disk cache and a hard budget.

Three separate pieces, as in distilabel: prompt formatting lives in synth/judge,
the call lives here, output parsing lives in `parsing`. Every completed reply is
written to the cache *before* it is parsed, so a re-run or a resume after a crash
never pays for the same call twice. A reply that does not validate is kept in the
cache for audit (marked invalid) and re-asked with the validation error as its own
request. API keys never enter cache, logs, stats or error text.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import json
import logging
import os
import random
import sys
import time
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

from .config import BudgetConfig, Endpoint, ServiceConfig, provider_of
from .errors import InputError
from .pacing import InProcessPacer, Pacer, PacerSession, ambient_pacer
from .parsing import well_formed
from .records import ServiceStats
from .redact import redact, safe_message, secret_values
from .store import atomic_write_text, sha256_json

log = logging.getLogger("llamaduo.service")
# Offline machines: use litellm's bundled price map instead of fetching it at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# litellm's own logger prints provider errors verbatim (keys included): ours redacts.
logging.getLogger("LiteLLM").setLevel(logging.CRITICAL)

REASK = ("Your previous reply could not be used: {error}. Reply again with only the JSON object in the "
         "requested format, nothing else.")


@dataclass(frozen=True)
class Request:
    messages: list[dict]
    temperature: float = 0.0
    max_tokens: int = 1024
    # Distinguishes requests with the same messages that must not share a reply (judge repeats).
    variant: dict = field(default_factory=dict)
    schema: dict | None = None  # JSON schema of the expected reply (structured outputs)

    def approx_prompt_tokens(self) -> int:
        return sum(approx_tokens(m.get("content") or "") for m in self.messages)


def approx_tokens(text: str) -> int:
    """~4 characters per token for English text: for the stand-in's usage figures only (never
    for money: 8,000 CJK characters are ~8,000 tokens, not 2,000)."""
    return max(1, len(text) // 4)


# Chat-template tokens around each message (role markers, separators: ChatML, Llama 3 and Gemma
# use 4-5, OpenAI 3-4) and around the request (BOS, the assistant header that primes the reply).
MESSAGE_OVERHEAD_TOKENS = 8
REQUEST_OVERHEAD_TOKENS = 8
_TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"


def utf8_token_bound(text: str) -> int:
    """At least as many tokens as any provider's tokenizer makes of `text`.

    Byte-level BPE (GPT, Claude, Llama 3, Qwen, DeepSeek) starts from one token per UTF-8 byte
    and merges only ever shrink that; SentencePiece with byte fallback (Gemini/Gemma, Mistral,
    Llama 2) emits a known piece (>= 1 character) or one token per byte of a character it lacks.
    A tokenizer that normalises first can grow the text (Claude's, as litellm ships it, applies NFKC:
    U+FDFA is 3 bytes and 15 tokens; NFD/NFKD split a Hangul syllable's 3 bytes into 9), so the
    largest byte length of the raw and normalised forms counts. A SentencePiece word-start marker
    adds <= 1 token per message: MESSAGE_OVERHEAD_TOKENS covers it."""
    return max(len(form.encode("utf-8", "surrogatepass"))
               for form in (text, unicodedata.normalize("NFKC", text), unicodedata.normalize("NFKD", text)))


def _tiktoken_dir() -> str | None:
    """Where tiktoken finds its encoding files offline: the user's cache, else the copies litellm ships."""
    import importlib.util

    for var in ("TIKTOKEN_CACHE_DIR", "CUSTOM_TIKTOKEN_CACHE_DIR"):
        if os.environ.get(var):
            return os.environ[var]
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(list(spec.submodule_search_locations)[0]) / "litellm_core_utils" / "tokenizers")


@functools.lru_cache(maxsize=None)
def model_tokenizer(model: str):
    """The exact tokenizer of an OpenAI model (tiktoken, from local files), else None.

    litellm's own `token_counter` is no bound: for other providers it counts with an OpenAI
    encoding (or downloads a Hugging Face tokenizer: a hang offline), so it is not used here."""
    provider, _, name = model.rpartition("/")
    if provider not in ("", "openai", "azure") or not name:
        return None
    try:
        import tiktoken

        encoding = tiktoken.encoding_name_for_model(name)
    except Exception:  # noqa: BLE001 - not an OpenAI model name (or no tiktoken)
        return None
    folder = _tiktoken_dir()
    url_hash = hashlib.sha1(_TIKTOKEN_URL.format(name=encoding).encode()).hexdigest()
    if folder is None or not (Path(folder) / url_hash).is_file():
        return None  # tiktoken would download it: never on the money path
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", folder)  # litellm sets the same folder when it loads it
    try:
        return tiktoken.get_encoding(encoding)
    except Exception:  # noqa: BLE001
        return None


def text_token_bound(text: str, model: str) -> int:
    """Tokens of `text` for `model`: its tokenizer's exact count where we have it, else the UTF-8 bound."""
    encoding = model_tokenizer(model)
    if encoding is not None:
        try:
            return len(encoding.encode(text, disallowed_special=()))
        except Exception:  # noqa: BLE001 - text tiktoken cannot encode: the bound holds for it too
            pass
    return utf8_token_bound(text)


def prompt_token_bound(model: str, messages: list[dict], schema: dict | None = None) -> int:
    """The most prompt tokens a request can be billed: every message (role, content, name), the
    chat template around them, and the reply schema when it is sent (structured outputs)."""
    total = REQUEST_OVERHEAD_TOKENS
    for m in messages:
        total += MESSAGE_OVERHEAD_TOKENS
        for k, v in m.items():
            text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            total += text_token_bound(text, model) if k == "content" else utf8_token_bound(text)
    if schema is not None:
        total += MESSAGE_OVERHEAD_TOKENS + utf8_token_bound(json.dumps(schema, ensure_ascii=False))
    return total


@dataclass
class Result:
    ok: bool
    value: Any = None
    error: str | None = None
    kind: str | None = None  # "call" | "parse" | "budget" | "skipped" when not ok
    truncated: bool = False  # the provider stopped at max_tokens (finish_reason == "length")


class ResponseCache:
    """One JSON file per reply, keyed by (model, messages, generation params, variant)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def key(self, model: str, request: Request, salt: dict) -> str:
        return sha256_json({"model": model, "messages": request.messages, "temperature": request.temperature,
                            "max_tokens": request.max_tokens, "variant": request.variant, **salt})

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None  # a torn file is treated as a miss (writes are atomic; belt and braces)

    def put(self, key: str, record: dict) -> None:
        """ASCII JSON: any text a provider returns (even a lone surrogate) is written and read back
        as it was, so a paid reply is never lost to an encoding error. OSError (disk full, no
        permission) is the caller's to handle: the reply is paid either way."""
        atomic_write_text(self._path(key), json.dumps(record, indent=2, ensure_ascii=True) + "\n")


class ReplyCacheError(RuntimeError):
    """Paid replies could not be written to the reply cache. They are charged (`stats`), but a
    re-run would pay for them again, so the stage stops instead of spending more."""

    def __init__(self, message: str, stats: ServiceStats):
        super().__init__(message)
        self.stats = stats


def _loaded_litellm():
    """litellm if this process imported it, else None: then no exception came from a litellm call
    (the stand-in teacher never imports it: ~5 s saved on every offline run)."""
    return sys.modules.get("litellm")


def _timed_out(exc: BaseException) -> bool:
    litellm = _loaded_litellm()
    return litellm is not None and isinstance(exc, litellm.Timeout)


def _retryable(exc: BaseException) -> bool:
    litellm = _loaded_litellm()
    if litellm is not None and isinstance(exc, (litellm.RateLimitError, litellm.Timeout, litellm.APIConnectionError,
                                                litellm.InternalServerError, litellm.ServiceUnavailableError)):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status == 429 or status >= 500)


def _retry_after_s(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def explicit_prices(endpoint: Endpoint) -> bool:
    return endpoint.input_cost_per_mtok is not None and endpoint.output_cost_per_mtok is not None


def price_usd(endpoint: Endpoint, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Configured per-million-token prices first, then litellm's price map; None = unknown.
    Prices come in pairs: one price alone is not a price (it would make the other side free)."""
    if endpoint.is_standin:
        return 0.0
    if explicit_prices(endpoint):
        return (endpoint.input_cost_per_mtok * prompt_tokens + endpoint.output_cost_per_mtok * completion_tokens) / 1e6
    if endpoint.input_cost_per_mtok is not None or endpoint.output_cost_per_mtok is not None:
        return None
    import litellm

    litellm.suppress_debug_info = True
    try:
        p, c = litellm.cost_per_token(model=endpoint.model, prompt_tokens=prompt_tokens,
                                      completion_tokens=completion_tokens)
        return float(p + c)
    except Exception:  # noqa: BLE001 - a model litellm cannot price
        return None


def price_known(endpoint: Endpoint) -> bool:
    return price_usd(endpoint, 1000, 1000) is not None


# Servers people run on their own hardware: per-token prices are $0 by construction (the machine
# is paid by the hour, see decision.usd_per_hour), wherever the server is.
SELF_HOSTED_PROVIDERS = frozenset({"ollama", "ollama_chat", "hosted_vllm", "vllm", "lm_studio", "llamafile",
                                   "xinference", "oobabooga"})


def is_local_endpoint(endpoint: Endpoint) -> bool:
    """An endpoint whose calls cost nothing per token: the stand-in, a self-hosted server provider
    (ollama/, hosted_vllm/, ... at any api_base: the default of ollama is localhost), or any
    provider behind an api_base on this machine (localhost, 127.0.0.0/8, ::1). A private-network
    address is *not* local: it may be a paid gateway; such endpoints set explicit prices (0 if free)."""
    if endpoint.is_standin or provider_of(endpoint.model) in SELF_HOSTED_PROVIDERS:
        return True
    if not endpoint.api_base:
        return False
    host = (urlparse(endpoint.api_base).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_pricing(endpoint: Endpoint, budget: BudgetConfig) -> None:
    """A money cap must hold for every model. An unpriced model needs explicit prices, unless it is
    a self-hosted endpoint (api_base) and the budget allows only free calls. A model litellm prices
    at $0 (e.g. huggingface/...) that is not a local endpoint needs them too when max_usd > 0:
    otherwise every call would count $0 against the cap."""
    field = endpoint.field
    if endpoint.is_standin or explicit_prices(endpoint):
        return
    if endpoint.input_cost_per_mtok is not None or endpoint.output_cost_per_mtok is not None:
        missing = "output" if endpoint.output_cost_per_mtok is None else "input"
        raise InputError(f"{field}.input_cost_per_mtok and {field}.output_cost_per_mtok go together: set "
                         f"{field}.{missing}_cost_per_mtok too (a missing price would count that side as free)",
                         field=f"{field}.{missing}_cost_per_mtok")
    unit = price_usd(endpoint, 1_000_000, 1_000_000)
    if unit is None:
        if budget.max_usd == 0 and endpoint.api_base:
            return
        raise InputError(f"litellm has no price for {endpoint.model!r}, so budget.max_usd cannot be enforced; set "
                         f"{field}.input_cost_per_mtok and {field}.output_cost_per_mtok",
                         field=f"{field}.model")
    if unit == 0 and budget.max_usd > 0 and not is_local_endpoint(endpoint):
        where = f"at {endpoint.api_base}" if endpoint.api_base else "a hosted provider"
        raise InputError(f"litellm prices {endpoint.model!r} at $0 but it is not a local endpoint ({where}), so "
                         f"budget.max_usd would count its calls as free; set {field}.input_cost_per_mtok and "
                         f"{field}.output_cost_per_mtok (USD per million tokens; 0 and 0 if it really is free)",
                         field=f"{field}.input_cost_per_mtok")


def supports_structured_output(endpoint: Endpoint, mode: str) -> bool:
    if mode == "off" or endpoint.is_standin:
        return False
    if mode == "on":
        return True
    import litellm

    try:
        return bool(litellm.supports_response_schema(model=endpoint.model))
    except Exception:  # noqa: BLE001
        return False


class ServiceClient:
    """Calls one endpoint. `run(requests, parse)` returns one Result per request, in order.

    `spent` is what earlier stages of the run used; the budget is checked against it plus
    this client's spending plus the estimated cost of every call in flight (reserved before
    it is sent), so concurrent calls cannot overshoot a cap.
    """

    def __init__(self, endpoint: Endpoint, limits: ServiceConfig, cache_dir: str | Path, *,
                 budget: BudgetConfig | None = None, spent: ServiceStats | None = None, progress: bool = True,
                 pacer: Pacer | None = None):
        self.endpoint = endpoint
        self.limits = limits
        # rpm/tpm/max_concurrency: this process's own, unless a caller (or the task around the
        # library call, `pacing`) shares them with other processes on the same key.
        self.pacer = pacer or ambient_pacer(endpoint) or InProcessPacer.of(limits)
        self.cache = ResponseCache(cache_dir)
        self.budget = budget
        self.spent = spent or ServiceStats()
        self.stats = ServiceStats()
        self.progress = progress
        self.budget_hit = False
        self.tripped = False  # circuit breaker: too many calls of this batch failed
        self._reserved_usd = 0.0  # worst cases of the attempts in flight
        self._cost_usd = 0.0  # what this client spent (cached replies included), unrounded
        self.cache_error: str | None = None  # a paid reply could not be cached: stop sending
        self._unsaved = 0
        self._api_key = None
        self._secrets = secret_values([endpoint.api_key_env])
        if endpoint.api_key_env:
            self._api_key = os.environ.get(endpoint.api_key_env)
            if not self._api_key:
                raise InputError(f"environment variable {endpoint.api_key_env} is not set",
                                 field=f"{endpoint.field}.api_key_env")
            self._secrets = sorted(set(self._secrets) | {self._api_key}, key=len, reverse=True)
        self.structured = supports_structured_output(endpoint, limits.structured_output)

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def safe_message(self, text: str, limit: int = 300) -> str:
        """Error text fit for logs, results and files: redacted first, then cut."""
        return safe_message(text, limit, self._secrets)

    # -- budget ---------------------------------------------------------------------------
    # One attempt = one reservation: the worst case of the attempt (prompt tokens bounded from the
    # text, completion = max_tokens, at the endpoint's price) is reserved before it is sent and
    # settled after it in one step, with no await in between: released, and replaced by the real
    # cost (a reply), nothing (the provider refused it: an HTTP error status) or the reserved
    # worst case (a timeout: the provider may have run and billed it; we cannot know).
    def attempt_cost_usd(self, request: Request) -> float:
        """The most one attempt of `request` can cost."""
        schema = request.schema if self.structured else None
        prompt = prompt_token_bound(self.endpoint.model, request.messages, schema)
        return price_usd(self.endpoint, prompt, request.max_tokens) or 0.0

    def used_usd(self) -> float:
        """Spent by earlier stages + by this client (exact, not the rounded figure in `stats`)."""
        return self.spent.cost_usd + self._cost_usd

    def _reserve(self, usd: float, *, new_call: bool) -> bool:
        """Reserve one attempt's worst case; False when a cap would be crossed (nothing reserved)."""
        if self.budget is not None:
            if new_call and self.spent.calls + self.stats.calls >= self.budget.max_calls:
                return False
            if self.budget.max_usd == 0:
                if usd > 0:
                    return False
            elif self.used_usd() + self._reserved_usd + usd > self.budget.max_usd:
                return False
        self._reserved_usd += usd
        return True

    def _settle(self, reserved: float, record: dict | None = None, charge_usd: float = 0.0) -> None:
        """Release an attempt's reservation and charge what it cost, in the same step."""
        self._reserved_usd = max(0.0, self._reserved_usd - reserved)
        if record is not None:
            self._account(record)
        elif charge_usd:
            self._charge(charge_usd)

    def _charge(self, usd: float) -> None:
        self._cost_usd += usd
        self.stats.cost_usd = round(self._cost_usd, 8)

    def _account(self, record: dict) -> None:
        self.stats.prompt_tokens += record.get("prompt_tokens", 0)
        self.stats.completion_tokens += record.get("completion_tokens", 0)
        self._charge(float(record.get("cost_usd", 0.0)))

    # -- one attempt ----------------------------------------------------------------------
    async def _send(self, request: Request) -> dict:
        """One attempt: one request to the provider, its reply as a cache record."""
        t0 = time.perf_counter()  # the attempt's wall time: service latency on the decision page
        if self.endpoint.is_standin:
            return {**self._standin_call(request), "latency_s": round(time.perf_counter() - t0, 6)}
        import litellm

        litellm.suppress_debug_info = True
        kwargs: dict[str, Any] = dict(model=self.endpoint.model, messages=request.messages,
                                      temperature=request.temperature, max_tokens=request.max_tokens,
                                      timeout=self.limits.timeout_s, max_retries=0)
        if self.endpoint.api_base:
            kwargs["api_base"] = self.endpoint.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        if self.structured and request.schema:
            kwargs["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "reply", "schema": request.schema}}
        response = await litellm.acompletion(**kwargs)
        choice = response.choices[0]
        content = well_formed(choice.message.content or "")
        usage = getattr(response, "usage", None)
        pt = int(getattr(usage, "prompt_tokens", 0) or 0)
        ct = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = price_usd(self.endpoint, pt, ct)
        if cost is None:
            try:
                cost = float(litellm.completion_cost(completion_response=response) or 0.0)
            except Exception:  # noqa: BLE001 - unpriced self-hosted endpoint (allowed only at max_usd 0)
                cost = 0.0
        return {"content": content, "model": self.endpoint.model, "finish_reason": choice.finish_reason,
                "prompt_tokens": pt, "completion_tokens": ct, "cost_usd": cost, "created": time.time(),
                "latency_s": round(time.perf_counter() - t0, 6)}

    def _standin_call(self, request: Request) -> dict:
        """The offline stand-in teacher, configured per call by this endpoint's pool."""
        from .standin import reply

        prompt = "\n".join(m.get("content") or "" for m in request.messages if m.get("role") == "user")
        text = reply(prompt, self.endpoint.standin_pool, request.variant)
        return {"content": text, "model": self.endpoint.model, "finish_reason": "stop",
                "prompt_tokens": approx_tokens(prompt), "completion_tokens": approx_tokens(text), "cost_usd": 0.0,
                "created": time.time()}

    @staticmethod
    def _backoff_s(retry_no: int, exc: BaseException) -> float:
        """Exponential backoff with jitter (1, 2, 4 ... 30 s), never shorter than Retry-After."""
        return max(min(30.0, 2.0 ** (retry_no - 1)) + random.uniform(0, 1), _retry_after_s(exc) or 0.0)

    def _store(self, key: str, record: dict, *, paid: bool = True) -> None:
        """Cache a reply. It is already charged; if it cannot be written, no further call is sent
        (each would be paid and lost the same way) and the batch ends with ReplyCacheError."""
        try:
            self.cache.put(key, record)
        except OSError as exc:
            self._unsaved += paid
            if self.cache_error is None:
                self.cache_error = self.safe_message(f"{type(exc).__name__}: {exc}", 300)
            log.error("%s: a paid reply could not be written to the reply cache: %s", self.endpoint.field,
                      self.cache_error)

    async def _fetch(self, req: Request, key: str, pace: PacerSession) -> tuple[dict | None, Result | None]:
        """The reply for `req`: from the cache (its recorded cost still counts: it was paid by
        this run directory), or from the provider within budget, each attempt reserved first."""
        record = self.cache.get(key)
        if record is not None:
            self.stats.cached += 1
            self._account(record)
            return record, None
        async with pace.call():
            if self.tripped or self.cache_error:
                why = "the service is failing" if self.tripped else "the reply cache cannot be written"
                return None, Result(False, error=f"not sent: {why}", kind="skipped")
            worst = self.attempt_cost_usd(req)
            # Pacing, not money: the provider's likely count (its tokenizer, else ~4 characters a token).
            exact = model_tokenizer(self.endpoint.model) is not None
            tokens = (prompt_token_bound(self.endpoint.model, req.messages) if exact else
                      req.approx_prompt_tokens()) + req.max_tokens
            reason = None
            for attempt_no in range(self.limits.max_retries + 1):
                # inside the semaphore: every attempt in flight is reserved
                if not self._reserve(worst, new_call=attempt_no == 0):
                    self.budget_hit = True
                    if attempt_no == 0:
                        return None, Result(False, error="budget exhausted before this call", kind="budget")
                    return None, Result(False, error=f"budget exhausted before retry {attempt_no}; last error: "
                                        f"{reason}", kind="budget")
                if attempt_no == 0:
                    self.stats.calls += 1
                else:
                    self.stats.retries += 1
                settled = False
                try:
                    async with pace.send(tokens):
                        record = await self._send(req)
                    self._settle(worst, record)
                    settled = True
                    break
                except Exception as exc:  # recorded and counted, never a crash of the run
                    # a timed-out request may have run (and been billed): charge its worst case
                    self._settle(worst, charge_usd=worst if _timed_out(exc) else 0.0)
                    settled = True
                    reason = self.safe_message(f"{type(exc).__name__}: {exc}", 300)
                    if not _retryable(exc) or attempt_no == self.limits.max_retries:
                        self.stats.failed += 1
                        log.warning("%s call failed after %d attempt(s): %s", self.endpoint.field, attempt_no + 1,
                                    reason)
                        return None, Result(False, error=reason, kind="call")
                    await asyncio.sleep(self._backoff_s(attempt_no + 1, exc))
                finally:
                    if not settled:  # cancelled mid-attempt (a stop signal): release, charge nothing known
                        self._settle(worst)
        self._store(key, record)
        return record, None

    async def _one(self, request: Request, parse: Callable[[str], Any], salt: dict, pace: PacerSession) -> Result:
        req, error = request, None
        for reask in range(self.limits.max_parse_retries + 1):
            key = self.cache.key(self.endpoint.model, req, salt)
            record, failed = await self._fetch(req, key, pace)
            if failed is not None:
                return failed
            content = well_formed(record.get("content") or "")
            truncated = record.get("finish_reason") == "length"
            try:
                return Result(True, value=parse(content), truncated=truncated)
            except Exception as exc:  # noqa: BLE001 - any reply that does not validate is a parse failure
                error = self.safe_message(f"{exc}", 300) + (" (the reply was cut off at max_tokens)" if truncated
                                                            else "")
            if not record.get("invalid"):
                self._store(key, {**record, "invalid": error}, paid=False)  # kept for audit, never served as valid
            # The re-ask shows the model its reply and what was wrong: a new request, its own cache entry.
            req = replace(request, messages=request.messages + [
                {"role": "assistant", "content": content[:4000]},
                {"role": "user", "content": REASK.format(error=error)}],
                variant={**request.variant, "reask": reask + 1})
        return Result(False, error=f"unusable reply: {error}", kind="parse")

    async def arun(self, requests: Sequence[Request], parse: Callable[[str], Any], *, salt: dict | None = None,
                   desc: str = "service", on_progress: Callable[[int, int], None] | None = None) -> list[Result]:
        from tqdm.auto import tqdm

        salt = {**(salt or {}), "structured": self.structured}
        bar = tqdm(total=len(requests), desc=desc, unit="call", disable=None if self.progress else True, leave=False)
        done, failed = 0, 0
        # The same verdict as `failing_reason`, on the calls finished so far: a share from
        # min_calls_for_breaker calls on; before that only a handful of calls that all failed.
        min_share_calls = min(len(requests), self.limits.min_calls_for_breaker)
        min_all_failed = min(len(requests), max(4, self.limits.max_concurrency))

        async def tracked(r: Request) -> Result:
            nonlocal done, failed
            res = await self._one(r, parse, salt, pace)
            bar.update(1)
            done += 1
            failed += res.kind in ("call", "parse")
            if (done >= min_share_calls and failed / done > self.limits.max_failure_rate) or (
                    done >= min_all_failed and failed == done):
                self.tripped = True
            if on_progress is not None:
                on_progress(done, len(requests))
            return res

        try:
            async with self.pacer.session() as pace:  # the pacer's state belongs to this event loop
                results = list(await asyncio.gather(*(tracked(r) for r in requests)))
        finally:
            bar.close()
        if self.cache_error:
            raise ReplyCacheError(
                f"{self.endpoint.field}: the reply cache {self.cache.root} cannot be written ({self.cache_error}); "
                f"{self._unsaved} paid repl{'y' if self._unsaved == 1 else 'ies'} could not be saved (charged: this "
                f"client spent {self.stats.cost_usd:.4f} USD) and no further call was sent. Free disk space or fix "
                "the directory's permissions, then re-run (unsaved replies will be asked again).", self.stats)
        return results

    def run(self, requests: Sequence[Request], parse: Callable[[str], Any], **kw) -> list[Result]:
        return asyncio.run(self.arun(requests, parse, **kw))


def write_failure_log(path: str | Path, stage: str, results: list[Result], keys: list[str]) -> None:
    """The failed requests of a stage (stage, key, kind, redacted reason), beside its output."""
    from .store import atomic_write_jsonl

    atomic_write_jsonl(path, [{"stage": stage, "key": k, "kind": r.kind, "reason": r.error}
                              for k, r in zip(keys, results) if not r.ok])


def failure_rate(results: list[Result]) -> float:
    """Share of a stage's requests that produced nothing usable (budget stops excluded)."""
    counted = [r for r in results if r.kind != "budget"]
    return sum(not r.ok for r in counted) / len(counted) if counted else 0.0


MIN_CALLS_FOR_BREAKER = 10  # default of service.min_calls_for_breaker


def failing_reason(stage: str, results: list[Result], max_rate: float,
                   min_calls: int = MIN_CALLS_FOR_BREAKER) -> str | None:
    """The circuit breaker's verdict on one stage: None while the service is usable. A share of
    a handful of calls is noise (3 failed judgements of 4 validation items must not discard a
    round): below `min_calls` calls it trips only when none of them produced anything."""
    rate = failure_rate(results)
    counted = sum(1 for r in results if r.kind != "budget")
    if results and rate > max_rate and (counted >= min_calls or rate == 1.0):
        sample = next((r.error for r in results if not r.ok and r.kind != "skipped"), "")
        return f"{stage}: {rate:.0%} of calls failed (limit {max_rate:.0%}); e.g. {sample}"
    return None


def budget_left(spent: ServiceStats, budget: BudgetConfig) -> bool:
    """True while another service call is allowed (pure; used between stages and rounds)."""
    if spent.calls >= budget.max_calls:
        return False
    return spent.cost_usd < budget.max_usd if budget.max_usd > 0 else spent.cost_usd == 0
