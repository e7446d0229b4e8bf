"""The deployment's typed run form: the knobs people change when they schedule a migration.

Prefect renders this model as a form in the UI and validates it before the run starts
(`enforce_parameter_schema`): a threshold off every metric's scale is refused by Prefect
itself; the operator's ceilings (`llamaduo_run_ceilings` in deployments/prefect.yaml: money, calls,
rounds, a gate-threshold floor) are checked by the flow on the worker, where a run cannot change
them, before anything is spent.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llamaduo.metrics import GATE_METRICS

GateMetric = Literal[tuple(GATE_METRICS)]  # type: ignore[valid-type]


class RunSettings(BaseModel):
    """Empty fields keep the config file's value."""
    model_config = ConfigDict(extra="forbid")

    service_model: str | None = Field(None, description="Service LLM (litellm model string), e.g. "
                                      "openai/gpt-4o-mini. Must stay on the config's provider (same key).")
    judge_model: str | None = Field(None, description="Judge model; must stay on the config judge's provider.")
    student_model: str | None = Field(None, description="Student: smollm2-135m-instruct, a model directory inside "
                                      "the project, or a Hub id.")
    gate_metric: GateMetric | None = Field(None, description="Metric the gate compares.")
    gate_threshold: float | None = Field(None, ge=-1, le=100, description="Pass when the metric reaches this "
                                         "(judge metrics 1-100, rougeL / exact_match 0-1).")
    max_rounds: int | None = Field(None, ge=1, le=50, description="Fine-tuning rounds before stopping.")
    rows_per_round: int | None = Field(None, ge=1, le=100_000, description="Curated synthetic rows each round adds.")
    max_calls: int | None = Field(None, ge=1, description="Hard cap on service calls.")
    max_usd: float | None = Field(None, ge=0, description="Hard cap on service cost in USD.")

    def to_overrides(self) -> list[str]:
        return [f"{CONFIG_KEYS[name]}={value}" for name, value in self.model_dump().items() if value is not None]

    def field_setting(self, config_key: str | None) -> str | None:
        """`settings.<name>` when this form set `config_key`, for errors that name what the person typed."""
        for name, key in CONFIG_KEYS.items():
            if key == config_key and getattr(self, name) is not None:
                return f"settings.{name}"
        return None


# The config key each form field sets.
CONFIG_KEYS = {"service_model": "service.model", "judge_model": "judge.model", "student_model": "student.model",
               "gate_metric": "gate.metric", "gate_threshold": "gate.threshold", "max_rounds": "gate.max_rounds",
               "rows_per_round": "synth.rows_per_round", "max_calls": "budget.max_calls",
               "max_usd": "budget.max_usd"}
