"""Where a run directory lives: a local folder, or a URL on object storage (`s3://bucket/prefix`,
`gs://…`, `file://…`, any fsspec URL).

The library reads and writes plain local files. For a URL, every machine that runs a stage works
in a local *scratch* copy: the stage's inputs are pulled before it runs, what it wrote is pushed
after, and the scratch copy is removed when the run ends. Names inside the run directory are the
same in both kinds, so artifacts (relative path + content hash) and cache keys do not change when
a run moves between a disk and a bucket.

Atomic commits: a single object PUT is atomic on object stores; a directory (an adapter, the final
model, a checkpoint) is several objects, so while it uploads a marker object
`.llamaduo/uploading/<name>` exists and readers treat the directory as absent. A push that dies
half-way leaves the marker: the stage is recomputed, never read half-written.
"""

from __future__ import annotations

import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError
from .location import canonical_location, is_url, place_key
from .store import atomic_write_bytes, sha256_text

UPLOADING = ".llamaduo/uploading"
# Local-only parts of a scratch copy: the run lock, the CLI's hand-over to its flow child, the
# temporary Prefect server's database. Never pushed.
LOCAL_ONLY = (".llamaduo/", ".prefect/")
SCRATCH_ENV = "LLAMADUO_SCRATCH"


def scratch_base() -> Path:
    """Where scratch copies of URL run directories live on this machine."""
    base = os.environ.get(SCRATCH_ENV)
    return Path(base) if base else Path.home() / ".cache" / "llamaduo" / "scratch"


Snapshot = dict[str, tuple[int, int]]


