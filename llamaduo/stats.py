"""Small statistics for evaluation: aggregation, agreement, bootstrap confidence intervals."""

from __future__ import annotations

import random
from statistics import mean, median, pstdev


def aggregate_values(values: list[float], how: str = "mean") -> float:
    if not values:
        raise ValueError("no values to aggregate")
    return float(median(values) if how == "median" else mean(values))


def spread(values: list[float]) -> float:
    """Disagreement across judge repeats for one item: population std-dev (0 = all agreed)."""
    return float(pstdev(values)) if len(values) > 1 else 0.0


def bootstrap_ci(values: list[float], *, level: float = 0.95, samples: int = 1000, seed: int = 0,
                 how: str = "mean") -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (or median) over items; seeded, so reproducible."""
    if not values:
        raise ValueError("no values")
    rng = random.Random(seed)
    n = len(values)
    stats = sorted(aggregate_values([values[rng.randrange(n)] for _ in range(n)], how) for _ in range(samples))
    lo_idx = int((1 - level) / 2 * samples)
    hi_idx = min(samples - 1, int((1 + level) / 2 * samples))
    return stats[lo_idx], stats[hi_idx]


def share_at_least(values: list[float], threshold: float) -> float:
    """The paper's 'coverage' view: share of items scoring at least `threshold`."""
    return sum(v >= threshold for v in values) / len(values) if values else 0.0


def paired_difference(values: dict[str, float], reference: dict[str, float]) -> tuple[float | None, tuple | None]:
    """Mean of `values - reference` over the items both scored, and its 95% bootstrap interval."""
    diffs = [values[k] - reference[k] for k in values if k in reference]
    if not diffs:
        return None, None
    mean = sum(diffs) / len(diffs)
    if all(d == diffs[0] for d in diffs):  # identical scores: no spread to resample
        return round(mean, 4), (round(mean, 4), round(mean, 4))
    lo, hi = bootstrap_ci(diffs, level=0.95, samples=1000)
    return round(mean, 4), (round(lo, 4), round(hi, 4))
