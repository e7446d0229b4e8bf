"""A child armed with `ParentLifeline` ends, with everything below it, when its parent is killed
(SIGKILL: nothing can be forwarded). Either signal of the death is enough on its own: Linux's
parent-death signal, or EOF on the pipe only the parent writes to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamaduo.lifeline import descendants

ROOT = Path(__file__).resolve().parents[1]

# The parent: starts the child in its own session (as `llamaduo run` does), prints its pid, waits.
PARENT = """
import os, subprocess, sys, time
read, write = os.pipe()
mode = sys.argv[1]
fds = (read,) if mode != "signal-only" else ()
child = subprocess.Popen([sys.executable, "-c", sys.argv[2], str(os.getpid()), str(read) if fds else "-", mode],
                         start_new_session=True, pass_fds=fds)
os.close(read)
print(child.pid, flush=True)
time.sleep(120)
"""

# The child: arms the lifeline, starts a grandchild (a training process, a server), prints its pid.
CHILD = """
import os, signal, subprocess, sys, time
from llamaduo.lifeline import ParentLifeline
parent, fd, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]
# pipe-only: no parent-death signal (as on a system without prctl)
ParentLifeline(parent, None if fd == "-" else int(fd),
               death_signal=signal.SIGUSR2 if mode == "pipe-only" else signal.SIGHUP).start()
if mode == "pipe-only":
    from llamaduo.lifeline import set_parent_death_signal
    set_parent_death_signal(0)
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(grandchild.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mode", ["both", "signal-only", "pipe-only"])
def test_a_killed_parent_takes_its_child_and_grandchild_with_it(mode):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode, CHILD], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(parent.stdout.readline())
    deadline = time.time() + 60
    while time.time() < deadline and not descendants(child):
        time.sleep(0.05)
    grandchildren = descendants(child)
    assert grandchildren, "the child started its grandchild"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    t0 = time.time()
    while time.time() - t0 < 10 and any(_alive(p) for p in [child, *grandchildren]):
        time.sleep(0.05)
    left = [p for p in [child, *grandchildren] if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"{mode}: still running 10 s after the parent's SIGKILL"
    print(f"\n{mode}: child and grandchild gone {time.time() - t0:.1f} s after the parent's SIGKILL")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_lifeline_arms_the_parent_death_signal():
    # In a fresh process (the handler is process-wide): after start(), the kernel holds SIGHUP as
    # this process's parent-death signal.
    code = ("import ctypes, os, signal\n"
            "from llamaduo.lifeline import ParentLifeline\n"
            "ParentLifeline(os.getppid(), None, lambda: None).start()\n"
            "sig = ctypes.c_int(0)\n"
            "ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG\n"
            "print(sig.value == signal.SIGHUP)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.stdout.strip() == "True", out.stderr[-2000:]
