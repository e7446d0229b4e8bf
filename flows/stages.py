"""Orchestration helpers shared by the parent flow and the round subflow: call a stage task,
charge its spending (each returns the new `LoopState` beside its result), and turn its budget /
circuit-breaker verdicts into loop stops."""

from __future__ import annotations

from typing import Any

from llamaduo.config import RunConfig
from llamaduo.gate import STOP_BUDGET, STOP_CACHE_WRITE_FAILED, STOP_SERVICE_FAILING
from llamaduo.gate import decide, selection_split
from llamaduo.judge import parity
from llamaduo.metrics import BASELINE_SERVICE, METRICS
from llamaduo.service import ReplyCacheError
from llamaduo.store import round_dir
from llamaduo.records import (AnswersResult, Artifact, EvalResult, Evaluation, RoundRecord, ServiceStats,
                              SplitResult, StudentRef)
from tasks._policy import run_stage
from tasks.evaluate import evaluate, infer

from .gpu import run_gpu_stage
from .state import LoopState, StopLoop


def service_stage(state: LoopState, task, out: str, /, **params) -> tuple[Any, LoopState]:
    """Run a service-calling stage; returns its result and the state with its spending charged.
    A stop carries that state too: spending is charged even when it stops the loop."""
    try:
        result, fresh = run_stage(task, out, spent=state.spent, **params)
    except ReplyCacheError as exc:  # paid replies that could not be saved: charged, and the loop stops
        raise StopLoop(state.charged(exc.stats, True).stopped(STOP_CACHE_WRITE_FAILED, str(exc))) from None
    state = state.charged(result.service, fresh)
    if result.budget_hit:
        raise StopLoop(state.stopped(STOP_BUDGET, f"budget reached in {task.name} ({out})"))
    if result.failing:
        raise StopLoop(state.stopped(STOP_SERVICE_FAILING, result.failing))
    return result, state


def judge_answers(cfg: RunConfig, root: str, state: LoopState, items: Artifact, answers: Artifact, label: str,
                  out: str) -> tuple[EvalResult, LoopState]:
    return service_stage(state, evaluate, out, root=root, judge=cfg.judge, endpoint=cfg.judge_endpoint(),
                         limits=cfg.service, budget=cfg.budget, items=items, answers=answers, label=label, out=out)


def answer_and_judge(cfg: RunConfig, root: str, state: LoopState, student: StudentRef, adapter: Artifact | None,
                     items: Artifact, prefix: str, label: str, durations: dict
                     ) -> tuple[EvalResult, AnswersResult, LoopState]:
    """The student answers `items` (test or validation split) and the judge scores the answers."""
    inf, _ = run_gpu_stage(infer, f"{prefix}answers.jsonl", root=root, infer_cfg=cfg.infer, student=student,
                       adapter=adapter, items=items, system_prompt=cfg.student.system_prompt,
                       out=f"{prefix}answers.jsonl")
    durations["infer"] = durations.get("infer", 0.0) + inf.seconds
    ev, state = judge_answers(cfg, root, state, items, inf.answers, label, f"{prefix}judged.jsonl")
    durations["evaluate"] = durations.get("evaluate", 0.0) + ev.seconds
    return ev, inf, state


def evaluate_student(cfg: RunConfig, root: str, state: LoopState, student: StudentRef, adapter: Artifact | None,
                     data: SplitResult, round_no: int, durations: dict
                     ) -> tuple[EvalResult, AnswersResult, EvalResult | None, LoopState]:
    """Round k's student (round 0: the base student) on the test split, and on the validation
    split when there is one."""
    rdir = f"{round_dir(round_no)}/"
    ev, inf, state = answer_and_judge(cfg, root, state, student, adapter, data.test, rdir, f"round {round_no}",
                                      durations)
    val = None
    if data.val_rows:
        val, _, state = answer_and_judge(cfg, root, state, student, adapter, data.val, f"{rdir}val_",
                                         f"round {round_no} validation", durations)
    return ev, inf, val, state


def service_share(cfg: RunConfig, state: LoopState) -> float | None:
    """How much of the service baseline counts for parity: its valid judgements for a judge
    metric, its answered items for a reference metric (None without a service baseline)."""
    ev = state.baseline_evaluations.get(BASELINE_SERVICE)
    if ev is None:
        return None
    if METRICS[cfg.gate.metric].judge:
        return ev.judged_share
    return ev.answered_share


def round_record(cfg: RunConfig, state: LoopState, round_no: int, ev: EvalResult, inf: AnswersResult,
                 val: EvalResult | None, spend: ServiceStats, durations: dict, **fields) -> RoundRecord:
    """The round's record with its gate decision (and parity when there is a service baseline),
    and what keep-best compares it on (validation, or test when there is no validation split)."""
    service_metrics = state.baselines.get(BASELINE_SERVICE)
    chosen_on = val if val is not None else ev
    return RoundRecord(
        round=round_no, metrics=ev.metrics, val_metrics=val.metrics if val else {},
        gate=decide(ev.metrics, cfg.gate, ev.per_item.get(cfg.gate.metric), service_metrics, ev.judged_share,
                    service_share(cfg, state)),
        parity=parity(ev.metrics, service_metrics) if service_metrics else {}, service=spend,
        durations_s={k: round(v, 2) for k, v in durations.items()}, evaluation=Evaluation.of(ev),
        val_evaluation=Evaluation.of(val) if val is not None else None,
        selection_split=selection_split(val is not None),
        selection_items=chosen_on.per_item_by_id.get(cfg.gate.metric, {}),
        judged=ev.judged, answers=inf.answers, infer_stats=inf.stats, **fields)
