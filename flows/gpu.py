"""GPU stages (fine-tuning, student inference, export, the decision page's latency measurement) on a GPU work pool.

One setting chooses where they run: without `LLAMADUO_GPU_DEPLOYMENT` every stage runs in the
flow's own process (the default). With it (e.g. `llamaduo-gpu-stage/gpu`; deployments/prefect.yaml
`llamaduo_gpu_deployment` for deployment runs) the parent flow, on a CPU pool, starts each GPU
stage as a run of that deployment (`run_deployment`, a subflow in the UI) and waits:

- parameters are the stage's typed records as JSON plus the run directory's URL (the run
  directory must be on object storage: the GPU worker has its own disk);
- the child writes a receipt (the stage's result record) to the run directory; the parent
  rebuilds the typed result from it;
- a child that crashes — its worker killed, a pod evicted, a spot instance reclaimed; detected
  by Prefect's heartbeats and the crash automation below — is started again, on any worker of the
  pool, and resumes from the last checkpoint on the store;
- cancelling (or losing) the parent ends the child: Prefect does not cascade cancellation to a
  deployment run, so the child watches its parent and cancels itself.
"""

from __future__ import annotations

import inspect
import json
import os
import threading
import time
import typing
from typing import Any

from prefect import flow, get_run_logger
from pydantic import BaseModel, TypeAdapter

from llamaduo.errors import InputError
from llamaduo.records import StudentRef
from llamaduo.runstore import RunStore, is_url
from llamaduo.store import sha256_text
from tasks._policy import run_stage
from tasks._results import RESULT_OPTIONS
from tasks._stage import traits_of
from tasks.decision import decide
from tasks.evaluate import infer
from tasks.export import export
from tasks.train import finetune

GPU_DEPLOYMENT_ENV = "LLAMADUO_GPU_DEPLOYMENT"
# decide: the student's latency is measured where it would be served.
GPU_STAGES = {t.name: t for t in (finetune, infer, export, decide)}
MAX_CRASHED_ATTEMPTS = 3  # a stage whose worker died is started again this many times in all
RECEIPTS = ".llamaduo/receipts"
WATCH_PARENT_S = 3.0
# GPU stage runs that stop sending heartbeats for three heartbeat periods
# (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, the same on every worker: default 180 s, so 9 minutes; 30 s
# gives 90 s) are marked Crashed by the server: Prefect's zombie-flow recipe, limited to this
# project's GPU stage flow so no other flow run is ever touched. LLAMADUO_CRASH_AFTER_S overrides.
CRASH_AUTOMATION = "llamaduo: crash GPU stages without heartbeats"
GPU_STAGE_FLOW = "llamaduo-gpu-stage"


def crash_after_s() -> int:
    from prefect.settings import get_current_settings

    if os.environ.get("LLAMADUO_CRASH_AFTER_S"):
        return int(os.environ["LLAMADUO_CRASH_AFTER_S"])
    return 3 * int(get_current_settings().flows.heartbeat_frequency or 180)


def gpu_deployment() -> str | None:
    return os.environ.get(GPU_DEPLOYMENT_ENV) or None


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _hints(task) -> dict[str, Any]:
    fn = inspect.unwrap(task.fn)
    return typing.get_type_hints(fn)


def _typed_params(task, params: dict) -> dict:
    hints = _hints(task)
    unknown = set(params) - set(hints)
    if unknown:
        raise InputError(f"unknown parameters for {task.name}: {sorted(unknown)}", field="params")
    typed = {k: TypeAdapter(hints[k]).validate_python(v) for k, v in params.items()}
    from pathlib import PurePosixPath

    from tasks._store import artifact_paths

    writes = traits_of(task).writes
    for rel in [*artifact_paths(list(typed.values())), str(typed.get(writes, "") if writes else "")]:
        parts = PurePosixPath(rel).parts
        if rel.startswith(("/", "~")) or ".." in parts or "://" in rel:
            raise InputError(f"{rel!r} is not a path inside the run directory", field="params")
    return {k: _student_here(v) if isinstance(v, StudentRef) else v for k, v in typed.items()}


def _student_here(ref: StudentRef) -> StudentRef:
    """The student's weights as this worker resolves its configured id: a caller's `path` is
    not taken (it was a free path on the GPU worker)."""
    from llamaduo.models import resolve_student

    return StudentRef(id=ref.id, path=str(resolve_student(ref.id)))


def _receipt(out: str, flow_run_id: str) -> str:
    return f"{RECEIPTS}/{sha256_text(out)[:16]}-{flow_run_id}.json"


