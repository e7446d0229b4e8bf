"""Text similarity used by curation, the stand-in judge and reference metrics."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+", re.UNICODE)

# Cyrillic and Greek letters (and a few Latin IPA letters) that look like a Latin letter, mapped to it.
# Both cases: casefolding first would turn Cyrillic "В" (looks like B) into "в", which looks like nothing.
_LOOKALIKES = {
    # Cyrillic
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
    "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q", "Ԝ": "W", "Ү": "Y", "Ӏ": "I",
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j",
    "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ү": "y",
    # Greek
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    "α": "a", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "υ": "u", "χ": "x", "ϲ": "c", "ϳ": "j",
    # Latin letters outside ASCII that read as ASCII ones
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ɩ": "i", "ʏ": "y",
}
# Invisible characters that are letters or symbols, not format characters (Hangul fillers).
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0")
# Combining marks (accents), and format characters (ZWSP, ZWJ/ZWNJ, soft hyphen, BOM, bidi marks).
_DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cf"})


class _MatchTable(dict):
    """`str.translate` table, filled as characters are first seen: dropped characters map to None,
    look-alikes to their Latin letter, everything else to itself (one C-speed pass per step)."""

    def __missing__(self, codepoint: int):
        ch = chr(codepoint)
        if ch in _INVISIBLE or unicodedata.category(ch) in _DROPPED_CATEGORIES:
            out = None
        else:
            out = _LOOKALIKES.get(ch, codepoint)
        self[codepoint] = out
        return out


_MATCH_TABLE = _MatchTable()


def match_key(text: str) -> str:
    """The one form duplicate collapsing and test-overlap removal compare texts in (also what
    `words`, n-grams and MinHash shingles are made of): compatibility-decomposed (NFKD: full-width
    and styled letters become plain ones), accents and other combining marks dropped, format
    characters dropped (zero-width spaces and joiners, soft hyphens, BOMs, bidi marks), Cyrillic and
    Greek look-alikes of Latin letters mapped to them, casefolded, whitespace collapsed. So a test
    item cannot slip into training by invisible or look-alike edits."""
    if text.isascii():  # nothing to decompose, drop or map
        return _WS.sub(" ", text.casefold()).strip()
    # Map before NFKD too (it turns lunate sigma "ϲ" into "ς") and before casefolding (which turns
    # Cyrillic "В", a look-alike of B, into "в"); again after each, for what they produce.
    text = unicodedata.normalize("NFKD", text.translate(_MATCH_TABLE)).translate(_MATCH_TABLE)
    text = unicodedata.normalize("NFKD", text.casefold()).translate(_MATCH_TABLE)
    return _WS.sub(" ", text).strip()


def normalize(text: str) -> str:
    """Case- and whitespace-insensitive form (NFKC) for comparing an answer with its reference
    (`exact_match`). Accents stay: "sí" and "si" are different answers. Duplicate and overlap
    checks use `match_key`."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WS.sub(" ", text).strip()


def words(text: str) -> list[str]:
    """Word tokens of `match_key(text)`: n-gram decontamination and MinHash see what dedup sees."""
    return _WORD.findall(match_key(text))


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
