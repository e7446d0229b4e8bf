"""The evaluation gate and the loop's stop decision: pure functions.

A decision records every criterion with its value and threshold, so the report can say
exactly why a round passed or failed.
"""

from __future__ import annotations

from .config import GateConfig
from .metrics import METRICS
from .records import Criterion, GateDecision, RoundRecord
from .stats import bootstrap_ci, share_at_least


def decide(metrics: dict[str, float], gate: GateConfig, items: list[float] | None = None,
           service_metrics: dict[str, float] | None = None, judged_share: float | None = None) -> GateDecision:
    """`items`: per-test-item values of gate.metric (for CI and share); `service_metrics`: the
    service LLM's own metrics on the same items (for parity); `judged_share`: the share of test
    items with a valid judgement (a judge metric on fewer than gate.min_judged_share of them is
    not evaluable: the round fails)."""
    value = metrics.get(gate.metric)
    if METRICS[gate.metric].judge and judged_share is not None and judged_share < gate.min_judged_share:
        return GateDecision(passed=False, metric=gate.metric, value=value, threshold=gate.threshold,
                            reason=f"not evaluable: only {judged_share:.0%} of test items have a valid judgement "
                                   f"(gate.min_judged_share {gate.min_judged_share:.0%})",
                            criteria=[Criterion(name="judged share", value=round(judged_share, 4),
                                                threshold=gate.min_judged_share, passed=False)])
    if value is None:
        return GateDecision(passed=False, metric=gate.metric, value=None, threshold=gate.threshold,
                            reason=f"{gate.metric} is missing (no test item could be judged)")
    items = items or []
    criteria: list[Criterion] = []
    if gate.use_ci_lower and items:
        lo, hi = bootstrap_ci(items, level=gate.ci_level, samples=gate.bootstrap_samples)
        criteria.append(Criterion(name=f"{gate.metric} CI{int(gate.ci_level * 100)} lower", value=round(lo, 4),
                                  threshold=gate.threshold, passed=lo >= gate.threshold,
                                  detail=f"mean {value:.2f}, CI [{lo:.2f}, {hi:.2f}]"))
    else:
        criteria.append(Criterion(name=f"{gate.metric} mean", value=value, threshold=gate.threshold,
                                  passed=value >= gate.threshold))
    if gate.min_share is not None:
        share = share_at_least(items, gate.min_item_score)
        criteria.append(Criterion(name=f"share of items >= {gate.min_item_score:g}", value=round(share, 4),
                                  threshold=gate.min_share, passed=share >= gate.min_share))
    if gate.min_parity is not None:
        ref = (service_metrics or {}).get(gate.metric)
        ratio = round(value / ref, 4) if ref else None
        criteria.append(Criterion(name=f"parity {gate.metric} student/service", value=ratio,
                                  threshold=gate.min_parity, passed=ratio is not None and ratio >= gate.min_parity,
                                  detail="" if ref else "no service baseline value"))
    combine = all if gate.combine == "all" else any
    passed = combine(c.passed for c in criteria)
    reason = "; ".join(f"{c.name} {c.value if c.value is None else format(c.value, '.4g')} "
                       f"{'>=' if c.passed else '<'} {c.threshold:g}" for c in criteria)
    return GateDecision(passed=passed, metric=gate.metric, value=value, threshold=gate.threshold,
                        reason=f"{gate.combine}: {reason}", criteria=criteria)


STOP_PASSED = "passed"
STOP_MAX_ROUNDS = "max_rounds"
STOP_BUDGET = "budget"
STOP_PLATEAU = "plateau"
STOP_SERVICE_FAILING = "service_failing"
STOP_INTERRUPTED = "interrupted"


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


def selection_value(r: RoundRecord, metric: str) -> float | None:
    """What keep-best and plateau compare: the validation metric when there is a validation
    split (the test split only judges), else the test metric."""
    if r.val_metrics:
        return r.val_metrics.get(metric)
    return r.metrics.get(metric)


def best_round(rounds: list[RoundRecord], metric: str) -> RoundRecord | None:
    """The round to export: the best fine-tuned round *that passed its gate*; when none passed,
    the best fine-tuned round (exported labelled "did not pass"). Ties: the earlier round."""
    tuned = [r for r in rounds if r.round >= 1 and selection_value(r, metric) is not None]
    pool = [r for r in tuned if r.gate.passed] or tuned
    return max(pool, key=lambda r: (selection_value(r, metric), -r.round), default=None)
