"""SIGTERM and SIGINT stop `llamaduo run` within seconds (exit 143 / 130), leave no training
process behind, and the same command resumes the run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.fake_service import FakeBehaviour, FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # real CLI runs with a temporary Prefect server (~4 min): make test-integration


def _rows(n, start=0):
    return [{"instruction": f"Which colour is sample {i} from crate {i * 5}?", "response": "blue"}
            for i in range(start, start + n)]


def _start(cfg_path, workdir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"FAKE_SERVICE_KEY": "sk-signal-test", "PYTHONUNBUFFERED": "1"})
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(cfg_path), "--workdir", str(workdir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def _training_processes(workdir: Path) -> list[int]:
    pids = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmd.read_bytes().replace(b"\0", b" ").decode(errors="ignore")
        except OSError:
            continue
        if "llamaduo.train" in text and str(workdir) in text:
            pids.append(int(cmd.parent.name))
    return pids


@pytest.fixture
def setup(tmp_path, tiny_model_dir):
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(16)))
    cfg = {"name": "signals", "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 0},
           "service": {"model": "openai/fake-teacher", "api_key_env": "FAKE_SERVICE_KEY", "rpm": 6000,
                       "max_concurrency": 2, "max_retries": 0, "timeout_s": 20},
           "synth": {"rows_per_round": 40, "pairs_per_request": 4, "max_waves": 2},
           "student": {"model": str(tiny_model_dir)},
           "train": {"epochs": 1, "batch_size": 4, "max_length": 64, "quantization": "none"},
           "infer": {"max_new_tokens": 4, "batch_size": 4}, "export": {"gguf": []},
           "gate": {"threshold": 100, "max_rounds": 1}, "budget": {"max_usd": 0}}
    return tmp_path, cfg


@pytest.mark.parametrize("sig,stage", [(signal.SIGTERM, "synthesis"), (signal.SIGINT, "training")])
def test_signal_stops_quickly_and_the_same_command_resumes(setup, sig, stage):
    tmp_path, cfg = setup
    workdir = tmp_path / "run"
    with FakeOpenAIServer(FakeBehaviour(latency_s=0.8, pool=_rows(200, 1000))) as server:
        cfg["service"]["api_base"] = server.url
        cfg_path = tmp_path / "run.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        proc = _start(cfg_path, workdir)
        if stage == "synthesis":
            _wait_for(lambda: server.kinds["synth"] >= 3)  # 1 preflight probe + synthesis under way
        else:
            _wait_for(lambda: (workdir / "rounds" / "round_01" / "adapter.spec.json").exists())
            time.sleep(1.0)
        t0 = time.time()
        proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"still running 15 s after {sig.name}")
        elapsed = time.time() - t0
        print(f"\n--- stderr after {sig.name} ---\n" + err[-4000:])
        assert proc.returncode == 128 + sig, (proc.returncode, err[-3000:])
        assert "re-run the same command to resume" in err and "Traceback" not in err[-2000:]
        time.sleep(2)
        assert not _training_processes(workdir), "a training process outlived the run"
        answered_before = sum(server.answered.values())

        resumed = _start(cfg_path, workdir)
        out, err = resumed.communicate(timeout=600)
        assert resumed.returncode == 3, out[-2000:] + err[-3000:]
        summary = json.loads((workdir / "summary.json").read_text())
        assert [r["round"] for r in summary["rounds"]] == [1]
        repeated = [b for b, c in server.answered.items() if c > 1]
        print(f"\n{sig.name} during {stage}: exited in {elapsed:.1f} s; {answered_before} replies before, "
              f"{len(repeated)} answered twice after resuming")
        assert len(repeated) <= cfg["service"]["max_concurrency"], "only requests in flight may be paid twice"
