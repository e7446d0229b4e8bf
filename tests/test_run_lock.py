"""A run cannot leave its directory or take another's: run names are one safe path segment, and a
run directory is locked (flock) while a run uses it — a second run exits 2 naming the holder, a
lock left by `kill -9` is taken over, the CLI's flow child shares its parent's lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.cli import main
from llamaduo.config import RUN_NAME, load_config
from llamaduo.errors import InputError
from llamaduo.store import RUN_LOCK, RUN_LOCK_FD_ENV, RunDirBusy, lock_run_dir, run_dir_holder
from tests.fake_service import FakeBehaviour, FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
ROWS = [{"instruction": f"Route ticket {i}: my parcel number {i * 17} is late again", "response": "shipping"}
        for i in range(20)]

HOLDER = """
import sys, time
from llamaduo.store import lock_run_dir
lock = lock_run_dir(sys.argv[1], command="llamaduo run configs/holder.yaml")
print("held", flush=True)
time.sleep(120)
"""


def _config(tmp: Path, api_base: str, **extra) -> Path:
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp / "student").mkdir(exist_ok=True)
    (tmp / "student" / "config.json").write_text("{}")
    cfg = {"name": "locked", "data": {"path": str(tmp / "data.jsonl"), "test_size": 4},
           "service": {"model": "openai/fake-teacher", "api_base": api_base, "api_key_env": "FAKE_SERVICE_KEY",
                       "max_retries": 0},
           "student": {"model": str(tmp / "student")}, "budget": {"max_usd": 0}}
    cfg.update(extra)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _hold(workdir: Path, **popen) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, **popen)
    assert proc.stdout.readline().strip() == "held"
    return proc


# -- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../../../var/tmp/x", "..", ".", "a/b", "/abs", "a..b", "-dash", "x" * 65,
                                  "", "name with space", "a\\b", "tab\tname", "ünï"])
def test_a_name_that_is_not_one_safe_path_segment_is_refused(tmp_path, name):
    path = _config(tmp_path, "http://127.0.0.1:9/v1", name=name)
    with pytest.raises(InputError) as exc:
        load_config(path)
    assert exc.value.field == "name" and "run name" in str(exc.value)


def test_cli_refuses_a_name_that_escapes_the_runs_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _config(tmp_path, "http://127.0.0.1:9/v1")
    rc = main(["run", str(path), "--set", "name=../../../../var/tmp/x"])
    err = capsys.readouterr().err
    assert rc == 2 and "field 'name'" in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists() and not Path("/var/tmp/x").exists()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=70))
def test_every_accepted_name_is_one_segment_inside_runs(name):
    runs = Path("/srv/project/runs")
    try:
        from llamaduo.config import RunConfig

        RunConfig._name_is_a_slug(name)
    except ValueError:
        assert not RUN_NAME.fullmatch(name) or ".." in name
        return
    target = Path(os.path.normpath(runs / name))
    assert target.parent == runs and target.name == name, name


# -- the lock -----------------------------------------------------------------------------------
def test_a_second_run_on_a_held_directory_exits_2_naming_the_holder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_SERVICE_KEY", "sk-lock-test")
    workdir = tmp_path / "run"
    holder = _hold(workdir)
    try:
        with FakeOpenAIServer(FakeBehaviour()) as server:
            rc = main(["run", str(_config(tmp_path, server.url)), "--workdir", str(workdir)])
            err = capsys.readouterr().err
            assert server.requests == 0, "refused before the preflight probe pays anything"
    finally:
        holder.kill()
        holder.wait()
    assert rc == 2 and "Traceback" not in err, err
    assert "in use by another run" in err and "--workdir" in err and str(workdir) in err, err
    assert f"pid {holder.pid}" in err and "started " in err and "llamaduo run configs/holder.yaml" in err, err
    assert os.uname().nodename in err, err


def test_a_lock_left_by_kill_9_is_taken_over(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_SERVICE_KEY", "sk-lock-test")
    workdir = tmp_path / "run"
    holder = _hold(workdir)
    with pytest.raises(RunDirBusy):
        lock_run_dir(workdir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    reached = []

    def supervise(cfg, store, probe, run_lock):  # stands in for the flow: only the lock matters here
        reached.append(json.loads((store.local / RUN_LOCK).read_text()))
        return 0

    monkeypatch.setattr("flows.cli._supervise", supervise)
    with FakeOpenAIServer(FakeBehaviour(pool=[{"instruction": "Route ticket 99", "response": "billing"}])) as server:
        rc = main(["run", str(_config(tmp_path, server.url)), "--workdir", str(workdir)])
    assert rc == 0, capsys.readouterr().err
    assert reached and reached[0]["pid"] == os.getpid(), "the new run holds it and says so"
    assert run_dir_holder(workdir) is None, "released when the run ended"
    lock_run_dir(workdir).release()


def test_the_flow_child_shares_the_lock_and_still_holds_it_when_the_cli_is_gone(tmp_path):
    """The CLI hands its lock to the flow child: the child's `migrate` takes it without waiting,
    and while a child outlives its CLI no re-run gets in."""
    workdir = tmp_path / "run"
    parent = lock_run_dir(workdir)
    child_code = ("import sys, time\nfrom llamaduo.store import lock_run_dir\n"
                  "lock = lock_run_dir(sys.argv[1])\nprint('inherited' if lock.inherited else 'new', flush=True)\n"
                  "time.sleep(120)\n")
    child = subprocess.Popen([sys.executable, "-c", child_code, str(workdir)], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True, pass_fds=(parent.fd,), env={**os.environ, RUN_LOCK_FD_ENV: str(parent.fd)})
    try:
        assert child.stdout.readline().strip() == "inherited"
        parent.release()  # the CLI is gone; its child is not
        other = subprocess.run([sys.executable, "-c", "import sys\nfrom llamaduo.store import lock_run_dir\n"
                                "lock_run_dir(sys.argv[1])", str(workdir)], cwd=ROOT, capture_output=True, text=True)
        assert other.returncode != 0 and "in use by another run" in other.stderr, other.stderr[-2000:]
    finally:
        child.kill()
        child.wait()
    lock_run_dir(workdir).release()  # free once the child is gone


def test_the_same_process_may_take_its_own_lock_again(tmp_path):
    first = lock_run_dir(tmp_path / "run")
    assert lock_run_dir(tmp_path / "run") is first and run_dir_holder(tmp_path / "run") is None
    first.release()


def test_the_deployment_entry_takes_the_lock(tmp_path, monkeypatch):
    """`migrate` (what `migrate_config_file` runs) refuses a directory another live run holds."""
    import logging

    import flows.migrate as migrate_mod
    from llamaduo.preflight import check_workdir

    workdir = tmp_path / "run"
    holder = _hold(workdir)
    try:
        with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
            check_workdir(workdir)  # the deployment's preflight, before its probe pays anything
        monkeypatch.setattr(migrate_mod, "get_run_logger", lambda: logging.getLogger("test"))
        cfg = load_config(_config(tmp_path, "http://127.0.0.1:9/v1"))
        t0 = time.time()
        with pytest.raises(RunDirBusy, match=f"pid {holder.pid}"):
            migrate_mod.migrate.fn(cfg, str(workdir))
        assert time.time() - t0 < 5
    finally:
        holder.kill()
        holder.wait()
