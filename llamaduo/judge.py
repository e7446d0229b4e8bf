"""Evaluation: judge requests, per-item scores, agreement and round metrics.

Each test item may have several sampled answers (`infer.samples_per_prompt`), each judged
`judge.repeats` times. Repeats are aggregated per answer (mean or median), answers are
averaged per item, items make the round metrics. Parse failures are counted apart and
excluded; they are never read as a score of 0. How much of the round was judged is counted in
judgements (valid / requested = items x samples x repeats), not items: one valid repeat out of
twelve does not make an item "judged" for the gate's `min_judged_share`. An item without an
answer (a service baseline call that failed) is not judged at all: it is counted as unanswered
and its judgements as requested but not valid, never scored against the reference as "".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import TypeVar

from .config import BudgetConfig, Endpoint, JudgeConfig, ServiceConfig
from .errors import InputError
from .metrics import METRICS
from .parsing import JUDGE_SCHEMA, parse_judge_reply
from .records import Artifact, EvalResult, ServiceStageResult, ServiceStats
from .service import Request, Result
from .service_stage import ServiceStage, run_service_stage
from .similarity import normalize, rouge_l
from .stats import aggregate_values, spread
from .store import read_jsonl
from .templates import PromptTemplate, judge_template

JUDGE_MAX_TOKENS = 1024


def build_judge_requests(items: list[dict], answers: list[list[str]], template: PromptTemplate, *, repeats: int,
                         temperature: float, max_tokens: int) -> list[Request]:
    """One request per (item, sample, repeat), in that order. Repeat r is the same request
    whatever `repeats` is, so raising repeats only pays for the new ones."""
    requests = []
    for item, samples in zip(items, answers):
        for answer in samples:
            prompt = template.render(instruction=item["instruction"], reference=item["response"], candidate=answer)
            for r in range(repeats):
                requests.append(Request([{"role": "user", "content": prompt}], temperature=temperature,
                                        max_tokens=max_tokens, variant={"repeat": r}, schema=JUDGE_SCHEMA))
    return requests


def request_keys(items: list[dict], answers: list[list[str]], repeats: int) -> list[str]:
    """`item#sample#repeat` for each request of `build_judge_requests`, in the same order."""
    return [f"{it['id']}#{k}#{r}" for it, s in zip(items, answers) for k in range(len(s)) for r in range(repeats)]


def score_items(items: list[dict], answers: list[list[str]], results: list[Result], repeats: int, *,
                aggregate: str = "mean", cosines: list[list[float]] | None = None) -> list[dict]:
    """Per test item: judge scores (aggregated over repeats, averaged over samples), agreement
    (spread of repeats), reference metrics, and failure counts."""
    scored, pos = [], 0
    for i, (item, samples) in enumerate(zip(items, answers)):
        sims, precs, spreads, parse_fail, call_fail, reasons, valid = [], [], [], 0, 0, [], 0
        for _ in samples:
            rs = results[pos:pos + repeats]
            pos += repeats
            good = [r.value for r in rs if r.ok]
            valid += len(good)
            parse_fail += sum(1 for r in rs if r.kind == "parse")
            call_fail += sum(1 for r in rs if r.kind in ("call", "budget", "skipped"))
            if good:
                sims.append(aggregate_values([v["similarity"] for v in good], aggregate))
                precs.append(aggregate_values([v["precision"] for v in good], aggregate))
                spreads.append(spread([(v["similarity"] + v["precision"]) / 2 for v in good]))
                reasons.append(good[0].get("reason", ""))
        row = {"id": item["id"], "instruction": item["instruction"], "reference": item["response"],
               "answer": samples[0], "samples": len(samples),
               "rougeL": mean(rouge_l(a, item["response"])["f"] if a.strip() else 0.0 for a in samples),
               "exact_match": mean(float(normalize(a) == normalize(item["response"])) for a in samples),
               "judge_parse_failures": parse_fail, "judge_call_failures": call_fail,
               "judge_valid": valid, "judge_requested": len(samples) * repeats}
        if item.get("category"):  # quality per category on the decision page
            row["category"] = item["category"]
        if cosines is not None:
            row["embedding_cosine"] = mean(cosines[i])
        if sims:
            row["similarity"], row["precision"] = mean(sims), mean(precs)
            row["score"] = (row["similarity"] + row["precision"]) / 2
            row["judge_spread"] = mean(spreads)
            row["judge_reason"] = reasons[0]
        scored.append(row)
    return scored


def aggregate(scored: list[dict]) -> dict[str, float]:
    """Round metrics from the registry. Items the judge never scored are excluded from judge
    means (never read as 0); a metric nobody has is absent."""
    metrics = {}
    for m in METRICS.values():
        values = [s[m.item_field] for s in scored if m.item_field in s]
        if values:
            metrics[m.name] = round(mean(values), 4)
    return metrics


def per_item(scored: list[dict]) -> dict[str, list[float]]:
    """Per-item values of every metric (items without it, e.g. unjudged, are left out)."""
    return {m.name: [s[m.item_field] for s in scored if m.item_field in s] for m in METRICS.values()}


def per_item_by_id(scored: list[dict]) -> dict[str, dict[str, float]]:
    """metric -> {item id: value}: what keep-best pairs across rounds (item by item)."""
    return {m.name: {s["id"]: s[m.item_field] for s in scored if m.item_field in s} for m in METRICS.values()}


def judgement_counts(scored: list[dict], unanswered: int, samples_per_item: int, repeats: int) -> tuple[int, int]:
    """(valid, requested) judgements; an unanswered item requested `samples_per_item x repeats`
    judgements and got none."""
    valid = sum(s.get("judge_valid", 0) for s in scored)
    requested = sum(s.get("judge_requested", 0) for s in scored) + unanswered * samples_per_item * repeats
    return valid, requested


def item_values(scored: list[dict], metric: str) -> list[float]:
    return per_item(scored)[metric]


def parity(student: dict[str, float], service: dict[str, float]) -> dict[str, float]:
    """Student / service ratio per metric both have (the paper's 'how close to the teacher')."""
    return {k: round(student[k] / service[k], 4) for k in METRICS
            if k in student and k in service and service[k]}


def embedding_warnings(judge: JudgeConfig, gate_metric: str) -> list[str]:
    """An embedding model that is not installed: an input error when the gate compares
    embedding_cosine (it would be missing every round), else a warning (the metric is absent)."""
    from .embed import available

    if not judge.embedding_model or available(judge.embedding_model):
        return []
    why = f"judge.embedding_model {judge.embedding_model!r} is not installed or not a model directory"
    if gate_metric == "embedding_cosine":
        raise InputError(f"{why}, and gate.metric embedding_cosine needs it", field="judge.embedding_model")
    return [f"{why}: embedding_cosine will be absent (null switches it off)"]


def embedding_cosines(items: list[dict], answers: list[list[str]], model: str | None) -> list[list[float]] | None:
    """Cosine of every sampled answer with its item's reference, grouped per item; None when off."""
    if not model:
        return None
    from .embed import available, cosine_pairs

    if not available(model):
        return None
    flat = cosine_pairs([a for s in answers for a in s], [it["response"] for it, s in zip(items, answers) for _ in s],
                        model)
    grouped, pos = [], 0
    for s in answers:
        grouped.append(flat[pos:pos + len(s)])
        pos += len(s)
    return grouped


@dataclass(frozen=True)
class JudgeInputs:
    """Answers to judge: the items and, per item, its sampled answers."""
    items: list[dict]
    samples: list[list[str]]


A = TypeVar("A", bound=JudgeInputs)
R = TypeVar("R", bound=ServiceStageResult)


@dataclass(frozen=True)
class JudgeStage(ServiceStage[A, R]):
    """How the judge is asked and read, for every stage that judges answers (evaluation,
    calibration): one request per (item, sample, repeat), the paper's verdict JSON, per-item scores."""
    judge: JudgeConfig
    service_max_tokens: int  # service.max_tokens: a verdict needs at most JUDGE_MAX_TOKENS of it
    parse = staticmethod(parse_judge_reply)

    def build_requests(self, inputs: A) -> list[Request]:
        return build_judge_requests(inputs.items, inputs.samples, judge_template(self.judge.prompt_template),
                                    repeats=self.judge.repeats, temperature=self.judge.temperature,
                                    max_tokens=min(self.service_max_tokens, JUDGE_MAX_TOKENS))

    def request_keys(self, inputs: A) -> list[str]:
        return request_keys(inputs.items, inputs.samples, self.judge.repeats)

    def score(self, inputs: A, results: list[Result], cosines: list[list[float]] | None = None) -> list[dict]:
        return score_items(inputs.items, inputs.samples, results, self.judge.repeats, aggregate=self.judge.aggregate,
                           cosines=cosines)


@dataclass(frozen=True)
class AnsweredItems(JudgeInputs):
    unanswered: int  # items without an answer: not judged, counted


@dataclass(frozen=True)
class AnswerJudging(JudgeStage[AnsweredItems, EvalResult]):
    """The judge scores every answer to `items`; ROUGE-L, exact match and embedding cosine beside it."""
    name = "evaluate"
    result_type = EvalResult
    items: Artifact
    answers: Artifact
    who: str  # whose answers, in messages ("round 2", "round 2 validation")

    @property
    def label(self) -> str:
        return f"{self.who} judging"

    def read_inputs(self, root: Path) -> AnsweredItems:
        items = read_jsonl(self.items.at(root))
        by_id = {r["id"]: r.get("samples") or [r["answer"]] for r in read_jsonl(self.answers.at(root))}
        answered = [it for it in items if it["id"] in by_id]
        return AnsweredItems(answered, [by_id[it["id"]] for it in answered], len(items) - len(answered))

    def output_rows(self, inputs: AnsweredItems, results: list[Result]) -> list[dict]:
        return self.score(inputs, results, embedding_cosines(inputs.items, inputs.samples, self.judge.embedding_model))

    def fill(self, result: EvalResult, inputs: AnsweredItems, results: list[Result], rows: list[dict] | None,
             written: Artifact | None) -> None:
        result.items, result.unanswered_items = len(inputs.items) + inputs.unanswered, inputs.unanswered
        if rows is None:
            return
        result.judged = written
        result.metrics = aggregate(rows)
        result.per_item = per_item(rows)
        result.per_item_by_id = per_item_by_id(rows)
        result.judged_items = sum(1 for s in rows if "score" in s)
        result.valid_judgments, result.requested_judgments = judgement_counts(
            rows, inputs.unanswered, max((len(s) for s in inputs.samples), default=1), self.judge.repeats)
        result.parse_failures = sum(s["judge_parse_failures"] for s in rows)
        result.call_failures = sum(s["judge_call_failures"] for s in rows)


def evaluate_answers(root: str | Path, judge: JudgeConfig, endpoint: Endpoint, limits: ServiceConfig,
                     budget: BudgetConfig, spent: ServiceStats, items: Artifact, answers: Artifact, label: str,
                     out: str, on_progress=None) -> EvalResult:
    """The judge scores every answer `judge.repeats` times; ROUGE-L, exact match and embedding
    cosine beside it. Writes `out` (per-item scores) and `out`'s failure log. On a budget stop
    or a failing judge the scores are not written: the stage is redone when resumed."""
    stage = AnswerJudging(judge=judge, service_max_tokens=limits.max_tokens, items=items, answers=answers, who=label)
    return run_service_stage(root, stage, endpoint, limits, budget, spent, out=out, on_progress=on_progress)
