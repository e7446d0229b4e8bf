"""Run directory layout, atomic writes and content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterable, Iterator


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
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


class RunDir:
    """Where a run's files live: DIR/summary.json, DIR/data/, DIR/rounds/round_NN/…"""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def service_cache(self) -> Path:
        return self.root / "cache" / "service"

    @property
    def export(self) -> Path:
        return self.root / "final_model"

    def round(self, k: int) -> Path:
        return self.root / "rounds" / f"round_{k:02d}"

    def mkdirs(self) -> "RunDir":
        for p in (self.root, self.data, self.service_cache):
            p.mkdir(parents=True, exist_ok=True)
        return self
