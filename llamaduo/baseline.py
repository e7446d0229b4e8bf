"""The service LLM's own answers to the test prompts: the ceiling the student is compared with.

Only answers the service gave are written: a failed call is counted (`stats.unanswered`), never
written as "" and judged against the reference, which would lower the service's score and make
`gate.min_parity` easier to pass. Judging counts the missing items as requested, not valid."""

from __future__ import annotations

import time
from pathlib import Path

from .config import BudgetConfig, Endpoint, InferConfig, ServiceConfig
from .data import Example, to_chat
from .records import AnswersResult, Artifact, ServiceStats
from .service import Request, ServiceClient, failing_reason
from .store import atomic_write_jsonl, read_jsonl


def _plain_text(text: str) -> str:
    if not text.strip():
        raise ValueError("empty answer")
    return text.strip()


def service_answers(root: str | Path, endpoint: Endpoint, limits: ServiceConfig, infer: InferConfig,
                    budget: BudgetConfig, spent: ServiceStats, items: Artifact, system_prompt: str | None,
                    out: str) -> AnswersResult:
    t0 = time.time()
    root = Path(root)
    rows = read_jsonl(items.at(root))
    client = ServiceClient(endpoint, limits, root / "cache" / "service", budget=budget, spent=spent)
    requests = [Request(to_chat(Example.from_dict(it), system_prompt)["prompt"], temperature=0.0,
                        max_tokens=max(infer.max_new_tokens, 64), variant={"purpose": "baseline-answer"})
                for it in rows]
    results = client.run(requests, _plain_text, desc="service LLM answers")
    result = AnswersResult(service=client.stats, budget_hit=client.budget_hit,
                           failing=failing_reason("service baseline answers", results, limits.max_failure_rate,
                                                  limits.min_calls_for_breaker))
    if not result.budget_hit and not result.failing:
        atomic_write_jsonl(root / out, [{"id": it["id"], "answer": r.value, "samples": [r.value]}
                                        for it, r in zip(rows, results) if r.ok])
        result.answers = Artifact.of(root, out)
        result.stats = {"items": len(rows), "answered": sum(r.ok for r in results),
                        "unanswered": sum(not r.ok for r in results)}
    result.seconds = round(time.time() - t0, 3)
    return result
