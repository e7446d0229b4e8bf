"""`llamaduo run|validate|serve` — the console entry point.

Exit codes (the design contract): 0 gate passed, 3 stopped without passing (rounds, budget, plateau),
2 invalid config or data, an endpoint that refuses the preflight call (the message names
file, line/row and field), or a run directory another live run holds, 4 the service LLM is failing
or (warm start) a round kept no new rows to train on, 1 any other failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from llamaduo.redact import redact

EXIT_PASSED, EXIT_FAILURE, EXIT_INPUT, EXIT_NOT_PASSED, EXIT_SERVICE_FAILING = 0, 1, 2, 3, 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llamaduo", description="Migrate a task from a service LLM to a small local model.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the migration loop")
    run.add_argument("config")
    run.add_argument("--workdir", help="run directory: a folder, or a URL on object storage (s3://bucket/prefix; "
                     "the usual AWS variables select the endpoint and keys); default runs/<name>")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set gate.threshold=80 (repeatable)")
    val = sub.add_parser("validate", help="check config and data, print the plan")
    val.add_argument("config")
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    from llamaduo.capture import add_arguments as add_capture_arguments
    from llamaduo.serve import add_arguments as add_serve_arguments

    add_capture_arguments(sub.add_parser("capture", help="record what your application asks the service LLM "
                                         "(an OpenAI-compatible pass-through) as coverage for the next run"))

    add_serve_arguments(sub.add_parser("serve", help="serve an exported model behind an OpenAI-compatible API "
                                       "(/v1/chat/completions, /v1/models)"))
    return p


def plan(cfg, pf) -> str:
    est, sp = pf.estimate, pf.splits
    rounds = cfg.gate.max_rounds
    cost = "unknown price (self-hosted: free)" if est.cost_usd is None else f"~${est.cost_usd:.4f}"
    total = "" if est.run_cost_usd_max is None else f", at most ~${est.run_cost_usd_max:.4f}"
    if est.standin_cost_usd is not None:  # $0 is paid; say what the page will call the migration's cost
        total += (f" (offline stand-in: nothing is paid; priced as the service it stands for at "
                  f"service.input_cost_per_mtok / output_cost_per_mtok, as the decision page prices it: "
                  f"~${est.standin_cost_usd:.4f} per round, at most ~${est.standin_run_cost_usd_max:.4f})")
    extra = [f"{calls} for {what}" for calls, what in ((est.baseline_calls, "baselines"),
                                                       (est.calibration_calls, "judge calibration")) if calls]
    baselines = f" (incl. {', '.join(extra)})" if extra else ""
    removed = ", ".join(f"{k} {v}" for k, v in sorted(sp.removed.items())) or "none"
    lines = [
        f"run '{cfg.name}': student {cfg.student.model}, service {cfg.service.model}, judge {cfg.judge_model}",
        f"data: {len(sp.train)} train rows, {len(sp.val)} validation rows, {len(sp.test)} test rows "
        f"(removed before the split: {removed})",
        f"per round: ~{est.synth_calls} synthesis calls (up to {est.synth_calls_max} if curation drops rows) "
        f"+ {est.judge_calls} judge calls (test + validation, x samples x repeats) = ~{est.calls} calls, "
        f"~{est.prompt_tokens} prompt + ~{est.completion_tokens} completion tokens, {cost}",
        f"up to {rounds} rounds: at most ~{est.run_calls_max} calls{total}{baselines}",
        f"gate: {cfg.gate.metric} >= {cfg.gate.threshold} (with at least {cfg.gate.min_judged_share:.0%} of the "
        f"requested judgements valid: test items x {cfg.infer.samples_per_prompt} samples x {cfg.judge.repeats} "
        f"repeats); budget caps: {cfg.budget.max_calls} calls, ${cfg.budget.max_usd:g}",
    ]
    lines += [f"warning: {w}" for w in pf.warnings]
    return "\n".join(lines)


def _prefect_env(workdir: Path) -> bool:
    """Without a configured server, keep Prefect's database and logs inside the run directory;
    returns whether this run needs a temporary server of its own (no server, no Prefect profile)."""
    own_server = not any(os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")) and not (
        Path.home() / ".prefect" / "profiles.toml").exists()
    if own_server:
        os.environ["PREFECT_HOME"] = str(workdir / ".prefect")
    # Task results (the cache) persist with the run unless the user chose a place for them.
    if not any(os.environ.get(k) for k in ("PREFECT_LOCAL_STORAGE_PATH", "PREFECT_RESULTS_LOCAL_STORAGE_PATH")):
        os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(workdir / ".prefect" / "results")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "llamaduo")
    # The temporary server's telemetry heartbeat races SQLite at start-up ("database is locked"
    # tracebacks) and cannot reach the network offline: keep it off unless asked for.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Progress bars are for a terminal; in a log file (make demo > log, a worker, CI) every update
    # is another line. The Prefect UI shows progress artifacts instead.
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
    return own_server


def _termination_signal() -> type[BaseException]:
    from prefect.exceptions import TerminationSignal

    return TerminationSignal


def _stopped_by_signal(exc: BaseException) -> int:
    """SIGINT (Ctrl-C) or SIGTERM (a shell, systemd, a worker cancelling the run): every finished
    stage is cached, every received reply is in the reply cache, the summary holds the finished
    rounds, the training child was stopped. Exit now — lingering server threads or children must
    not keep the process alive — and let the same command resume."""
    import signal

    signum = getattr(exc, "signal", None) or (signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
    print(f"\n{signal.Signals(signum).name}: stopping the run", file=sys.stderr)
    _stop_children()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + int(signum))


def _stop_children() -> None:
    """Terminate this process's descendants (the temporary Prefect server, a training process)."""
    from llamaduo.lifeline import terminate_descendants

    terminate_descendants()