class RunStore:
    """A run directory by location. `local` is where this machine's code reads and writes it:
    the folder itself, or the scratch copy of a URL."""

    def __init__(self, location: str | Path):
        location = canonical_location(location)  # one spelling per place: the boundary, lock and scratch agree
        if is_url(location):
            import fsspec

            self.url: str | None = location
            # A local file:// store makes parent folders as an object store implies them.
            local_kw = {"auto_mkdir": True} if self.url.startswith("file://") else {}
            try:  # some filesystems connect here (ftp, sftp): a refused one is the user's location to fix
                self.fs, self.base = fsspec.core.url_to_fs(self.url, **local_kw)
            except Exception as exc:  # noqa: BLE001
                raise _unreachable(self.url, exc) from None
            self.base = self.base.rstrip("/")
            self.local = scratch_base() / sha256_text(place_key(self.url))[:16]
        else:
            self.url, self.fs, self.base = None, None, ""
            self.local = Path(location)

    @property
    def remote(self) -> bool:
        return self.url is not None

    @property
    def location(self) -> str:
        return self.url or str(self.local)

    def where(self, rel: str | Path) -> str:
        """A file's address for people (a URL for a store, a path for a folder), without the
        user and password a URL may carry: it is printed, logged and written into summaries."""
        from .redact import redact_url

        return redact_url(f"{self.url}/{rel}") if self.remote else str(self.local / rel)

    def _key(self, rel: str | Path) -> str:
        return f"{self.base}/{str(rel).strip('/')}"

    def _refresh(self) -> None:
        self.fs.invalidate_cache()

    # -- reading --------------------------------------------------------------------------------
    def exists(self, rel: str | Path) -> bool:
        """The file or fully committed directory `rel` is in the run directory."""
        if not self.remote:
            return (self.local / rel).exists()
        self._refresh()
        return self.fs.exists(self._key(rel)) and not self.fs.exists(self._key(f"{UPLOADING}/{rel}"))

    def _remote_files(self, rel: str | Path) -> dict[str, int]:
        """Committed files under `rel` (a file or a prefix) -> size; uncommitted directories left out."""
        self._refresh()
        key = self._key(rel)
        try:
            found = self.fs.find(key, withdirs=False, detail=True)
        except FileNotFoundError:
            return {}
        uploading = {f[len(self._key(UPLOADING)) + 1:] for f in self._find(self._key(UPLOADING))}
        out = {}
        for path, info in found.items():
            name = path[len(self.base) + 1:]
            if any(name == u or name.startswith(u + "/") for u in uploading):
                continue
            out[name] = int(info.get("size") or 0)
        return out

    def _find(self, key: str) -> list[str]:
        try:
            return list(self.fs.find(key, withdirs=False))
        except FileNotFoundError:
            return []

    def pull(self, rel: str | Path) -> bool:
        """Bring `rel` (a file or a directory) into the scratch copy unless it is already there with
        the same size; returns whether anything by that name exists. No-op for a local folder."""
        if not self.remote:
            return (self.local / rel).exists()
        files = self._remote_files(rel)
        todo = [name for name, size in files.items()
                if not ((p := self.local / name).is_file() and p.stat().st_size == size)]
        for name in todo:
            (self.local / name).parent.mkdir(parents=True, exist_ok=True)
        if todo:
            # Each file is fetched beside its final name and renamed in: a killed pull leaves no torn file.
            tmp = [str(self.local / f"{name}.pulling") for name in todo]
            self.fs.get([self._key(n) for n in todo], tmp)
            for t, name in zip(tmp, todo):
                os.replace(t, self.local / name)
        return bool(files)

    def read_bytes(self, rel: str | Path) -> bytes | None:
        if not self.remote:
            p = self.local / rel
            return p.read_bytes() if p.is_file() else None
        try:
            return self.fs.cat_file(self._key(rel))
        except FileNotFoundError:
            return None

    def glob(self, pattern: str) -> list[str]:
        """Names (relative) matching `pattern` in the run directory."""
        if not self.remote:
            return sorted(str(p.relative_to(self.local)) for p in self.local.glob(pattern))
        self._refresh()
        return sorted(p[len(self.base) + 1:] for p in self.fs.glob(self._key(pattern)))

    # -- writing --------------------------------------------------------------------------------
    def write_bytes(self, rel: str | Path, data: bytes) -> None:
        """Atomic write into the run directory (and the scratch copy)."""
        atomic_write_bytes(self.local / rel, data)
        if self.remote:
            self.fs.pipe_file(self._key(rel), data)

    def write_text(self, rel: str | Path, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def push(self, rel: str | Path) -> None:
        """Commit `rel` from the scratch copy: a file in one PUT; a directory replaced under a marker."""
        if not self.remote:
            return
        src = self.local / rel
        if src.is_file():
            self.fs.put_file(str(src), self._key(rel))
            return
        if not src.is_dir():
            return
        marker = self._key(f"{UPLOADING}/{rel}")
        self.fs.pipe_file(marker, b"")
        self._refresh()
        if self.fs.exists(self._key(rel)):
            self.fs.rm(self._key(rel), recursive=True)
        files = [f for f in sorted(src.rglob("*")) if f.is_file()]
        if files:
            self.fs.put([str(f) for f in files], [self._key(Path(rel) / f.relative_to(src)) for f in files])
        self.fs.rm_file(marker)
        self._refresh()

    def remove(self, rel: str | Path) -> None:
        """Delete `rel` from the store, with the upload markers a push killed half-way left under it."""
        if not self.remote:
            return
        self._refresh()
        for key in (self._key(rel), self._key(f"{UPLOADING}/{rel}")):
            if self.fs.exists(key):
                self.fs.rm(key, recursive=True)

    def push_files(self, names: Iterable[str]) -> None:
        names = sorted(names)
        if self.remote and names:
            self.fs.put([str(self.local / n) for n in names], [self._key(n) for n in names])

    # -- scratch bookkeeping --------------------------------------------------------------------
    def snapshot(self, under: str | Path = "") -> Snapshot:
        """Files in the scratch copy (under `under`) -> (size, mtime): what a stage changed is the
        difference of two snapshots."""
        top = self.local / under
        out: Snapshot = {}
        if not top.exists():
            return out
        for p in top.rglob("*") if top.is_dir() else [top]:
            if not p.is_file() or p.name.endswith((".tmp", ".pulling")):
                continue
            name = str(p.relative_to(self.local))
            if name.startswith(LOCAL_ONLY):
                continue
            st = p.stat()
            out[name] = (st.st_size, st.st_mtime_ns)
        return out

    @staticmethod
    def changed(before: Snapshot, after: Snapshot) -> list[str]:
        return sorted(n for n, sig in after.items() if before.get(n) != sig)

    def push_changed(self, before: Snapshot, *, under: str | Path = "", exclude: Iterable[str] = ()) -> Snapshot:
        """Push files written since `before` (single files: each PUT is atomic), leaving out the
        names under `exclude` (directories committed with `push`). Returns the new snapshot."""
        after = self.snapshot(under)
        skip = [str(e).strip("/") for e in exclude]
        self.push_files(n for n in self.changed(before, after)
                        if not any(n == s or n.startswith(s + "/") for s in skip))
        return after

    @contextmanager
    def syncing(self, under: str | Path, every_s: float = 10.0) -> Iterator[None]:
        """While the block runs, push new files under `under` every `every_s` seconds (the reply
        cache during a service stage: a machine lost mid-stage does not lose paid replies)."""
        if not self.remote:
            yield
            return
        seen = self.snapshot(under)

        def tick() -> None:
            after = self.snapshot(under)
            ready = self.changed(seen, after)
            self.push_files(ready)
            seen.update({n: after[n] for n in ready})

        with _every(tick, every_s, "llamaduo-store-sync"):
            yield

    def clean_scratch(self) -> None:
        """Remove this machine's scratch copy (the run directory itself is the URL)."""
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)

    def check_writable(self) -> None:
        """Exit-2 material when the store cannot be written (no bucket, no credentials)."""
        if not self.remote:
            return
        probe = self._key(".llamaduo/write-check")
        try:
            self.fs.pipe_file(probe, b"ok")
            self.fs.ls(self._key(".llamaduo"))  # a run directory must also list its files
            self.fs.rm_file(probe)
        except Exception as exc:  # noqa: BLE001 - any storage error is the user's location to fix
            raise _unreachable(self.url, exc) from None


