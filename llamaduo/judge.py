"""Evaluation: judge requests, per-item scores, agreement and round metrics.

Each test item may have several sampled answers (`infer.samples_per_prompt`), each judged
`judge.repeats` times. Repeats are aggregated per answer (mean or median), answers are
averaged per item, items make the round metrics. Parse failures are counted apart and
excluded; they are never read as a score of 0.
"""

from __future__ import annotations

from statistics import mean

from .service import Request, Result
from .similarity import normalize, rouge_l
from .stats import aggregate_values, spread
from .templates import PromptTemplate

METRIC_NAMES = {"judge_score", "judge_similarity", "judge_precision", "rougeL", "exact_match", "embedding_cosine"}
# per-item field that each gate metric is computed from
ITEM_FIELD = {"judge_score": "score", "judge_similarity": "similarity", "judge_precision": "precision",
              "rougeL": "rougeL", "exact_match": "exact_match", "embedding_cosine": "embedding_cosine"}


def build_judge_requests(items: list[dict], answers: list[list[str]], template: PromptTemplate, *, repeats: int,
                         temperature: float, max_tokens: int) -> list[Request]:
    """One request per (item, sample, repeat), in that order."""
    requests = []
    for item, samples in zip(items, answers):
        for answer in samples:
            prompt = template.render(instruction=item["instruction"], reference=item["response"], candidate=answer)
            for r in range(repeats):
                requests.append(Request([{"role": "user", "content": prompt}], temperature=temperature,
                                        max_tokens=max_tokens, variant={"repeat": r} if repeats > 1 else {}))
    return requests


def score_items(items: list[dict], answers: list[list[str]], results: list[Result], repeats: int, *,
                aggregate: str = "mean", cosines: list[list[float]] | None = None) -> list[dict]:
    """Per test item: judge scores (aggregated over repeats, averaged over samples), agreement
    (spread of repeats), reference metrics, and failure counts."""
    scored, pos = [], 0
    for i, (item, samples) in enumerate(zip(items, answers)):
        sims, precs, spreads, parse_fail, call_fail = [], [], [], 0, 0
        for _ in samples:
            rs = results[pos:pos + repeats]
            pos += repeats
            good = [r.value for r in rs if r.ok]
            parse_fail += sum(1 for r in rs if r.kind == "parse")
            call_fail += sum(1 for r in rs if r.kind in ("call", "budget"))
            if good:
                s = aggregate_values([v["similarity"] for v in good], aggregate)
                p = aggregate_values([v["precision"] for v in good], aggregate)
                sims.append(s)
                precs.append(p)
                spreads.append(spread([(v["similarity"] + v["precision"]) / 2 for v in good]))
        row = {"id": item["id"], "instruction": item["instruction"], "reference": item["response"],
               "answer": samples[0], "samples": len(samples),
               "rougeL": mean(rouge_l(a, item["response"])["f"] if a.strip() else 0.0 for a in samples),
               "exact_match": mean(float(normalize(a) == normalize(item["response"])) for a in samples),
               "judge_parse_failures": parse_fail, "judge_call_failures": call_fail}
        if cosines is not None:
            row["embedding_cosine"] = mean(cosines[i])
        if sims:
            row["similarity"], row["precision"] = mean(sims), mean(precs)
            row["score"] = (row["similarity"] + row["precision"]) / 2
            row["judge_spread"] = mean(spreads)
        scored.append(row)
    return scored


def aggregate(scored: list[dict]) -> dict[str, float]:
    """Round metrics. Items the judge never scored are excluded from judge means (never read as 0)."""
    judged = [s for s in scored if "score" in s]
    metrics = {
        "rougeL": mean(s["rougeL"] for s in scored) if scored else 0.0,
        "exact_match": mean(s["exact_match"] for s in scored) if scored else 0.0,
        "judged_items": float(len(judged)),
        "judge_parse_failures": float(sum(s["judge_parse_failures"] for s in scored)),
        "judge_call_failures": float(sum(s["judge_call_failures"] for s in scored)),
    }
    if scored and "embedding_cosine" in scored[0]:
        metrics["embedding_cosine"] = mean(s["embedding_cosine"] for s in scored)
    if judged:
        metrics["judge_similarity"] = mean(s["similarity"] for s in judged)
        metrics["judge_precision"] = mean(s["precision"] for s in judged)
        metrics["judge_score"] = mean(s["score"] for s in judged)
        metrics["judge_spread"] = mean(s["judge_spread"] for s in judged)
    return {k: round(v, 4) for k, v in metrics.items()}


def item_values(scored: list[dict], metric: str) -> list[float]:
    """Per-item values of a gate metric (items without it, e.g. unjudged, are left out)."""
    field = ITEM_FIELD[metric]
    return [s[field] for s in scored if field in s]


def parity(student: dict[str, float], service: dict[str, float]) -> dict[str, float]:
    """Student / service ratio per metric both have (the paper's 'how close to the teacher')."""
    return {k: round(student[k] / service[k], 4) for k in METRIC_NAMES
            if k in student and k in service and service[k]}