CAPTURE_ROWS_EVENT = "llamaduo.capture.rows"


def _capture_events():
    """Prefect events for `llamaduo capture` (automations start a run on them: deployments/prefect.yaml)."""
    from prefect.events import emit_event

    from llamaduo.store import sha256_text

    def announce(store, total: int) -> None:
        emit_event(event=CAPTURE_ROWS_EVENT,
                   resource={"prefect.resource.id": f"llamaduo.capture.{sha256_text(store.location)[:16]}",
                             "prefect.resource.name": store.shown},
                   payload={"rows_recorded": total})

    return announce


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "capture":
        from llamaduo.capture import capture

        return capture(args, _capture_events() if os.environ.get("PREFECT_API_URL") else None)
    if args.command == "serve":  # no config: everything it needs was recorded at export
        from llamaduo.serve import serve

        return serve(args)
    from llamaduo.config import load_config
    from llamaduo.errors import InputError
    from llamaduo.preflight import check_workdir, preflight, probe_run_dir
    from llamaduo.runstore import RunStore
    from llamaduo.store import lock_run_dir

    from llamaduo.lease import take_lease

    from llamaduo.capture_coverage import describe, resolve_capture_data, validate_view
    from llamaduo.promotion import freeze_champion

    store = run_lock = run_lease = None
    captured = champion = None
    scratch = tempfile.TemporaryDirectory(prefix="llamaduo-validate-")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "run":  # a folder, or a URL (s3://bucket/prefix): stages work in a scratch copy
            store = RunStore(args.workdir or Path("runs") / cfg.name)
            check_workdir(store.local)  # a file, unwritable or held: exit 2 before taking the lock
            # Taken before anything is written into the directory (the capture snapshot, the probe), held
            # until this process ends (and by the flow child it hands it to): a second run exits 2 here.
            run_lock = lock_run_dir(store.local)
            run_lease = take_lease(store)  # S3: the same lock across machines (None elsewhere)
            cfg, captured = resolve_capture_data(cfg, store.local, pull=store.pull if store.remote else None,
                                                 push=store.push if store.remote else None)
            champion = freeze_champion(cfg, store.local, pull=store.pull if store.remote else None,
                                       push=store.push if store.remote else None)
        else:
            cfg, captured = validate_view(cfg, Path(scratch.name))
        pf = preflight(cfg, store.location if store else None, probe=False)
        if args.command == "run":
            from tasks.pacing import run_pacing

            with run_pacing(cfg):  # on a shared Prefect server the probes take their slots on the key
                pf.probe = probe_run_dir(cfg, pf.splits, store.location)
    except InputError as exc:
        if run_lease is not None:
            run_lease.release()
        print(redact(f"error: {exc}"), file=sys.stderr)  # Hub and provider errors may echo a key
        return EXIT_INPUT
    if captured is not None:
        print(describe(captured))
    if champion is not None:
        print(f"champion: {champion['run']} (promoted {champion['time']}): this run's challenger replaces it only "
              f"when better beyond noise on the test split")
    print(plan(cfg, pf))
    if args.command == "validate":
        print("config and data are valid")
        return EXIT_PASSED
    server = None
    if _prefect_env(store.local):  # started now: it boots while the flow process imports
        from llamaduo.pacing import TEMPORARY_SERVER_ENV

        from .tempserver import TemporaryServer

        server = TemporaryServer(store.local / ".prefect" / "prefect.db").start()
        os.environ.update({"PREFECT_API_URL": server.api_url, TEMPORARY_SERVER_ENV: "1"})
        os.environ.setdefault("PREFECT_UI_URL", "")  # it serves no UI: no "View at" links to nowhere
    try:
        with run_lock:
            code = _supervise(cfg, store, pf.probe, run_lock)
    finally:
        if run_lease is not None:
            run_lease.release()
        if server is not None:
            server.stop()
    if store.remote and code in (EXIT_PASSED, EXIT_NOT_PASSED, EXIT_SERVICE_FAILING):
        store.clean_scratch()  # the run finished: everything is on the store (a crash keeps it to resume)
    return code


