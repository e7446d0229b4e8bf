"""The loop's stop signal, and the summary built from its state (`llamaduo.loop.LoopState`)."""

from __future__ import annotations

from llamaduo.config import RunConfig
from llamaduo.loop import LoopState
from llamaduo.records import DataSummary, ExportCheck, RoundRecord, SplitResult, Summary


class StopLoop(Exception):
    """A stage asked the loop to stop (budget cap, failing service). Carries the state the loop
    stopped in: its stop reason set and every stage's spending charged, the stopping stage's too."""

    def __init__(self, state: LoopState):
        super().__init__(state.stop_detail or state.stop_reason)
        self.state = state


def summary_for(state: LoopState, cfg: RunConfig, data: SplitResult | None, *, passed: bool = False,
                final_model_dir: str | None = None, exported: RoundRecord | None = None,
                export_check: ExportCheck | None = None) -> Summary:
    return Summary(name=cfg.name, passed=passed, stop_reason=state.stop_reason, stop_detail=state.stop_detail,
                   final_model_dir=final_model_dir, exported_round=exported.round if exported else None,
                   exported_round_passed=exported.gate.passed if exported else None, export_check=export_check,
                   teacher=cfg.service.model, judge=cfg.judge_model, student=cfg.student.model,
                   data=DataSummary(train_rows=data.train_rows, val_rows=data.val_rows, test_rows=data.test_rows,
                                    removed=data.removed) if data else DataSummary(),
                   baselines=state.baselines, baseline_evaluations=state.baseline_evaluations,
                   service_total=state.spent, preflight=state.preflight,
                   rounds=state.sorted_rounds(), calibration=state.calibration)
