"""The evaluation gate and the loop's stop decision: pure functions.

A decision records every criterion with its value and threshold, so the report can say
exactly why a round passed or failed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .config import GateConfig
from .stats import bootstrap_ci, share_at_least


@dataclass(frozen=True)
class Criterion:
    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: str
    value: float | None
    threshold: float
    reason: str
    criteria: list[Criterion] = field(default_factory=list)

    def to_summary(self) -> dict:
        return {"passed": self.passed, "metric": self.metric, "value": self.value, "threshold": self.threshold,
                "criteria": [asdict(c) for c in self.criteria]}

    def to_dict(self) -> dict:
        return asdict(self)


def decide(metrics: dict[str, float], gate: GateConfig, items: list[float] | None = None,
           service_metrics: dict[str, float] | None = None) -> GateDecision:
    """`items`: per-test-item values of gate.metric (for CI and share); `service_metrics`: the
    service LLM's own metrics on the same items (for parity)."""
    value = metrics.get(gate.metric)
    if value is None:
        return GateDecision(False, gate.metric, None, gate.threshold,
                            f"{gate.metric} is missing (no test item could be judged)")
    items = items or []
    criteria: list[Criterion] = []
    if gate.use_ci_lower and items:
        lo, hi = bootstrap_ci(items, level=gate.ci_level, samples=gate.bootstrap_samples)
        criteria.append(Criterion(f"{gate.metric} CI{int(gate.ci_level * 100)} lower", round(lo, 4), gate.threshold,
                                  lo >= gate.threshold, f"mean {value:.2f}, CI [{lo:.2f}, {hi:.2f}]"))
    else:
        criteria.append(Criterion(f"{gate.metric} mean", value, gate.threshold, value >= gate.threshold))
    if gate.min_share is not None:
        share = share_at_least(items, gate.min_item_score)
        criteria.append(Criterion(f"share of items >= {gate.min_item_score:g}", round(share, 4), gate.min_share,
                                  share >= gate.min_share))
    if gate.min_parity is not None:
        ref = (service_metrics or {}).get(gate.metric)
        ratio = round(value / ref, 4) if ref else None
        criteria.append(Criterion(f"parity {gate.metric} student/service", ratio, gate.min_parity,
                                  ratio is not None and ratio >= gate.min_parity,
                                  "" if ref else "no service baseline value"))
    combine = all if gate.combine == "all" else any
    passed = combine(c.passed for c in criteria)
    reason = "; ".join(f"{c.name} {c.value if c.value is None else format(c.value, '.4g')} "
                       f"{'>=' if c.passed else '<'} {c.threshold:g}" for c in criteria)
    return GateDecision(passed, gate.metric, value, gate.threshold, f"{gate.combine}: {reason}", criteria)


STOP_PASSED = "passed"
STOP_MAX_ROUNDS = "max_rounds"
STOP_BUDGET = "budget"
STOP_PLATEAU = "plateau"


def plateaued(values: list[float], rounds: int, margin: float) -> bool:
    """True when none of the last `rounds` values beat the best before them by more than `margin`."""
    if rounds <= 0 or len(values) <= rounds:
        return False
    best_before = max(values[:-rounds])
    return max(values[-rounds:]) <= best_before + margin


def stop_reason(decision: GateDecision, round_no: int, max_rounds: int, budget_left: bool,
                history: list[float] | None = None, gate: GateConfig | None = None) -> str | None:
    """None = run another round; else why the loop stops."""
    if decision.passed:
        return STOP_PASSED
    if round_no >= max_rounds:
        return STOP_MAX_ROUNDS
    if not budget_left:
        return STOP_BUDGET
    if gate is not None and history and plateaued(history, gate.plateau_rounds, gate.plateau_margin):
        return STOP_PLATEAU
    return None


def best_round(rounds: list[dict], metric: str) -> dict | None:
    """The fine-tuned round with the highest gate metric (ties: the earlier round)."""
    tuned = [r for r in rounds if r["round"] >= 1 and r["metrics"].get(metric) is not None]
    return max(tuned, key=lambda r: (r["metrics"][metric], -r["round"]), default=None)