STOP_GRACE_S = 10.0


def _supervise(cfg, store, probe, run_lock) -> int:
    """Run the flow in a child process and stay able to stop it. A SIGTERM or SIGINT is passed
    on; the child marks its flow run, stops its training process and exits at once; if anything
    there lingers past STOP_GRACE_S, its whole process group is killed. Every finished stage is
    cached and every received reply is in the reply cache: the same command resumes.

    The child lives in its own session (a terminal's Ctrl-C reaches only this process), so a
    SIGKILL here cannot be passed on: the child ends its own process tree when this process dies
    (a parent-death signal, and EOF on a pipe only this process writes to). It inherits the run
    directory's lock, so a flow still ending keeps a re-run out."""
    from llamaduo.childproc import Child
    from llamaduo.store import RUN_LOCK_FD_ENV, atomic_write_json

    spec = store.local / ".llamaduo" / "invocation.json"
    atomic_write_json(spec, {"config": cfg.model_dump(mode="json"), "workdir": store.location,
                             "probe": probe.model_dump(mode="json")})
    with Child([sys.executable, "-m", "flows.cli", "_flow", str(spec)], new_session=True, pass_fds=(run_lock.fd,),
               env={**os.environ, RUN_LOCK_FD_ENV: str(run_lock.fd)}) as child:
        # Leaving the block kills the child's session: a training process or temporary server it left
        # behind (it died by a signal).
        return _wait_for_child(child.proc)


