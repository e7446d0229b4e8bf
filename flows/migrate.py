"""The parent flow: prepare data, optional baseline (round 0), the recursive rounds, export."""

from __future__ import annotations

from prefect import flow, get_run_logger

from llamaduo.config import STANDIN_MODEL, RunConfig
from llamaduo.errors import BudgetExhausted
from llamaduo.export import model_card
from llamaduo.gate import STOP_BUDGET, STOP_PASSED, best_round, decide
from llamaduo.judge import parity
from llamaduo.models import resolve_student
from llamaduo.standin import LABEL as STANDIN_LABEL
from llamaduo.store import RunDir
from llamaduo.summary import write_summary
from tasks._policy import stage
from tasks.data import data_inputs_sha, prepare_data
from tasks.evaluate import evaluate, infer, service_answers
from tasks.export import export

from .round import migration_round
from .state import LoopState, record_round, summary_for


def _evaluate_answers(cfg: RunConfig, rd: RunDir, data: dict, answers: dict, label: int, state: LoopState,
                      out: str) -> dict:
    ev = stage(evaluate, out)(cfg.model_dump(mode="json"), data["test"], answers, label, state.spent,
                              str(rd.service_cache), out)
    state.charge(ev["service"])
    return ev


def _service_baseline(cfg: RunConfig, rd: RunDir, data: dict, state: LoopState) -> None:
    """The service LLM's own answers, judged the same way: the ceiling for parity."""
    out = rd.root / "baselines" / "service"
    sa = stage(service_answers, out / "answers.jsonl")(cfg.model_dump(mode="json"), data["test"], state.spent,
                                                        str(rd.service_cache), str(out / "answers.jsonl"))
    state.charge(sa["service"])
    ev = _evaluate_answers(cfg, rd, data, sa["answers"], -1, state, str(out / "judged.jsonl"))
    state.baselines["service LLM"] = ev["metrics"]


def _base_student(cfg: RunConfig, rd: RunDir, base_model: str, data: dict, state: LoopState) -> None:
    """Round 0: the base student, judged the same way on the same test items."""
    out = rd.round(0) / "answers.jsonl"
    inf = stage(infer, out)(cfg.infer.model_dump(mode="json"), base_model, cfg.student.model, None, data["test"],
                            cfg.student.system_prompt, str(out))
    ev = _evaluate_answers(cfg, rd, data, inf["answers"], 0, state, str(rd.round(0) / "judged.jsonl"))
    service_metrics = state.baselines.get("service LLM")
    decision = decide(ev["metrics"], cfg.gate, ev["items"], service_metrics)
    state.baselines["base student"] = ev["metrics"]
    state.last_judged = ev["judged"]
    record_round(state, cfg, rd, {
        "round": 0, "train_rows": 0, "synthetic_rows_added": 0, "dropped": {}, "metrics": ev["metrics"],
        "gate": decision.to_summary(), "parity": parity(ev["metrics"], service_metrics) if service_metrics else {},
        "service": ev["service"], "durations_s": {"infer": inf["seconds"], "evaluate": ev["seconds"]},
        "gate_reason": decision.reason, "judged_path": ev["judged"]["path"]}, ev["judged"])


@flow(name="llamaduo-migrate", flow_run_name="migrate-{config.name}", persist_result=True, log_prints=True)
def migrate(config: RunConfig, workdir: str) -> dict:
    """Migrate one task from the service LLM to the student; returns where the results are."""
    log = get_run_logger()
    cfg = config
    rd = RunDir(workdir).mkdirs()
    if cfg.service.model == STANDIN_MODEL:
        log.warning("service LLM: %s — a demo stand-in, not a real teacher", STANDIN_LABEL)
    base_model = resolve_student(cfg.student.model)
    data = stage(prepare_data, rd.data / "test.jsonl")(cfg.data.model_dump(mode="json"),
                                                          data_inputs_sha(cfg.data.path, cfg.data.test_path),
                                                          str(rd.data))
    log.info("coverage data: %d train rows, %d test rows", data["train_rows"], data["test_rows"])
    state = LoopState(train_parts=[data["train"]], train_rows=data["train_rows"])
    try:
        if cfg.judge.service_baseline:
            _service_baseline(cfg, rd, data, state)
        if cfg.gate.baseline:
            _base_student(cfg, rd, base_model, data, state)
    except BudgetExhausted:
        state.stop_reason = STOP_BUDGET
    if state.stop_reason is None:
        state = migration_round(cfg, str(rd.root), base_model, data, 1,
                                                                         state)
    best = best_round(state.rounds, cfg.gate.metric)
    passed = state.stop_reason == STOP_PASSED
    final_dir = None
    if best is not None:
        summary = summary_for(state, cfg, passed=passed, final_model_dir=str(rd.export))
        card = model_card(cfg.name, summary, best, cfg.student.model, cfg.service.model,
                          STANDIN_LABEL if cfg.service.model == STANDIN_MODEL else "service LLM")
        stage(export, rd.export)(base_model, cfg.student.model, best["adapter"], card,
                                                 str(rd.export))
        final_dir = str(rd.export)
    summary = summary_for(state, cfg, passed=passed, final_model_dir=final_dir)
    write_summary(rd, summary)
    log.info("done: passed=%s stop_reason=%s rounds=%d", passed, state.stop_reason,
             len([r for r in state.rounds if r["round"] >= 1]))
    return {"summary_path": str(rd.summary), "passed": passed, "stop_reason": state.stop_reason,
            "final_model_dir": final_dir}


@flow(name="llamaduo-migrate-file", flow_run_name="migrate-file", persist_result=True, result_serializer="json",
      log_prints=True)
def migrate_config_file(config_path: str = "configs/demo.yaml", overrides: list[str] | None = None,
                        workdir: str | None = None) -> dict:
    """Deployment entry point, for the Prefect UI form and API triggers.

    Args:
        config_path: YAML config, relative to the project directory or absolute.
        overrides: `dotted.key=value` overrides, e.g. `gate.threshold=80`.
        workdir: run directory (default `runs/<name>`); the result names its summary.json.
    """
    from pathlib import Path

    from llamaduo.config import load_config

    cfg = load_config(config_path, overrides or [])
    return migrate(cfg, workdir or str(Path("runs") / cfg.name))
