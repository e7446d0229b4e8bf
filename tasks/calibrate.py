"""Judge calibration task: the judge scores people's rated answers before any training."""

from __future__ import annotations


from llamaduo.calibration import calibrate_judge
from llamaduo.config import BudgetConfig, Endpoint, JudgeConfig, ServiceConfig
from llamaduo.pacing import pacing
from llamaduo.records import CalibrationResult, ServiceStats

from ._policy import progress_reporter
from ._stage import StageTraits, stage
from .pacing import shared_pacer


@stage("calibrate-judge", StageTraits(kind="service", calls="endpoint"))
def calibrate(root: str, judge: JudgeConfig, endpoint: Endpoint, limits: ServiceConfig, budget: BudgetConfig,
              spent: ServiceStats, ratings_file: str, ratings_sha256: str, judge_metric: str, pass_score: float,
              out: str) -> CalibrationResult:
    """`ratings_sha256` keys the stage by the ratings' content (`judge.calibration_path` is left out
    of the judge section's fingerprint, so editing a rating re-runs this stage only)."""
    with pacing(shared_pacer(endpoint, limits)):  # the judge's endpoint: its provider and key
        return calibrate_judge(root, judge, endpoint, limits, budget, spent, ratings_file, judge_metric, pass_score,
                               out, on_progress=progress_reporter("judge calibration"))
