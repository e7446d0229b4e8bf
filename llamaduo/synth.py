"""Synthesis: pick seed examples, format the requests, turn replies into candidate rows."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .config import BudgetConfig, Endpoint, ServiceConfig, SynthConfig
from .data import Example, example_id
from .parsing import SYNTH_SCHEMA, parse_synth_reply
from .records import Artifact, ServiceStats, SynthResult
from .service import Request, Result
from .service_stage import ServiceStage, run_service_stage
from .similarity import words
from .store import read_jsonl
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
                   template_sha: str) -> list[dict]:
    """Replies -> candidate rows with lineage, one per pair (a failed request has none: its
    reason is in the failure log)."""
    rows = []
    for res, s in zip(results, seeds):
        if not res.ok:
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
    return rows


def choose_seeds(train: list[Example], synth: SynthConfig, n_requests: int, *, seed_offset: int, split_seed: int,
                 round_no: int, wave: int, val_judged: list[dict] | None) -> list[Example]:
    """Seeds for one wave: uniform walks the train split; `failure` weights seeds by the
    student's scores on the *validation* items (never the test split the gate judges)."""
    if synth.seed_strategy == "failure" and val_judged:
        weights = temper_weights(failure_weights(train, val_judged), len(val_judged))
        return select_seeds_weighted(train, n_requests, weights, split_seed + 1000 * round_no + wave)
    return select_seeds(train, n_requests, seed_offset, split_seed)


@dataclass(frozen=True)
class SynthesisWave(ServiceStage[list[Example], SynthResult]):
    """One wave of synthesis: a request per seed, candidate rows with lineage out."""
    name = "synthesize"
    result_type = SynthResult
    parse = staticmethod(parse_synth_reply)
    synth: SynthConfig
    template: PromptTemplate
    train: Artifact
    val_judged: Artifact | None
    generator: str  # the service model, recorded in each row's lineage
    temperature: float
    max_tokens: int
    round_no: int
    wave: int
    n_requests: int
    seed_offset: int
    split_seed: int

    @property
    def label(self) -> str:
        return f"round {self.round_no} synthesis"

    def read_inputs(self, root: Path) -> list[Example]:
        """The wave's seeds."""
        rows = [Example.from_dict(r) for r in read_jsonl(self.train.at(root))]
        return choose_seeds(rows, self.synth, self.n_requests, seed_offset=self.seed_offset,
                            split_seed=self.split_seed, round_no=self.round_no, wave=self.wave,
                            val_judged=read_jsonl(self.val_judged.at(root)) if self.val_judged else None)

    def build_requests(self, seeds: list[Example]) -> list[Request]:
        return build_synth_requests(seeds, self.template, n=self.synth.pairs_per_request, topic=self.synth.topic,
                                    temperature=self.temperature, max_tokens=self.max_tokens, round_no=self.round_no,
                                    wave=self.wave, topics=self.synth.topics)

    def request_keys(self, seeds: list[Example]) -> list[str]:
        return [s.id for s in seeds]

    def output_rows(self, seeds: list[Example], results: list[Result]) -> list[dict]:
        return candidate_rows(results, seeds, round_no=self.round_no, generator=self.generator,
                              template_sha=self.template.sha256)

    def unusable(self, results: list[Result], rows: list[dict]) -> str | None:
        return f"{self.label}: the service produced no usable pair" if results and not rows else None

    def fill(self, result: SynthResult, seeds: list[Example], results: list[Result], rows: list[dict] | None,
             written: Artifact | None) -> None:
        result.candidates = written
        result.rows = sum(len(r.value) for r in results if r.ok)  # one candidate row per pair, written or not
        result.failed_requests = sum(not r.ok for r in results)
        result.next_seed_offset = self.seed_offset + self.n_requests


def synthesize_wave(root: str | Path, synth: SynthConfig, endpoint: Endpoint, limits: ServiceConfig,
                    budget: BudgetConfig, spent: ServiceStats, train: Artifact, *, round_no: int, wave: int,
                    n_requests: int, seed_offset: int, split_seed: int, val_judged: Artifact | None, out: str,
                    on_progress=None) -> SynthResult:
    """Ask the service LLM for new pairs from `n_requests` seeds; writes candidate rows with
    lineage to `out` (not written on a budget stop or a failing service: redone on resume)."""
    stage = SynthesisWave(synth=synth, template=synth_template(synth.prompt_template), train=train,
                          val_judged=val_judged, generator=endpoint.model, temperature=limits.temperature,
                          max_tokens=limits.max_tokens, round_no=round_no, wave=wave, n_requests=n_requests,
                          seed_offset=seed_offset, split_seed=split_seed)
    return run_service_stage(root, stage, endpoint, limits, budget, spent, out=out, on_progress=on_progress)
