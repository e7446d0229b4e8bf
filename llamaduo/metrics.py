"""The metric registry: the one list of evaluation metrics, used by judging, the gate,
reports, the model card and config validation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    low: float  # the scale a value (and a gate threshold) lies on
    high: float
    higher_is_better: bool
    item_field: str  # the per-item field of judged.jsonl the round value is the mean of
    description: str
    gateable: bool = True
    judge: bool = False  # needs a judgement by the judge model (absent when the judge failed)

    def on_scale(self, value: float) -> bool:
        return self.low <= value <= self.high


_ALL = [
    Metric("judge_score", 1, 100, True, "score", "Judge: mean of similarity and precision (1-100).", judge=True),
    Metric("judge_similarity", 1, 100, True, "similarity", "Judge: similarity to the reference answer (1-100).",
           judge=True),
    Metric("judge_precision", 1, 100, True, "precision", "Judge: precision against the reference (1-100).",
           judge=True),
    Metric("rougeL", 0, 1, True, "rougeL", "ROUGE-L F1 against the reference (0-1)."),
    Metric("exact_match", 0, 1, True, "exact_match", "Share of answers equal to the reference after "
           "normalisation (0-1)."),
    Metric("embedding_cosine", -1, 1, True, "embedding_cosine", "Cosine of answer and reference embeddings "
           "(all-MiniLM-L6-v2)."),
    Metric("judge_spread", 0, 99, False, "judge_spread", "Disagreement of judge repeats (std-dev; 0 = agreed).",
           gateable=False, judge=True),
]
METRICS: dict[str, Metric] = {m.name: m for m in _ALL}
METRIC_NAMES: list[str] = [m.name for m in _ALL]
GATE_METRICS: list[str] = [m.name for m in _ALL if m.gateable]
JUDGE_CURVES: list[str] = ["judge_score", "judge_similarity", "judge_precision"]

# Names of the baselines evaluated on the same test items with the same judge.
BASELINE_SERVICE = "service LLM"
BASELINE_BASE_STUDENT = "base student"


def check_threshold(metric: str, threshold: float, field: str = "gate.threshold") -> None:
    """A threshold off the metric's scale can never (or always) pass: an input error."""
    if metric not in METRICS or not METRICS[metric].gateable:
        raise ValueError(f"gate.metric must be one of {GATE_METRICS}, got {metric!r}")
    m = METRICS[metric]
    if not m.on_scale(threshold):
        raise ValueError(f"{field} {threshold:g} is outside the scale of {metric} ({m.low:g}..{m.high:g})")


# Above this a parity threshold is almost surely a percentage (90 for 90%), not a ratio.
MAX_PARITY = 2.0


def check_margin(metric: str, margin: float, field: str = "gate.plateau_margin") -> None:
    """An improvement margin is a distance on the metric's scale: below the scale's width."""
    m = METRICS[metric]
    if not 0 <= margin < m.high - m.low:
        raise ValueError(f"{field} {margin:g} must be at least 0 and below the width of {metric}'s scale "
                         f"({m.low:g}..{m.high:g})")


def default_margin(metric: str) -> float:
    """Half a point on a 1-100 scale; the same share (1/198) of another metric's scale."""
    m = METRICS[metric]
    return (m.high - m.low) / 198


def check_parity(metric: str, ratio: float, field: str = "gate.min_parity") -> None:
    """Parity is student / service on the metric: a ratio only where the scale stays above 0."""
    m = METRICS[metric]
    if m.low < 0:
        raise ValueError(f"{field} needs a metric whose values are positive; {metric}'s scale "
                         f"({m.low:g}..{m.high:g}) crosses 0, so student/service is no ratio")
    if not 0 < ratio <= MAX_PARITY:
        raise ValueError(f"{field} {ratio:g} is a ratio student/service (0.9 = 90% of the service's {metric}) and "
                         f"must lie in (0, {MAX_PARITY:g}]")
