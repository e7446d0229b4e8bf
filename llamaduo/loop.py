"""What the recursive round subflow hands to the next round: a typed value of records, artifacts
and stats (small), defined in the library so the result serializer can rebuild it without the
flows layer."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .records import Artifact, Calibration, Evaluation, RoundRecord, ServiceStats


class Invocation(BaseModel):
    """What this invocation actually did (stages answered from Prefect's cache count nothing)."""
    service_calls: int = 0
    training_steps: int = 0


class LoopState(BaseModel):
    rounds: list[RoundRecord] = Field(default_factory=list)
    train_parts: list[Artifact] = Field(default_factory=list)  # coverage train + curated rows per round
    train_rows: int = 0
    seed_offset: int = 0
    spent: ServiceStats = Field(default_factory=ServiceStats)
    stop_reason: str | None = None
    stop_detail: str | None = None
    baselines: dict[str, dict[str, float]] = Field(default_factory=dict)  # name -> test metrics
    baseline_evaluations: dict[str, Evaluation] = Field(default_factory=dict)  # name -> answered / judged counts
    last_val_judged: Artifact | None = None  # latest per-item validation scores (failure-driven seeds)
    last_adapter: Artifact | None = None  # the previous round's adapter (train.warm_start continues it)
    invocation: Invocation = Field(default_factory=Invocation)
    preflight: ServiceStats = Field(default_factory=ServiceStats)  # the preflight's probe calls
    calibration: Calibration | None = None  # the judge's agreement with people (None: not calibrated)

    def charge(self, stats: ServiceStats, fresh: bool) -> None:
        self.spent = self.spent.plus(stats)
        if fresh:
            self.invocation.service_calls += stats.calls

    def stop(self, reason: str, detail: str | None = None) -> "LoopState":
        self.stop_reason, self.stop_detail = reason, detail
        return self
