"""The offline stand-in teacher (demo only; clearly not a real service LLM).

No real service LLM can run offline here, so the demo's `llamaduo-standin/teacher` is
answered by this deterministic stand-in (the service client calls it in place of litellm,
with the pool of the endpoint that asked: nothing is registered process-wide). It answers the
two request kinds of the default prompts in the paper's output formats:

* synthesis: `{"contents": [...]}` with pairs drawn from a pool dataset (the config's
  `service.standin_pool`, disjoint from the test split), chosen by a hash of the prompt and the
  request's variant (round, wave, slot): a real LLM sampling at a temperature answers a repeated
  seed with new pairs, so a seed asked again in a later round draws again here too;
* judging: similarity = ROUGE-L F1 × 100 and precision = ROUGE-L recall × 100 of the
  candidate against the reference;
* any other prompt (the service baseline's test prompts): the response of the most similar
  pool instruction.

The student, its training and inference are all real; only the teacher is simulated.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from fractions import Fraction
from functools import lru_cache

from .similarity import rouge_l
from .store import sha256_text

LABEL = "offline stand-in teacher (deterministic; not a real LLM)"

_JUDGE_BLOCK = re.compile(r"{label}:\s*```\n?(.*?)\n?```", re.DOTALL)
_N = re.compile(r"generate (\d+) more pairs", re.IGNORECASE)
_TOPIC = re.compile(r"The topic is:?\s*(.+?)\.\s", re.IGNORECASE)


def _block(prompt: str, label: str) -> str | None:
    m = re.search(_JUDGE_BLOCK.pattern.format(label=re.escape(label)), prompt, re.DOTALL)
    return m.group(1) if m else None


@lru_cache(maxsize=4)
def _pool(path: str) -> tuple[tuple[str, str, str | None], ...]:
    from .data import load_examples

    return tuple((e.instruction, e.response, e.category) for e in load_examples(path))


def judge_reply(prompt: str) -> str | None:
    instruction = _block(prompt, "Instruction")
    reference = _block(prompt, "Human Response")
    candidate = _block(prompt, "Language Model Response")
    if reference is None or candidate is None or instruction is None:
        return None
    r = rouge_l(candidate, reference) if candidate.strip() else {"f": 0.0, "recall": 0.0}
    sim = max(1, min(100, round(100 * r["f"])))
    prec = max(1, min(100, round(100 * r["recall"])))
    return json.dumps({
        "similarity_assessment": {"score": sim, "reason": f"stand-in: ROUGE-L F1 {r['f']:.2f} vs the human response"},
        "precision_assessment": {"score": prec, "reason": f"stand-in: ROUGE-L recall {r['recall']:.2f} of the human response"},
    })


def synth_reply(prompt: str, pool_path: str, variant: dict | None = None) -> str | None:
    if '"contents"' not in prompt:
        return None
    pool = _pool(pool_path)
    n_match = _N.search(prompt)
    n = int(n_match.group(1)) if n_match else 5
    topic_match = _TOPIC.search(prompt)
    topic = topic_match.group(1).strip().casefold() if topic_match else ""
    same_topic = [p for p in pool if p[2] and p[2].casefold() == topic]
    candidates = same_topic if len(same_topic) >= n else list(pool)
    rng = random.Random(sha256_text(prompt + json.dumps(variant or {}, sort_keys=True)))
    picks = rng.sample(candidates, min(n, len(candidates)))
    return json.dumps({"contents": [{"instruction": i, "response": r} for i, r, _ in picks]})


@lru_cache(maxsize=1)
def _stemming_tokenizer():
    from rouge_score.tokenizers import DefaultTokenizer

    return DefaultTokenizer(use_stemmer=True)  # rouge_l's own tokens (lower-cased, stemmed)


@lru_cache(maxsize=4)
def _pool_tokens(path: str) -> tuple[tuple[tuple[str, ...], Counter], ...]:
    """Each pool instruction's rouge_l tokens and their counts (tokenized once per pool)."""
    tok = _stemming_tokenizer()
    return tuple((tokens, Counter(tokens)) for tokens in (tuple(tok.tokenize(p[0])) for p in _pool(path)))


def _lcs_length(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        diag = 0
        for j, y in enumerate(b, 1):
            diag, row[j] = row[j], diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def answer_reply(prompt: str, pool_path: str) -> str:
    """A plain request (the service baseline's test prompts): the response of the pool row whose
    instruction is most like the prompt (ROUGE-L F1; a tie goes to the instruction sorting last), as a service
    that knows the task would answer. Exact, without scoring every row: a row's shared-token count
    bounds its LCS, so rows are scored best bound first until no bound can win."""
    pool, rows = _pool(pool_path), _pool_tokens(pool_path)
    query = tuple(_stemming_tokenizer().tokenize(prompt))
    counts = Counter(query)

    def f1(lcs: int, tokens: tuple[str, ...]) -> Fraction:  # ROUGE-L F1 = 2·LCS / (|a| + |b|), exactly
        return Fraction(2 * lcs, len(query) + len(tokens)) if lcs else Fraction(0)

    bounds = sorted(((f1(sum((counts & bag).values()), tokens), i) for i, (tokens, bag) in enumerate(rows)),
                    key=lambda b: -b[0])
    best_key, best = None, None
    for bound, i in bounds:
        if best_key is not None and bound < best_key[0]:
            break
        key = (f1(_lcs_length(query, rows[i][0]), rows[i][0]), pool[i][0])
        if best_key is None or key > best_key:
            best_key, best = key, i
    return pool[best][1] if best is not None else ""


def reply(prompt: str, pool_path: str | None, variant: dict | None = None) -> str:
    text = judge_reply(prompt)
    if text is None and pool_path:
        text = synth_reply(prompt, pool_path, variant)
        if text is None:
            text = answer_reply(prompt, pool_path)
    if text is None:
        raise ValueError("the stand-in teacher only understands the default synthesis and judge prompts")
    return text
