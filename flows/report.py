"""What users see after every round: summary.json rewritten, and the round's report published."""

from __future__ import annotations

from llamaduo.config import STANDIN_MODEL, RunConfig
from llamaduo.loop import LoopState
from llamaduo.metrics import BASELINE_BASE_STUDENT
from llamaduo.records import RoundRecord, SplitResult
from llamaduo.standin import LABEL as STANDIN_LABEL
from llamaduo.store import round_dir
from llamaduo.summary import write_summary
from tasks._policy import run_stage
from tasks.report import publish_round_report

from .state import summary_for


def teacher_note(cfg: RunConfig) -> str:
    return f"Teacher and judge: {STANDIN_LABEL}" if STANDIN_MODEL in (cfg.service.model, cfg.judge_model) else ""


def publish_round(state: LoopState, cfg: RunConfig, root: str, data: SplitResult, entry: RoundRecord) -> None:
    """The summary (rewritten atomically) and the report of round `entry`, already recorded in `state`."""
    write_summary(root, summary_for(state, cfg, data), in_progress=True)  # keeps the last finished verdict
    out = f"{round_dir(entry.round)}/report.md"
    run_stage(publish_round_report, out, root=root, entry=entry, previous=state.previous_round(entry.round),
              history=state.sorted_rounds(),
              baselines={k: v for k, v in state.baselines.items()
                         if k != BASELINE_BASE_STUDENT or entry.round != 0},
              metric=cfg.gate.metric, threshold=cfg.gate.threshold, teacher_note=teacher_note(cfg), out=out)
