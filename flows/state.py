"""What the recursive round subflow hands to the next round (small: paths, hashes, stats)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from llamaduo.config import RunConfig
from llamaduo.store import RunDir
from llamaduo.summary import build_summary, write_summary


class LoopState(BaseModel):
    rounds: list[dict] = Field(default_factory=list)
    train_parts: list[dict] = Field(default_factory=list)  # artifacts: coverage train + curated rows per round
    train_rows: int = 0
    seed_offset: int = 0
    spent: dict = Field(default_factory=dict)
    stop_reason: str | None = None


def summary_for(state: LoopState, cfg: RunConfig, *, passed: bool = False, final_model_dir: str | None = None) -> dict:
    return build_summary(cfg.name, state.rounds, passed=passed, stop_reason=state.stop_reason,
                         final_model_dir=final_model_dir, teacher=cfg.service.model, judge=cfg.judge_model,
                         student=cfg.student.model)


def record_round(state: LoopState, cfg: RunConfig, rd: RunDir, entry: dict) -> None:
    state.rounds = [r for r in state.rounds if r["round"] != entry["round"]] + [entry]
    write_summary(rd, summary_for(state, cfg))
