"""Persisted results that cannot run code.

Prefect reads a result file's serializer *from the file itself*: with the default pickle
(or a JSON serializer whose decoder is a dotted name in the file), whoever can write to the
results folder can run code on the worker. So every task and flow here persists with
`RecordJSONSerializer` (plain JSON; only allow-listed pydantic record types are rebuilt), and
before a run reads its results, `quarantine_untrusted_results` deletes any record that names
another serializer (its stage is recomputed). A file swapped in *during* a run is not caught
(Prefect's task decorator only accepts server-saved storage blocks, which a verifying reader
would need).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from prefect.serializers import Serializer
from pydantic import BaseModel, Field

from llamaduo.redact import safe_message
from llamaduo.runstore import is_url

SERIALIZER_TYPE = "llamaduo-json"


@lru_cache(maxsize=1)
def _record_types() -> dict[str, type[BaseModel]]:
    from llamaduo import records
    from llamaduo.config import RunConfig
    from llamaduo.loop import LoopState

    types = {name: obj for name, obj in vars(records).items()
             if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == records.__name__}
    types.update({"LoopState": LoopState, "RunConfig": RunConfig})
    return types


def _encode(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        name = type(obj).__name__
        if _record_types().get(name) is not type(obj):
            raise TypeError(f"{name} is not an allow-listed result type")
        return {"__record__": name, "data": obj.model_dump(mode="json")}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, BaseException):  # a failed run's state: kept as text, rebuilt as a plain error
        return {"__exception__": type(obj).__name__, "message": safe_message(str(obj), 2000)}
    raise TypeError(f"cannot persist {type(obj).__name__} as a result")


def _decode(d: dict) -> Any:
    if "__record__" in d:
        cls = _record_types().get(d["__record__"])
        if cls is None:
            raise ValueError(f"unknown result type {d['__record__']!r}")
        return cls.model_validate(d["data"])
    if "__exception__" in d:
        return RuntimeError(f"{d['__exception__']}: {d.get('message', '')}")
    return d


class RecordJSONSerializer(Serializer):
    """JSON with no configurable parts: nothing in a result file can name code to import."""
    type: Literal["llamaduo-json"] = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(obj, default=_encode).encode()

    def loads(self, blob: bytes) -> Any:
        return json.loads(blob.decode(), object_hook=_decode)


def untrusted(content: bytes) -> str | None:
    """Why a persisted result record must not be read (None: it is one of ours)."""
    try:
        record = json.loads(content)
        serializer = record["metadata"]["serializer"]
    except (ValueError, KeyError, TypeError):
        return "not a JSON result record"
    if serializer != {"type": SERIALIZER_TYPE}:
        return f"serializer {serializer!r} is not {SERIALIZER_TYPE!r}"
    return None


def quarantine_untrusted_results(results_dir: str | Path) -> list[str]:
    """Delete result records that name another serializer (pickle, a JSON decoder by dotted
    name): Prefect would run them when looking up the cache. The stage is then recomputed.
    `results_dir` is a folder or a URL (results stored beside a run on object storage)."""
    removed = []
    if is_url(results_dir):
        import fsspec

        fs, base = fsspec.core.url_to_fs(str(results_dir))
        fs.invalidate_cache()
        try:
            names = fs.find(base, withdirs=False)
        except FileNotFoundError:
            return removed
        for name in names:
            if untrusted(fs.cat_file(name)):
                fs.rm_file(name)
                removed.append(name)
        return removed
    root = Path(results_dir)
    if not root.is_dir():
        return removed
    for f in root.rglob("*"):
        if f.is_file() and untrusted(f.read_bytes()):
            f.unlink()
            removed.append(str(f))
    return removed


RESULTS_ON_STORE = ".prefect/results"


def results_location(root: str) -> str:
    """Where this run's task and flow results persist: beside a run directory at a URL (so a
    flow run retried on another machine finds them), else the configured local folder."""
    if is_url(root):
        return f"{root.rstrip('/')}/{RESULTS_ON_STORE}"
    from prefect.settings import get_current_settings

    return str(get_current_settings().results.local_storage_path)


@lru_cache(maxsize=16)
def results_storage(root: str):
    """The saved result-storage block for a run directory at a URL (None for a local one).
    Prefect takes only result storage saved on the server; the block holds a location, no
    credentials: each worker's own environment (AWS_* variables, an instance role) reaches it."""
    if not is_url(root):
        return None
    from llamaduo.store import sha256_text

    storage = _storage_at(results_location(root))
    storage.save(f"llamaduo-results-{sha256_text(results_location(root))[:16]}", overwrite=True)
    return storage


def _storage_at(location: str):
    """A result-storage block at `location`. Prefect's RemoteFileSystem refuses `file:///path`
    ("Base path must include a location after the scheme"): a file:// store is a folder here."""
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    if location.startswith("file://"):
        return LocalFileSystem(basepath=location.removeprefix("file://"))
    return RemoteFileSystem(basepath=location)


def with_results_beside(flow, root: str):
    """`flow` persisting its results (and its tasks' and subflows') beside the run directory
    when that is a URL; unchanged for a local run directory."""
    storage = results_storage(root)
    return flow if storage is None else flow.with_options(result_storage=storage)


RESULT_OPTIONS = dict(persist_result=True, result_serializer=RecordJSONSerializer())
