"""Shadow before the switch: the student answers the application's real requests on the side.

`llamaduo capture --shadow RUN_DIR`: after an exchange is recorded (the application already has the
service's answer), the run's exported student answers the same messages; a sample of those answers is
judged by the run's judge against the service's answer, on a budget of its own. Each shadow answer is
committed to the capture location's `shadow/` shards (with the model's sha256). The agreement per
category — mean judge score with its 95% interval, and the share at the gate's pass score — goes into
the run's decision page: the evidence a reviewer wants before moving traffic.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
from collections import Counter

log = logging.getLogger(__name__)

SHADOW = "shadow"
SHADOW_JSON = "shadow.json"
QUEUE_MAX = 256  # shadow work waiting; beyond it a request is counted as skipped, never delays the application


def sampled(exchange_id: str, rate: float) -> bool:
    """Deterministic sample: the same exchange is judged or not on every run of the shadow."""
    return int(hashlib.sha256(exchange_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < rate


class Shadow:
    """The student's engine, the judge and the shadow writer of one `llamaduo capture --shadow`."""

    def __init__(self, *, engine_url: str, engine_model: str, max_tokens: int, model_sha256: str, cfg, store,
                 sample: float, max_usd: float, max_calls: int, redactor):
        from .config import BudgetConfig
        from .service import ServiceClient, check_pricing
        from .templates import judge_template

        self.engine_url, self.engine_model, self.max_tokens = engine_url, engine_model, max_tokens
        self.model_sha256, self.cfg, self.store, self.sample = model_sha256, cfg, store, sample
        self.redactor = redactor  # the student may echo what the request held: written redacted, as exchanges are
        self.template = judge_template(cfg.judge.prompt_template)
        budget = BudgetConfig(max_calls=max_calls, max_usd=max_usd)
        endpoint = cfg.judge_endpoint()
        check_pricing(endpoint, budget)  # an unpriced judge needs max_usd 0 (self-hosted), as for a run
        self.cache = tempfile.mkdtemp(prefix="llamaduo-shadow-cache-")
        self.judge = ServiceClient(endpoint, cfg.service, self.cache, budget=budget, progress=False)
        self.counts: Counter = Counter()
        self.queue: asyncio.Queue | None = None
        self.http = None

    def offer(self, exchange: dict) -> None:
        """Called after the exchange is committed; never waits."""
        from .capture_coverage import coverage_row

        if self.queue is None:
            import httpx

            self.queue = asyncio.Queue(QUEUE_MAX)
            self.http = httpx.AsyncClient(base_url=self.engine_url, timeout=httpx.Timeout(300, connect=10),
                                          trust_env=False)
            self._task = asyncio.create_task(self._run())
        row, why = coverage_row(exchange)
        if row is None:
            self.counts[f"not comparable ({why.replace('_', ' ')})"] += 1
            return
        try:
            self.queue.put_nowait(exchange)
        except asyncio.QueueFull:
            self.counts["skipped (shadow busy)"] += 1

    async def _run(self) -> None:
        while True:
            exchange = await self.queue.get()
            try:
                record = await self._shadow(exchange)
                await asyncio.to_thread(self.store.commit, [self.redactor.value(record)], SHADOW)
            except Exception as exc:  # noqa: BLE001 - the shadow must never take capture down
                from .redact import safe_message

                self.counts["failed"] += 1
                log.error("shadow: %s", safe_message(f"{type(exc).__name__}: {exc}", 200))

    async def _shadow(self, exchange: dict) -> dict:
        from .capture_coverage import coverage_row
        from .judge import JUDGE_MAX_TOKENS, build_judge_requests, score_items
        from .parsing import parse_judge_reply

        row, _ = coverage_row(exchange)
        messages = [m for m in row["messages"] if m["role"] != "assistant"]
        r = await self.http.post("/v1/chat/completions", json={
            "model": self.engine_model, "messages": messages, "max_tokens": self.max_tokens, "temperature": 0.0})
        r.raise_for_status()
        answer = r.json()["choices"][0]["message"]["content"] or ""
        record = {"exchange_id": exchange.get("id"), "category": exchange.get("category"),
                  "model_sha256": self.model_sha256, "answer": answer, "judged": False}
        self.counts["answered"] += 1
        if not sampled(str(exchange.get("id")), self.sample):
            return record
        item = {"id": str(exchange.get("id")), "instruction": messages[-1]["content"], "response": exchange["answer"]}
        requests = build_judge_requests([item], [[answer]], self.template, repeats=1,
                                        temperature=self.cfg.judge.temperature, max_tokens=JUDGE_MAX_TOKENS)
        results = await self.judge.arun(requests, parse_judge_reply, desc="shadow judge")
        scored = score_items([item], [[answer]], results, 1)[0]
        if "score" in scored:
            self.counts["judged"] += 1
            return {**record, "judged": True, "score": round(scored["score"], 4)}
        why = results[0].kind if results else "none"
        self.counts[f"not judged ({'budget' if why in ('budget', 'skipped') else why})"] += 1
        return {**record, "not_judged": why}


def agreement(records: list[dict], model_sha256: str, pass_score: float) -> dict:
    """Per category (and all): judged shadow answers of this model — n, mean [95% CI], pass share."""
    from .decision import quality_stats

    mine = [r for r in records if r.get("model_sha256") == model_sha256]
    judged = [r for r in mine if r.get("judged") and isinstance(r.get("score"), (int, float))]
    groups: dict[str, list[float]] = {}
    for r in judged:
        groups.setdefault(r.get("category") or "(none)", []).append(float(r["score"]))
    per = {c: quality_stats(v, pass_score).model_dump(mode="json") for c, v in sorted(groups.items())}
    overall = quality_stats([float(r["score"]) for r in judged], pass_score).model_dump(mode="json") if judged else None
    return {"model_sha256": model_sha256, "answered": len(mine), "judged": len(judged),
            "not_judged": len(mine) - len(judged), "pass_score": pass_score, "categories": per, "all": overall}


def write_to_run(run_location: str, report: dict) -> str:
    """shadow.json in the run directory, and its decision page re-rendered with the shadow section."""
    from .decision import DECISION_JSON, write_decision
    from .records import Decision
    from .runstore import RunStore
    from .store import atomic_write_json

    store = RunStore(run_location)
    store.pull(DECISION_JSON)
    store.pull("report/metrics.png")
    atomic_write_json(store.local / SHADOW_JSON, report)
    written = [SHADOW_JSON]
    path = store.local / DECISION_JSON
    if path.is_file():
        decision = Decision.model_validate(json.loads(path.read_text())).model_copy(update={"shadow": report})
        plot = "report/metrics.png" if (store.local / "report" / "metrics.png").is_file() else None
        write_decision(store.local, decision, plot_rel=plot)
        written += [DECISION_JSON, "decision.md"]
    for rel in written:
        store.push(rel)
    return store.where(SHADOW_JSON)
