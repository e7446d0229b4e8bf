"""The service LLM: async litellm calls with limits, retries, a disk cache and a budget.

Three separate pieces, as in distilabel: prompt formatting lives in synth/judge,
the call lives here, output parsing lives in `parsing`. Every completed reply is
written to the cache *before* it is used, so a re-run or a resume after a crash
never pays for the same call twice. API keys never enter cache, logs or stats.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .config import STANDIN_MODEL, BudgetConfig, ServiceConfig
from .errors import InputError
from .store import atomic_write_json, sha256_json

log = logging.getLogger("llamaduo.service")
# Offline machines: use litellm's bundled price map instead of fetching it at import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

STAT_KEYS = ("calls", "cached", "failed", "retries", "prompt_tokens", "completion_tokens", "cost_usd")


@dataclass
class ServiceStats:
    calls: int = 0
    cached: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, other: "ServiceStats | dict") -> "ServiceStats":
        d = other if isinstance(other, dict) else asdict(other)
        for k in STAT_KEYS:
            setattr(self, k, getattr(self, k) + d.get(k, 0))
        return self

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cost_usd"] = round(d["cost_usd"], 6)
        return d


@dataclass(frozen=True)
class Request:
    messages: list[dict]
    temperature: float = 0.0
    max_tokens: int = 1024
    # Distinguishes requests with the same messages that must not share a reply (judge repeats).
    variant: dict = field(default_factory=dict)


@dataclass
class Result:
    ok: bool
    value: Any = None
    raw: str | None = None
    error: str | None = None
    kind: str | None = None  # "call" | "parse" | "budget" when not ok


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


class CallFailed(Exception):
    pass


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


_LIMITERS: dict[tuple, tuple] = {}


def shared_limiters(model: str, cfg: ServiceConfig) -> tuple:
    """One RPM (and TPM) limiter per model and endpoint in this process, shared by every
    stage, so synthesis and judging together stay inside the provider's limits."""
    from aiolimiter import AsyncLimiter

    key = (model, cfg.api_base, cfg.rpm, cfg.tpm)
    if key not in _LIMITERS:
        # Paced, not bursty: one request every 60/rpm s never exceeds a sliding-window RPM limit.
        _LIMITERS[key] = (AsyncLimiter(1, 60 / cfg.rpm), AsyncLimiter(cfg.tpm / 6, 10) if cfg.tpm else None)
    return _LIMITERS[key]


def estimate_cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """From litellm's price map; None when the model has no listed price (local models: free)."""
    import litellm

    if model.startswith(STANDIN_MODEL.split("/")[0] + "/"):
        return 0.0
    litellm.suppress_debug_info = True
    try:
        p, c = litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        return float(p + c)
    except Exception:  # noqa: BLE001 - unknown model
        return None


