"""The evaluation gate and the loop's stop decision: pure functions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import GateConfig


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: str
    value: float | None
    threshold: float
    reason: str

    def to_summary(self) -> dict:
        return {"passed": self.passed, "metric": self.metric, "value": self.value, "threshold": self.threshold}

    def to_dict(self) -> dict:
        return asdict(self)


def decide(metrics: dict[str, float], gate: GateConfig) -> GateDecision:
    value = metrics.get(gate.metric)
    if value is None:
        return GateDecision(False, gate.metric, None, gate.threshold,
                            f"{gate.metric} is missing (no test item could be judged)")
    passed = value >= gate.threshold
    op = ">=" if passed else "<"
    return GateDecision(passed, gate.metric, value, gate.threshold, f"{gate.metric} {value:.2f} {op} {gate.threshold:g}")


STOP_PASSED = "passed"
STOP_MAX_ROUNDS = "max_rounds"
STOP_BUDGET = "budget"


def stop_reason(decision: GateDecision, round_no: int, max_rounds: int, budget_left: bool) -> str | None:
    """None = run another round; else why the loop stops."""
    if decision.passed:
        return STOP_PASSED
    if round_no >= max_rounds:
        return STOP_MAX_ROUNDS
    if not budget_left:
        return STOP_BUDGET
    return None


def best_round(rounds: list[dict], metric: str) -> dict | None:
    """The fine-tuned round with the highest gate metric (ties: the earlier round)."""
    tuned = [r for r in rounds if r["round"] >= 1 and r["metrics"].get(metric) is not None]
    return max(tuned, key=lambda r: (r["metrics"][metric], -r["round"]), default=None)
