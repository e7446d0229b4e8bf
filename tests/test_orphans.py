"""A killed CLI takes its run with it: SIGKILL to `llamaduo run`'s process group (the OOM killer, a
cancelled CI job, a container stopped after its grace period) cannot be forwarded, yet the flow
child (its own session), its training process and its temporary Prefect server must all end, and
the re-run of the same command resumes without paying for any reply twice."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.fake_service import FakeBehaviour, FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # real CLI runs with a temporary Prefect server: make test-integration


def _rows(n, start=0):
    return [{"instruction": f"Which colour is sample {i} from crate {i * 5}?", "response": "blue"}
            for i in range(start, start + n)]


class HoldingServer(FakeOpenAIServer):
    """The fake service, able to hold synthesis requests unanswered (`hold` set): a kill then lands
    while requests are in flight, and every reply the run received was received well before it.
    A held request is answered after the kill, into a socket of a dead process, and counts as
    paid (as a provider would bill it): only those may be paid again by the re-run."""

    def __init__(self, behaviour):
        super().__init__(behaviour)
        self.hold, self.release, self.holding = threading.Event(), threading.Event(), threading.Event()
        self.held: set[str] = set()  # prompts in flight at the kill
        self.prompts: Counter = Counter()  # prompt -> requests received

    def reply_text(self, prompt):
        self.prompts[prompt] += 1
        if self.hold.is_set() and '"contents"' in prompt and "Language Model Response" not in prompt:
            self.held.add(prompt)
            self.holding.set()
            self.release.wait()
        return super().reply_text(prompt)


def _start(cfg_path, workdir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"FAKE_SERVICE_KEY": "sk-orphan-test", "PYTHONUNBUFFERED": "1"})
    # its own process group, like a shell job: the test kills the whole group as the OOM killer or a CI runner would
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", str(cfg_path), "--workdir", str(workdir)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(cond, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def _run_processes(workdir: Path) -> dict[int, str]:
    """Live processes of the run: the CLI, the flow child, the training process (their command
    lines name the run directory) and the temporary Prefect server (PREFECT_HOME inside it)."""
    found = {}
    needle = str(workdir).encode()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if d.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # a zombie is dead: nothing runs
            cmd = d.joinpath("cmdline").read_bytes()
            env = d.joinpath("environ").read_bytes()
        except (OSError, IndexError):
            continue
        if needle in cmd or needle in env:
            found[int(d.name)] = cmd.replace(b"\0", b" ").decode(errors="replace")[:160]
    return found


def _kill_group_and_wait(proc, workdir: Path) -> float:
    before = _run_processes(workdir)
    assert len(before) >= 3, before  # the CLI, the flow, the temporary server (and maybe training)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    while time.time() - t0 < 10 and _run_processes(workdir):
        time.sleep(0.1)
    left = _run_processes(workdir)
    assert not left, f"10 s after SIGKILL of the CLI's group, the run's processes live on: {left}"
    return time.time() - t0


def test_sigkill_of_the_cli_ends_the_run_and_the_rerun_pays_nothing_twice(tmp_path, tiny_model_dir):
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(16)))
    workdir = tmp_path / "run"
    cfg = {"name": "orphans", "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 0},
           "service": {"model": "openai/fake-teacher", "api_key_env": "FAKE_SERVICE_KEY", "rpm": 6000,
                       "max_concurrency": 2, "max_retries": 0, "timeout_s": 60},
           "synth": {"rows_per_round": 24, "pairs_per_request": 4, "max_waves": 2},
           "student": {"model": str(tiny_model_dir)},
           "train": {"epochs": 1, "batch_size": 4, "max_length": 64, "quantization": "none"},
           "infer": {"max_new_tokens": 4, "batch_size": 4}, "export": {"gguf": []},
           "gate": {"threshold": 100, "max_rounds": 1}, "budget": {"max_usd": 0}}
    with HoldingServer(FakeBehaviour(latency_s=0.2, pool=_rows(200, 1000))) as server:
        cfg["service"]["api_base"] = server.url
        cfg_path = tmp_path / "run.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))

        # 1. mid-synthesis: two replies received, then the next requests are held in flight
        proc = _start(cfg_path, workdir)
        _wait_for(lambda: server.kinds["synth"] >= 3)  # 1 preflight probe + synthesis under way
        server.hold.set()
        _wait_for(server.holding.is_set)
        time.sleep(1.0)  # the replies already delivered are in the reply cache by now
        took_synth = _kill_group_and_wait(proc, workdir)
        server.hold.clear()
        server.release.set()
        time.sleep(0.5)

        # 2. mid-training: the re-run resumes synthesis from the reply cache, then is killed while it trains
        proc = _start(cfg_path, workdir)
        _wait_for(lambda: any("llamaduo.train" in c for c in _run_processes(workdir).values()))
        time.sleep(1.0)
        took_train = _kill_group_and_wait(proc, workdir)

        # 3. the same command finishes the run, paying for no received reply a second time
        resumed = _start(cfg_path, workdir)
        _, err = resumed.communicate(timeout=600)
        assert resumed.returncode == 3, err[-3000:]
        summary = json.loads((workdir / "summary.json").read_text())
        assert [r["round"] for r in summary["rounds"]] == [1]
        repeated = [b for b, c in server.answered.items() if c > 1]
        asked_again = {p for p, c in server.prompts.items() if c > 1}
        print(f"\nno process left {took_synth:.1f} s after SIGKILL mid-synthesis, {took_train:.1f} s mid-training; "
              f"{sum(server.answered.values())} replies paid, {len(repeated)} twice "
              f"(requests in flight at the kill: {len(server.held)})")
        assert asked_again <= server.held, "a reply the run had received was asked for again"
        assert len(repeated) <= len(server.held) <= cfg["service"]["max_concurrency"]
