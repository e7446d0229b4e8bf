"""`llamaduo.childproc`: a child run on a JSON spec returns its JSON result, fails with the redacted
tail of its stderr, is stopped when the parent is interrupted, and ends when the parent is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from llamaduo.childproc import LIFELINE_ENV, ChildFailed, hold_lifeline, run_json_child

ROOT = Path(__file__).resolve().parents[1]

# `python -m echo_child SPEC RESULT`: doubles n; or fails printing a key; or prints its pid and sleeps.
CHILD = textwrap.dedent("""
    import os, sys, time
    from llamaduo.childproc import child_main

    def run(spec):
        if spec.get("fail"):
            print("Traceback: OpenAIException - Incorrect API key provided: sk-live-abcdefghijklmnop", file=sys.stderr)
            raise SystemExit(3)
        if spec.get("sleep"):
            if spec.get("pid_file"):
                open(spec["pid_file"], "w").write(str(os.getpid()))
            while True:
                print(os.getpid(), file=sys.stderr, flush=True)
                time.sleep(0.2)
        return {"doubled": spec["n"] * 2, "lifeline_left": os.environ.get("LLAMADUO_LIFELINE")}

    raise SystemExit(child_main(run))
""")


class Failed(ChildFailed):
    pass


@pytest.fixture
def child_env(tmp_path, monkeypatch):
    (tmp_path / "echo_child.py").write_text(CHILD)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT)]))
    return tmp_path


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_result_comes_back_and_the_lifeline_is_not_passed_further(child_env):
    result = run_json_child("echo_child", {"n": 21}, child_env / "spec.json", child_env / "result.json",
                            what="echo")
    assert result == {"doubled": 42, "lifeline_left": None}
    assert (child_env / "spec.json").is_file(), "the spec stays for a post-mortem"


def test_a_failure_raises_the_given_error_with_the_redacted_tail(child_env):
    (child_env / "result.json").write_text("{}")  # a stale result from an earlier run is not taken
    with pytest.raises(Failed) as err:
        run_json_child("echo_child", {"fail": True}, child_env / "spec.json", child_env / "result.json",
                       what="echo process", error=Failed)
    text = str(err.value)
    assert text.startswith("echo process exited with 3:") and "Incorrect API key provided" in text
    assert "abcdefghijklmnop" not in text, text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_interrupted_parent_stops_the_child(child_env):
    pid_file = child_env / "child.pid"
    main = threading.main_thread().ident

    def interrupt() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not pid_file.is_file():
            time.sleep(0.05)
        signal.pthread_kill(main, signal.SIGINT)  # as Ctrl-C, or Prefect's SIGTERM handler, would

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_json_child("echo_child", {"sleep": True, "pid_file": str(pid_file)}, child_env / "spec.json",
                       child_env / "result.json", what="echo", grace_s=2.0)
    assert not _alive(int(pid_file.read_text())), "the child is stopped before the interrupt goes on"


PARENT = textwrap.dedent("""
    import sys
    from llamaduo.childproc import run_json_child
    run_json_child("echo_child", {"sleep": True}, sys.argv[1] + "/spec.json", sys.argv[1] + "/result.json",
                   what="echo", echo_stderr=True)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_parent_takes_the_child_with_it(child_env):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(child_env)], stderr=subprocess.PIPE, text=True)
    child = int(parent.stderr.readline())  # the child's first line, passed on by the parent
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(child):
        time.sleep(0.05)
    left = _alive(child)
    if left:
        os.kill(child, signal.SIGKILL)
    assert not left, "the child still runs 10 s after its parent's SIGKILL"


def test_hold_lifeline_is_a_no_op_without_a_parent_that_gave_one(monkeypatch):
    monkeypatch.delenv(LIFELINE_ENV, raising=False)
    hold_lifeline(lambda: pytest.fail("no lifeline was given"))
