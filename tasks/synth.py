"""Synthesis and curation tasks (service I/O in a retrying task, pure transforms in the library)."""

from __future__ import annotations

import time

from prefect import task

from llamaduo.config import CurateConfig, RunConfig
from llamaduo.curate import curate, drop_counts
from llamaduo.data import Example
from llamaduo.errors import BudgetExhausted
from llamaduo.parsing import parse_synth_reply
from llamaduo.service import ServiceClient
from llamaduo.store import atomic_write_jsonl, atomic_write_text, read_jsonl
from llamaduo.synth import (build_synth_requests, candidate_rows, failure_weights, select_seeds,
                            select_seeds_weighted)
from llamaduo.templates import synth_template

from ._policy import STAGE_OPTIONS, artifact, failure_records, progress_reporter


@task(name="synthesize", **STAGE_OPTIONS, tags=["service"])
def synthesize(cfg: dict, coverage_train: dict, round_no: int, wave: int, n_requests: int, seed_offset: int,
               spent: dict, cache_dir: str, out_path: str, last_judged: dict | None = None) -> dict:
    """Ask the service LLM for new pairs from `n_requests` seeds; writes candidate rows with lineage.
    `last_judged` (the previous round's per-item scores) steers the `failure` seed strategy."""
    t0 = time.time()
    run = RunConfig.model_validate(cfg)
    train = [Example.from_dict(r) for r in read_jsonl(coverage_train["path"])]
    if run.synth.seed_strategy == "failure" and last_judged is not None:
        weights = failure_weights(train, read_jsonl(last_judged["path"]))
        seeds = select_seeds_weighted(train, n_requests, weights, run.data.split_seed + 1000 * round_no + wave)
    else:
        seeds = select_seeds(train, n_requests, seed_offset, run.data.split_seed)
    template = synth_template(run.synth.prompt_template)
    client = ServiceClient(run.service, cache_dir, budget=run.budget, spent=spent)
    requests = build_synth_requests(seeds, template, n=run.synth.pairs_per_request, topic=run.synth.topic,
                                    temperature=run.service.temperature, max_tokens=run.service.max_tokens,
                                    round_no=round_no, wave=wave, topics=run.synth.topics)
    results = client.run(requests, parse_synth_reply, desc=f"round {round_no} synthesize",
                         on_progress=progress_reporter(f"round {round_no} synthesis, wave {wave}"))
    atomic_write_jsonl(out_path.replace(".jsonl", ".failures.jsonl"),
                       failure_records("synthesize", results, [s.id for s in seeds]))
    rows, failures = candidate_rows(results, seeds, round_no=round_no, generator=run.service.model,
                                    template_sha=template.sha256)
    if client.budget_hit:
        raise BudgetExhausted(f"budget reached during synthesis (round {round_no})")
    atomic_write_jsonl(out_path, rows)
    return {"candidates": artifact(out_path), "rows": len(rows), "failures": failures,
            "service": client.stats.to_dict(), "seconds": round(time.time() - t0, 3)}


@task(name="curate", **STAGE_OPTIONS, tags=["cpu"])
def curate_candidates(candidates: dict, existing: list[dict], test: dict, curate_cfg: dict, limit: int,
                      out_path: str) -> dict:
    """Filter candidates against everything already trained on and the test split."""
    t0 = time.time()
    rows = read_jsonl(candidates["path"])
    existing_rows = [r for a in existing for r in read_jsonl(a["path"])]
    kept, dropped = curate(rows, existing_rows, read_jsonl(test["path"]), CurateConfig(**curate_cfg))
    surplus = [{**r, "drop_reason": "surplus"} for r in kept[limit:]]
    kept = kept[:limit]
    atomic_write_jsonl(out_path, kept)
    atomic_write_jsonl(str(out_path).replace(".jsonl", ".dropped.jsonl"), dropped + surplus)
    return {"kept": artifact(out_path), "kept_rows": len(kept), "dropped": drop_counts(dropped + surplus),
            "seconds": round(time.time() - t0, 3)}


@task(name="build-training-set", **STAGE_OPTIONS, tags=["io"])
def build_training_set(parts: list[dict], dropped: dict, round_no: int, out_path: str) -> dict:
    """Coverage train + every curated synthetic row so far, with lineage; also written as a
    Hugging Face `datasets` directory with a short data card."""
    from llamaduo.lineage import data_card, save_dataset

    rows = [r for a in parts for r in read_jsonl(a["path"])]
    atomic_write_jsonl(out_path, rows)
    ds_dir = save_dataset(rows, str(out_path).replace(".jsonl", "_dataset"))
    atomic_write_text(ds_dir / "DATA_CARD.md", data_card(rows, dropped, round_no))
    return {"train": artifact(out_path), "rows": len(rows), "dataset_dir": str(ds_dir)}
