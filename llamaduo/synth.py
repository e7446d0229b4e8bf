"""Synthesis: pick seed examples, format the requests, turn replies into candidate rows."""

from __future__ import annotations

import random

from .data import Example, example_id
from .service import Request, Result
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


def build_synth_requests(seeds: list[Example], template: PromptTemplate, *, n: int, topic: str | None,
                         temperature: float, max_tokens: int, round_no: int, wave: int) -> list[Request]:
    requests = []
    for i, s in enumerate(seeds):
        prompt = template.render(instruction=s.instruction, response=s.response, n=n,
                                 topic=topic or s.category or "the same task as the example")
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