def _wait_for_child(child) -> int:
    import signal
    import subprocess

    received: list[int] = []

    def forward(signum, _frame):
        if not received:
            received.append(signum)
            # SIGTERM either way: Prefect turns it into a crash of the flow run at the next bytecode,
            # where a forwarded SIGINT would raise KeyboardInterrupt inside any library callback.
            child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    deadline = None
    try:
        while True:
            try:
                code = child.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if received and deadline is None:
                    deadline = time.time() + STOP_GRACE_S
                if deadline is not None and time.time() > deadline:
                    os.killpg(child.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        print(f"stopped by {signal.Signals(received[0]).name}: finished stages are saved; re-run the same command "
              "to resume", file=sys.stderr)
        return 128 + received[0]
    return code


def _flow_main(spec_path: str) -> int:
    """The child process of `llamaduo run`: the Prefect flow itself. It ends, with its training
    process, when the supervising CLI process dies."""
    import json

    from llamaduo.childproc import hold_lifeline
    from llamaduo.lifeline import end_process_tree

    def parent_gone() -> None:
        print("\nthe supervising `llamaduo run` process is gone: ending this run", file=sys.stderr, flush=True)
        end_process_tree()

    hold_lifeline(parent_gone)

    from llamaduo.config import RunConfig
    from llamaduo.errors import InputError
    from llamaduo.records import ServiceStats

    stop_signals = (KeyboardInterrupt, _termination_signal())

    def quiet_when_stopping(unraisable) -> None:
        # A stop signal that lands inside a finalizer (__del__, weakref callbacks) is not an error.
        if not isinstance(unraisable.exc_value, stop_signals):
            sys.__unraisablehook__(unraisable)

    sys.unraisablehook = quiet_when_stopping
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    from llamaduo.runstore import RunStore

    cfg, store = RunConfig.model_validate(spec["config"]), RunStore(spec["workdir"])
    t0 = time.time()
    try:
        from flows.migrate import run_migration

        from llamaduo.pacing import TEMPORARY_SERVER_ENV

        if os.environ.get(TEMPORARY_SERVER_ENV) and os.environ.get("PREFECT_API_URL"):
            from flows.tempserver import wait_for_api

            wait_for_api(os.environ["PREFECT_API_URL"])  # the CLI's own server, started while this imported

        result = run_migration(cfg, store.location, ServiceStats.model_validate(spec["probe"]))
    except stop_signals as exc:
        return _stopped_by_signal(exc)
    except InputError as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)  # Hub and provider errors may echo a key
        return EXIT_INPUT
    except Exception as exc:  # noqa: BLE001 - reported, exit 1
        from llamaduo.redact import secret_values

        secrets = secret_values([cfg.service.api_key_env, cfg.judge.api_key_env])
        print(redact(f"error: run failed: {type(exc).__name__}: {exc}", secrets), file=sys.stderr)
        return EXIT_FAILURE
    inv = result.invocation
    print(f"\nfinished in {time.time() - t0:.0f} s: passed={result.passed} stop_reason={result.stop_reason}")
    if result.stop_detail:
        print(f"why: {result.stop_detail}")
    print(f"this invocation: {inv.service_calls} service calls, {inv.training_steps} training steps")
    for line in _round_lines(store.local / "summary.json"):
        print(line)
    print(f"summary: {result.summary_path}")
    reports = store.glob("rounds/round_*/report.md")
    if reports:
        print(f"report:  {store.where(reports[-1])} (plot: {store.where('report/metrics.png')})")
    if store.glob("decision.md"):
        print(f"decision: {store.where('decision.md')} (verdict, quality per category, calibration, latency, cost)")
    if result.final_model_dir:
        verdict = "passed" if result.passed else "did NOT pass the gate"
        print(f"model:   {result.final_model_dir}/merged (round {result.exported_round}, {verdict}; "
              f"model card: {result.final_model_dir}/README.md)")
    if result.passed:
        return EXIT_PASSED
    from llamaduo.gate import STOP_CACHE_WRITE_FAILED, STOP_NO_NEW_ROWS, STOP_SERVICE_FAILING

    if result.stop_reason == STOP_CACHE_WRITE_FAILED:  # paid replies unsaved: the machine needs fixing
        return EXIT_FAILURE
    return EXIT_SERVICE_FAILING if result.stop_reason in (STOP_SERVICE_FAILING, STOP_NO_NEW_ROWS) \
        else EXIT_NOT_PASSED


def _round_lines(summary_path: Path) -> list[str]:
    """One line per fine-tuning round: the gate's verdict (each round is a subflow run `round-N`)."""
    import json

    try:
        rounds = json.loads(summary_path.read_text(encoding="utf-8"))["rounds"]
    except (OSError, ValueError, KeyError):
        return []
    return [f"round {r['round']}: {r['gate']['reason']} -> {'PASS' if r['gate']['passed'] else 'fail'}"
            for r in rounds if r.get("round", 0) >= 1 and r.get("gate")]


def _exit_without_teardown(code: int) -> None:
    """End the flow process once its run is over the way the interpreter starts to: threads'
    exit hooks (Prefect's log and event workers drain to the server there), then atexit handlers
    (Prefect's own temporary server stops) — and then exit without the interpreter's teardown of
    torch, transformers and Prefect, which took 5-8 s on 2 cores after every run."""
    import atexit
    import threading

    threading._shutdown()  # what Py_Finalize calls first: joins threads, runs threading._register_atexit hooks
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    if sys.argv[1:2] == ["_flow"]:
        _exit_without_teardown(_flow_main(sys.argv[2]))
    raise SystemExit(main())
