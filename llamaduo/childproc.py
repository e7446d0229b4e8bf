"""Child processes: training, vLLM generation, the endpoint `latency` measures.

GPU memory is only fully released when a process ends, so GPU work runs in a child. A child must not
outlive its parent (a killed flow process would leave training holding the GPU, racing the re-run):
`Child` hands it a lifeline in `LLAMADUO_LIFELINE` (this pid and the read end of a pipe only this
process holds), which the child arms with `hold_lifeline` (llamaduo/lifeline.py does the work).

`run_json_child` is the whole round trip for `python -m MODULE SPEC RESULT`: the spec written
atomically, stderr streamed (or kept quiet) with its tail kept, the child stopped when this process
is interrupted (SIGTERM, Ctrl-C), and a failure raised with the tail, redacted (providers and Hub
errors echo keys). `child_main` is the child's side: lifeline, spec in, result out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from .lifeline import ParentLifeline
from .redact import redact
from .store import atomic_write_json, read_json

LIFELINE_ENV = "LLAMADUO_LIFELINE"
TAIL_BYTES = 6000  # of stderr, kept for the error
TAIL_LINES = 15


class ChildFailed(RuntimeError):
    """A child exited non-zero or without its result; the text (its stderr's tail) is redacted."""


class Child:
    """A started child process holding this process's lifeline; `stop()` (or the `with` block's end)
    ends it. `new_session`: its own session and process group (a terminal's Ctrl-C reaches only this
    process), and whatever it leaves in that group is killed when it is stopped."""

    def __init__(self, args: Sequence[str], *, env: dict[str, str] | None = None, stdout=None, stderr=None,
                 new_session: bool = False, pass_fds: Sequence[int] = ()):
        read_fd, self._lifeline_fd = os.pipe()  # both ends non-inheritable; only read_fd is passed on
        try:
            self.proc = subprocess.Popen(
                list(args), stdout=stdout, stderr=stderr, start_new_session=new_session,
                pass_fds=(read_fd, *pass_fds),
                env={**(os.environ if env is None else env), LIFELINE_ENV: f"{os.getpid()}:{read_fd}"})
        except BaseException:
            os.close(self._lifeline_fd)
            raise
        finally:
            os.close(read_fd)
        self.new_session = new_session

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, SIGKILL if it lingers past `grace_s`; then its process group when it has its own
        session (what it left behind), then the lifeline (idempotent)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.new_session:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
        if self._lifeline_fd is not None:
            os.close(self._lifeline_fd)
            self._lifeline_fd = None

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def failure_text(headline: str, tail: bytes | str, *, cut: bool) -> str:
    """`headline:` and the last lines of a child's output, redacted. `cut`: the tail starts mid-output,
    so its first line (maybe half a key, which no rule would recognise) is dropped."""
    text = tail.decode("utf-8", "replace") if isinstance(tail, bytes) else tail
    lines = text.replace("\r", "\n").splitlines()[1 if cut else 0:]
    return redact(f"{headline}:\n" + "\n".join(lines[-TAIL_LINES:]))


def run_json_child(module: str, spec: BaseModel | dict, spec_path: str | Path, result_path: str | Path, *,
                   what: str, error: type[Exception] = ChildFailed, launcher: Sequence[str] | None = None,
                   env: dict[str, str] | None = None, echo_stderr: bool = False, grace_s: float = 5.0) -> dict:
    """Write `spec` to `spec_path`, run `python -m MODULE SPEC RESULT` (`launcher`: what comes before
    MODULE, e.g. `accelerate launch ... --module`; default `python -m`) and return the JSON it wrote to
    `result_path`. Its stderr goes on to ours when `echo_stderr` (live progress). Interrupted here
    (SIGTERM, Ctrl-C), the child is stopped before the exception goes on. A non-zero exit, or none
    without a result, raises `error` with `what` and the redacted tail of its stderr."""
    spec_path, result_path = Path(spec_path), Path(result_path)
    result_path.unlink(missing_ok=True)
    atomic_write_json(spec_path, spec.model_dump(mode="json") if isinstance(spec, BaseModel) else spec)
    args = [*(launcher or (sys.executable, "-m")), module, str(spec_path), str(result_path)]
    tail, seen = b"", 0
    with Child(args, env=env, stderr=subprocess.PIPE) as child:
        try:
            for chunk in iter(lambda: child.proc.stderr.read1(4096), b""):
                if echo_stderr:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                tail, seen = (tail + chunk)[-TAIL_BYTES:], seen + len(chunk)
            returncode = child.wait()
        except BaseException:  # a signal or crash here: the child must not outlive it
            child.stop(grace_s)
            raise
    if returncode != 0 or not result_path.is_file():
        raise error(failure_text(f"{what} exited with {returncode}", tail, cut=seen > len(tail)))
    return read_json(result_path)


def hold_lifeline(on_parent_gone: Callable[[], None] | None = None, death_signal: int = signal.SIGHUP) -> None:
    """In a child a `Child` started: call `on_parent_gone` (default: end this process tree) when that
    parent dies. `death_signal=SIGKILL`: the kernel ends this process at once, whatever it is doing.
    Without `LLAMADUO_LIFELINE` (started by hand) nothing is armed. The variable is consumed, so this
    process's own children never mistake it for theirs."""
    value = os.environ.pop(LIFELINE_ENV, None)
    if not value:
        return
    parent_pid, pipe_fd = (int(v) for v in value.split(":"))
    if os.getppid() == parent_pid:
        ParentLifeline(parent_pid, pipe_fd, on_parent_gone, death_signal).start()
    else:  # started through a launcher (`accelerate launch`; the pipe stayed with it), or the parent is gone
        ParentLifeline(os.getppid(), None, on_parent_gone, death_signal, ancestor_pid=parent_pid).start()


def child_main(run: Callable[[dict], BaseModel | dict | None], argv: Sequence[str] | None = None, *,
               death_signal: int = signal.SIGHUP) -> int:
    """`python -m MODULE SPEC RESULT`, the child's side: arm the lifeline, `run(spec)`, write what it
    returns to RESULT atomically (None: nothing to write, e.g. a data-parallel rank other than 0)."""
    spec_path, result_path = argv if argv is not None else sys.argv[1:3]
    hold_lifeline(death_signal=death_signal)
    result = run(read_json(spec_path))
    if result is not None:
        atomic_write_json(result_path, result.model_dump(mode="json") if isinstance(result, BaseModel) else result)
    return 0
