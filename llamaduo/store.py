"""Run directory layout, atomic writes and content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from .errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's 0600 kept Modelfiles from another user's Ollama


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def sha256_json(obj: Any) -> str:
    return sha256_text(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """Content hash of a file, or of a directory (relative names + file hashes)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def replace_dir(tmp_dir: Path, final_dir: Path) -> Path:
    """Move a fully written temp directory into place (no half-written model dirs)."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    return final_dir


@contextmanager
def staged_dir(final_dir: str | Path) -> Iterator[Path]:
    """Write a directory in a temp dir beside `final_dir`; it replaces `final_dir` only when
    the block finishes without error (readers never see a half-written directory)."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}."))
    try:
        yield holder / "out"
        replace_dir(holder / "out", final_dir)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def round_dir(k: int) -> str:
    """Round k's directory relative to the run directory (round 0: the base student before fine-tuning)."""
    return f"rounds/round_{k:02d}"


def make_run_dir(root: str | Path) -> Path:
    """Create the run directory with the folders every run writes into (data, the reply cache)."""
    root = Path(root).resolve()
    for p in (root, root / "data", root / "cache" / "service"):
        p.mkdir(parents=True, exist_ok=True)
    return root


# -- one run per run directory -------------------------------------------------------------------
# An OS advisory lock (flock) on DIR/.llamaduo/run.lock, held for the holder's lifetime: the kernel
# releases it when the last process holding it dies, so a lock left by `kill -9` is free by
# construction. The file's content names the holder for the message a refused run prints.
RUN_LOCK = ".llamaduo/run.lock"
# `llamaduo run` hands its lock to the flow child (inherited descriptor, named here): while either
# process lives the directory stays taken, and the child's `migrate` knows the lock is its own.
RUN_LOCK_FD_ENV = "LLAMADUO_RUN_LOCK_FD"

# lock file -> the lock this process holds on it. Weak: a lock is released when its holder drops
# it (the CLI holds it for its lifetime, `migrate` while it runs), never kept alive by this table.
_held: "weakref.WeakValueDictionary[str, RunDirLock]" = weakref.WeakValueDictionary()


class RunDirBusy(InputError):
    """Another live process holds the run directory; `holder` is what it wrote about itself."""

    def __init__(self, root: Path, holder: dict):
        self.root, self.holder = root, holder
        super().__init__(f"run directory is in use by another run ({describe_holder(holder)}); wait for it to "
                         "finish or stop it (a killed run's lock frees itself)", file=str(root), field="--workdir")


def describe_holder(holder: dict) -> str:
    if not holder:
        return "holder unknown: it has not written its details yet"
    parts = [f"pid {holder.get('pid')}"]
    if holder.get("host"):
        parts[0] += f" on {holder['host']}"
    if holder.get("host") == _hostname() and holder.get("pid") and not _alive(int(holder["pid"])):
        parts[0] += " (exited; its flow process is still ending)"
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    if holder.get("command"):
        parts.append(f"command: {holder['command']}")
    return ", ".join(parts)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class RunDirLock:
    """The lock this process holds on a run directory (closing its descriptor releases it)."""

    def __init__(self, path: Path, fd: int, holder: dict, inherited: bool = False):
        self.path, self.fd, self.holder, self.inherited = path, fd, holder, inherited

    def release(self) -> None:
        if self.fd >= 0:
            if _held.get(str(self.path)) is self:
                del _held[str(self.path)]
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown: the OS releases it with the process
            pass

    def __enter__(self) -> "RunDirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def lock_run_dir(root: str | Path, command: str | None = None) -> RunDirLock:
    """Take the run directory for this process (and the children it passes the descriptor to);
    raise `RunDirBusy` naming the holder when another live process has it. Taking it again in
    the same process, or in the CLI's flow child that inherited it, returns the held lock."""
    import fcntl
    import shlex
    import sys
    import time

    path = Path(root).resolve() / RUN_LOCK
    if (mine := _held.get(str(path))) is not None and mine.fd >= 0:
        return mine
    inherited = os.environ.get(RUN_LOCK_FD_ENV)
    if inherited and inherited.isdigit() and _same_file(int(inherited), path):
        lock = RunDirLock(path, int(inherited), _read_holder(path), inherited=True)
        _held[str(path)] = lock
        return lock
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirBusy(path.parent.parent, _read_holder(path)) from None
    holder = {"pid": os.getpid(), "host": _hostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    lock = RunDirLock(path, fd, holder)
    _held[str(path)] = lock
    return lock


def run_dir_holder(root: str | Path) -> dict | None:
    """Who holds the run directory, when it is another process; None when it is free or ours.
    (A look only: it takes nothing.)"""
    import fcntl

    path = Path(root).resolve() / RUN_LOCK
    if (mine := _held.get(str(path))) is not None and mine.fd >= 0 or not path.is_file():
        return None
    inherited = os.environ.get(RUN_LOCK_FD_ENV)
    if inherited and inherited.isdigit() and _same_file(int(inherited), path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(path)
    finally:
        os.close(fd)
    return None
