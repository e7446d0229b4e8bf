"""Synthesis: pick seed examples, format the requests, turn replies into candidate rows."""

from __future__ import annotations

import random
import time
from pathlib import Path

from .config import BudgetConfig, Endpoint, ServiceConfig, SynthConfig
from .data import Example, example_id
from .parsing import SYNTH_SCHEMA, parse_synth_reply
from .records import Artifact, ServiceStats, SynthResult
from .service import Request, Result, ServiceClient, failing_reason, write_failure_log
from .similarity import words
from .store import atomic_write_jsonl, read_jsonl
from .templates import PromptTemplate, synth_template


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


def temper_weights(weights: list[float], n_items: int) -> list[float]:
    """Mix failure weights with uniform in proportion to how little `n_items` validation items
    can tell: the 95% interval half-width of a mean on a 0-1 scale at worst, 0.98 / sqrt(n)
    (4 items: half uniform; 100 items: a tenth). A small split otherwise steers every seed
    towards the few items it happened to fail."""
    if not weights:
        return []
    uniform_share = min(1.0, 0.98 / n_items ** 0.5) if n_items > 0 else 1.0
    avg = sum(weights) / len(weights)
    return [(1 - uniform_share) * w / avg + uniform_share for w in weights]


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
                                max_tokens=max_tokens, variant={"round": round_no, "wave": wave, "slot": i},
                                schema=SYNTH_SCHEMA))
    return requests


def candidate_rows(results: list[Result], seeds: list[Example], *, round_no: int, generator: str,
                   template_sha: str) -> tuple[list[dict], list[dict]]:
    """Replies -> (candidate rows with lineage, failed requests with their reason)."""
    rows, failures = [], []
    for res, s in zip(results, seeds):
        if not res.ok:
            failures.append({"seed_id": s.id, "kind": res.kind, "error": res.error})
            continue
        for j, pair in enumerate(res.value):
            if res.truncated and j == len(res.value) - 1:  # the provider stopped at max_tokens inside it
                pair = {"invalid": "truncated", "raw": pair}
            lineage = {"origin": "synthetic", "round": round_no, "seed_id": s.id, "generator": generator,
                       "template_sha256": template_sha, "category": s.category}
            if "invalid" in pair:
                rows.append({**lineage, "invalid": pair["invalid"], "raw": pair.get("raw")})
            else:
                rows.append({**lineage, "id": example_id(pair["instruction"], pair["response"]),
                             "instruction": pair["instruction"], "response": pair["response"]})
    return rows, failures


def choose_seeds(train: list[Example], synth: SynthConfig, n_requests: int, *, seed_offset: int, split_seed: int,
                 round_no: int, wave: int, val_judged: list[dict] | None) -> list[Example]:
    """Seeds for one wave: uniform walks the train split; `failure` weights seeds by the
    student's scores on the *validation* items (never the test split the gate judges)."""
    if synth.seed_strategy == "failure" and val_judged:
        weights = temper_weights(failure_weights(train, val_judged), len(val_judged))
        return select_seeds_weighted(train, n_requests, weights, split_seed + 1000 * round_no + wave)
    return select_seeds(train, n_requests, seed_offset, split_seed)


def synthesize_wave(root: str | Path, synth: SynthConfig, endpoint: Endpoint, limits: ServiceConfig,
                    budget: BudgetConfig, spent: ServiceStats, train: Artifact, *, round_no: int, wave: int,
                    n_requests: int, seed_offset: int, split_seed: int, val_judged: Artifact | None, out: str,
                    on_progress=None) -> SynthResult:
    """Ask the service LLM for new pairs from `n_requests` seeds; writes candidate rows with
    lineage to `out` (not written on a budget stop or a failing service: redone on resume)."""
    t0 = time.time()
    root = Path(root)
    rows = [Example.from_dict(r) for r in read_jsonl(train.at(root))]
    seeds = choose_seeds(rows, synth, n_requests, seed_offset=seed_offset, split_seed=split_seed,
                         round_no=round_no, wave=wave,
                         val_judged=read_jsonl(val_judged.at(root)) if val_judged else None)
    template = synth_template(synth.prompt_template)
    client = ServiceClient(endpoint, limits, root / "cache" / "service", budget=budget, spent=spent)
    requests = build_synth_requests(seeds, template, n=synth.pairs_per_request, topic=synth.topic,
                                    temperature=limits.temperature, max_tokens=limits.max_tokens,
                                    round_no=round_no, wave=wave, topics=synth.topics)
    results = client.run(requests, parse_synth_reply, desc=f"round {round_no} synthesize", on_progress=on_progress)
    write_failure_log(root / out.replace(".jsonl", ".failures.jsonl"), "synthesize", results, [s.id for s in seeds])
    candidates, failures = candidate_rows(results, seeds, round_no=round_no, generator=endpoint.model,
                                          template_sha=template.sha256)
    result = SynthResult(service=client.stats, budget_hit=client.budget_hit, rows=len(candidates),
                         failed_requests=len(failures), next_seed_offset=seed_offset + n_requests,
                         failing=failing_reason(f"round {round_no} synthesis", results, limits.max_failure_rate,
                                                 limits.min_calls_for_breaker))
    if not result.budget_hit and not result.failing and results and not candidates:
        result.failing = f"round {round_no} synthesis: the service produced no usable pair"
    if not result.budget_hit and not result.failing:
        atomic_write_jsonl(root / out, candidates)
        result.candidates = Artifact.of(root, out)
    result.seconds = round(time.time() - t0, 3)
    return result
