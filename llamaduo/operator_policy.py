"""The operator's policy, in one place: what people who may start a deployment run may override
(the allow-list; endpoints, key variables and promotion locations never; paths only inside the project),
the ceilings on every deployment run's effective config, where run directories live and where GPU
stages run. `OperatorPolicy.load(project)` reads the `llamaduo_*` keys of deployments/prefect.yaml from
the project on the worker, so a run cannot change them."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import RunConfig, _parse_scalar
from .errors import InputError
from .metrics import check_threshold
from .templates import is_file_spec

POLICY_FILE = Path("deployments") / "prefect.yaml"


# -- overrides from people who may start a deployment run ------------------------------------------
# What they may override is the operator's allow-list, kept in one place: `llamaduo_run_overrides` in
# deployments/prefect.yaml. Endpoints and key variables redirect the worker's credentials: never
# overridable, whatever that list says.
NEVER_OVERRIDABLE = ("service.api_base", "service.api_key_env", "judge.api_base", "judge.api_key_env",
                     "service.model", "judge.model", "service.standin_pool")
OPERATOR_ONLY = ("promote.location",)
PATH_KEYS = ("data.path", "data.test_path", "synth.prompt_template", "judge.prompt_template", "student.model",
             "judge.calibration_path")
CONFIG_RELATIVE_KEYS = ("data.path", "data.test_path", "judge.calibration_path")  # as `_resolve_paths` resolves


def _inside(project_dir: Path, path: Path) -> bool:
    """`path` (already absolute) lies in the project once `..` and symlinks are resolved."""
    root, target = project_dir.resolve(), path.resolve()
    return root == target or root in target.parents


def override_path_candidates(key: str, value: str, project_dir: Path, config_dir: Path | None = None) -> list[Path]:
    """Every place a path override may end up once loaded: `~` expanded (as the student loader does),
    relative data paths against the config's directory or the working directory (`_resolve_paths`
    picks either), other relative paths against the working directory (the project, on a worker)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return [path]
    bases = [project_dir] + ([config_dir] if config_dir is not None and key in CONFIG_RELATIVE_KEYS else [])
    return [base / path for base in bases]


def check_run_overrides(overrides: list[str], allowed: list[str] | tuple[str, ...], project_dir: Path,
                        config_dir: Path | None = None) -> None:
    """Refuse a deployment run's override unless the operator's allow-list admits it; endpoints and
    key variables never, paths only inside the project directory: checked on the value the config
    will hold (YAML-parsed, `~` expanded, `..` and symlinks resolved)."""
    from fnmatch import fnmatchcase

    for item in overrides:
        key, _, text = item.partition("=")
        key = key.strip()
        if key in OPERATOR_ONLY:
            raise InputError("may not be overridden by a deployment run (the operator places promotions: another "
                             "value would replace the model another line of runs serves)", field=key)
        if key in NEVER_OVERRIDABLE or key.endswith(("api_base", "api_key_env")):
            raise InputError("may not be overridden by a deployment run (it would redirect the worker's "
                             "credentials)", field=key)
        if not any(fnmatchcase(key, pattern) for pattern in allowed):
            raise InputError("is not in the deployment's override allow-list (llamaduo_run_overrides in "
                             "deployments/prefect.yaml)", field=key)
        if key not in PATH_KEYS or not text:
            continue
        try:  # the value apply_overrides will store: `data.path='/etc/passwd'` is the path /etc/passwd
            value = _parse_scalar(text)
        except yaml.YAMLError:
            raise InputError("not a valid YAML scalar", field=key) from None
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise InputError("must be a path (text)", field=key)
        if key.endswith("prompt_template") and not is_file_spec(value):
            continue  # inline template text, not a path (rendered in the sandbox)
        if "://" in value:  # a store (a capture location on s3://): the operator's config names those
            raise InputError("must be a path inside the project directory, not a URL", field=key)
        if not all(_inside(project_dir, c) for c in override_path_candidates(key, value, project_dir, config_dir)):
            raise InputError("must stay inside the project directory (checked after expanding ~ and resolving "
                             ".. and symlinks)", field=key)


DEFAULT_GATE_FLOORS = {"judge_score": 50.0, "judge_similarity": 50.0, "judge_precision": 50.0,
                       "rougeL": 0.2, "exact_match": 0.2, "embedding_cosine": 0.5}


