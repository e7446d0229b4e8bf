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
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import BudgetConfig, Endpoint, ServiceConfig
from .errors import InputError
from .records import ServiceStats
from .redact import redact, secret_values
from .store import atomic_write_json, sha256_json

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
    """~4 characters per token for English text: for estimates and reservations, not billing."""
    return max(1, len(text) // 4)


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
        atomic_write_json(self._path(key), record)


def _retryable(exc: BaseException) -> bool:
    import litellm

    transient = (litellm.RateLimitError, litellm.Timeout, litellm.APIConnectionError,
                 litellm.InternalServerError, litellm.ServiceUnavailableError)
    if isinstance(exc, transient):
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


def price_usd(endpoint: Endpoint, prompt_tokens: int, completion_tokens: int) -> float | None:
    """Configured per-million-token prices first, then litellm's price map; None = unknown."""
    if endpoint.is_standin:
        return 0.0
    if endpoint.input_cost_per_mtok is not None or endpoint.output_cost_per_mtok is not None:
        return ((endpoint.input_cost_per_mtok or 0.0) * prompt_tokens +
                (endpoint.output_cost_per_mtok or 0.0) * completion_tokens) / 1e6
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


def check_pricing(endpoint: Endpoint, budget: BudgetConfig) -> None:
    """A money cap must hold for every model: an unpriced model needs explicit prices, unless
    it is a self-hosted endpoint (api_base) and the budget allows only free calls."""
    if price_known(endpoint):
        return
    if budget.max_usd == 0 and endpoint.api_base:
        return
    raise InputError(f"litellm has no price for {endpoint.model!r}, so budget.max_usd cannot be enforced; set "
                     f"{endpoint.field}.input_cost_per_mtok and {endpoint.field}.output_cost_per_mtok",
                     field=f"{endpoint.field}.model")


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
                 budget: BudgetConfig | None = None, spent: ServiceStats | None = None, progress: bool = True):
        self.endpoint = endpoint
        self.limits = limits
        self.cache = ResponseCache(cache_dir)
        self.budget = budget
        self.spent = spent or ServiceStats()
        self.stats = ServiceStats()
        self.progress = progress
        self.budget_hit = False
        self.tripped = False  # circuit breaker: too many calls of this batch failed
        self._reserved_usd = 0.0
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

    # -- budget ---------------------------------------------------------------------------
    def _estimate_usd(self, request: Request) -> float:
        return price_usd(self.endpoint, request.approx_prompt_tokens(), request.max_tokens) or 0.0

    def _reserve(self, request: Request) -> float | None:
        """Reserve the call's worst-case cost; None when a cap would be crossed."""
        if self.budget is None:
            return 0.0
        used = self.spent.plus(self.stats)
        if used.calls >= self.budget.max_calls:
            return None
        est = self._estimate_usd(request)
        if self.budget.max_usd == 0:
            if est > 0:
                return None
        elif used.cost_usd + self._reserved_usd + est > self.budget.max_usd:
            return None
        self._reserved_usd += est
        return est

    # -- one call -------------------------------------------------------------------------
    async def _call(self, request: Request, limiter, tpm_limiter) -> dict:
        import litellm
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

        if self.endpoint.is_standin:
            return self._standin_call(request)
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
        backoff = wait_exponential_jitter(initial=1, max=30)

        def wait(state) -> float:
            exc = state.outcome.exception()
            return max(backoff(state), _retry_after_s(exc) or 0.0)

        attempt_no = 0
        async for attempt in AsyncRetrying(stop=stop_after_attempt(self.limits.max_retries + 1), wait=wait,
                                           retry=retry_if_exception(_retryable), reraise=True):
            with attempt:
                attempt_no += 1
                if attempt_no > 1:
                    self.stats.retries += 1
                async with limiter:
                    if tpm_limiter is not None:
                        est = request.approx_prompt_tokens() + request.max_tokens
                        await tpm_limiter.acquire(min(est, tpm_limiter.max_rate))
                    response = await litellm.acompletion(**kwargs)
        choice = response.choices[0]
        content = choice.message.content or ""
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
                "prompt_tokens": pt, "completion_tokens": ct, "cost_usd": cost, "created": time.time()}

    def _standin_call(self, request: Request) -> dict:
        """The offline stand-in teacher, configured per call by this endpoint's pool."""
        from .standin import reply

        prompt = "\n".join(m.get("content") or "" for m in request.messages if m.get("role") == "user")
        text = reply(prompt, self.endpoint.standin_pool)
        return {"content": text, "model": self.endpoint.model, "finish_reason": "stop",
                "prompt_tokens": approx_tokens(prompt), "completion_tokens": approx_tokens(text), "cost_usd": 0.0,
                "created": time.time()}

    def _account(self, record: dict) -> None:
        self.stats.prompt_tokens += record.get("prompt_tokens", 0)
        self.stats.completion_tokens += record.get("completion_tokens", 0)
        self.stats.cost_usd = round(self.stats.cost_usd + float(record.get("cost_usd", 0.0)), 8)

    async def _fetch(self, req: Request, key: str, sem, limiter, tpm_limiter) -> tuple[dict | None, Result | None]:
        """The reply for `req`: from the cache (its recorded cost still counts: it was paid by
        this run directory), or from the provider within budget."""
        record = self.cache.get(key)
        if record is not None:
            self.stats.cached += 1
            self._account(record)
            return record, None
        async with sem:
            if self.tripped:
                return None, Result(False, error="not sent: the service is failing", kind="skipped")
            reserved = self._reserve(req)  # inside the semaphore: calls in flight are reserved
            if reserved is None:
                self.budget_hit = True
                return None, Result(False, error="budget exhausted before this call", kind="budget")
            self.stats.calls += 1
            try:
                record = await self._call(req, limiter, tpm_limiter)
            except Exception as exc:  # recorded and counted, never a crash of the run
                self.stats.failed += 1
                reason = self.redact(f"{type(exc).__name__}: {str(exc)[:300]}")
                log.warning("%s call failed after retries: %s", self.endpoint.field, reason)
                return None, Result(False, error=reason, kind="call")
            finally:
                self._reserved_usd -= reserved
        self.cache.put(key, record)
        self._account(record)
        return record, None

    async def _one(self, request: Request, parse: Callable[[str], Any], salt: dict, sem, limiter,
                   tpm_limiter) -> Result:
        req, error = request, None
        for reask in range(self.limits.max_parse_retries + 1):
            key = self.cache.key(self.endpoint.model, req, salt)
            record, failed = await self._fetch(req, key, sem, limiter, tpm_limiter)
            if failed is not None:
                return failed
            content = record.get("content") or ""
            truncated = record.get("finish_reason") == "length"
            try:
                return Result(True, value=parse(content), truncated=truncated)
            except Exception as exc:  # noqa: BLE001 - any reply that does not validate is a parse failure
                error = self.redact(f"{exc}"[:300]) + (" (the reply was cut off at max_tokens)" if truncated else "")
            if not record.get("invalid"):
                self.cache.put(key, {**record, "invalid": error})  # kept for audit, never served as valid
            # The re-ask shows the model its reply and what was wrong: a new request, its own cache entry.
            req = replace(request, messages=request.messages + [
                {"role": "assistant", "content": content[:4000]},
                {"role": "user", "content": REASK.format(error=error)}],
                variant={**request.variant, "reask": reask + 1})
        return Result(False, error=f"unusable reply: {error}", kind="parse")

    async def arun(self, requests: Sequence[Request], parse: Callable[[str], Any], *, salt: dict | None = None,
                   desc: str = "service", on_progress: Callable[[int, int], None] | None = None) -> list[Result]:
        import litellm
        from aiolimiter import AsyncLimiter
        from tqdm.auto import tqdm

        litellm.suppress_debug_info = True
        sem = asyncio.Semaphore(self.limits.max_concurrency)
        # Limiters belong to this event loop. Paced, not bursty: one request every 60/rpm s
        # never exceeds a sliding-window RPM limit.
        limiter = AsyncLimiter(1, 60 / self.limits.rpm)
        tpm_limiter = AsyncLimiter(self.limits.tpm / 6, 10) if self.limits.tpm else None
        salt = {**(salt or {}), "structured": self.structured}
        bar = tqdm(total=len(requests), desc=desc, unit="call", disable=None if self.progress else True, leave=False)
        done, failed = 0, 0
        # The breaker looks at a handful of finished calls before judging the provider.
        min_seen = min(len(requests), max(4, self.limits.max_concurrency))

        async def tracked(r: Request) -> Result:
            nonlocal done, failed
            res = await self._one(r, parse, salt, sem, limiter, tpm_limiter)
            bar.update(1)
            done += 1
            failed += res.kind in ("call", "parse")
            if done >= min_seen and failed / done > self.limits.max_failure_rate:
                self.tripped = True
            if on_progress is not None:
                on_progress(done, len(requests))
            return res

        try:
            return list(await asyncio.gather(*(tracked(r) for r in requests)))
        finally:
            bar.close()

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


def failing_reason(stage: str, results: list[Result], max_rate: float) -> str | None:
    """The circuit breaker's verdict on one stage: None while the service is usable."""
    rate = failure_rate(results)
    if results and rate > max_rate:
        sample = next((r.error for r in results if not r.ok and r.kind != "skipped"), "")
        return f"{stage}: {rate:.0%} of calls failed (limit {max_rate:.0%}); e.g. {sample}"
    return None


def budget_left(spent: ServiceStats, budget: BudgetConfig) -> bool:
    """True while another service call is allowed (pure; used between stages and rounds)."""
    if spent.calls >= budget.max_calls:
        return False
    return spent.cost_usd < budget.max_usd if budget.max_usd > 0 else spent.cost_usd == 0
