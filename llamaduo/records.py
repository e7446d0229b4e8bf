"""Typed values that cross stage boundaries: artifacts, service spending, stage results,
round records and the run summary (`summary.json` is written from `Summary`).

Artifacts name files *relative to the run directory*, so a moved run directory keeps
its cache keys and its results.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .store import sha256_path


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Artifact(_Record):
    path: str = Field(description="Path relative to the run directory.")
    sha256: str

    @classmethod
    def of(cls, root: str | Path, rel: str | Path) -> "Artifact":
        return cls(path=str(rel), sha256=sha256_path(Path(root) / rel))

    def at(self, root: str | Path) -> Path:
        return Path(root) / self.path


class StudentRef(_Record):
    """The student as configured (`id`, part of cache keys) and where its weights lie (`path`, not keyed)."""
    id: str
    path: str


class ServiceStats(_Record):
    calls: int = 0
    cached: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def plus(self, *others: "ServiceStats | None") -> "ServiceStats":
        out = self.model_copy()
        for o in others:
            if o is None:
                continue
            for k in type(self).model_fields:
                setattr(out, k, getattr(out, k) + getattr(o, k))
        out.cost_usd = round(out.cost_usd, 6)
        return out

    def minus(self, earlier: "ServiceStats") -> "ServiceStats":
        """What was spent since `earlier` (a snapshot of the same running total)."""
        return ServiceStats(**{k: round(getattr(self, k) - getattr(earlier, k), 6) for k in type(self).model_fields})


class StageResult(_Record):
    seconds: float = 0.0


class SplitResult(StageResult):
    train: Artifact
    val: Artifact
    test: Artifact
    train_rows: int
    val_rows: int
    test_rows: int
    removed: dict[str, int] = Field(default_factory=dict)


class ServiceStageResult(StageResult):
    """A stage that calls the service LLM. `budget_hit`: it stopped at a budget cap (its
    spending is still here); `failing`: too many of its calls failed (circuit breaker)."""
    service: ServiceStats = Field(default_factory=ServiceStats)
    budget_hit: bool = False
    failing: str | None = None


class SynthResult(ServiceStageResult):
    candidates: Artifact | None = None
    rows: int = 0
    failed_requests: int = 0
    next_seed_offset: int = 0


class CurateResult(StageResult):
    kept: Artifact
    kept_rows: int
    dropped: dict[str, int]


class TrainingSetResult(StageResult):
    train: Artifact
    rows: int
    dataset_dir: str


class WarmStartSetResult(StageResult):
    """What a warm-started round trains on: the rows it adds plus a replay sample of earlier ones."""
    train: Artifact
    new_rows: int
    replayed_rows: int


class FinetuneResult(StageResult):
    adapter: Artifact
    stats: dict


class AnswersResult(ServiceStageResult):
    answers: Artifact | None = None
    stats: dict = Field(default_factory=dict)


class EvalResult(ServiceStageResult):
    judged: Artifact | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    per_item: dict[str, list[float]] = Field(default_factory=dict)
    per_item_by_id: dict[str, dict[str, float]] = Field(default_factory=dict, description="metric -> {item id: "
                                                        "value}")
    items: int = 0
    judged_items: int = Field(0, description="Items with at least one valid judgement.")
    unanswered_items: int = Field(0, description="Items without an answer to judge (a failed service call); "
                                  "excluded from every metric, counted here.")
    requested_judgments: int = Field(0, description="items x samples x repeats (unanswered items included).")
    valid_judgments: int = 0
    parse_failures: int = 0
    call_failures: int = 0

    @property
    def judged_share(self) -> float:
        """Valid judgements / requested judgements (not items: one valid repeat of twelve is 1/12)."""
        return self.valid_judgments / self.requested_judgments if self.requested_judgments else 0.0


class ExportResult(StageResult):
    model: Artifact
    check: dict


class Criterion(_Record):
    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str = ""


class GateDecision(_Record):
    """A gate verdict with every criterion's value and threshold (why a round passed or failed)."""
    passed: bool
    metric: str
    value: float | None
    threshold: float
    reason: str = ""
    criteria: list[Criterion] = Field(default_factory=list)


class Evaluation(_Record):
    items: int = 0
    judged_items: int = 0
    judged_share: float = Field(0.0, description="valid_judgments / requested_judgments (what "
                                "gate.min_judged_share applies to).")
    valid_judgments: int = 0
    requested_judgments: int = 0
    unanswered_items: int = 0
    parse_failures: int = 0
    call_failures: int = 0

    @property
    def answered_share(self) -> float:
        """Items that got an answer to judge (a service baseline's failed calls are not answers)."""
        return (self.items - self.unanswered_items) / self.items if self.items else 0.0

    @classmethod
    def of(cls, ev: EvalResult) -> "Evaluation":
        return cls(items=ev.items, judged_items=ev.judged_items, judged_share=round(ev.judged_share, 4),
                   valid_judgments=ev.valid_judgments, requested_judgments=ev.requested_judgments,
                   unanswered_items=ev.unanswered_items, parse_failures=ev.parse_failures,
                   call_failures=ev.call_failures)


class RoundRecord(_Record):
    round: int
    train_rows: int
    synthetic_rows_added: int
    dropped: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    val_metrics: dict[str, float] = Field(default_factory=dict)
    gate: GateDecision
    service: ServiceStats = Field(default_factory=ServiceStats)
    durations_s: dict[str, float] = Field(default_factory=dict)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    val_evaluation: Evaluation | None = None
    selection_split: str | None = Field(None, description="The split keep-best and plateau compare this round on: "
                                        "validation, or test when there is no validation split.")
    selection_items: dict[str, float] = Field(default_factory=dict, description="gate.metric per item id on "
                                              "selection_split (keep-best compares rounds item by item).")
    parity: dict[str, float] = Field(default_factory=dict)
    adapter: Artifact | None = None
    judged: Artifact | None = None
    answers: Artifact | None = None
    train_stats: dict = Field(default_factory=dict)
    infer_stats: dict = Field(default_factory=dict)


class DataSummary(_Record):
    train_rows: int = 0
    val_rows: int = 0
    test_rows: int = 0
    removed: dict[str, int] = Field(default_factory=dict)


class Summary(_Record):
    name: str
    passed: bool
    stop_reason: str | None
    stop_detail: str | None = None
    final_model_dir: str | None
    exported_round: int | None = None
    exported_round_passed: bool | None = None
    export_check: dict | None = None
    preflight: ServiceStats = Field(default_factory=ServiceStats)
    teacher: str
    judge: str
    student: str
    data: DataSummary = Field(default_factory=DataSummary)
    baselines: dict[str, dict[str, float]] = Field(default_factory=dict)
    baseline_evaluations: dict[str, Evaluation] = Field(default_factory=dict, description="How much of each "
                                                        "baseline was answered and judged.")
    service_total: ServiceStats = Field(default_factory=ServiceStats)
    rounds: list[RoundRecord] = Field(default_factory=list)
