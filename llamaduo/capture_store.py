"""A capture location: what an application asked the service LLM, as append-only JSONL shards.

    LOCATION/capture.json                 marker (format, created, the service model captured)
    LOCATION/shards/<time>-<id>.jsonl     committed shards, never rewritten

A folder or an fsspec URL (`s3://bucket/prefix`, `file://…`). A shard is committed whole: in a folder
it is written under a dot-name, synced and renamed; on an object store it is one PUT. Readers list only
committed names, so a half-written shard is never read. Shard names sort by commit time.

A snapshot is the list of shards a run read, each with its sha256: the run keeps it, so re-running the
run reads exactly those shards again (new traffic goes to the next run).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from .errors import InputError
from .location import canonical_location, is_url

MARKER = "capture.json"
SHARDS = "shards"
FORMAT = "llamaduo-capture/1"


def is_capture_location(location: str | Path) -> bool:
    """A folder or URL that `llamaduo capture` made (it holds capture.json)."""
    text = str(location)
    if not is_url(text):
        return (Path(text) / MARKER).is_file()
    try:
        store = CaptureStore(text, field="data.path")
        return store.fs.isfile(store._path(MARKER))
    except Exception:  # noqa: BLE001 - not a location, or unreachable: the caller's own checks say why
        return False


@dataclass
class ShardInfo:
    name: str
    sha256: str
    exchanges: int

    def to_dict(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "exchanges": self.exchanges}


@dataclass
class CaptureSnapshot:
    location: str  # for people: credentials removed
    taken_at: str
    shards: list[ShardInfo]
    records: list[dict] = field(default_factory=list)

    def manifest(self) -> dict:
        return {"location": self.location, "taken_at": self.taken_at, "exchanges": len(self.records),
                "shards": [s.to_dict() for s in self.shards]}


class CaptureStore:
    def __init__(self, location: str | Path, *, field: str = "--store"):
        self.location = canonical_location(location, field=field)
        self.field = field
        if is_url(self.location) and not self.location.startswith("file://"):
            import fsspec

            try:
                self.fs, self.base = fsspec.core.url_to_fs(self.location)
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"cannot open the capture location ({type(exc).__name__})", field=field) from None
            self.base = self.base.rstrip("/")
            self.local: Path | None = None
        else:
            from fsspec.implementations.local import LocalFileSystem

            self.local = Path(self.location.removeprefix("file://"))
            self.fs, self.base = LocalFileSystem(), str(self.local)

    @property
    def shown(self) -> str:
        from .redact import redact_url

        return redact_url(self.location)

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    # -- writing ------------------------------------------------------------------------------------
    def create(self, service_model: str) -> None:
        """Make the location a capture location (idempotent; the first marker stays)."""
        try:
            if self.fs.isfile(self._path(MARKER)):
                return
            marker = json.dumps({"format": FORMAT, "created": _now(), "service_model": service_model}, indent=2)
            self._put(MARKER, marker.encode())
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - refused endpoint, no such bucket, read-only folder
            raise InputError(f"cannot write the capture location {self.shown} ({type(exc).__name__}: "
                             f"{_short(exc)})", field=self.field) from None

    def commit(self, records: Iterable[dict], folder: str = SHARDS) -> str:
        """One new shard holding `records` in `folder` (exchanges; `shadow` for shadow answers), committed
        whole; returns its name."""
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{stamp}-{uuid.uuid4().hex[:12]}.jsonl"
        self._put(f"{folder}/{name}", data)
        return name

    def _put(self, rel: str, data: bytes) -> None:
        if self.local is not None:
            from .store import atomic_write_bytes

            target = atomic_write_bytes(self.local / rel, data)  # a dot-named temp file, synced, renamed
            _fsync_dir(target.parent)  # the rename itself survives a power cut
        else:
            self.fs.pipe_file(self._path(rel), data)  # one PUT: the object exists whole or not at all

    # -- reading ------------------------------------------------------------------------------------
    def shard_names(self, folder: str = SHARDS) -> list[str]:
        """Committed shards, oldest first."""
        try:
            self.fs.invalidate_cache()
            entries = self.fs.ls(self._path(folder), detail=False) if self.fs.exists(self._path(folder)) else []
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"cannot list the capture location {self.shown} ({type(exc).__name__})",
                             field=self.field) from None
        names = [str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted(n for n in names if n.endswith(".jsonl") and not n.startswith("."))

    def read_shard(self, name: str, folder: str = SHARDS) -> bytes:
        return self.fs.cat_file(self._path(f"{folder}/{name}"))

    def read_all(self, folder: str) -> list[dict]:
        """Every record of the committed shards in `folder`."""
        return [r for name in self.shard_names(folder)
                for r in parse_shard(self.read_shard(name, folder), f"{self.shown}/{folder}/{name}")]

    def snapshot(self, names: list[str] | None = None, expect: dict[str, str] | None = None) -> CaptureSnapshot:
        """The records of `names` (default: every committed shard now). With `expect` (name -> sha256,
        a run's earlier snapshot), a shard that is missing or changed is an input error: the run
        would no longer read the data it was judged on."""
        if not self.fs.isfile(self._path(MARKER)):
            raise InputError(f"{self.shown} is not a capture location (no {MARKER}: start `llamaduo capture "
                             "--store` on it first)", field=self.field)
        names = self.shard_names() if names is None else names
        shards, records = [], []
        for name in names:
            try:
                data = self.read_shard(name)
            except FileNotFoundError:
                raise InputError(f"shard {name} of this run's snapshot is gone from {self.shown}",
                                 field=self.field) from None
            digest = hashlib.sha256(data).hexdigest()
            if expect is not None and expect.get(name) != digest:
                raise InputError(f"shard {name} changed since this run's snapshot (sha256 {digest[:12]}…, "
                                 f"recorded {str(expect.get(name))[:12]}…)", field=self.field)
            rows = parse_shard(data, f"{self.shown}/{SHARDS}/{name}")
            records += rows
            shards.append(ShardInfo(name, digest, len(rows)))
        return CaptureSnapshot(self.shown, _now(), shards, records)


def parse_shard(data: bytes, where: str) -> list[dict]:
    rows = []
    for lineno, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg})", file=where, line=lineno) from None
        if not isinstance(row, dict):
            raise InputError("an exchange must be an object", file=where, line=lineno)
        rows.append(row)
    return rows


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _short(exc: BaseException) -> str:
    from .redact import safe_message

    return safe_message(str(exc), 200)