def run_gpu_stage(task, out: str, /, **params) -> tuple[Any, bool]:
    """`run_stage`, on the GPU pool when a GPU deployment is configured."""
    deployment = gpu_deployment()
    if deployment is None:
        return run_stage(task, out, **params)
    root = params.pop(traits_of(task).run_dir)
    if not is_url(root):
        raise InputError("GPU stages on their own pool need the run directory on object storage "
                         "(--workdir s3://bucket/prefix): the GPU worker has its own disk", field="--workdir")
    from prefect.deployments import run_deployment
    from prefect.runtime import flow_run

    log = get_run_logger()
    ensure_crash_detection()
    store = RunStore(root)
    for attempt in range(1, MAX_CRASHED_ATTEMPTS + 1):
        child = run_deployment(deployment, timeout=None, as_subflow=True,
                               flow_run_name=f"{task.name}:{out}" + (f" (attempt {attempt})" if attempt > 1 else ""),
                               parameters={"stage": task.name, "workdir": root, "params": _jsonable(params),
                                           "parent_flow_run_id": str(flow_run.id) if flow_run.id else None})
        state = child.state
        if state is not None and state.is_completed():
            raw = store.read_bytes(_receipt(out, str(child.id)))
            if raw is None:
                raise RuntimeError(f"GPU stage {task.name} ({out}) completed but left no receipt in {root}")
            receipt = json.loads(raw)
            result = TypeAdapter(_hints(task)["return"]).validate_python(receipt["result"])
            return result, bool(receipt["fresh"])
        name = state.name if state is not None else "unknown"
        if state is not None and state.is_crashed() and attempt < MAX_CRASHED_ATTEMPTS:
            log.warning("GPU stage %s (%s) crashed (%s); starting it again on the pool (attempt %d of %d): it "
                        "resumes from its last checkpoint", task.name, out, state.message or name, attempt + 1,
                        MAX_CRASHED_ATTEMPTS)
            continue
        raise RuntimeError(f"GPU stage {task.name} ({out}) ended {name}: {(state.message if state else '') or ''}")
    raise AssertionError("unreachable")


def ensure_crash_detection() -> None:
    """Create the server's zombie-flow automation once (idempotent, by name)."""
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        if Automation.read(name=CRASH_AUTOMATION):
            return
    except ValueError:
        pass
    Automation(
        name=CRASH_AUTOMATION,
        description="Marks flow runs Crashed when their heartbeats stop (a killed worker, an evicted pod); "
                    "llamaduo's parent flow then starts the GPU stage again.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                 "prefect.resource.name": GPU_STAGE_FLOW}),
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=crash_after_s())),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message="no heartbeat: the flow run's process or machine is gone")],
    ).create()


def parent_gone(read_state) -> str | None:
    """Why this GPU stage should stop, from one look at its parent (`read_state()` returns its
    state): its state's name when it is final or cancelling, "deleted" when the server no longer
    knows it (404: it would otherwise be polled forever), None to look again (running, or the
    server briefly unreachable)."""
    from prefect.exceptions import ObjectNotFound

    try:
        state = read_state()
    except ObjectNotFound:
        return "deleted"
    except Exception:  # noqa: BLE001 - the server is briefly unreachable: look again
        return None
    if state is not None and (state.is_final() or state.is_cancelling()):
        return state.name
    return None


def _watch_parent(parent_id: str) -> None:
    """End this run when its parent is no longer running (cancelled, crashed, failed, deleted)."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    from llamaduo.lifeline import end_process_tree

    def loop() -> None:
        with get_client(sync_client=True) as client:
            while True:
                time.sleep(WATCH_PARENT_S)
                why = parent_gone(lambda: client.read_flow_run(UUID(parent_id)).state)
                if why is not None:
                    try:
                        from prefect.states import Cancelled

                        client.set_flow_run_state(UUID(str(flow_run.id)), Cancelled(
                            message=f"parent flow run {parent_id} is {why}"), force=True)
                    finally:
                        print(f"parent flow run {parent_id} is {why}: ending this GPU stage", flush=True)
                        end_process_tree()

    threading.Thread(target=loop, name="llamaduo-watch-parent", daemon=True).start()


@flow(name=GPU_STAGE_FLOW, **RESULT_OPTIONS)
def gpu_stage(stage: str, workdir: str, params: dict[str, Any], parent_flow_run_id: str | None = None) -> None:
    """One GPU stage of a migration (started by the parent flow, not by people): fine-tuning,
    student inference or export, on the run directory at `workdir` (object storage)."""
    from prefect.runtime import flow_run

    if stage not in GPU_STAGES:
        raise InputError(f"unknown GPU stage {stage!r}; one of {sorted(GPU_STAGES)}", field="stage")
    if not is_url(workdir):
        raise InputError("a GPU stage works on a run directory on object storage", field="workdir")
    _check_store_base(workdir)
    if parent_flow_run_id:
        _watch_parent(parent_flow_run_id)
    task = GPU_STAGES[stage]
    typed = _typed_params(task, params)
    store = RunStore(workdir)
    try:
        traits = traits_of(task)
        out = typed.get(traits.writes) if traits.writes else None
        result, fresh = run_stage(task, out, **{traits.run_dir: workdir}, **typed)
        store.write_text(_receipt(str(out), str(flow_run.id)),
                         json.dumps({"fresh": fresh, "result": _jsonable(result)}))
    finally:  # everything is on the store; the next stage (on any worker) pulls what it needs
        store.clean_scratch()
    get_run_logger().info("%s (%s): %s", stage, out, "done" if fresh else "answered from the cache")


def _check_store_base(workdir: str) -> None:
    """A GPU stage writes only under the operator's run store (`llamaduo_run_store` in
    deployments/prefect.yaml), when one is set: whoever can start this deployment cannot point
    it at another bucket the worker's credentials reach."""
    from pathlib import Path

    from llamaduo.location import is_within
    from llamaduo.operator_policy import OperatorPolicy

    base = OperatorPolicy.load(Path.cwd()).run_store
    # compared in canonical form: `STORE/../outside`, `STORE/x/../..`, `STORE-evil` are not under STORE
    if base and not is_within(workdir, str(base)):
        raise InputError(f"must be under the operator's run store {base}", field="workdir")
