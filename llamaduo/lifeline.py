"""Child processes that end with their parent.

`llamaduo run` supervises the flow in a child process (its own session, so a terminal's Ctrl-C
reaches only the supervisor, which forwards it). A SIGKILL of the supervisor (the OOM killer, a
cancelled CI job, a stopped container) cannot be forwarded; without these lifelines the flow,
its training process and its temporary Prefect server went on as orphans and raced the re-run.

Two signals of a parent's death, either is enough: Linux's parent-death signal (prctl), and a pipe
whose write end only the parent holds (EOF when the parent is gone, on any POSIX system).
llamaduo/childproc.py starts children with both and arms them in the child.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first, then theirs), read from /proc; [] without /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # field 4: the parent pid
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _running(pid: int) -> bool:
    """Alive and not a zombie (a dead child its parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except OSError:
            pass


def end_process_tree(grace_s: float = 2.0) -> None:
    """End this process's descendants (SIGTERM, SIGKILL after `grace_s`), then this process's own
    process group (it leads one as a session leader), then this process."""
    below = descendants(os.getpid())
    _signal_all(below, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_running(p) for p in below):
        time.sleep(0.05)
    _signal_all(descendants(os.getpid()), signal.SIGKILL)
    if os.getpgid(0) == os.getpid():
        try:
            os.killpg(os.getpid(), signal.SIGKILL)  # ends this process too
        except OSError:
            pass
    os._exit(128 + signal.SIGKILL)


def terminate_descendants() -> None:
    """SIGTERM to every process below this one (the temporary Prefect server, a training process)."""
    _signal_all(descendants(os.getpid()), signal.SIGTERM)


class ParentLifeline:
    """In a child: end `on_parent_gone` (by default: this whole process tree) when the parent dies.

    `parent_pid` is the pid the parent gave (a parent that died before this ran is noticed at
    once); `pipe_fd` the read end of a pipe whose write end only the parent holds; `ancestor_pid` a
    process above the parent whose end counts too (the parent is a launcher, such as `accelerate
    launch`, that holds no lifeline of its own; polled every 2 s). `death_signal=SIGKILL`: the
    kernel ends this process at once on the parent's death, `on_parent_gone` is not called then."""

    def __init__(self, parent_pid: int, pipe_fd: int | None = None, on_parent_gone=None,
                 death_signal: int = signal.SIGHUP, ancestor_pid: int | None = None):
        self.parent_pid, self.pipe_fd, self.death_signal = parent_pid, pipe_fd, death_signal
        self.ancestor_pid = ancestor_pid
        self.on_parent_gone = on_parent_gone or end_process_tree
        self._once = threading.Lock()

    def _gone(self, *_args) -> None:
        if self._once.acquire(blocking=False):  # the signal and the pipe may both report it
            self.on_parent_gone()

    def start(self) -> "ParentLifeline":
        if threading.current_thread() is threading.main_thread():
            if self.death_signal != signal.SIGKILL:  # SIGKILL cannot be handled: it just ends this process
                signal.signal(self.death_signal, self._gone)
            set_parent_death_signal(self.death_signal)
        if self.pipe_fd is not None:
            threading.Thread(target=self._watch_pipe, name="parent-lifeline", daemon=True).start()
        if self.ancestor_pid is not None:
            threading.Thread(target=self._watch_ancestor, name="ancestor-lifeline", daemon=True).start()
        if os.getppid() != self.parent_pid:  # the parent died before the death signal was armed
            self._gone()
        return self

    def _watch_ancestor(self) -> None:
        while _exists(self.ancestor_pid):
            time.sleep(2.0)
        self._gone()

    def _watch_pipe(self) -> None:
        try:
            while os.read(self.pipe_fd, 1):
                pass
        except OSError:
            pass
        self._gone()
