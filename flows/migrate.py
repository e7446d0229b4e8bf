"""The parent flow: student, data, baselines, the recursive rounds, export, summary.

`migrate` is what the CLI runs after its preflight; `migrate_config_file` is the deployment
entry point (UI form, API triggers), which runs the same preflight itself.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger

from llamaduo.calibration import agreement_stop, describe, judge_metric_for, pass_score_for
from llamaduo.config import STANDIN_MODEL, RunConfig, provider_of
from llamaduo.export import ADAPTER
from llamaduo.formats import format_row
from llamaduo.gate import STOP_JUDGE_DISAGREES, STOP_PASSED, best_round
from llamaduo.gate import decide as gate_decision
from llamaduo.metrics import BASELINE_BASE_STUDENT, BASELINE_SERVICE
from llamaduo.loop import LoopState
from llamaduo.preflight import teacher_retirement
from llamaduo.promotion import CHAMPION_ADAPTER, decide_promotion
from llamaduo.redact import strip_credentials
from llamaduo.records import (Artifact, Evaluation, ExportResult, FormatRow, MigrationResult, ServiceStats,
                              SplitResult, StudentRef, Summary)
from llamaduo.standin import LABEL as STANDIN_LABEL
from llamaduo.runstore import RunStore
from llamaduo.store import lock_run_dir, make_run_dir, sha256_path
from llamaduo.summary import write_summary
from tasks._policy import run_stage
from tasks._results import RESULT_OPTIONS, quarantine_untrusted_results, results_location, with_results_beside
from tasks.calibrate import calibrate
from tasks.data import prepare_data, prepare_student
from tasks.decision import decide, existing_artifact
from tasks.evaluate import service_answers
from tasks.export import export, push_model
from tasks.promote import champion_for_run, promote

from .form import RunSettings
from .gpu import GPU_DEPLOYMENT_ENV, run_gpu_stage
from .report import publish_round
from .round import migration_round
from .stages import answer_and_judge, evaluate_student, judge_answers, round_record, service_share, service_stage
from .state import StopLoop, summary_for


def _calibrate_judge(cfg: RunConfig, root: str, state: LoopState) -> LoopState:
    """The judge scores people's rated answers (judge.calibration_path) before anything is
    trained: the state with the agreement, or a stop when people disagree with the judge."""
    out, path = "calibration/judged.jsonl", cfg.judge.calibration_path
    res, state = service_stage(state, calibrate, out, root=root, judge=cfg.judge, endpoint=cfg.judge_endpoint(),
                               limits=cfg.service, budget=cfg.budget, ratings_file=path,
                               ratings_sha256=sha256_path(path), judge_metric=judge_metric_for(cfg.gate),
                               pass_score=pass_score_for(cfg.gate), out=out)
    calibration, disagrees = agreement_stop(res.calibration, cfg.judge.min_agreement)
    get_run_logger().info(describe(calibration))
    state = state.with_calibration(calibration)
    if disagrees:
        raise StopLoop(state.stopped(STOP_JUDGE_DISAGREES, disagrees))
    return state


def _service_baseline(cfg: RunConfig, root: str, data: SplitResult, state: LoopState) -> LoopState:
    """The service LLM's own answers, judged the same way: the ceiling for parity."""
    out = "baselines/service/answers.jsonl"
    sa, state = service_stage(state, service_answers, out, root=root, endpoint=cfg.service_endpoint(),
                              limits=cfg.service, infer_cfg=cfg.infer, budget=cfg.budget, items=data.test,
                              system_prompt=cfg.student.system_prompt, out=out)
    ev, state = judge_answers(cfg, root, state, data.test, sa.answers, "service baseline",
                              "baselines/service/judged.jsonl")
    # with how much of it was judged: parity is not decided on a thin baseline
    return state.with_baseline(BASELINE_SERVICE, ev.metrics, Evaluation.of(ev))


def _base_student(cfg: RunConfig, root: str, student: StudentRef, data: SplitResult, state: LoopState) -> LoopState:
    """Round 0: the base student, judged the same way on the same test items."""
    durations: dict = {}
    spent_before = state.spent
    ev, inf, val, state = evaluate_student(cfg, root, state, student, None, data, 0, durations)
    state = state.with_baseline(BASELINE_BASE_STUDENT, ev.metrics)
    entry = round_record(cfg, state, 0, ev, inf, val, state.spent.minus(spent_before), durations, train_rows=0,
                         synthetic_rows_added=0)
    state = state.with_round(entry, val.judged if val else None)
    publish_round(state, cfg, root, data, entry)
    return state


