"""Synthesis: pick seed examples, format the requests, turn replies into candidate rows."""

from __future__ import annotations

import random

from .data import Example, example_id
from .service import Request, Result
from .similarity import words
from .templates import PromptTemplate


def seed_order(train: list[Example], seed: int) -> list[Example]:
    """A fixed permutation of the train split; rounds walk it so no seed is re-used before all were."""
    order = sorted(train, key=lambda e: e.id)
    random.Random(seed).shuffle(order)
    return order


def select_seeds(train: list[Example], count: int, offset: int, seed: int) -> list[Example]:
    """`count` seeds starting at `offset` in the seed order (wrapping around)."""
    order = seed_order(train, seed)
    return [order[(offset + i) % len(order)] for i in range(count)]


def failure_weights(train: list[Example], judged: list[dict], *, k: int = 3, floor: float = 0.05) -> list[float]:
    """Weight of each train seed: how badly the student did on the k test items most similar
    to it (word-set Jaccard of instructions), plus a floor so no seed is excluded. Test items
    only steer the weights; they are never shown to the service LLM."""
    if not judged:
        return [1.0] * len(train)
    test_sets = [set(words(j["instruction"])) for j in judged]
    badness = [1 - (j["score"] / 100 if "score" in j else j.get("rougeL", 0.0)) for j in judged]
    weights = []
    for e in train:
        ws = set(words(e.instruction))
        sims = sorted(((len(ws & t) / (len(ws | t) or 1), b) for t, b in zip(test_sets, badness)), reverse=True)
        weights.append(floor + sum(b for _, b in sims[:k]) / min(k, len(sims)))
    return weights


def select_seeds_weighted(train: list[Example], count: int, weights: list[float], seed: int) -> list[Example]:
    """Weighted sampling without replacement (Efraimidis–Spirakis keys); repeats only when
    more seeds are needed than the train split holds."""
    rng = random.Random(seed)
    keyed = sorted(((rng.random() ** (1 / w), e.id, e) for e, w in zip(train, weights)), reverse=True)
    order = [e for _, _, e in keyed]
    return [order[i % len(order)] for i in range(count)]


def build_synth_requests(seeds: list[Example], template: PromptTemplate, *, n: int, topic: str | None,
                         temperature: float, max_tokens: int, round_no: int, wave: int,
                         topics: dict[str, str] | None = None) -> list[Request]:
    requests = []
    for i, s in enumerate(seeds):
        chosen = (topics or {}).get(s.category or "") or topic or s.category or "the same task as the example"
        prompt = template.render(instruction=s.instruction, response=s.response, n=n, topic=chosen)
        # round/wave/slot make a repeated seed ask anew instead of hitting the cached reply.
        requests.append(Request([{"role": "user", "content": prompt}], temperature=temperature,
                                max_tokens=max_tokens, variant={"round": round_no, "wave": wave, "slot": i}))
    return requests


def candidate_rows(results: list[Result], seeds: list[Example], *, round_no: int, generator: str,
                   template_sha: str) -> tuple[list[dict], list[dict]]:
    """Replies -> (candidate rows with lineage, failed requests with their reason)."""
    rows, failures = [], []
    for res, s in zip(results, seeds):
        if not res.ok:
            failures.append({"seed_id": s.id, "kind": res.kind, "error": res.error})
            continue
        for pair in res.value:
            lineage = {"origin": "synthetic", "round": round_no, "seed_id": s.id, "generator": generator,
                       "template_sha256": template_sha, "category": s.category}
            if "invalid" in pair:
                rows.append({**lineage, "invalid": pair["invalid"], "raw": pair.get("raw")})
            else:
                rows.append({**lineage, "id": example_id(pair["instruction"], pair["response"]),
                             "instruction": pair["instruction"], "response": pair["response"]})
    return rows, failures
