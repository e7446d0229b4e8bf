"""Curation: drop invalid rows, duplicates and anything overlapping the test split.

Every dropped row keeps its reason, so a round can say why it kept what it kept.
"""

from __future__ import annotations

from collections import Counter

from .similarity import ngrams, normalize, words

DROP_INVALID = "invalid"
DROP_DUPLICATE = "duplicate"
DROP_TEST_OVERLAP = "test_overlap"


def _masked_segments(toks: list[str], boilerplate: set[tuple[str, ...]], n: int) -> list[tuple[str, ...]]:
    """Runs of tokens not covered by any boilerplate n-gram."""
    covered = [False] * len(toks)
    for i in range(len(toks) - n + 1):
        if tuple(toks[i:i + n]) in boilerplate:
            covered[i:i + n] = [True] * n
    segments, cur = [], []
    for tok, cov in zip(toks, covered):
        if cov:
            if cur:
                segments.append(tuple(cur))
            cur = []
        else:
            cur.append(tok)
    if cur:
        segments.append(tuple(cur))
    return segments


MIN_SEGMENT = 5  # shorter leftovers ("billing", "thanks a lot") are not evidence of leakage


def contamination_ngrams(test_texts: list[str], train_texts: list[str], n: int) -> set[tuple[str, ...]]:
    """Test-item n-grams that are not task boilerplate.

    Text shared with the coverage train split (a task instruction such as "Classify the
    ticket into ...") is masked out first, so a synthetic row that repeats the task
    wording is not flagged; only the test item's own content counts. Content runs
    shorter than n (but at least MIN_SEGMENT words) count as one gram of their length.
    """
    boilerplate: set[tuple[str, ...]] = set()
    for t in train_texts:
        boilerplate |= ngrams(t, n)
    grams: set[tuple[str, ...]] = set()
    for t in test_texts:
        for seg in _masked_segments(words(t), boilerplate, n):
            if len(seg) >= n:
                grams |= {seg[i:i + n] for i in range(len(seg) - n + 1)}
            elif len(seg) >= MIN_SEGMENT:
                grams.add(seg)
    return grams


def _shares_gram(text: str, grams: set[tuple[str, ...]], sizes: set[int]) -> bool:
    toks = words(text)
    return any(tuple(toks[i:i + k]) in grams for k in sizes for i in range(len(toks) - k + 1))


def curate(candidates: list[dict], existing: list[dict], test: list[dict], *, ngram: int = 8
           ) -> tuple[list[dict], list[dict]]:
    """Return (kept, dropped); dropped rows carry `drop_reason`. Pure: no I/O."""
    seen = {(normalize(r["instruction"]), normalize(r["response"])) for r in existing}
    seen_instr = {normalize(r["instruction"]) for r in existing}
    test_exact = {normalize(t["instruction"]) for t in test} | {normalize(t["response"]) for t in test}
    # Very short test responses (labels such as "billing") are not evidence of leakage on their own.
    test_exact -= {x for x in test_exact if len(x.split()) < 4}
    coverage = [r for r in existing if r.get("origin", "coverage") != "synthetic"]
    bad_grams = contamination_ngrams([t["instruction"] for t in test] + [t["response"] for t in test],
                                     [r["instruction"] for r in coverage] + [r["response"] for r in coverage],
                                     ngram)
    sizes = {len(g) for g in bad_grams}
    kept, dropped = [], []
    for row in candidates:
        reason = None
        if "invalid" in row or not row.get("instruction", "").strip() or not row.get("response", "").strip():
            reason = DROP_INVALID
        else:
            ni, nr = normalize(row["instruction"]), normalize(row["response"])
            if (ni, nr) in seen or ni in seen_instr:
                reason = DROP_DUPLICATE
            elif ni in test_exact or nr in test_exact or _shares_gram(row["instruction"], bad_grams, sizes) or \
                    _shares_gram(row["response"], bad_grams, sizes):
                reason = DROP_TEST_OVERLAP
            else:
                seen.add((ni, nr))
                seen_instr.add(ni)
        if reason:
            dropped.append({**row, "drop_reason": reason})
        else:
            kept.append(row)
    return kept, dropped


def drop_counts(dropped: list[dict]) -> dict[str, int]:
    return dict(Counter(r["drop_reason"] for r in dropped))