def _judge_formats(cfg: RunConfig, root: str, data: SplitResult, state: LoopState, exp: ExportResult
                   ) -> tuple[list[FormatRow], LoopState, dict[str, float]]:
    """Every exported format's answers judged as a round's are (same judge, same test split: answers
    identical to judged ones come from the reply cache, free) and the gate applied to them. A budget or
    failing-service stop leaves the remaining formats "not judged" (never shipped) without changing the
    run's verdict."""
    rows, evaluated, not_judged = [], {}, ""
    for fmt in exp.formats:
        ev = gate = None
        if fmt.answers is not None and not not_judged:
            try:
                ev, state = judge_answers(cfg, root, state, data.test, fmt.answers, f"format {fmt.name}",
                                          f"formats/{fmt.name}/judged.jsonl")
                gate = gate_decision(ev.metrics, cfg.gate, ev.per_item.get(cfg.gate.metric),
                              state.baselines.get(BASELINE_SERVICE), ev.judged_share, service_share(cfg, state))
            except StopLoop as stop:
                not_judged = stop.state.stop_detail or stop.state.stop_reason or "stopped"
                state = stop.state.stopped(state.stop_reason, state.stop_detail)  # spending kept, verdict unchanged
        if fmt.name == ADAPTER and ev is not None:
            evaluated = ev.per_item_by_id.get(cfg.gate.metric, {})
        rows.append(format_row(fmt, ev, gate, metric=cfg.gate.metric, evaluated=evaluated,
                               pass_score=cfg.gate.threshold, not_judged=not_judged))
    return rows, state, evaluated


def _champion_vs_challenger(cfg: RunConfig, store: RunStore, student: StudentRef, data: SplitResult,
                            state: LoopState, champion: dict | None, challenger: dict[str, float], passed: bool,
                            formats: list[FormatRow]) -> tuple[dict, LoopState]:
    """The champion judged on this run's test split (same judge; its answers are its own), the
    promotion decided on the paired per-item differences, and — when the challenger wins — written
    to promote.location with a `llamaduo.model.promoted` event for automations."""
    log = get_run_logger()
    champion_scores = None
    if champion is not None:
        adapter = Artifact.of(store.local, CHAMPION_ADAPTER)
        try:
            ev, _, state = answer_and_judge(cfg, store.location, state, student, adapter, data.test, "champion/",
                                            "champion", {})
            champion_scores = ev.per_item_by_id.get(cfg.gate.metric, {})
        except StopLoop as stop:  # budget or a failing judge: no comparison, so no promotion
            log.warning("the champion could not be judged: %s", stop)
            state = stop.state.stopped(state.stop_reason, state.stop_detail)
    blocking = [f for f in formats if f.name in ("adapter", "merged") and not f.ship]
    decision = decide_promotion(passed=passed and not blocking, challenger=challenger, champion=champion_scores,
                                has_champion=champion is not None, min_gain=cfg.promote.min_gain,
                                metric=cfg.gate.metric)
    if passed and blocking:
        decision["reason"] = f"format {blocking[0].name} does not ship ({blocking[0].reason})"
    decision["champion"] = {k: champion.get(k) for k in ("run", "model_sha256", "time", "name")} if champion else None
    if decision["promote"]:
        record = promote(cfg.promote.location, run=strip_credentials(store.location),
                         final_model_dir=str(store.local / "final_model"), student=cfg.student.model, name=cfg.name,
                         verdict={k: decision[k] for k in ("metric", "challenger_mean", "reason")},
                         versus={k: decision[k] for k in ("champion_mean", "difference", "difference_ci95", "items")}
                         if champion else None, previous=champion)
        if record["refused"]:
            decision.update(promote=False, reason=record["refused"])
        else:
            fresh = record["record"]["time"] == record["written_time"]
            record = record["record"]
            decision["promoted"] = {k: record[k] for k in ("model_sha256", "time", "model_dir")}
            if fresh:  # a re-run finds its model already promoted: no second event
                _announce(cfg, record)
    log.info("promotion: %s — %s", "promoted" if decision["promote"] else "kept the champion"
             if champion else "not promoted", decision["reason"])
    return decision, state


