"""`llamaduo run|validate` — the console entry point.

Exit codes (DESIGN.md): 0 gate passed, 3 stopped without passing, 2 invalid config or
data (the message names file, line/row and field), 1 any other failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EXIT_PASSED, EXIT_FAILURE, EXIT_INPUT, EXIT_NOT_PASSED = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llamaduo", description="Migrate a task from a service LLM to a small local model.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the migration loop")
    run.add_argument("config")
    run.add_argument("--workdir", help="run directory (default: runs/<name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set gate.threshold=80 (repeatable)")
    val = sub.add_parser("validate", help="check config and data, print the plan")
    val.add_argument("config")
    val.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def check(cfg) -> dict:
    """Everything that can be checked before spending: data, templates, key presence."""
    from llamaduo.data import load_coverage
    from llamaduo.errors import InputError
    from llamaduo.templates import judge_template, synth_template

    train, test = load_coverage(cfg.data.path, cfg.data.test_path, cfg.data.test_size, cfg.data.split_seed)
    synth_template(cfg.synth.prompt_template)
    judge_template(cfg.judge.prompt_template)
    if cfg.service.api_key_env and not os.environ.get(cfg.service.api_key_env):
        raise InputError(f"environment variable {cfg.service.api_key_env} is not set", field="service.api_key_env")
    if cfg.service.standin_pool:
        from llamaduo.data import load_examples

        load_examples(cfg.service.standin_pool)
    return {"train": train, "test": test}


def plan(cfg, data: dict) -> str:
    from llamaduo.estimate import round_estimate

    est = round_estimate(cfg, data["train"], data["test"])
    rounds = cfg.gate.max_rounds
    cost = "unknown price (0 for local models)" if est["cost_usd"] is None else f"~${est['cost_usd']:.4f}"
    total = "" if est["cost_usd"] is None else f", ~${est['cost_usd'] * rounds:.4f}"
    return "\n".join([
        f"run '{cfg.name}': student {cfg.student.model}, service {cfg.service.model}, judge {cfg.judge_model}",
        f"data: {len(data['train'])} train rows, {len(data['test'])} test rows",
        f"per round: ~{est['synth_calls']} synthesis calls (up to {est['synth_calls'] * cfg.synth.max_waves} if "
        f"curation drops rows) + {est['judge_calls']} judge calls = ~{est['calls']} calls, "
        f"~{est['prompt_tokens']} prompt + ~{est['completion_tokens']} completion tokens, {cost}",
        f"up to {rounds} rounds: ~{est['calls'] * rounds} calls{total}"
        f"{' (+ a baseline evaluation)' if cfg.gate.baseline else ''}",
        f"gate: {cfg.gate.metric} >= {cfg.gate.threshold}; budget caps: {cfg.budget.max_calls} calls, "
        f"${cfg.budget.max_usd:g}",
    ])


def _prefect_env(workdir: Path) -> None:
    """Without a configured server, keep Prefect's database and logs inside the run directory."""
    if not any(os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")) and not (
            Path.home() / ".prefect" / "profiles.toml").exists():
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from llamaduo.config import load_config
    from llamaduo.errors import InputError

    try:
        cfg = load_config(args.config, args.overrides)
        data = check(cfg)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(plan(cfg, data))
    if args.command == "validate":
        print("config and data are valid")
        return EXIT_PASSED
    workdir = Path(args.workdir or Path("runs") / cfg.name).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _prefect_env(workdir)
    t0 = time.time()
    try:
        from flows.migrate import migrate

        result = migrate(cfg, str(workdir))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except Exception as exc:  # noqa: BLE001 - reported, exit 1
        print(f"error: run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    from llamaduo.service import PROCESS_STATS
    from llamaduo.train import PROCESS_TRAINING_STEPS

    print(f"\nfinished in {time.time() - t0:.0f} s: passed={result['passed']} stop_reason={result['stop_reason']}")
    print(f"this invocation: {PROCESS_STATS.calls} service calls, {PROCESS_TRAINING_STEPS[0]} training steps")
    print(f"summary: {result['summary_path']}")
    reports = sorted(workdir.glob("rounds/round_*/report.md"))
    if reports:
        print(f"report:  {reports[-1]} (plot: {workdir / 'report' / 'metrics.png'})")
    if result["final_model_dir"]:
        print(f"model:   {result['final_model_dir']}/merged (model card: {result['final_model_dir']}/README.md)")
    return EXIT_PASSED if result["passed"] else EXIT_NOT_PASSED


if __name__ == "__main__":
    raise SystemExit(main())
