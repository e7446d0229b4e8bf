"""`python -m llamaduo.llama_cpp_tools [DEST]`: llama.cpp's GGUF converter, from the package registry.

llama.cpp's converter is not on PyPI as a package of its own; the llama-cpp-python source package
vendors llama.cpp, so `make install` takes `convert_hf_to_gguf.py`, its `conversion/` package and the
`gguf-py` it was written against from that archive (pinned by version and sha256) into
`.venv/share/llama.cpp/`. Nothing is compiled: f16, bf16 and q8_0 need only Python.
Idempotent: an existing copy of the same version is kept.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "0.3.36"
SDIST = (f"https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
         f"llama_cpp_python-{VERSION}.tar.gz")
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def install(dest: Path, archive: Path | None = None) -> Path:
    stamp = dest / ".version"
    if stamp.is_file() and stamp.read_text().strip() == VERSION:
        return dest
    data = archive.read_bytes() if archive else urllib.request.urlopen(SDIST, timeout=300).read()
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise SystemExit(f"llama-cpp-python {VERSION}: the downloaded archive's sha256 does not match the pinned one")
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = []
        for m in tar.getmembers():
            rel = m.name[len(prefix):] if m.name.startswith(prefix) else None
            if rel and (m.isfile() or m.isdir()) and any(rel == k or rel.startswith(k) for k in KEEP):
                m.name = rel
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
        (Path(tmp) / ".version").write_text(VERSION)
        if dest.exists():
            shutil.rmtree(dest)
        Path(tmp).rename(dest)
        Path(tmp).mkdir()  # TemporaryDirectory removes what it created
    return dest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from .gguf_export import tools_dir

    dest = Path(argv[0]) if argv else tools_dir()
    print(f"llama.cpp converter ({VERSION}) in {install(dest)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