class ServiceClient:
    """Calls one model. `run(requests, parse)` returns one Result per request, in order."""

    def __init__(self, cfg: ServiceConfig, cache_dir: str | Path, *, model: str | None = None,
                 budget: BudgetConfig | None = None, spent: ServiceStats | dict | None = None,
                 temperature: float | None = None, progress: bool = True):
        self.cfg = cfg
        self.model = model or cfg.model
        self.cache = ResponseCache(cache_dir)
        self.budget = budget
        self.spent = ServiceStats().add(spent or {})  # earlier stages of this run
        self.stats = ServiceStats()
        self.progress = progress
        self.budget_hit = False
        self._api_key = None
        if cfg.api_key_env:
            self._api_key = os.environ.get(cfg.api_key_env)
            if not self._api_key:
                raise InputError(f"environment variable {cfg.api_key_env} is not set", field="service.api_key_env")
        self._standin = self.model.startswith(STANDIN_MODEL.split("/")[0] + "/")
        if self._standin:
            from .standin import register_standin

            register_standin(cfg.standin_pool)

    # -- budget ---------------------------------------------------------------------------
    def _over_budget(self) -> bool:
        if self.budget is None:
            return False
        return not budget_left(ServiceStats().add(self.spent).add(self.stats), self.budget)

    # -- one call -------------------------------------------------------------------------
    async def _call(self, request: Request, limiter, tpm_limiter) -> dict:
        import litellm
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

        kwargs: dict[str, Any] = dict(model=self.model, messages=request.messages, temperature=request.temperature,
                                      max_tokens=request.max_tokens, timeout=self.cfg.timeout_s, max_retries=0)
        if self.cfg.api_base:
            kwargs["api_base"] = self.cfg.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        backoff = wait_exponential_jitter(initial=1, max=30)

        def wait(state) -> float:
            exc = state.outcome.exception()
            return max(backoff(state), _retry_after_s(exc) or 0.0)

        attempt_no = 0
        async for attempt in AsyncRetrying(stop=stop_after_attempt(self.cfg.max_retries + 1), wait=wait,
                                           retry=retry_if_exception(_retryable), reraise=True):
            with attempt:
                attempt_no += 1
                if attempt_no > 1:
                    self.stats.retries += 1
                async with limiter:
                    if tpm_limiter is not None:
                        est = sum(len(m.get("content") or "") for m in request.messages) // 4 + request.max_tokens
                        await tpm_limiter.acquire(min(est, tpm_limiter.max_rate))
                    response = await litellm.acompletion(**kwargs)
        content = response.choices[0].message.content or ""
        usage = getattr(response, "usage", None)
        cost = 0.0
        if not self._standin:
            try:
                cost = float(litellm.completion_cost(completion_response=response) or 0.0)
            except Exception:  # unknown/local models have no price: they cost nothing
                cost = 0.0
        return {"content": content, "model": self.model,
                "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
                "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
                "cost_usd": cost, "created": time.time()}

    async def _one(self, request: Request, parse: Callable[[str], Any], salt: dict, sem, limiter, tpm_limiter) -> Result:
        last_error = None
        for reask in range(self.cfg.max_parse_retries + 1):
            req = request if reask == 0 else Request(request.messages, request.temperature, request.max_tokens,
                                                     {**request.variant, "reask": reask})
            key = self.cache.key(self.model, req, salt)
            record = self.cache.get(key)
            if record is not None:
                self.stats.cached += 1
            else:
                async with sem:
                    if self._over_budget():  # checked inside the semaphore: in-flight calls count
                        self.budget_hit = True
                        return Result(False, error="budget exhausted before this call", kind="budget")
                    try:
                        self.stats.calls += 1
                        PROCESS_STATS.calls += 1
                        record = await self._call(req, limiter, tpm_limiter)
                    except Exception as exc:  # recorded and counted, never a crash of the run
                        self.stats.failed += 1
                        reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                        log.warning("service call failed after retries: %s", reason)
                        return Result(False, error=reason, kind="call")
                self.cache.put(key, record)
                self.stats.prompt_tokens += record["prompt_tokens"]
                self.stats.completion_tokens += record["completion_tokens"]
                self.stats.cost_usd += record["cost_usd"]
            try:
                return Result(True, value=parse(record["content"]), raw=record["content"])
            except ValueError as exc:
                last_error = f"unparseable reply: {exc}"
        return Result(False, error=last_error, kind="parse")

    async def arun(self, requests: Sequence[Request], parse: Callable[[str], Any], *, salt: dict | None = None,
                   desc: str = "service", on_progress: Callable[[int, int], None] | None = None) -> list[Result]:
        import litellm
        from tqdm.auto import tqdm

        litellm.suppress_debug_info = True
        sem = asyncio.Semaphore(self.cfg.max_concurrency)
        limiter, tpm_limiter = shared_limiters(self.model, self.cfg)
        salt = salt or {}
        bar = tqdm(total=len(requests), desc=desc, unit="call", disable=not self.progress, leave=False)
        done = 0

        async def tracked(r: Request) -> Result:
            nonlocal done
            res = await self._one(r, parse, salt, sem, limiter, tpm_limiter)
            bar.update(1)
            done += 1
            if on_progress is not None:
                on_progress(done, len(requests))
            return res

        try:
            return list(await asyncio.gather(*(tracked(r) for r in requests)))
        finally:
            bar.close()

    def run(self, requests: Sequence[Request], parse: Callable[[str], Any], **kw) -> list[Result]:
        return asyncio.run(self.arun(requests, parse, **kw))


def budget_left(spent: ServiceStats | dict, budget: BudgetConfig) -> bool:
    """True while another service call is allowed (pure; used between stages and rounds)."""
    s = ServiceStats().add(spent)
    if s.calls >= budget.max_calls:
        return False
    return s.cost_usd < budget.max_usd if budget.max_usd > 0 else s.cost_usd == 0


# Calls made by this process (all runs in it): the CLI reports them, so a cached re-run shows 0.
PROCESS_STATS = ServiceStats()
