"""Curation: drop invalid rows, duplicates and anything overlapping the test split.

Every dropped row keeps its reason, so a round can say why it kept what it kept.
"""

from __future__ import annotations

from collections import Counter

from .similarity import ngrams, normalize

DROP_INVALID = "invalid"
DROP_DUPLICATE = "duplicate"
DROP_TEST_OVERLAP = "test_overlap"


def contamination_ngrams(test_texts: list[str], train_texts: list[str], n: int) -> set[tuple[str, ...]]:
    """Test n-grams that are not task boilerplate. N-grams that also occur in the coverage train
    split (shared instructions such as "Classify the ticket into ...") are not leakage."""
    test_grams: set[tuple[str, ...]] = set()
    for t in test_texts:
        test_grams |= ngrams(t, n)
    train_grams: set[tuple[str, ...]] = set()
    for t in train_texts:
        train_grams |= ngrams(t, n)
    return test_grams - train_grams


def curate(candidates: list[dict], existing: list[dict], test: list[dict], *, ngram: int = 8
           ) -> tuple[list[dict], list[dict]]:
    """Return (kept, dropped); dropped rows carry `drop_reason`. Pure: no I/O."""
    seen = {(normalize(r["instruction"]), normalize(r["response"])) for r in existing}
    seen_instr = {normalize(r["instruction"]) for r in existing}
    test_exact = {normalize(t["instruction"]) for t in test} | {normalize(t["response"]) for t in test}
    # Very short test responses (labels such as "billing") are not evidence of leakage on their own.
    test_exact -= {x for x in test_exact if len(x.split()) < 4}
    bad_grams = contamination_ngrams([t["instruction"] for t in test] + [t["response"] for t in test],
                                     [r["instruction"] for r in existing] + [r["response"] for r in existing],
                                     ngram)
    kept, dropped = [], []
    for row in candidates:
        reason = None
        if "invalid" in row or not row.get("instruction", "").strip() or not row.get("response", "").strip():
            reason = DROP_INVALID
        else:
            ni, nr = normalize(row["instruction"]), normalize(row["response"])
            if (ni, nr) in seen or ni in seen_instr:
                reason = DROP_DUPLICATE
            elif ni in test_exact or nr in test_exact or (
                    bad_grams and (ngrams(row["instruction"], ngram) | ngrams(row["response"], ngram)) & bad_grams):
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
