"""One preflight, before anything is spent: config, data, templates, keys, prices, the student,
the run directory, and (with `probe`) one small real call to the service and to the judge
whose replies must parse. The CLI and the deployment flow both call it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .gguf_export import check_tools as check_gguf_tools
from .hub import check_token as check_hub_token
from .config import Endpoint, RunConfig
from .data import Splits, load_coverage
from .errors import InputError
from .estimate import run_estimate, warnings_for
from .models import resolve_student
from .parsing import parse_judge_reply, parse_synth_reply
from .records import RunEstimate, ServiceStats
from .service import ServiceClient, check_pricing
from .templates import judge_template, synth_template


@dataclass
class Preflight:
    splits: Splits
    estimate: RunEstimate
    warnings: list[str] = field(default_factory=list)
    probe: ServiceStats = field(default_factory=ServiceStats)


def check_workdir(workdir: Path) -> None:
    """The run directory must be (or become) a writable directory that no other live run holds."""
    p = Path(workdir)
    if p.exists() and not p.is_dir():
        raise InputError("run directory is a file", file=str(p), field="--workdir")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise InputError("run directory is not writable", file=str(p), field="--workdir")
    from .store import RunDirBusy, run_dir_holder

    if p.is_dir() and (holder := run_dir_holder(p)) is not None:  # refused before the probe pays anything
        raise RunDirBusy(p, holder)


def _key_present(ep: Endpoint) -> None:
    if ep.api_key_env and not os.environ.get(ep.api_key_env):
        raise InputError(f"environment variable {ep.api_key_env} is not set", field=f"{ep.field}.api_key_env")


def _probe_field(ep: Endpoint, error: str) -> str:
    text = error.lower()
    if any(s in text for s in ("401", "403", "auth", "api key", "api_key", "permission")):
        return f"{ep.field}.api_key_env" if ep.api_key_env else f"{ep.field}.model"
    if any(s in text for s in ("connect", "resolve", "refused", "timed out", "timeout")) and ep.api_base:
        return f"{ep.field}.api_base"
    return f"{ep.field}.model"


def probe_endpoints(cfg: RunConfig, splits: Splits, cache_dir: Path) -> ServiceStats:
    """One synthesis request (one pair) to the service, one judgement to the judge; both replies
    must parse. Replies are cached in the run's reply cache, so re-running pays nothing."""
    from .judge import build_judge_requests
    from .synth import build_synth_requests

    seed, item = splits.train[0], splits.test[0]
    synth_req = build_synth_requests([seed], synth_template(cfg.synth.prompt_template), n=1, topic=cfg.synth.topic,
                                     temperature=0.0, max_tokens=min(cfg.service.max_tokens, 512), round_no=0,
                                     wave=0, topics=cfg.synth.topics)[0]
    judge_req = build_judge_requests([item.to_dict()], [[item.response]], judge_template(cfg.judge.prompt_template),
                                     repeats=1, temperature=0.0, max_tokens=min(cfg.service.max_tokens, 512))[0]
    limits = cfg.service.model_copy(update={"max_retries": min(cfg.service.max_retries, 1)})
    stats = ServiceStats()
    for ep, req, parse in ((cfg.service_endpoint(), synth_req, parse_synth_reply),
                           (cfg.judge_endpoint(), judge_req, parse_judge_reply)):
        client = ServiceClient(ep, limits, cache_dir, progress=False)
        req = replace(req, variant={**req.variant, "purpose": "preflight"})
        result = client.run([req], parse)[0]
        stats = stats.plus(client.stats)
        if not result.ok:
            raise InputError(f"the preflight call to {ep.model} failed: {result.error}",
                             field=_probe_field(ep, result.error or ""))
    # Reported as the probe's calls whether answered now or from the reply cache (paid once).
    return stats.model_copy(update={"calls": stats.calls + stats.cached, "cached": 0})


def check_backend(backend: str) -> None:
    """`infer.backend: vllm` must be able to run here (auto falls back to transformers by itself)."""
    if backend != "vllm":
        return
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is None:
        raise InputError("vLLM is not installed (pip install vllm), or use backend: auto", field="infer.backend")
    if not torch.cuda.is_available():
        raise InputError("vLLM needs a CUDA GPU and none is visible; use backend: auto or hf", field="infer.backend")


def teacher_retirement(cfg: RunConfig) -> list[str]:
    """The service's and judge's retirement dates (litellm's model map), named in the plan and every run."""
    from .config import STANDIN_MODEL
    from .retirement import retirement_lines

    return retirement_lines({"service": cfg.service.model, "judge": cfg.judge_model}, standin=STANDIN_MODEL,
                            warn_days=cfg.decision.retirement_warn_days)


def preflight(cfg: RunConfig, workdir: str | Path | None = None, *, probe: bool = True) -> Preflight:
    synth_template(cfg.synth.prompt_template)
    judge_template(cfg.judge.prompt_template)
    if cfg.service.standin_pool:
        from .data import load_examples

        load_examples(cfg.service.standin_pool)
    splits = load_coverage(cfg.data, cfg.curate)
    for ep in (cfg.service_endpoint(), cfg.judge_endpoint()):
        _key_present(ep)
        check_pricing(ep, cfg.budget)
    resolve_student(cfg.student.model, check=True)
    check_gguf_tools(cfg.export.gguf)  # every asked-for GGUF type can be written here, before any spending
    if cfg.export.push_to_hub:
        check_hub_token()
    check_backend(cfg.infer.backend)
    if workdir is not None:
        from .runstore import RunStore

        store = RunStore(workdir)
        store.check_writable()
        check_workdir(store.local)
    from .gate import selection_warnings
    from .judge import embedding_warnings

    result = Preflight(splits=splits, estimate=run_estimate(cfg, splits.train, splits.val, splits.test),
                       warnings=warnings_for(cfg) + selection_warnings(len(splits.val), cfg.synth.seed_strategy)
                       + embedding_warnings(cfg.judge, cfg.gate.metric) + teacher_retirement(cfg))
    if probe and workdir is not None:
        result.probe = probe_run_dir(cfg, splits, workdir)
    return result


def probe_run_dir(cfg: RunConfig, splits: Splits, workdir: str | Path) -> ServiceStats:
    """`probe_endpoints` with the run directory's reply cache (pulled from and pushed back to a
    store when the run directory is a URL: a re-run's probe is answered from it)."""
    from .runstore import RunStore

    store = RunStore(workdir)
    store.pull("cache/service")
    before = store.snapshot("cache/service")
    try:
        return probe_endpoints(cfg, splits, store.local / "cache" / "service")
    finally:
        store.push_changed(before, under="cache/service")