def _unreachable(url: str, exc: BaseException) -> InputError:
    from .redact import redact_url, safe_message

    return InputError(f"cannot write to {redact_url(url)}: {safe_message(f'{type(exc).__name__}: {exc}', 300)}",
                      field="--workdir")


def finished_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories the Trainer finished writing (it writes trainer_state.json last)."""
    if not root.is_dir():
        return []
    return sorted(p.parent for p in root.rglob("checkpoint-*/trainer_state.json"))


@contextmanager
def syncing_checkpoints(store: RunStore, checkpoints: str | Path, every_s: float = 10.0) -> Iterator[None]:
    """While training runs, commit each finished checkpoint to the store (and drop the ones the
    Trainer rotated out), so a worker lost mid-training resumes elsewhere from the last one."""
    if not store.remote:
        yield
        return
    pushed: set[str] = set()

    def tick() -> None:
        current = {str(p.relative_to(store.local)) for p in finished_checkpoints(store.local / checkpoints)}
        for rel in sorted(current - pushed):
            store.push(rel)
            pushed.add(rel)
        for rel in sorted(pushed - current):
            if not (store.local / rel).exists():
                store.remove(rel)
                pushed.discard(rel)

    # a last tick after the block: the last checkpoint before a failure (an OOM retry may run elsewhere)
    with _every(tick, every_s, "llamaduo-checkpoint-sync", final=True):
        yield


@contextmanager
def _every(tick, every_s: float, name: str, final: bool = False) -> Iterator[None]:
    """Call `tick` every `every_s` seconds on a thread while the block runs (and once more after it
    when `final`). A failed tick is retried at the next one, never raised into the stage: a missed
    sync costs a re-push or a checkpoint interval, not the stage."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                tick()
            except Exception:  # noqa: BLE001
                pass

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 60)
        if final:
            try:
                tick()
            except Exception:  # noqa: BLE001
                pass
