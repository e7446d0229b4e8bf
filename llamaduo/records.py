"""Typed values that cross stage boundaries: artifacts, service spending, stage results,
round records and the run summary (`summary.json` is written from `Summary`).

Artifacts name files *relative to the run directory*, so a moved run directory keeps
its cache keys and its results.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_serializer

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


class _Stats(_Record):
    """What a stage measured. Its JSON (summary.json's `train_stats`, `infer_stats`) holds the
    fields the stage set, as before these were records: a round without training keeps `{}`, a field
    set to null stays null."""

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler):
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class TrainStats(_Stats):
    """One training (llamaduo.train.train_lora), as summary.json's `train_stats`."""
    steps: int = Field(0, description="Optimizer steps at the end (a resumed run counts its checkpoint's).")
    train_loss: float | None = Field(None, description="Mean training loss (the Trainer's).")
    first_loss: float | None = Field(None, description="First logged loss (null: nothing logged).")
    last_loss: float | None = Field(None, description="Last logged loss.")
    rows: int = Field(0, description="Rows trained on.")
    micro_batch: int | None = Field(None, description="Rows per forward pass (halved by an OOM retry).")
    grad_accum: int | None = Field(None, description="Gradient accumulation: micro_batch x grad_accum keeps the "
                                   "configured batch.")
    quantized_4bit: bool = False
    warm_start: bool = Field(False, description="Continued the previous round's adapter.")
    lean_cpu_loss: bool = Field(False, description="The CPU trainer (llamaduo.lean_sft) computed the loss.")
    resumed_from: str | None = Field(None, description="The checkpoint an interrupted training resumed from.")
    seconds: float = Field(0.0, description="Training wall time (model loading excluded).")
    attempt: int | None = Field(None, description="The task attempt that trained (each retry after a CUDA OOM "
                                "halves micro_batch).")


class InferStats(_Stats):
    """The student's generation (llamaduo.infer.generate_answers), as summary.json's `infer_stats`."""
    items: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    backend: str | None = Field(None, description="hf (transformers) or vllm.")
    tokens_per_s: float | None = None


class ServiceAnswerStats(_Stats):
    """The service LLM's answers (llamaduo.baseline.service_answers): a failed call is unanswered."""
    items: int = 0
    answered: int = 0
    unanswered: int = 0


class FinetuneResult(StageResult):
    adapter: Artifact
    stats: TrainStats


class AnswersResult(ServiceStageResult):
    answers: Artifact | None = None
    stats: InferStats | ServiceAnswerStats = Field(default_factory=InferStats)


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


class ExportCheck(_Stats):
    """The exported weights' greedy answers to a few test items, compared with the evaluated answers
    (summary.json's `export_check`)."""
    checked: int
    matched: int
    reproduces: bool | None = Field(description="null: not comparable (see note).")
    note: str | None = Field(None, description="Why the answers were not compared (set only then).")


class ShippedFormat(_Record):
    """One format under final_model/ and its greedy answers to the test split, before it is judged."""
    name: str = Field(description="adapter | merged | gguf-<type>")
    path: str = Field(description="Relative to the run directory.")
    bytes: int = Field(description="Size on disk (weights and what ships with them).")
    engine: str = Field(description="The runtime that produced its answers.")
    answers: Artifact | None = Field(None, description="Its answers to the test split (null: not answered here).")
    identical_share: float | None = Field(None, description="Share of its greedy answers identical to the "
                                          "evaluated ones.")
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    tokens_per_s: float | None = None
    note: str = ""


class ExportResult(StageResult):
    model: Artifact
    check: ExportCheck
    formats: list[ShippedFormat] = Field(default_factory=list)


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
    train_stats: TrainStats = Field(default_factory=TrainStats)
    infer_stats: InferStats = Field(default_factory=InferStats)


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
    in_progress: bool = Field(False, description="A run is writing rounds: passed, stop_reason, final_model_dir "
                              "and exported_round are the last finished run's (none yet: false/null).")
    exported_round: int | None = None
    exported_round_passed: bool | None = None
    export_check: ExportCheck | None = None
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
    calibration: "Calibration | None" = Field(None, description="The judge's agreement with people's ratings "
                                              "(judge.calibration_path); null = the judge is not calibrated.")
    promotion: dict | None = Field(None, description="With promote.location: champion vs challenger on this "
                                   "run's test split, whether the challenger was promoted, and why.")
    capture_snapshot: dict | None = Field(None, description="A run on captured traffic (data.path a capture "
                                          "location): the shards it read, each with its sha256, and what was "
                                          "not usable; null otherwise.")


class Invocation(_Record):
    """What this invocation actually did (stages answered from Prefect's cache count nothing)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    service_calls: int = 0
    training_steps: int = 0


class MigrationResult(_Record):
    """What the `migrate` flow returns: where the results are and what this invocation did."""
    summary_path: str
    passed: bool
    stop_reason: str | None
    stop_detail: str | None = None
    final_model_dir: str | None = None
    exported_round: int | None = None
    invocation: Invocation = Field(default_factory=Invocation)


class RunEstimate(_Record):
    """Calls, tokens and cost before anything is spent (`llamaduo.estimate.run_estimate`)."""
    synth_calls: int = Field(description="Synthesis calls per round (one wave).")
    synth_calls_max: int = Field(description="Synthesis calls per round when every wave runs.")
    judge_calls: int = Field(description="Judge calls per round: test + validation items x samples x repeats.")
    calls: int = Field(description="synth_calls + judge_calls.")
    baseline_calls: int = Field(description="Calls of the baselines (base student, service), once per run.")
    calibration_calls: int = Field(description="Judge calls on the calibration set, once per run.")
    prompt_tokens: int = Field(description="Prompt tokens per round.")
    completion_tokens: int = Field(description="Completion tokens per round.")
    cost_usd: float | None = Field(description="Cost per round; null: an endpoint has no known price.")
    run_calls_max: int = Field(description="Calls of the whole run at most (every round, every wave).")
    run_cost_usd_max: float | None = Field(description="Cost of the whole run at most; null: no known price.")
    standin_cost_usd: float | None = Field(None, description="The offline stand-in's calls per round priced as "
                                           "the service it stands for (service.*_cost_per_mtok), as the decision "
                                           "page prices them; null: no stand-in, or not priced.")
    standin_run_cost_usd_max: float | None = Field(None, description="The same for the whole run at most.")


class LatencyStats(_Record):
    """The student measured through `llamaduo serve` (llamaduo.latency.measure_student)."""
    p50_s: float = Field(description="Median seconds for one request, requests sent one after another.")
    p95_s: float = Field(description="95th percentile of the same (linear interpolation).")
    throughput_rps: float = Field(description="Completed requests per second with `concurrency` requests in flight.")
    concurrency: int
    requests: int = Field(description="Requests timed for p50/p95 (the throughput phase sends at least as many).")
    hardware: str = Field(description="The machine that answered: GPU name, or CPU model and cores.")
    backend: str = Field(description="transformers or vllm, and the device.")
    endpoint_note: str = Field(description="How it was measured, for the reader of the decision page.")
    completion_tokens_mean: float | None = Field(None, description="Mean new tokens per answer (sequential phase).")
    prompt_tokens_mean: float | None = Field(None, description="Mean prompt tokens per request (chat template "
                                             "and system prompt included).")


# -- judge calibration (llamaduo/calibration.py) ---------------------------------------------------
class CalibrationRow(_Record):
    """One rated row as the judge scored it: the report's worst-agreeing rows."""
    line: int = Field(description="Line (row) of the calibration file.")
    instruction: str
    reference: str
    candidate: str
    human_score: float | None = None
    human_pass: bool | None = None
    judge_score: float
    human_rank: float = Field(description="Average rank of the people's rating among the rows (1 = lowest).")
    judge_rank: float = Field(description="Average rank of the judge's score among the rows (1 = lowest).")
    rank_gap: float = Field(description="|human_rank - judge_rank| / rows: 0 = same place, near 1 = opposite ends.")


class Calibration(_Record):
    """How well the judge agrees with people on this task, measured before any training."""
    source: str = Field(description="The calibration file's name.")
    sha256: str
    judge: str = Field(description="The judge model that scored the rows.")
    kind: str = Field(description="score: every row has human_score; pass: every row has human_pass only; mixed.")
    rows: int = Field(description="Distinct rated rows in the file (rows rating the same answer collapsed).")
    duplicate_rows: int = Field(0, description="Rows that repeated another row's answer, collapsed into it.")
    raters: str = Field("people", description="Who rated (from `rated_by`): people, a kind such as rubric or "
                        "model, or mixed.")
    rater_rows: dict[str, int] = Field(default_factory=dict, description="Distinct rows per kind of rater.")
    n: int = Field(description="Rows with a valid judgement: what the agreement is computed on.")
    computed: bool = Field(description="False: too few judged rows (at least 10) or no order to compare.")
    note: str = ""
    judge_metric: str = Field(description="The judge's per-row score compared (the gate's judge metric).")
    pass_score: float = Field(description="A judge score at or above this is a pass (for kappa and accuracy).")
    kendall_tau: float | None = None
    tau_ci: tuple[float, float] | None = None
    spearman_rho: float | None = None
    rho_ci: tuple[float, float] | None = None
    ci_level: float = 0.95
    bootstrap_samples: int = 0
    pass_rows: int = Field(0, description="Judged rows with human_pass: what kappa and accuracy are computed on.")
    kappa: float | None = Field(None, description="Cohen's kappa of human_pass and judge score >= pass_score.")
    accuracy: float | None = None
    min_agreement: float | None = Field(None, description="judge.min_agreement the run checked tau against.")
    agrees: bool | None = Field(None, description="tau >= min_agreement; null when no floor was set.")
    worst: list[CalibrationRow] = Field(default_factory=list)
    service: ServiceStats = Field(default_factory=ServiceStats)


class CalibrationResult(ServiceStageResult):
    calibration: Calibration | None = None
    judged: Artifact | None = None


Summary.model_rebuild()


# -- the decision page (llamaduo/decision.py) ------------------------------------------------------
class QualityStats(_Record):
    """One group of test items on gate.metric: how many were scored, their mean with a 95% bootstrap
    interval, and the share at or above the pass score."""
    n: int
    mean: float | None = None
    ci95: tuple[float, float] | None = None
    pass_rate: float | None = None
    sd: float | None = Field(None, description="Sample standard deviation (how many more items would decide).")


class CategoryQuality(_Record):
    category: str = Field(description="The coverage rows' `category` (`uncategorised` when a row has none).")
    student: QualityStats | None = Field(None, description="The exported round's student.")
    service: QualityStats | None = Field(None, description="The service LLM's own answers (service baseline).")
    base: QualityStats | None = Field(None, description="The base student before fine-tuning (round 0).")


class ServiceLatency(_Record):
    """The service LLM's recorded baseline calls (reply-cache records of the baseline answers)."""
    records: int = Field(description="Recorded calls found.")
    timed: int = Field(description="Of those, calls that recorded their wall time (`latency_s`).")
    p50_s: float | None = None
    p95_s: float | None = None
    prompt_tokens_mean: float
    completion_tokens_mean: float
    standin: bool = Field(False, description="The offline stand-in teacher answered: not a real service's latency.")


class DecisionLatency(_Record):
    student: LatencyStats | None = None
    student_note: str = Field("", description="Why the student was not measured, when it was not.")
    service: ServiceLatency | None = None


class DecisionCost(_Record):
    service_per_1k_usd: float | None = None
    service_pricing: str = ""
    student_per_1k_usd: float | None = None
    usd_per_hour: float | None = Field(None, description="decision.usd_per_hour (null: not set).")
    throughput_rps: float | None = None
    service_spend_usd: float = Field(0.0, description="This run's service spend (migration cost, part 1).")
    service_spend_basis: str = ""
    training_hours: float = 0.0
    training_usd: float | None = None
    migration_usd: float | None = Field(None, description="service spend + training hours x usd_per_hour.")
    notes: list[str] = Field(default_factory=list, description="What to set for what is not computed.")


class BreakEven(_Record):
    requests: float | None = Field(None, description="migration cost / saving per request (null: never or unknown).")
    never: bool = Field(False, description="The student is not cheaper per request.")
    saving_per_request_usd: float | None = None
    note: str = ""


class FormatRow(_Record):
    """decision.json `formats`: one shipped format, judged on the test split by the run's judge."""
    name: str
    path: str
    bytes: int
    engine: str
    quality: QualityStats | None = Field(None, description="gate.metric per test item: mean, 95% interval.")
    judged_share: float | None = None
    parity: float | None = Field(None, description="Mean per-item difference from the evaluated adapter.")
    parity_ci95: tuple[float, float] | None = None
    identical_share: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    tokens_per_s: float | None = None
    usd_per_1k: float | None = None
    ship: bool = Field(description="Judged, and its gate metric reaches the threshold.")
    reason: str = ""


class Decision(_Record):
    """decision.json: the page a reviewer signs (DESIGN.md contract)."""
    name: str
    verdict: str = Field(description="replace | replace for categories | not yet")
    verdict_line: str = Field(description="The verdict as the page's first line says it (with the categories, "
                              "and 'judge not calibrated' when there is no calibration set).")
    reasons: list[str] = Field(default_factory=list)
    calibrated: bool
    ready_categories: list[str] = Field(default_factory=list, description="The 95% interval's lower bound reaches "
                                        "the threshold on at least min_category_items test items.")
    not_ready_categories: list[str] = Field(default_factory=list, description="Every other category (undecided "
                                            "ones included).")
    undecided: dict[str, str] = Field(default_factory=dict, description="Categories whose mean reaches the threshold "
                                      "but whose interval or n does not: how many more test items would decide, "
                                      "with the arithmetic.")
    min_category_items: int = Field(0, description="Test items a category needs before it can be called ready.")
    metric: str
    threshold: float
    pass_score: float
    quality: list[CategoryQuality] = Field(default_factory=list)
    overall: dict[str, QualityStats] = Field(default_factory=dict, description="student / service / base on all "
                                             "test items.")
    calibration: dict | None = Field(None, description="The judge's calibration (Summary.calibration).")
    latency: DecisionLatency = Field(default_factory=DecisionLatency)
    cost: DecisionCost = Field(default_factory=DecisionCost)
    break_even: BreakEven = Field(default_factory=BreakEven)
    worst_items: list[dict] = Field(default_factory=list)
    spent: dict = Field(default_factory=dict)
    endpoint: dict[str, str] = Field(default_factory=dict, description="`llamaduo serve` command and the two "
                                     "lines an application changes (base_url, model).")
    standin: bool = False
    exported_round: int | None = None
    stop_reason: str | None = None
    formats: list[FormatRow] = Field(default_factory=list, description="One row per shipped format, each judged "
                                     "on the test split; `ship: false` = do not ship.")
    promotion: dict | None = Field(None, description="Champion vs challenger (Summary.promotion); null without "
                                   "promote.location.")
    retirement: list[str] = Field(default_factory=list, description="The service and judge models' retirement "
                                  "dates (litellm's model map) with the days left on the day the page was made.")
    shadow: dict | None = Field(None, description="Agreement on real traffic (`llamaduo capture --shadow`): the "
                                "service's answers as references, the run's judge, per category; null = no shadow.")