def _announce(cfg: RunConfig, record: dict) -> None:
    """The Prefect event automations react to (e.g. redeploy the serving side)."""
    from prefect.events import emit_event

    from llamaduo.promotion import EVENT, PromotionStore
    from llamaduo.store import sha256_text

    location = PromotionStore(cfg.promote.location)
    emit_event(event=EVENT, resource={"prefect.resource.id": f"llamaduo.promotion.{sha256_text(location.location)[:16]}",
                                      "prefect.resource.name": cfg.name, "llamaduo.promote.location": location.shown},
               payload={k: record[k] for k in ("run", "model_dir", "model_sha256", "student", "time", "verdict")})


def _push(cfg: RunConfig, store: RunStore, formats: list[FormatRow]) -> None:
    """export.push_to_hub: only the formats that ship (judged, at or above the gate)."""
    log = get_run_logger()
    shipped = [f.name for f in formats if f.ship]
    if not shipped:
        log.warning("export.push_to_hub: no format ships (each is below the gate or not judged): nothing pushed")
        return
    store.pull("final_model")
    url = push_model(str(store.local / "final_model"), cfg.export.push_to_hub, cfg.export.hub_private, shipped,
                     [f.name for f in formats], f"llamaduo: {cfg.name} ({', '.join(shipped)} judged on the test split)")
    log.info("pushed %s to the Hub: %s", ", ".join(shipped), url)


def _decision(cfg: RunConfig, root: str, data: SplitResult, summary: Summary, model: Artifact | None,
              formats: list[FormatRow]) -> None:
    """decision.json + decision.md: the page a reviewer signs (the student measured when exported)."""
    d, _ = run_gpu_stage(decide, "decision.json", root=root, summary=summary, gate=cfg.gate,
                     endpoint=cfg.service_endpoint(), limits=cfg.service, infer_cfg=cfg.infer,
                     system_prompt=cfg.student.system_prompt, test=data.test, model=model,
                     service_judged=existing_artifact(root, "baselines/service/judged.jsonl")
                     if cfg.judge.service_baseline else None,
                     plot=existing_artifact(root, "report/metrics.png"), usd_per_hour=cfg.decision.usd_per_hour,
                     prices={k: getattr(cfg.service, k) for k in ("input_cost_per_mtok", "output_cost_per_mtok")},
                     min_agreement=cfg.judge.min_agreement, formats=formats, retirement=teacher_retirement(cfg),
                     out="decision.json")
    get_run_logger().info("decision: %s", d.verdict_line)


