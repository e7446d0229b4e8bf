"""Curation: drop invalid and low-quality rows, exact and near duplicates, and anything
that overlaps the test split (decontamination). Every dropped row keeps its reason.

The decisions are pure functions over rows (MinHash LSH from datasketch for near-duplicates,
word n-grams for long-span overlap with test items); `curate_wave` is the stage around them, the
only function that reads and writes files.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from .config import CurateConfig
from .records import Artifact, CurateResult
from .similarity import match_key, ngrams, words
from .store import atomic_write_jsonl, read_jsonl

DROP_INVALID = "invalid"
DROP_TRUNCATED = "truncated"
DROP_TOO_SHORT = "too_short"
DROP_TOO_LONG = "too_long"
DROP_REFUSAL = "refusal"
DROP_ECHO = "echo"
DROP_DUPLICATE = "duplicate"
DROP_NEAR_DUPLICATE = "near_duplicate"
DROP_TEST_OVERLAP = "test_overlap"
DROP_TEST_NEAR_DUPLICATE = "test_near_duplicate"
DROP_SURPLUS = "surplus"  # more rows survived than the round asked for
DROP_SERVICE_FAILED = "service_failed"  # a synthesis request that produced nothing

# A refusal declines the task; an apology that goes on to help ("I'm sorry to hear that, try ...")
# is a complete answer and stays.
_REFUSAL = re.compile(
    r"^\W*(?:(?:i'?m|i am|sorry)[^.!?\n]{0,20}?,?\s*(?:but\s+)?(?:i|as an ai)[^.!?\n]{0,30}?"
    r"\b(?:can'?t|cannot|won'?t|unable to|not able to)\b"
    r"|i\s+(?:can'?t|cannot|won'?t be able to|am unable to|'m unable to)\s+"
    r"(?:help|assist|provide|comply|do that|answer|fulfil|fulfill|create|write|generate)"
    r"|as an ai\b[^.!?\n]{0,60}?\b(?:can'?t|cannot|don'?t|do not|unable))", re.IGNORECASE)
# Prose that stops mid-sentence. Code legitimately ends in `;`, `)`, `}` or `:`, so only a
# trailing comma or a connective word counts.
_DANGLING = re.compile(r"(?:,|\b(?:and|or|the|an|to|of|with|because))\s*$", re.IGNORECASE)
MIN_SEGMENT = 5  # shorter leftovers ("billing", "thanks a lot") are not evidence of leakage


# -- quality -----------------------------------------------------------------------------
def quality_issue(row: dict, cfg: CurateConfig) -> str | None:
    instr, resp = row.get("instruction"), row.get("response")
    if "invalid" in row or not isinstance(instr, str) or not isinstance(resp, str) or not instr.strip() \
            or not resp.strip():
        return DROP_INVALID
    instr, resp = instr.strip(), resp.strip()
    if cfg.drop_truncated and (resp.count("```") % 2 == 1 or _DANGLING.search(resp)):
        return DROP_TRUNCATED
    if cfg.drop_length and (len(instr) < cfg.min_instruction_chars or len(resp) < cfg.min_response_chars):
        return DROP_TOO_SHORT
    if cfg.drop_length and (len(instr) > cfg.max_instruction_chars or len(resp) > cfg.max_response_chars):
        return DROP_TOO_LONG
    if cfg.drop_refusals and _REFUSAL.search(resp):
        return DROP_REFUSAL
    if cfg.drop_echo and _echoes(match_key(resp), match_key(instr)):
        return DROP_ECHO
    return None


def _echoes(resp: str, instr: str) -> bool:
    """The response repeats (most of) the instruction. Quoting one option of a multiple-choice
    instruction, as a correct label does, is not an echo."""
    return len(resp.split()) > 3 and resp in instr and len(resp) >= 0.6 * len(instr)


# -- near duplicates ---------------------------------------------------------------------
def minhash(text: str, cfg: CurateConfig) -> MinHash:
    toks = words(text)
    k = cfg.shingle_size
    shingles = {" ".join(toks[i:i + k]) for i in range(max(1, len(toks) - k + 1))} if toks else {""}
    m = MinHash(num_perm=cfg.num_perm, seed=1)
    m.update_batch([s.encode("utf-8") for s in shingles])
    return m


def _pair_text(row) -> str:
    """A row (dict) or an Example as one text for MinHash."""
    if isinstance(row, dict):
        return f"{row['instruction']}\n{row['response']}"
    return f"{row.instruction}\n{row.response}"


# -- decontamination ---------------------------------------------------------------------
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


def own_test_texts(test: list[dict], coverage_train: list[dict]) -> set[str]:
    """`match_key` forms a training row may not equal, whatever their length: every test
    instruction, and every test response that is its item's own answer rather than a label of the
    task. A response is a label when its words also answer a coverage train row, answer more than
    one test item, or are quoted in an instruction (an option the prompt lists: "billing or
    shipping"); a row answering "Positive" copies no test item."""
    answers = Counter(tuple(words(t["response"])) for t in test)
    labels = {w for w, n in answers.items() if n > 1} | {tuple(words(r["response"])) for r in coverage_train}
    labels.add(())  # no words at all ("👍", "?"): nothing that identifies an item
    # every instruction's words, space-separated and space-delimited, so `in` matches whole words only
    quoted = "\n".join(" " + " ".join(words(r["instruction"])) + " " for r in [*test, *coverage_train])
    labels |= {w for w in answers if w not in labels and f" {' '.join(w)} " in quoted}
    own = {match_key(t["instruction"]) for t in test}
    own |= {match_key(t["response"]) for t in test if tuple(words(t["response"])) not in labels}
    own.discard("")
    return own


class Decontaminator:
    """Flags rows that copy, re-word or share long content spans with any test item.

    A copy is judged on `match_key` forms, at any length (`own_test_texts`): an instruction or a
    response equal to a test instruction, or to a test response that is the item's own answer. A
    response that is a label of the task ("Positive", "billing") is not a copy of any one item, so
    sharing it flags nothing."""

    def __init__(self, test: list[dict], coverage_train: list[dict], cfg: CurateConfig):
        self.cfg = cfg
        self.exact = own_test_texts(test, coverage_train)
        texts = [t["instruction"] for t in test] + [t["response"] for t in test]
        train_texts = [r["instruction"] for r in coverage_train] + [r["response"] for r in coverage_train]
        self.grams = contamination_ngrams(texts, train_texts, cfg.ngram)
        self.sizes = {len(g) for g in self.grams}
        self.lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
        for i, t in enumerate(test):
            for part, text in (("i", t["instruction"]), ("r", t["response"])):
                if len(words(text)) >= MIN_SEGMENT:
                    self.lsh.insert(f"{part}{i}", minhash(text, cfg))

    def check(self, row: dict) -> str | None:
        ni, nr = match_key(row["instruction"]), match_key(row["response"])
        if ni in self.exact or nr in self.exact or _shares_gram(row["instruction"], self.grams, self.sizes) or \
                _shares_gram(row["response"], self.grams, self.sizes):
            return DROP_TEST_OVERLAP
        for text in (row["instruction"], row["response"]):
            if len(words(text)) >= MIN_SEGMENT and self.lsh.query(minhash(text, self.cfg)):
                return DROP_TEST_NEAR_DUPLICATE
        return None


def decontaminate(rows: list[dict], test: list[dict], coverage_train: list[dict], cfg: CurateConfig
                  ) -> tuple[list[dict], list[dict]]:
    """(clean, dropped-with-reason) with respect to the test split."""
    d = Decontaminator(test, coverage_train, cfg)
    clean, dropped = [], []
    for row in rows:
        reason = d.check(row)
        (dropped if reason else clean).append({**row, "drop_reason": reason} if reason else row)
    return clean, dropped


# -- the whole curation --------------------------------------------------------------------
def curate(candidates: list[dict], existing: list[dict], test: list[dict], cfg: CurateConfig | None = None
           ) -> tuple[list[dict], list[dict]]:
    """Return (kept, dropped); dropped rows carry `drop_reason`. Pure: no I/O."""
    cfg = cfg or CurateConfig()
    seen = {match_key(r["instruction"]) for r in existing}
    lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
    for i, r in enumerate(existing):
        lsh.insert(f"e{i}", minhash(_pair_text(r), cfg))
    coverage = [r for r in existing if r.get("origin", "coverage") != "synthetic"]
    contamination = Decontaminator(test, coverage, cfg)
    kept, dropped = [], []
    for j, row in enumerate(candidates):
        reason = quality_issue(row, cfg)
        if reason is None:
            ni = match_key(row["instruction"])
            if ni in seen:
                reason = DROP_DUPLICATE
            else:
                reason = contamination.check(row)
                if reason is None:
                    m = minhash(_pair_text(row), cfg)
                    if lsh.query(m):
                        reason = DROP_NEAR_DUPLICATE
                    else:
                        seen.add(ni)
                        lsh.insert(f"c{j}", m)
        if reason:
            dropped.append({**row, "drop_reason": reason})
        else:
            kept.append(row)
    return kept, dropped


def drop_counts(dropped: list[dict]) -> dict[str, int]:
    return dict(Counter(r["drop_reason"] for r in dropped))


def curate_wave(root: str | Path, cfg: CurateConfig, candidates: Artifact, existing: list[Artifact],
                test: Artifact, limit: int, out: str) -> CurateResult:
    """Curate one wave's candidates against everything already trained on and the test split;
    keep at most `limit` rows (the rest are `surplus`). Writes `out` and its `.dropped.jsonl`."""
    t0 = time.time()
    root = Path(root)
    existing_rows = [r for a in existing for r in read_jsonl(a.at(root))]
    kept, dropped = curate(read_jsonl(candidates.at(root)), existing_rows, read_jsonl(test.at(root)), cfg)
    dropped += [{**r, "drop_reason": DROP_SURPLUS} for r in kept[limit:]]
    kept = kept[:limit]
    atomic_write_jsonl(root / out.replace(".jsonl", ".dropped.jsonl"), dropped)
    atomic_write_jsonl(root / out, kept)
    return CurateResult(kept=Artifact.of(root, out), kept_rows=len(kept), dropped=drop_counts(dropped),
                        seconds=round(time.time() - t0, 3))


# -- coverage data (before the split) ----------------------------------------------------------
def collapse_duplicates(examples: list, cfg: CurateConfig) -> tuple[list, dict[str, int]]:
    """Keep the first of rows with the same normalised instruction (`duplicate`) or a MinHash
    near-duplicate instruction+response (`near_duplicate`). `examples` are data.Example."""
    seen: set[str] = set()
    lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
    kept, counts = [], Counter()
    for i, e in enumerate(examples):
        key = match_key(e.instruction)
        if key in seen:
            counts[DROP_DUPLICATE] += 1
            continue
        m = minhash(_pair_text(e), cfg)
        if lsh.query(m):
            counts[DROP_NEAR_DUPLICATE] += 1
            continue
        seen.add(key)
        lsh.insert(f"c{i}", m)
        kept.append(e)
    return kept, dict(counts)


def overlapping_test(train: list, test: list, cfg: CurateConfig) -> tuple[list, int]:
    """Train rows that copy (normalised instruction) or nearly copy a test item are removed."""
    test_keys = {match_key(t.instruction) for t in test}
    lsh = MinHashLSH(threshold=cfg.near_dup_threshold, num_perm=cfg.num_perm)
    for i, t in enumerate(test):
        lsh.insert(f"t{i}", minhash(_pair_text(t), cfg))
    kept = [e for e in train if match_key(e.instruction) not in test_keys
            and not lsh.query(minhash(_pair_text(e), cfg))]
    return kept, len(train) - len(kept)
