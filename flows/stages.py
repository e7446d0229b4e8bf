"""Orchestration helpers shared by the parent flow and the round subflow: call a stage task,
charge its spending, and turn its budget / circuit-breaker verdicts into loop stops."""

from __future__ import annotations

from llamaduo.config import RunConfig
from llamaduo.gate import STOP_BUDGET, STOP_SERVICE_FAILING
from llamaduo.records import AnswersResult, Artifact, EvalResult, StudentRef
from tasks._policy import run_stage
from tasks.evaluate import evaluate, infer

from .state import LoopState, StopLoop


def service_stage(state: LoopState, task, out: str, /, **params):
    """Run a service-calling stage; its spending is charged even when it stops the loop."""
    result, fresh = run_stage(task, out, spent=state.spent, **params)
    state.charge(result.service, fresh)
    if result.budget_hit:
        raise StopLoop(STOP_BUDGET, f"budget reached in {task.name} ({out})")
    if result.failing:
        raise StopLoop(STOP_SERVICE_FAILING, result.failing)
    return result


def judge_answers(cfg: RunConfig, root: str, state: LoopState, items: Artifact, answers: Artifact, label: str,
                  out: str) -> EvalResult:
    return service_stage(state, evaluate, out, root=root, judge=cfg.judge, endpoint=cfg.judge_endpoint(),
                         limits=cfg.service, budget=cfg.budget, items=items, answers=answers, label=label, out=out)


def answer_and_judge(cfg: RunConfig, root: str, state: LoopState, student: StudentRef, adapter: Artifact | None,
                     items: Artifact, prefix: str, label: str, durations: dict) -> tuple[EvalResult, AnswersResult]:
    """The student answers `items` (test or validation split) and the judge scores the answers."""
    inf, _ = run_stage(infer, f"{prefix}answers.jsonl", root=root, infer_cfg=cfg.infer, student=student,
                       adapter=adapter, items=items, system_prompt=cfg.student.system_prompt,
                       out=f"{prefix}answers.jsonl")
    durations["infer"] = durations.get("infer", 0.0) + inf.seconds
    ev = judge_answers(cfg, root, state, items, inf.answers, label, f"{prefix}judged.jsonl")
    durations["evaluate"] = durations.get("evaluate", 0.0) + ev.seconds
    return ev, inf
