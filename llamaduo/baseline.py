"""The service LLM's own answers to the test prompts: the ceiling the student is compared with.

Only answers the service gave are written: a failed call is counted (`stats.unanswered`), never
written as "" and judged against the reference, which would lower the service's score and make
`gate.min_parity` easier to pass. Judging counts the missing items as requested, not valid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import BudgetConfig, Endpoint, InferConfig, ServiceConfig
from .data import Example, to_chat
from .records import AnswersResult, Artifact, ServiceAnswerStats, ServiceStats
from .service import Request, Result
from .service_stage import ServiceStage, run_service_stage
from .store import read_jsonl


def _plain_text(text: str) -> str:
    if not text.strip():
        raise ValueError("empty answer")
    return text.strip()


def answer_request(item: dict, infer: InferConfig, system_prompt: str | None) -> Request:
    """The service's request for one test item: the student's prompt (`decision` finds the
    reply's latency in the reply cache by it)."""
    return Request(to_chat(Example.from_dict(item), system_prompt)["prompt"], temperature=0.0,
                   max_tokens=max(infer.max_new_tokens, 64), variant={"purpose": "baseline-answer"})


@dataclass(frozen=True)
class ServiceBaselineAnswers(ServiceStage[list[dict], AnswersResult]):
    """One request per test item; the answers given are the output rows."""
    name = None  # no failure log: an unanswered item is counted in the result's stats
    label = "service baseline answers"
    result_type = AnswersResult
    parse = staticmethod(_plain_text)
    items: Artifact
    infer: InferConfig
    system_prompt: str | None

    def read_inputs(self, root: Path) -> list[dict]:
        return read_jsonl(self.items.at(root))

    def build_requests(self, items: list[dict]) -> list[Request]:
        return [answer_request(it, self.infer, self.system_prompt) for it in items]

    def output_rows(self, items: list[dict], results: list[Result]) -> list[dict]:
        return [{"id": it["id"], "answer": r.value, "samples": [r.value]} for it, r in zip(items, results) if r.ok]

    def fill(self, result: AnswersResult, items: list[dict], results: list[Result], rows: list[dict] | None,
             written: Artifact | None) -> None:
        if rows is None:
            return
        result.answers = written
        result.stats = ServiceAnswerStats(items=len(items), answered=sum(r.ok for r in results),
                                          unanswered=sum(not r.ok for r in results))


def service_answers(root: str | Path, endpoint: Endpoint, limits: ServiceConfig, infer: InferConfig,
                    budget: BudgetConfig, spent: ServiceStats, items: Artifact, system_prompt: str | None,
                    out: str) -> AnswersResult:
    stage = ServiceBaselineAnswers(items=items, infer=infer, system_prompt=system_prompt)
    return run_service_stage(root, stage, endpoint, limits, budget, spent, out=out)
