"""Synthesis, curation and training-set tasks (service I/O in the library, policy here)."""

from __future__ import annotations


from llamaduo.config import BudgetConfig, CurateConfig, Endpoint, ServiceConfig, SynthConfig
from llamaduo.curate import curate_wave
from llamaduo.lineage import build_training_set, build_warm_start_set
from llamaduo.pacing import pacing
from llamaduo.records import Artifact, CurateResult, ServiceStats, SynthResult, TrainingSetResult, WarmStartSetResult
from llamaduo.synth import synthesize_wave

from ._stage import StageTraits, stage
from ._policy import progress_reporter
from .pacing import shared_pacer


@stage("synthesize", StageTraits(kind="service", calls="endpoint"))
def synthesize(root: str, synth: SynthConfig, endpoint: Endpoint, limits: ServiceConfig, budget: BudgetConfig,
               spent: ServiceStats, train: Artifact, round_no: int, wave: int, n_requests: int, seed_offset: int,
               split_seed: int, val_judged: Artifact | None, out: str) -> SynthResult:
    with pacing(shared_pacer(endpoint, limits)):  # rpm/tpm/concurrency shared by every run on the key
        return synthesize_wave(root, synth, endpoint, limits, budget, spent, train, round_no=round_no, wave=wave,
                               n_requests=n_requests, seed_offset=seed_offset, split_seed=split_seed,
                               val_judged=val_judged, out=out,
                               on_progress=progress_reporter(f"round {round_no} synthesis, wave {wave}"))


@stage("curate", StageTraits(kind="cpu"))
def curate(root: str, curate_cfg: CurateConfig, candidates: Artifact, existing: list[Artifact], test: Artifact,
           limit: int, out: str) -> CurateResult:
    return curate_wave(root, curate_cfg, candidates, existing, test, limit, out)


@stage("build-training-set", StageTraits(kind="io"))
def training_set(root: str, parts: list[Artifact], dropped: dict[str, int], round_no: int,
                 out: str) -> TrainingSetResult:
    return build_training_set(root, parts, dropped, round_no, out)


@stage("build-warm-start-set", StageTraits(kind="io"))
def warm_start_set(root: str, earlier: list[Artifact], new: list[Artifact], replay_ratio: float, seed: int,
                   out: str) -> WarmStartSetResult:
    return build_warm_start_set(root, earlier, new, replay_ratio, seed, out)