class RunCeilings(BaseModel):
    """The operator's ceilings on what a deployment run may ask for (`llamaduo_run_ceilings` in
    deployments/prefect.yaml): the effective config of every deployment run is refused above them.
    null = no ceiling; a gate metric missing from `min_gate_threshold` keeps its default floor (a
    run could otherwise switch `gate.metric` to an unlisted metric and gate at 0)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_usd: float | None = Field(25.0, ge=0, description="Highest budget.max_usd a run may set.")
    max_calls: int | None = Field(5000, gt=0, description="Highest budget.max_calls a run may set.")
    max_rounds: int | None = Field(10, gt=0, description="Highest gate.max_rounds a run may set.")
    min_gate_threshold: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_GATE_FLOORS),
        description="Lowest gate.threshold per gate metric, on that metric's scale (with gate.combine: any, also "
                    "gate.min_item_score); metrics not listed keep the default floor.")

    @field_validator("min_gate_threshold", mode="before")
    @classmethod
    def _over_defaults(cls, v):
        return {**DEFAULT_GATE_FLOORS, **v} if isinstance(v, dict) else v

    @field_validator("min_gate_threshold")
    @classmethod
    def _known_metrics(cls, v: dict[str, float]) -> dict[str, float]:
        for metric, floor in v.items():
            check_threshold(metric, floor, f"min_gate_threshold.{metric}")
        return v


def check_run_ceilings(cfg: RunConfig, ceilings: RunCeilings) -> None:
    """Refuse a deployment run's effective config above the operator's ceilings (money, calls, rounds)
    or below the gate-threshold floor; the error names the config field and the ceiling."""
    where = "llamaduo_run_ceilings.{} in deployments/prefect.yaml"
    for field, value, name in (("budget.max_usd", cfg.budget.max_usd, "max_usd"),
                               ("budget.max_calls", cfg.budget.max_calls, "max_calls"),
                               ("gate.max_rounds", cfg.gate.max_rounds, "max_rounds")):
        ceiling = getattr(ceilings, name)
        if ceiling is not None and value > ceiling:
            raise InputError(f"{value:g} is above the operator's ceiling {ceiling:g} ({where.format(name)})",
                             field=field)
    floor = ceilings.min_gate_threshold.get(cfg.gate.metric)
    if floor is None:
        return
    # with combine: any, the per-item criterion alone can pass the gate, so its bar has the same floor
    item_bar = cfg.gate.min_item_score if cfg.gate.combine == "any" else None
    for field, value in (("gate.threshold", cfg.gate.threshold), ("gate.min_item_score", item_bar)):
        if value is not None and value < floor:
            raise InputError(f"{value:g} is below the operator's floor {floor:g} for {cfg.gate.metric} "
                             f"({where.format('min_gate_threshold')})", field=field)


class OperatorPolicy(BaseModel):
    """The `llamaduo_*` keys of deployments/prefect.yaml."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_list: tuple[str, ...] = Field((), description="llamaduo_run_overrides (absent: no override passes).")
    ceilings: RunCeilings = Field(default_factory=RunCeilings, description="llamaduo_run_ceilings.")
    run_store: str | None = Field(None, description="llamaduo_run_store: where deployment runs' directories live.")
    gpu_deployment: str | None = Field(None, description="llamaduo_gpu_deployment: the deployment GPU stages run as.")

    @classmethod
    def load(cls, project: Path) -> "OperatorPolicy":
        """From `project`/deployments/prefect.yaml (absent: the defaults); a malformed entry is an input
        error naming it."""
        spec = Path(project) / POLICY_FILE
        raw = (yaml.safe_load(spec.read_text(encoding="utf-8")) or {}) if spec.is_file() else {}
        try:
            ceilings = RunCeilings.model_validate(raw.get("llamaduo_run_ceilings") or {})
        except ValidationError as exc:
            err = exc.errors()[0]
            raise InputError(err["msg"], file=str(spec),
                             field=".".join(["llamaduo_run_ceilings", *map(str, err["loc"])])) from None
        store, gpu = raw.get("llamaduo_run_store"), raw.get("llamaduo_gpu_deployment")
        return cls(allow_list=tuple(str(a) for a in raw.get("llamaduo_run_overrides") or []), ceilings=ceilings,
                   run_store=str(store) if store is not None else None, gpu_deployment=str(gpu) if gpu else None)
