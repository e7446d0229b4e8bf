"""One fine-tuning round as a subflow that calls itself for the next round.

synthesize → curate (waves until `synth.rows_per_round` rows survive) → build the
training set → finetune → infer → evaluate → gate. Decisions are library functions;
this module only orchestrates.
"""

from __future__ import annotations

import math
from collections import Counter

from prefect import flow, get_run_logger

from llamaduo.config import RunConfig
from llamaduo.errors import BudgetExhausted
from llamaduo.gate import STOP_BUDGET, decide, stop_reason
from llamaduo.judge import parity
from llamaduo.service import ServiceStats, budget_left
from llamaduo.store import RunDir
from tasks._policy import stage
from tasks.evaluate import evaluate, infer
from tasks.synth import build_training_set, curate_candidates, synthesize
from tasks.train import finetune

from .state import LoopState, record_round


def _synthesize_round(cfg: RunConfig, rd: RunDir, data: dict, round_no: int, state: LoopState, service: ServiceStats,
                      durations: Counter) -> tuple[list[dict], Counter]:
    """Request waves until enough rows survive curation (or waves run out)."""
    rdir = rd.round(round_no)
    kept_parts: list[dict] = []
    dropped: Counter = Counter()
    need = cfg.synth.rows_per_round
    for wave in range(cfg.synth.max_waves):
        n_requests = math.ceil(need / cfg.synth.pairs_per_request)
        cand_path = str(rdir / f"candidates_w{wave}.jsonl")
        spent = state.spent_with(service)
        s = stage(synthesize, cand_path)(cfg.model_dump(mode="json"), data["train"], round_no, wave, n_requests,
                                         state.seed_offset, spent, str(rd.service_cache), cand_path,
                                         state.last_judged)
        state.seed_offset += n_requests
        service.add(s["service"])
        durations["synthesize"] += s["seconds"]
        dropped.update({"service_failed": len(s["failures"])} if s["failures"] else {})
        curated_path = str(rdir / f"curated_w{wave}.jsonl")
        c = stage(curate_candidates, curated_path)(s["candidates"], state.train_parts + kept_parts, data["test"],
                                                   cfg.curate.model_dump(mode="json"), need, curated_path)
        durations["curate"] += c["seconds"]
        dropped.update(c["dropped"])
        kept_parts.append(c["kept"])
        need -= c["kept_rows"]
        if need <= 0:
            break
    return kept_parts, dropped


@flow(name="migration-round", flow_run_name="round-{round_no}", persist_result=True, log_prints=True)
def migration_round(cfg: RunConfig, workdir: str, base_model: str, data: dict, round_no: int, state: LoopState
                    ) -> LoopState:
    log = get_run_logger()
    rd = RunDir(workdir)
    rdir = rd.round(round_no)
    service, durations = ServiceStats(), Counter()
    log.info("round %d: training on %d rows so far, adding %d synthetic rows", round_no,
             state.train_rows, cfg.synth.rows_per_round)
    try:
        kept_parts, dropped = _synthesize_round(cfg, rd, data, round_no, state, service, durations)
        ts = stage(build_training_set, rdir / "train.jsonl")(state.train_parts + kept_parts, dict(dropped),
                                                             round_no, str(rdir / "train.jsonl"))
        ft = stage(finetune, rdir / "adapter")(cfg.train.model_dump(mode="json"), base_model, cfg.student.model,
                                               ts["train"], cfg.student.system_prompt, str(rdir / "adapter"))
        durations["finetune"] += ft["seconds"]
        inf = stage(infer, rdir / "answers.jsonl")(cfg.infer.model_dump(mode="json"), base_model,
                                                   cfg.student.model, ft["adapter"], data["test"],
                                                   cfg.student.system_prompt, str(rdir / "answers.jsonl"))
        durations["infer"] += inf["seconds"]
        spent = state.spent_with(service)
        ev = stage(evaluate, rdir / "judged.jsonl")(cfg.model_dump(mode="json"), data["test"], inf["answers"],
                                                    round_no, spent, str(rd.service_cache),
                                                    str(rdir / "judged.jsonl"))
        service.add(ev["service"])
        durations["evaluate"] += ev["seconds"]
    except BudgetExhausted as exc:
        log.warning("stopping: %s", exc)
        state.charge(service)
        state.stop_reason = STOP_BUDGET
        return state
    service_metrics = state.baselines.get("service LLM")
    decision = decide(ev["metrics"], cfg.gate, ev["items"], service_metrics)
    state.train_parts = state.train_parts + kept_parts
    state.charge(service)
    record_round(state, cfg, rd, {
        "round": round_no, "train_rows": ts["rows"], "synthetic_rows_added": ts["rows"] - state.train_rows,
        "dropped": dict(dropped), "metrics": ev["metrics"], "gate": decision.to_summary(),
        "parity": parity(ev["metrics"], service_metrics) if service_metrics else {},
        "service": service.to_dict(), "durations_s": {k: round(v, 2) for k, v in durations.items()},
        "gate_reason": decision.reason, "adapter": ft["adapter"], "train_stats": ft["stats"],
        "infer_stats": inf["stats"], "judged_path": ev["judged"]["path"],
    }, ev["judged"])
    state.train_rows = ts["rows"]
    state.last_judged = ev["judged"]
    log.info("round %d gate: %s -> %s", round_no, decision.reason, "PASS" if decision.passed else "fail")
    history = [r["metrics"].get(cfg.gate.metric) or 0.0 for r in sorted(state.rounds, key=lambda r: r["round"])
               if r["round"] >= 1]
    reason = stop_reason(decision, round_no, cfg.gate.max_rounds, budget_left(state.spent, cfg.budget), history,
                         cfg.gate)
    if reason is not None:
        state.stop_reason = reason
        return state
    return migration_round(cfg, workdir, base_model, data, round_no + 1, state)
