"""`export.push_to_hub`: the judged formats of `final_model/` pushed to a Hugging Face Hub repo
(huggingface_hub's own client; `HF_ENDPOINT` selects another Hub, a private one or a test's).

Only what ships is pushed: a format marked "do not ship" on the decision page stays behind (and so
does the Modelfile when the GGUF it names stays), as do the per-format test answers. The repo is
created private unless `export.hub_private` is false. The token comes from `HF_TOKEN` and is never
part of an error text.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

TOKEN_ENV = "HF_TOKEN"


def check_token() -> None:
    """Before anything is spent: a push needs a token."""
    if not os.environ.get(TOKEN_ENV, "").strip():
        raise InputError(f"export.push_to_hub needs a Hub token in {TOKEN_ENV}", field="export.push_to_hub")


def held_back(final_dir: Path, shipped: list[str], formats: list[str]) -> list[str]:
    """Ignore patterns: the per-format answers, and every format that does not ship."""
    out = ["answers/*", "answers/**"]
    for name in formats:
        if name in shipped:
            continue
        if name.startswith("gguf-"):
            kind = name.removeprefix("gguf-")
            out.append(f"gguf/*-{kind}.gguf")
            modelfile = final_dir / "Modelfile"
            if modelfile.is_file() and modelfile.read_text(encoding="utf-8").startswith("FROM ./gguf/") and \
                    modelfile.read_text(encoding="utf-8").splitlines()[0].endswith(f"-{kind}.gguf"):
                out.append("Modelfile")
        else:
            out += [f"{name}/*", f"{name}/**"]
    return out


def push_export(final_dir: Path, repo_id: str, *, private: bool, shipped: list[str], formats: list[str],
                message: str) -> str:
    """Create (or reuse) `repo_id` and commit the shipped formats; returns the commit's URL."""
    from huggingface_hub import HfApi

    from .redact import safe_message

    token = os.environ.get(TOKEN_ENV, "").strip()
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(final_dir), repo_id=repo_id, repo_type="model",
                                 ignore_patterns=held_back(final_dir, shipped, formats), commit_message=message)
    except Exception as exc:  # noqa: BLE001 - the Hub's refusal, said without the token
        raise RuntimeError(safe_message(f"push to the Hub repo {repo_id} failed: {type(exc).__name__}: {exc}",
                                        800, [token] if token else [])) from None
    return str(getattr(info, "commit_url", info))
