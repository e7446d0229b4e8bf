"""One fine-tuning round as a subflow that calls itself for the next round.

synthesize → curate (waves until `synth.rows_per_round` rows survive) → build the
training set → finetune → infer + judge (test; validation when there is one) → gate.
Decisions are library functions; this module only orchestrates.
"""

from __future__ import annotations

import math
from collections import Counter

from prefect import flow, get_run_logger

from llamaduo.config import RunConfig
from llamaduo.curate import DROP_SERVICE_FAILED
from llamaduo.gate import STOP_NO_NEW_ROWS, selection_value, stop_reason
from llamaduo.records import Artifact, SplitResult, StudentRef
from llamaduo.service import budget_left
from llamaduo.store import round_dir
from tasks._policy import run_stage
from tasks._results import RESULT_OPTIONS
from tasks.synth import curate, synthesize, training_set, warm_start_set
from tasks.train import finetune

from .gpu import run_gpu_stage
from .report import publish_round
from .stages import evaluate_student, round_record, service_stage
from .state import LoopState, StopLoop


def _synthesize_round(cfg: RunConfig, root: str, data: SplitResult, round_no: int, state: LoopState,
                      durations: Counter) -> tuple[list[Artifact], Counter, LoopState]:
    """Request waves until enough rows survive curation (or waves run out)."""
    rdir = round_dir(round_no)
    kept_parts: list[Artifact] = []
    dropped: Counter = Counter()
    need = cfg.synth.rows_per_round
    for wave in range(cfg.synth.max_waves):
        n_requests = math.ceil(need / cfg.synth.pairs_per_request)
        cand = f"{rdir}/candidates_w{wave}.jsonl"
        s, state = service_stage(state, synthesize, cand, root=root, synth=cfg.synth,
                                 endpoint=cfg.service_endpoint(), limits=cfg.service, budget=cfg.budget,
                                 train=data.train, round_no=round_no, wave=wave, n_requests=n_requests,
                                 seed_offset=state.seed_offset, split_seed=cfg.data.split_seed,
                                 val_judged=state.last_val_judged, out=cand)
        state = state.with_seed_offset(s.next_seed_offset)
        durations["synthesize"] += s.seconds
        if s.failed_requests:
            dropped[DROP_SERVICE_FAILED] += s.failed_requests
        curated = f"{rdir}/curated_w{wave}.jsonl"
        c, _ = run_stage(curate, curated, root=root, curate_cfg=cfg.curate, candidates=s.candidates,
                         existing=state.train_parts + kept_parts, test=data.test, limit=need, out=curated)
        durations["curate"] += c.seconds
        dropped.update(c.dropped)
        kept_parts.append(c.kept)
        need -= c.kept_rows
        if need <= 0:
            break
    return kept_parts, dropped, state


@flow(name="migration-round", flow_run_name="round-{round_no}", **RESULT_OPTIONS)
def migration_round(cfg: RunConfig, workdir: str, student: StudentRef, data: SplitResult, round_no: int,
                    state: LoopState) -> LoopState:
    log = get_run_logger()
    rdir = round_dir(round_no)
    durations: Counter = Counter()
    spent_before = state.spent
    log.info("round %d: training on %d rows so far, adding %d synthetic rows", round_no,
             state.train_rows, cfg.synth.rows_per_round)
    try:
        kept_parts, dropped, state = _synthesize_round(cfg, workdir, data, round_no, state, durations)
        ts, _ = run_stage(training_set, f"{rdir}/train.jsonl", root=workdir, parts=state.train_parts + kept_parts,
                          dropped=dict(dropped), round_no=round_no, out=f"{rdir}/train.jsonl")
        train_on, init_adapter = ts.train, None
        if cfg.train.warm_start and state.last_adapter is not None:
            if ts.rows <= state.train_rows:  # the warm-start set would be empty: never train on nothing
                why = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items())) or "none offered"
                raise StopLoop(state.stopped(
                    STOP_NO_NEW_ROWS, f"round {round_no} kept no new synthetic rows (dropped: {why}); "
                    "a warm start continues the previous adapter on new rows only"))
            ws, _ = run_stage(warm_start_set, f"{rdir}/train_warm.jsonl", root=workdir, earlier=state.train_parts,
                              new=kept_parts, replay_ratio=cfg.train.replay_ratio, seed=cfg.train.seed + round_no,
                              out=f"{rdir}/train_warm.jsonl")
            log.info("round %d: warm start from the previous adapter on %d new + %d replayed rows", round_no,
                     ws.new_rows, ws.replayed_rows)
            train_on, init_adapter = ws.train, state.last_adapter
        elif state.champion_adapter is not None and round_no == 1:
            # new traffic is in the coverage rows: the champion continues on all of them, not a replay sample
            log.info("round 1: warm start from the champion's adapter on all %d training rows", ts.rows)
            init_adapter = state.champion_adapter
        ft, fresh = run_gpu_stage(finetune, f"{rdir}/adapter", root=workdir, train=cfg.train, student=student,
                              system_prompt=cfg.student.system_prompt, training_set=train_on,
                              init_adapter=init_adapter, out=f"{rdir}/adapter")
        if fresh:
            state = state.trained(ft.stats.steps)
        durations["finetune"] += ft.seconds
        ev, inf, val, state = evaluate_student(cfg, workdir, state, student, ft.adapter, data, round_no, durations)
    except StopLoop as stop:
        log.warning("stopping: %s", stop)
        return stop.state
    record = round_record(cfg, state, round_no, ev, inf, val, state.spent.minus(spent_before), durations,
                          train_rows=ts.rows, synthetic_rows_added=ts.rows - state.train_rows, dropped=dict(dropped),
                          adapter=ft.adapter, train_stats=ft.stats)
    state = state.with_training(kept_parts, ts.rows, ft.adapter).with_round(record, val.judged if val else None)
    publish_round(state, cfg, workdir, data, record)
    decision = record.gate
    log.info("round %d gate: %s -> %s", round_no, decision.reason, "PASS" if decision.passed else "fail")
    history = [selection_value(r, cfg.gate.metric) or 0.0 for r in state.sorted_rounds() if r.round >= 1]
    reason = stop_reason(decision, round_no, cfg.gate.max_rounds, budget_left(state.spent, cfg.budget), history,
                         cfg.gate)
    if reason is not None:
        return state.stopped(reason)
    return migration_round(cfg, workdir, student, data, round_no + 1, state)
