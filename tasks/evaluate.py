"""Inference, judging and service-baseline tasks."""

from __future__ import annotations

from prefect.runtime import task_run

from llamaduo.baseline import service_answers as collect_service_answers
from llamaduo.config import BudgetConfig, Endpoint, InferConfig, JudgeConfig, ServiceConfig
from llamaduo.gpu import micro_batch_for_attempt
from llamaduo.infer import answer_items
from llamaduo.judge import evaluate_answers
from llamaduo.pacing import pacing
from llamaduo.records import AnswersResult, Artifact, EvalResult, ServiceStats, StudentRef

from ._gpu_retry import GPU_RETRIES
from ._stage import StageTraits, stage
from ._policy import progress_reporter
from .pacing import shared_pacer


@stage("infer", StageTraits(kind="gpu"), **GPU_RETRIES)
def infer(root: str, infer_cfg: InferConfig, student: StudentRef, adapter: Artifact | None, items: Artifact,
          system_prompt: str | None, out: str) -> AnswersResult:
    return answer_items(root, infer_cfg, student, adapter, items, system_prompt, out,
                        batch_size=micro_batch_for_attempt(infer_cfg.batch_size, task_run.run_count or 1))


@stage("service-answers", StageTraits(kind="service", calls="endpoint"))
def service_answers(root: str, endpoint: Endpoint, limits: ServiceConfig, infer_cfg: InferConfig,
                    budget: BudgetConfig, spent: ServiceStats, items: Artifact, system_prompt: str | None,
                    out: str) -> AnswersResult:
    """The service LLM's own answers to the test prompts: the ceiling the student is compared with."""
    with pacing(shared_pacer(endpoint, limits)):  # rpm/tpm/concurrency shared by every run on the key
        return collect_service_answers(root, endpoint, limits, infer_cfg, budget, spent, items, system_prompt, out)


@stage("evaluate", StageTraits(kind="service", calls="endpoint"))
def evaluate(root: str, judge: JudgeConfig, endpoint: Endpoint, limits: ServiceConfig, budget: BudgetConfig,
             spent: ServiceStats, items: Artifact, answers: Artifact, label: str, out: str) -> EvalResult:
    with pacing(shared_pacer(endpoint, limits)):  # the judge's endpoint: its provider and key
        return evaluate_answers(root, judge, endpoint, limits, budget, spent, items, answers, label, out,
                                on_progress=progress_reporter(f"{label} judging"))
