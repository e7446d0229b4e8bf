"""What the recursive round subflow hands to the next round (small: paths, hashes, stats)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from llamaduo.config import RunConfig
from llamaduo.service import ServiceStats
from llamaduo.store import RunDir
from llamaduo.summary import build_summary, write_summary


class LoopState(BaseModel):
    rounds: list[dict] = Field(default_factory=list)
    train_parts: list[dict] = Field(default_factory=list)  # artifacts: coverage train + curated rows per round
    train_rows: int = 0
    seed_offset: int = 0
    spent: dict = Field(default_factory=dict)
    stop_reason: str | None = None
    baselines: dict[str, dict] = Field(default_factory=dict)  # name -> metrics (base student, service LLM)
    last_judged: dict | None = None  # artifact of the latest per-item scores (failure-driven seeds)

    def spent_with(self, stats: ServiceStats | dict) -> dict:
        """Service spending of the run so far plus `stats` (what a stage's budget check starts from)."""
        return ServiceStats().add(self.spent).add(stats).to_dict()

    def charge(self, stats: ServiceStats | dict) -> None:
        self.spent = self.spent_with(stats)


def summary_for(state: LoopState, cfg: RunConfig, *, passed: bool = False, final_model_dir: str | None = None) -> dict:
    return build_summary(cfg.name, state.rounds, passed=passed, stop_reason=state.stop_reason,
                         final_model_dir=final_model_dir, teacher=cfg.service.model, judge=cfg.judge_model,
                         student=cfg.student.model, baselines=state.baselines,
                         service_total=ServiceStats().add(state.spent).to_dict())


def record_round(state: LoopState, cfg: RunConfig, rd: RunDir, entry: dict, judged: dict) -> None:
    """Add the round to the summary (rewritten atomically) and publish its report."""
    from llamaduo.config import STANDIN_MODEL
    from llamaduo.standin import LABEL
    from tasks._policy import stage
    from tasks.report import publish_round_report

    previous = max((r for r in state.rounds if r["round"] < entry["round"]), key=lambda r: r["round"], default=None)
    state.rounds = [r for r in state.rounds if r["round"] != entry["round"]] + [entry]
    write_summary(rd, summary_for(state, cfg))
    report_path = rd.round(entry["round"]) / "report.md"
    note = f"Teacher and judge: {LABEL}" if STANDIN_MODEL in (cfg.service.model, cfg.judge_model) else ""
    stage(publish_round_report, report_path)(
        entry, previous, sorted(state.rounds, key=lambda r: r["round"]),
        {k: v for k, v in state.baselines.items() if k != "base student" or entry["round"] != 0},
        cfg.gate.metric, cfg.gate.threshold, note, judged, str(rd.root / "report" / "metrics.png"), str(report_path))
