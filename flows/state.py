"""The loop's state between rounds (`llamaduo.loop.LoopState`), its stop signal, and the summary and
report written after every round."""

from __future__ import annotations

from llamaduo.config import STANDIN_MODEL, RunConfig
from llamaduo.loop import Invocation, LoopState  # noqa: F401 - the state flows hand on, a library value
from llamaduo.records import DataSummary, RoundRecord, SplitResult, Summary
from llamaduo.standin import LABEL as STANDIN_LABEL


class StopLoop(Exception):
    """A stage asked the loop to stop (budget cap, failing service); the flow records why."""

    def __init__(self, reason: str, detail: str | None = None):
        super().__init__(detail or reason)
        self.reason, self.detail = reason, detail


def teacher_note(cfg: RunConfig) -> str:
    return f"Teacher and judge: {STANDIN_LABEL}" if STANDIN_MODEL in (cfg.service.model, cfg.judge_model) else ""


def summary_for(state: LoopState, cfg: RunConfig, data: SplitResult | None, *, passed: bool = False,
                final_model_dir: str | None = None, exported: RoundRecord | None = None,
                export_check: dict | None = None) -> Summary:
    return Summary(name=cfg.name, passed=passed, stop_reason=state.stop_reason, stop_detail=state.stop_detail,
                   final_model_dir=final_model_dir, exported_round=exported.round if exported else None,
                   exported_round_passed=exported.gate.passed if exported else None, export_check=export_check,
                   teacher=cfg.service.model, judge=cfg.judge_model, student=cfg.student.model,
                   data=DataSummary(train_rows=data.train_rows, val_rows=data.val_rows, test_rows=data.test_rows,
                                    removed=data.removed) if data else DataSummary(),
                   baselines=state.baselines, baseline_evaluations=state.baseline_evaluations,
                   service_total=state.spent, preflight=state.preflight,
                   rounds=sorted(state.rounds, key=lambda r: r.round), calibration=state.calibration)


def record_round(state: LoopState, cfg: RunConfig, root: str, data: SplitResult, entry: RoundRecord) -> None:
    """Add the round to the summary (rewritten atomically) and publish its report."""
    from llamaduo.metrics import BASELINE_BASE_STUDENT
    from llamaduo.summary import write_summary
    from tasks._policy import run_stage
    from tasks.report import publish_round_report

    previous = max((r for r in state.rounds if r.round < entry.round), key=lambda r: r.round, default=None)
    state.rounds = [r for r in state.rounds if r.round != entry.round] + [entry]
    write_summary(root, summary_for(state, cfg, data))
    out = f"rounds/round_{entry.round:02d}/report.md"
    run_stage(publish_round_report, out, root=root, entry=entry, previous=previous,
              history=sorted(state.rounds, key=lambda r: r.round),
              baselines={k: v for k, v in state.baselines.items()
                         if k != BASELINE_BASE_STUDENT or entry.round != 0},
              metric=cfg.gate.metric, threshold=cfg.gate.threshold, teacher_note=teacher_note(cfg), out=out)
