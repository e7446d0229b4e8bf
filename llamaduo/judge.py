"""Evaluation: judge requests, score aggregation and reference metrics."""

from __future__ import annotations

from statistics import mean

from .service import Request, Result
from .similarity import normalize, rouge_l
from .templates import PromptTemplate

METRIC_NAMES = {"judge_score", "judge_similarity", "judge_precision", "rougeL", "exact_match"}


def build_judge_requests(items: list[dict], answers: list[str], template: PromptTemplate, *, repeats: int,
                         temperature: float, max_tokens: int) -> list[Request]:
    """One request per (item, repeat), item-major."""
    requests = []
    for item, answer in zip(items, answers):
        prompt = template.render(instruction=item["instruction"], reference=item["response"], candidate=answer)
        for r in range(repeats):
            requests.append(Request([{"role": "user", "content": prompt}], temperature=temperature,
                                    max_tokens=max_tokens, variant={"repeat": r} if repeats > 1 else {}))
    return requests


def score_items(items: list[dict], answers: list[str], results: list[Result], repeats: int) -> list[dict]:
    """Per test item: mean judge scores over the repeats that parsed; parse failures counted apart."""
    scored = []
    for i, (item, answer) in enumerate(zip(items, answers)):
        rs = results[i * repeats:(i + 1) * repeats]
        good = [r.value for r in rs if r.ok]
        rl = rouge_l(answer, item["response"])["f"] if answer.strip() else 0.0
        row = {"id": item["id"], "instruction": item["instruction"], "reference": item["response"],
               "answer": answer, "rougeL": rl,
               "exact_match": float(normalize(answer) == normalize(item["response"])),
               "judge_parse_failures": sum(1 for r in rs if r.kind == "parse"),
               "judge_call_failures": sum(1 for r in rs if r.kind in ("call", "budget"))}
        if good:
            row["similarity"] = mean(v["similarity"] for v in good)
            row["precision"] = mean(v["precision"] for v in good)
            row["score"] = (row["similarity"] + row["precision"]) / 2
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
    if judged:
        metrics["judge_similarity"] = mean(s["similarity"] for s in judged)
        metrics["judge_precision"] = mean(s["precision"] for s in judged)
        metrics["judge_score"] = mean(s["score"] for s in judged)
    return {k: round(v, 4) for k, v in metrics.items()}
