"""Issue 18 end to end: a migration whose run directory is on S3 (moto) and whose GPU stages run as
runs of the `gpu` deployment on their own work pool, against a PostgreSQL-backed Prefect server.

- a GPU worker killed (SIGKILL, with the flow run it started) mid-training: the server's crash
  automation marks the stage Crashed (no heartbeats), the parent starts it again, a second GPU
  worker picks it up and resumes from the checkpoint on the store; the migration passes end to
  end, the store holds every artifact, the local scratch copies are gone, no reply paid twice;
- cancelling the parent cancels the GPU child.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.distributed_env import create_process_pool
from tests.fake_service import FakeBehaviour, FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.distributed]

ROWS = [{"instruction": f"Which colour is sample {i} from crate {i * 7}?", "response": "blue"} for i in range(16)]
POOL = [{"instruction": f"Name the colour of parcel {i} in bay {i % 5}.", "response": "blue"} for i in range(40)]
GPU_DEPLOYMENT = "llamaduo-gpu-stage/gpu"


@pytest.fixture(scope="module")
def gpu_pool(prefect_server):
    create_process_pool(prefect_server, "gpu")
    prefect_server.cli("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "gpu")
    return "gpu"


def _config(tmp_path: Path, tiny_model_dir: Path, api_base: str, name: str, max_steps: int) -> Path:
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = {"name": name, "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 0},
           "service": {"model": "openai/fake-teacher", "api_key_env": "FAKE_SERVICE_KEY", "rpm": 6000,
                       "max_concurrency": 2, "max_retries": 0, "api_base": api_base},
           "synth": {"rows_per_round": 8, "pairs_per_request": 4, "max_waves": 1},
           "student": {"model": str(tiny_model_dir)},
           # long enough to be killed mid-way, a checkpoint every few seconds
           "train": {"max_steps": max_steps, "save_steps": 25, "batch_size": 4, "max_length": 64,
                     "quantization": "none"},
           "infer": {"max_new_tokens": 4, "batch_size": 4}, "export": {"gguf": []},
           "gate": {"threshold": 1, "max_rounds": 1, "baseline": False}, "budget": {"max_usd": 0}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _keys(s3, prefix: str) -> set[str]:
    client = s3.boto3_client()
    return {o["Key"][len(prefix):] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=s3.bucket, Prefix=prefix) for o in page.get("Contents", [])}


def _wait(predicate, timeout: float, what: str, every: float = 1.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _flow_runs(server, flow_name: str) -> list:
    async def read():
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        async with server.client() as c:
            return await c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))

    return asyncio.run(read())


def _parent_env(prefect_server, s3_server, tmp_path: Path) -> dict:
    return prefect_server.env(home=tmp_path / "cpu-home", **s3_server.env(), FAKE_SERVICE_KEY="sk-split-pools",
                              LLAMADUO_GPU_DEPLOYMENT=GPU_DEPLOYMENT, LLAMADUO_SCRATCH=str(tmp_path / "cpu-scratch"),
                              LLAMADUO_CRASH_AFTER_S="40", HOME=str(tmp_path / "cpu-home"))


def _gpu_env(s3_server, tmp_path: Path, name: str) -> dict:
    # its own scratch and home, as on another machine; heartbeats every 30 s (Prefect's minimum)
    return {**s3_server.env(), "LLAMADUO_SCRATCH": str(tmp_path / f"{name}-scratch"), "LLAMADUO_SYNC_EVERY_S": "1",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", "HOME": str(tmp_path / f"{name}-home")}


def test_split_pools_survive_a_killed_gpu_worker_and_keep_everything_on_the_store(
        tmp_path, tiny_model_dir, prefect_server, s3_server, gpu_pool, start_worker):
    url = f"s3://{s3_server.bucket}/runs/split"
    gpu_1 = start_worker(prefect_server, gpu_pool, name="gpu-1", env=_gpu_env(s3_server, tmp_path, "gpu-1"))
    gpu_1.wait_online()
    with FakeOpenAIServer(FakeBehaviour(pool=POOL)) as service:
        cfg = _config(tmp_path, tiny_model_dir, service.url, "split", max_steps=300)
        t0 = time.monotonic()
        parent = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(cfg), "--workdir", url], cwd=ROOT,
                                  env=_parent_env(prefect_server, s3_server, tmp_path), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            # training is under way and a finished checkpoint is on the store: lose the GPU machine
            ckpt = _wait(lambda: [k for k in _keys(s3_server, "runs/split/") if ".checkpoints/" in k
                                  and k.endswith("trainer_state.json")], 420, "a checkpoint on the store")
            killed_at = time.monotonic()
            gpu_1.kill(signal.SIGKILL)
            gpu_2 = start_worker(prefect_server, gpu_pool, name="gpu-2", env=_gpu_env(s3_server, tmp_path, "gpu-2"))
            out, _ = parent.communicate(timeout=900)
        finally:
            if parent.poll() is None:
                parent.kill()
        wall = time.monotonic() - t0
        assert parent.returncode == 0, out[-6000:] + "\nGPU-2:\n" + gpu_2.log_tail()
        paid_twice = {k: n for k, n in service.answered.items() if n > 1}
    assert not paid_twice, f"replies paid twice: {paid_twice}"

    keys = _keys(s3_server, "runs/split/")
    for name in ("summary.json", "data/train.jsonl", "data/test.jsonl", "rounds/round_01/train.jsonl",
                 "rounds/round_01/adapter/adapter_model.safetensors", "rounds/round_01/answers.jsonl",
                 "rounds/round_01/judged.jsonl", "rounds/round_01/report.md", "report/metrics.png",
                 "final_model/README.md"):
        assert name in keys, f"{name} not on the store"
    assert not any(".checkpoints/" in k for k in keys), "finished training leaves no checkpoints"
    summary = json.loads(s3_server.boto3_client().get_object(Bucket=s3_server.bucket,
                                                             Key="runs/split/summary.json")["Body"].read())
    stats = summary["rounds"][0]["train_stats"]
    assert stats.get("resumed_from"), f"the second GPU worker resumed from a checkpoint: {stats}"
    assert summary["passed"] is True
    # (gpu-1's scratch died with it, as a lost machine's disk does)
    for scratch in ("cpu-scratch", "gpu-2-scratch"):
        left = [p for p in (tmp_path / scratch).rglob("*") if p.is_file()] if (tmp_path / scratch).exists() else []
        assert not [p for p in left if p.suffix in (".jsonl", ".safetensors", ".json")
                    and ".prefect" not in p.parts], f"{scratch} keeps artifacts: {left[:5]}"

    runs = _flow_runs(prefect_server, "llamaduo-gpu-stage")
    finetunes = [r for r in runs if r.name.startswith("finetune:")]
    assert any(r.state.is_crashed() for r in finetunes) and any(r.state.is_completed() for r in finetunes)
    print(f"\nsplit pools: wall {wall:.0f}s; GPU worker killed {killed_at - t0:.0f}s in (checkpoint {ckpt[0]}); "
          f"resumed from {stats['resumed_from']}; GPU stage runs: "
          + ", ".join(f"{r.name}={r.state.name}" for r in sorted(runs, key=lambda r: r.created)))


def test_cancelling_the_parent_cancels_the_gpu_child(tmp_path, tiny_model_dir, prefect_server, s3_server, gpu_pool,
                                                     start_worker):
    from uuid import UUID

    from prefect.states import Cancelling

    url = f"s3://{s3_server.bucket}/runs/cancel"
    gpu = start_worker(prefect_server, gpu_pool, name="gpu-c", env=_gpu_env(s3_server, tmp_path, "gpu-c"))
    gpu.wait_online()
    with FakeOpenAIServer(FakeBehaviour(pool=POOL)) as service:
        cfg = _config(tmp_path, tiny_model_dir, service.url, "cancel", max_steps=3000)
        parent = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(cfg), "--workdir", url], cwd=ROOT,
                                  env=_parent_env(prefect_server, s3_server, tmp_path), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        try:
            child = _wait(lambda: [r for r in _flow_runs(prefect_server, "llamaduo-gpu-stage")
                                   if r.name.startswith("finetune:") and r.state.is_running()], 420,
                          "the GPU child training")[0]
            parent_id = child.parent_task_run_id and _parent_flow_run_id(prefect_server, child)

            async def cancel():
                async with prefect_server.client() as c:
                    await c.set_flow_run_state(UUID(str(parent_id)), Cancelling(), force=True)

            t0 = time.monotonic()
            asyncio.run(cancel())
            ended = _wait(lambda: [r for r in _flow_runs(prefect_server, "llamaduo-gpu-stage")
                                   if r.id == child.id and r.state.is_final()], 60, "the child to end", every=0.5)[0]
            took = time.monotonic() - t0
        finally:
            parent.kill()
            parent.wait()
    assert ended.state.is_cancelled(), ended.state
    assert took <= 30, f"the child ended {took:.1f}s after the parent was cancelled"
    _wait(lambda: not [p for p in gpu.pids() if p != gpu.pid], 30, "the child's processes to exit")
    print(f"\ncancel: the GPU child was {ended.state.name} {took:.1f}s after the parent")


def _parent_flow_run_id(server, child) -> str:
    async def read():
        async with server.client() as c:
            task_run = await c.read_task_run(child.parent_task_run_id)
            return str(task_run.flow_run_id)

    return asyncio.run(read())
