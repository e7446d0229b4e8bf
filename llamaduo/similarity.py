"""Text similarity used by curation, the stand-in judge and reference metrics."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    """Case-, accent- and whitespace-insensitive form used for exact-duplicate checks."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WS.sub(" ", text).strip()


def words(text: str) -> list[str]:
    return _WORD.findall(normalize(text))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    toks = words(text)
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(candidate: str, reference: str) -> dict:
    """ROUGE-L precision/recall/F between a candidate and a reference (rouge-score)."""
    s = _rouge().score(reference, candidate)["rougeL"]
    return {"precision": s.precision, "recall": s.recall, "f": s.fmeasure}
