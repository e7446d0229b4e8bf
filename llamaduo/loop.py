"""What the recursive round subflow hands to the next round: a typed value of records, artifacts
and stats (small), defined in the library so the result serializer can rebuild it without the
flows layer. It is never changed in place: every step of the loop returns a new state."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .records import Artifact, Calibration, Evaluation, Invocation, RoundRecord, ServiceStats


class LoopState(BaseModel):
    model_config = ConfigDict(frozen=True)
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
    champion_adapter: Artifact | None = None  # promote.warm_start: round 1 continues the champion's adapter
    invocation: Invocation = Field(default_factory=Invocation)
    preflight: ServiceStats = Field(default_factory=ServiceStats)  # the preflight's probe calls
    calibration: Calibration | None = None  # the judge's agreement with people (None: not calibrated)

    def _with(self, **fields) -> "LoopState":
        return self.model_copy(update=fields)

    def charged(self, stats: ServiceStats, fresh: bool) -> "LoopState":
        """A stage's spending added; `fresh`: this invocation made its calls (not Prefect's cache)."""
        calls = self.invocation.service_calls + (stats.calls if fresh else 0)
        return self._with(spent=self.spent.plus(stats),
                          invocation=self.invocation.model_copy(update={"service_calls": calls}))

    def trained(self, steps: int) -> "LoopState":
        """This invocation ran `steps` training steps."""
        steps += self.invocation.training_steps
        return self._with(invocation=self.invocation.model_copy(update={"training_steps": steps}))

    def stopped(self, reason: str, detail: str | None = None) -> "LoopState":
        return self._with(stop_reason=reason, stop_detail=detail)

    def with_calibration(self, calibration: Calibration) -> "LoopState":
        return self._with(calibration=calibration)

    def with_seed_offset(self, offset: int) -> "LoopState":
        """Where the next synthesis request samples its seed examples from."""
        return self._with(seed_offset=offset)

    def with_baseline(self, name: str, metrics: dict[str, float], evaluation: Evaluation | None = None
                      ) -> "LoopState":
        """A baseline's test metrics (and, when given, how much of it was answered and judged)."""
        evaluations = self.baseline_evaluations if evaluation is None else {**self.baseline_evaluations,
                                                                           name: evaluation}
        return self._with(baselines={**self.baselines, name: metrics}, baseline_evaluations=evaluations)

    def with_round(self, entry: RoundRecord, val_judged: Artifact | None) -> "LoopState":
        """`entry` recorded (it replaces an earlier record of the same round), and its per-item
        validation scores kept for the next round's failure-driven seeds."""
        rounds = [r for r in self.rounds if r.round != entry.round] + [entry]
        return self._with(rounds=rounds, last_val_judged=val_judged)

    def with_training(self, new_parts: list[Artifact], train_rows: int, adapter: Artifact) -> "LoopState":
        """What the next round builds on: this round's curated parts join the training parts
        (`train_rows` rows in all) and its adapter is the one a warm start continues."""
        return self._with(train_parts=self.train_parts + new_parts, train_rows=train_rows, last_adapter=adapter)

    def sorted_rounds(self) -> list[RoundRecord]:
        return sorted(self.rounds, key=lambda r: r.round)

    def previous_round(self, round_no: int) -> RoundRecord | None:
        """The latest recorded round before `round_no` (None: there is none)."""
        return max((r for r in self.rounds if r.round < round_no), key=lambda r: r.round, default=None)
