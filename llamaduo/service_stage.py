"""One runner for the stages that call the service LLM: synthesis, judging, the service
baseline's answers and judge calibration.

A stage *declares* what is its own, in the shape of distilabel's tasks: the inputs it reads, the
requests it sends, how a reply is parsed, the rows it writes and its result record's fields.
`run_service_stage` owns what every such stage does the same way: the `ServiceClient` (reply
cache, pacing, retries, budget reservation), the failure log beside the output, the circuit
breaker's verdict, and the stage contract (docs/ARCHITECTURE.md): on a budget stop or a failing
service the output is not written, so a re-run recomputes it with its replies from the cache.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, TypeVar

from .config import BudgetConfig, Endpoint, ServiceConfig
from .records import Artifact, ServiceStageResult, ServiceStats
from .service import Request, Result, ServiceClient, failing_reason, write_failure_log
from .store import atomic_write_jsonl

Inputs = TypeVar("Inputs")
R = TypeVar("R", bound=ServiceStageResult)


class ServiceStage(ABC, Generic[Inputs, R]):
    """What one service stage declares; `run_service_stage` runs it."""

    name: ClassVar[str | None]  # the stage in its failure log (`out`'s .failures.jsonl); None: it keeps none
    result_type: ClassVar[type[ServiceStageResult]]
    label: str  # the stage in the breaker's verdict and on the progress bar ("round 2 synthesis")

    @abstractmethod
    def read_inputs(self, root: Path) -> Inputs:
        """The stage's inputs, read from the run directory."""

    @abstractmethod
    def build_requests(self, inputs: Inputs) -> list[Request]:
        """The requests, in the order `request_keys` names them and `output_rows` reads their results."""

    @abstractmethod
    def parse(self, text: str) -> Any:
        """A reply's text -> its value; raising makes it a parse failure (re-asked)."""

    def request_keys(self, inputs: Inputs) -> list[str]:
        """What the failure log calls each request (stages with a `name`)."""
        raise NotImplementedError(f"{type(self).__name__} keeps a failure log: it must name its requests")

    @abstractmethod
    def output_rows(self, inputs: Inputs, results: list[Result]) -> list[dict]:
        """The rows written to `out` (only when the stage neither hit the budget nor found the service failing)."""

    def unusable(self, results: list[Result], rows: list[dict]) -> str | None:
        """Why the rows are no output though the calls went well (a failing service); None: they are."""
        return None

    @abstractmethod
    def fill(self, result: R, inputs: Inputs, results: list[Result], rows: list[dict] | None,
             written: Artifact | None) -> None:
        """The stage's own fields of its result record. `rows` and `written` are None when `out`
        was not written."""


def failure_log_path(out: str) -> str:
    return out.replace(".jsonl", ".failures.jsonl")


def run_service_stage(root: str | Path, stage: ServiceStage[Inputs, R], endpoint: Endpoint, limits: ServiceConfig,
                      budget: BudgetConfig, spent: ServiceStats, *, out: str,
                      on_progress: Callable[[int, int], None] | None = None) -> R:
    """Read the stage's inputs, send its requests to `endpoint` within `limits` and what is left of
    `budget` after `spent`, log the failed ones, and write its rows to `out` unless it stopped."""
    t0 = time.time()
    root = Path(root)
    inputs = stage.read_inputs(root)
    client = ServiceClient(endpoint, limits, root / "cache" / "service", budget=budget, spent=spent)
    results = client.run(stage.build_requests(inputs), stage.parse, desc=stage.label, on_progress=on_progress)
    if stage.name is not None:
        write_failure_log(root / failure_log_path(out), stage.name, results, stage.request_keys(inputs))
    result = stage.result_type(service=client.stats, budget_hit=client.budget_hit,
                               failing=failing_reason(stage.label, results, limits.max_failure_rate,
                                                      limits.min_calls_for_breaker))
    rows, written = None, None
    if not result.budget_hit and not result.failing:
        rows = stage.output_rows(inputs, results)
        result.failing = stage.unusable(results, rows)
        if result.failing:
            rows = None
        else:
            atomic_write_jsonl(root / out, rows)
            written = Artifact.of(root, out)
    stage.fill(result, inputs, results, rows, written)
    result.seconds = round(time.time() - t0, 3)
    return result
