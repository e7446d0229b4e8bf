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
           service_metrics: dict[str, float] | None = None, judged_share: float | None = None,
           service_share: float | None = None) -> GateDecision:
    """`items`: per-test-item values of gate.metric (for CI and share); `service_metrics`: the
    service LLM's own metrics on the same items (for parity); `judged_share`: valid judgements /
    requested judgements (items x samples x repeats) of the round (a judge metric below
    gate.min_judged_share is not evaluable: the round fails); `service_share`: the same share for
    the service baseline (its answered share for a reference metric) — parity is not decided on
    a baseline that was mostly not answered or not judged."""
    value = metrics.get(gate.metric)
    if METRICS[gate.metric].judge and judged_share is not None and judged_share < gate.min_judged_share:
        return GateDecision(passed=False, metric=gate.metric, value=value, threshold=gate.threshold,
                            reason=f"not evaluable: only {judged_share:.0%} of the requested judgements are valid "
                                   f"(gate.min_judged_share {gate.min_judged_share:.0%})",
                            criteria=[Criterion(name="judged share", value=round(judged_share, 4),
                                                threshold=gate.min_judged_share, passed=False,
                                                detail="valid / requested judgements (items x samples x repeats)")])
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
        criteria.append(_parity_criterion(value, service_metrics, service_share, gate))
    combine = all if gate.combine == "all" else any
    passed = combine(c.passed for c in criteria)
    reason = "; ".join(f"{c.name} {c.value if c.value is None else format(c.value, '.4g')} "
                       f"{'>=' if c.passed else '<'} {c.threshold:g}" + (f" ({c.detail})" if c.value is None and
                                                                          c.detail else "")
                       for c in criteria)
    return GateDecision(passed=passed, metric=gate.metric, value=value, threshold=gate.threshold,
                        reason=f"{gate.combine}: {reason}", criteria=criteria)


def _parity_criterion(value: float, service_metrics: dict[str, float] | None, service_share: float | None,
                      gate: GateConfig) -> Criterion:
    name = f"parity {gate.metric} student/service"
    if service_share is not None and service_share < gate.min_judged_share:
        what = ("of its requested judgements are valid" if METRICS[gate.metric].judge
                else "of the test items were answered")
        return Criterion(name=name, value=None, threshold=gate.min_parity, passed=False,
                         detail=f"not decided: for the service baseline only {service_share:.0%} {what} "
                                f"(gate.min_judged_share {gate.min_judged_share:.0%})")
    ref = (service_metrics or {}).get(gate.metric)
    ratio = round(value / ref, 4) if ref else None
    return Criterion(name=name, value=ratio, threshold=gate.min_parity,
                     passed=ratio is not None and ratio >= gate.min_parity,
                     detail="" if ref else "no service baseline value")


STOP_PASSED = "passed"
STOP_MAX_ROUNDS = "max_rounds"
STOP_BUDGET = "budget"
STOP_PLATEAU = "plateau"
STOP_SERVICE_FAILING = "service_failing"
STOP_CACHE_WRITE_FAILED = "cache_write_failed"  # paid replies could not be saved: exit 1, fix the disk
STOP_NO_NEW_ROWS = "no_new_rows"  # a warm-started round kept no new rows: nothing to train on
STOP_JUDGE_DISAGREES = "judge_disagrees"  # the judge's agreement with people is below judge.min_agreement: exit 3


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
    if gate is not None and history and plateaued(history, gate.plateau_rounds, gate.margin):
        return STOP_PLATEAU
    return None


SPLIT_VALIDATION = "validation"
SPLIT_TEST = "test"


def selection_split(has_validation: bool) -> str:
    """Which split keep-best and plateau compare a round on (recorded in the round's entry)."""
    return SPLIT_VALIDATION if has_validation else SPLIT_TEST


def selection_value(r: RoundRecord, metric: str) -> float | None:
    """What keep-best and plateau compare: the validation metric when there is a validation
    split (the test split only judges), else the test metric (`r.selection_split` says which)."""
    if r.val_metrics:
        return r.val_metrics.get(metric)
    return r.metrics.get(metric)


def clearly_better(a: dict[str, float], b: dict[str, float], *, level: float = 0.95, samples: int = 1000) -> bool:
    """True when `a` beats `b` beyond the noise of the items both were scored on: the bootstrap
    CI (at `level`) of the per-item differences a - b lies above 0. Fewer than two shared items
    cannot tell: False."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return False
    lo, _ = bootstrap_ci([a[k] - b[k] for k in shared], level=level, samples=samples)
    return lo > 0


def best_round(rounds: list[RoundRecord], metric: str, *, level: float = 0.95,
               samples: int = 1000) -> RoundRecord | None:
    """The round to export: the best fine-tuned round *that passed its gate*; when none passed,
    the best fine-tuned round (exported labelled "did not pass"). A later round is preferred to
    the best one unless the best is better beyond the selection split's noise, item by item
    (`clearly_better`; a 4-item validation split rarely is): it has seen more data. Rounds
    without per-item values compare by mean; ties: the earlier round."""
    tuned = [r for r in rounds if r.round >= 1 and selection_value(r, metric) is not None]
    pool = [r for r in tuned if r.gate.passed] or tuned
    top = max(pool, key=lambda r: (selection_value(r, metric), -r.round), default=None)
    if top is None or not top.selection_items:
        return top
    for later in sorted((r for r in pool if r.round > top.round), key=lambda r: -r.round):
        if later.selection_items and not clearly_better(top.selection_items, later.selection_items, level=level,
                                                        samples=samples):
            return later
    return top


# Below this many validation rows a difference between two rounds is mostly noise (95% interval of
# a mean on a 0-1 scale, worst case: +-0.98/sqrt(n), over +-0.2 below 20 rows).
MIN_VAL_ROWS_TO_CHOOSE = 20


def selection_warnings(val_rows: int, seed_strategy: str) -> list[str]:
    """What `validate` says about the split keep-best, plateau and failure seeding learn from."""
    if val_rows == 0:
        return ["no validation split (data.val_size gives 0 rows): keep-best and plateau compare test scores, "
                "the split the gate judges, so the exported round's test score is optimistic"
                + ("; synth.seed_strategy failure falls back to uniform seeds" if seed_strategy == "failure" else "")]
    if val_rows < MIN_VAL_ROWS_TO_CHOOSE:
        return [f"the validation split has only {val_rows} rows: too few to choose between rounds (a difference "
                "on it is mostly noise); keep-best keeps the later round unless an earlier one is better beyond "
                "that noise" + (", failure-driven seeds are mixed with uniform ones" if seed_strategy == "failure"
                                else "")
                + f"; raise data.val_size to at least {MIN_VAL_ROWS_TO_CHOOSE} rows to learn from it"]
    return []