# No log_prints: it diverts every library print into the run log (dill's captured `dis` output
# became pages of bytecode in the UI, and dill then saw no globals).
@flow(name="llamaduo-migrate", flow_run_name="migrate-{config.name}", **RESULT_OPTIONS)
def migrate(config: RunConfig, workdir: str, preflight_spend: ServiceStats | None = None) -> MigrationResult:
    """Migrate one task from the service LLM to the student; returns where the results are and
    what this invocation did. Call `llamaduo.preflight.preflight` first (the CLI and
    `migrate_config_file` do)."""
    log = get_run_logger()
    store = RunStore(workdir)
    cfg, root = config, store.location  # a folder, or a URL whose stages work in scratch copies
    run_lock = lock_run_dir(store.local)  # noqa: F841 - held until this flow returns; another live run's: exit 2
    make_run_dir(store.local)
    for f in quarantine_untrusted_results(results_location(root)):
        log.warning("removed an untrusted result record (not written by this tool): %s", f)
    if cfg.service.model == STANDIN_MODEL:
        log.warning("service LLM: %s — a demo stand-in, not a real teacher", STANDIN_LABEL)
    student, _ = run_stage(prepare_student, None, student_id=cfg.student.model)
    if not Path(student.path).exists():  # the converted weights were removed since: convert again
        student = prepare_student.with_options(refresh_cache=True)(student_id=cfg.student.model)
    data, _ = run_stage(prepare_data, "data/test.jsonl", root=root, data=cfg.data,
                        curate=cfg.curate, out="data")
    log.info("coverage data: %d train, %d validation, %d test rows (removed: %s)", data.train_rows, data.val_rows,
             data.test_rows, data.removed or "none")
    state = LoopState(train_parts=[data.train], train_rows=data.train_rows, spent=preflight_spend or ServiceStats(),
                      preflight=preflight_spend or ServiceStats())
    champion = champion_for_run(cfg, str(store.local), store.url) if cfg.promote.location else None
    if champion is not None:
        log.info("champion: %s (promoted %s); the challenger must beat it on this run's test split",
                 champion["run"], champion["time"])
        if cfg.promote.warm_start and cfg.train.warm_start:  # round 1 continues the champion's adapter
            state = state.model_copy(update={"champion_adapter": Artifact.of(store.local, CHAMPION_ADAPTER)})
    try:
        if cfg.judge.calibration_path:  # first: a judge people disagree with must not steer training
            state = _calibrate_judge(cfg, root, state)
        if cfg.judge.service_baseline:
            state = _service_baseline(cfg, root, data, state)
        if cfg.gate.baseline:
            state = _base_student(cfg, root, student, data, state)
    except StopLoop as stop:
        log.warning("stopping: %s", stop)
        state = stop.state
    if state.stop_reason is None:
        state = migration_round(cfg, root, student, data, 1, state)
    best = best_round(state.rounds, cfg.gate.metric)
    passed = state.stop_reason == STOP_PASSED
    final_dir, check, exported_model, formats, promotion = None, None, None, [], None
    if best is not None:
        label = STANDIN_LABEL if cfg.service.model == STANDIN_MODEL else "service LLM"
        exp, _ = run_gpu_stage(export, "final_model", root=root, student=student, best=best,
                           summary=summary_for(state, cfg, data, passed=passed, exported=best),
                           teacher_label=label,
                           infer_cfg=cfg.infer, system_prompt=cfg.student.system_prompt, test=data.test,
                           answers=best.answers, out="final_model", export_cfg=cfg.export)
        final_dir, check, exported_model = store.where("final_model"), exp.check, exp.model
        if check.reproduces is False:
            log.warning("the exported 16-bit weights answered %d of %d test items differently from the evaluated "
                        "adapter (each format is judged on its own answers)", check.checked - check.matched,
                        check.checked)
        formats, state, evaluated = _judge_formats(cfg, root, data, state, exp)
        for row in formats:
            log.info("format %s: %s", row.name, "ship" if row.ship else f"do not ship ({row.reason})")
        if cfg.promote.location:
            promotion, state = _champion_vs_challenger(cfg, store, student, data, state, champion, evaluated, passed,
                                                       formats)
    # relative to the run directory: the summary stays true when the folder moves (or is pulled elsewhere)
    summary = summary_for(state, cfg, data, passed=passed, final_model_dir="final_model" if final_dir else None,
                          exported=best, export_check=check)
    if promotion is not None:
        summary = summary.model_copy(update={"promotion": promotion})
    _decision(cfg, root, data, summary, exported_model, formats)
    if cfg.export.push_to_hub and passed:
        _push(cfg, store, formats)
    summary_path = write_summary(root, summary)
    log.info("done: passed=%s stop_reason=%s rounds=%d", passed, state.stop_reason,
             len([r for r in state.rounds if r.round >= 1]))
    return MigrationResult(summary_path=summary_path, passed=passed, stop_reason=state.stop_reason,
                           stop_detail=state.stop_detail, final_model_dir=final_dir,
                           exported_round=best.round if best else None, invocation=state.invocation)


SCHEDULED = "{scheduled}"  # in a deployment's workdir: the flow run's scheduled start time (UTC)


@flow(name="llamaduo-migrate-file", flow_run_name="migrate-file", **RESULT_OPTIONS)
def migrate_config_file(config_path: str = "configs/demo.yaml", settings: RunSettings | None = None,
                        overrides: list[str] | None = None, workdir: str | None = None) -> MigrationResult:
    """Deployment entry point, for the Prefect UI form and API triggers.

    Runs the same preflight as the CLI (data, templates, keys, prices, the student, one real
    call to the service and to the judge) before anything is spent.

    Args:
        config_path: YAML config inside the project directory.
        settings: the knobs people change when they schedule a run (empty = the config's value).
        overrides: other `dotted.key=value` overrides, e.g. `train.lora_r=8`, limited by the
            operator's allow-list (`llamaduo_run_overrides` in deployments/prefect.yaml).
        workdir: run directory inside the project (default `runs/<name>`); `{scheduled}` in it is the
            flow run's scheduled start time (UTC), so each scheduled run has its own directory.
    """
    from llamaduo.config import load_config
    from llamaduo.errors import InputError
    from llamaduo.operator_policy import OperatorPolicy, check_run_ceilings, check_run_overrides
    from llamaduo.preflight import preflight, probe_run_dir

    project = Path.cwd()  # the deployment's pull step sets it to the project directory
    policy = OperatorPolicy.load(project)  # from the project on the worker: a run cannot change it
    if workdir and SCHEDULED in workdir:  # one directory per scheduled run; its retries resume it
        from prefect.runtime import flow_run

        when = flow_run.scheduled_start_time
        workdir = workdir.replace(SCHEDULED, when.strftime("%Y%m%dT%H%M%SZ") if when else "unscheduled")
    for name, value in (("config_path", config_path), ("workdir", workdir)):
        if value and project.resolve() not in (p := (project / value).resolve(), *p.parents):
            raise InputError("must stay inside the project directory", field=name)
    config_dir = (project / config_path).parent  # relative data paths resolve against it
    check_run_overrides(overrides or [], policy.allow_list, project, config_dir)
    if settings is not None:
        base = load_config(config_path)
        for name, model, configured in (("settings.service_model", settings.service_model, base.service.model),
                                        ("settings.judge_model", settings.judge_model, base.judge_model)):
            if model and provider_of(model) != provider_of(configured):  # another provider would get this key
                raise InputError(f"must stay on the provider of {configured!r}", field=name)
        check_run_overrides([o for o in settings.to_overrides() if o.startswith("student.model=")], ["student.model"],
                            project, config_dir)
    cfg = load_config(config_path, (settings.to_overrides() if settings else []) + (overrides or []))
    try:  # the run's effective config, whichever of the file, the form or an override set a value
        check_run_ceilings(cfg, policy.ceilings)
    except InputError as exc:
        form_field = settings.field_setting(exc.field) if settings is not None else None
        if form_field is None:
            raise
        raise InputError(f"sets {exc}", field=form_field) from None
    workdir = workdir or str(Path("runs") / cfg.name)
    if (run_store := policy.run_store) is not None:
        workdir = f"{str(run_store).rstrip('/')}/{Path(workdir).as_posix()}"  # the operator's bucket, this run's prefix
        from llamaduo.location import is_within

        if not is_within(workdir, str(run_store)):  # `../other` resolved: not under the operator's store
            raise InputError(f"must be under the operator's run store {run_store}", field="workdir")
    if policy.gpu_deployment is not None:
        os.environ[GPU_DEPLOYMENT_ENV] = policy.gpu_deployment  # GPU stages on the operator's GPU pool
    store = RunStore(workdir)
    # Taken before the paid probe (as the CLI does): two runs on one directory never both pay for it.
    run_lock = lock_run_dir(store.local)  # noqa: F841 - held by this process; `migrate` finds it held
    from contextlib import nullcontext

    from llamaduo.lease import take_lease
    from tasks.pacing import run_pacing

    with take_lease(store) or nullcontext():  # S3: held across machines (two workers of one pool)
        from llamaduo.capture_coverage import describe, resolve_capture_data

        cfg, captured = resolve_capture_data(cfg, store.local, pull=store.pull if store.remote else None,
                                             push=store.push if store.remote else None)
        if captured is not None:
            get_run_logger().info(describe(captured))
        from llamaduo.promotion import freeze_champion

        freeze_champion(cfg, store.local, pull=store.pull if store.remote else None,
                        push=store.push if store.remote else None)  # an input error here is exit 2, not a crash
        pf = preflight(cfg, store.location, probe=False)
        with run_pacing(cfg):  # the probes take their slots on the key like every other call
            pf.probe = probe_run_dir(cfg, pf.splits, store.location)
        for w in pf.warnings:
            get_run_logger().warning(w)
        return run_migration(cfg, store.location, pf.probe)


def run_migration(cfg: RunConfig, workdir: str, probe: ServiceStats | None = None) -> MigrationResult:
    """`migrate`, its results persisted beside the run directory when that is a URL."""
    return with_results_beside(migrate, workdir)(cfg, workdir, probe)
