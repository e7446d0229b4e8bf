"""Inference, judging and service-baseline tasks."""

from __future__ import annotations

import time

from prefect import task
from prefect.runtime import task_run

from llamaduo.config import RunConfig
from llamaduo.data import Example, to_chat
from llamaduo.errors import BudgetExhausted
from llamaduo.gpu import micro_batch_for_attempt
from llamaduo.infer import generate_answers
from llamaduo.judge import aggregate, build_judge_requests, item_values, score_items
from llamaduo.parsing import parse_judge_reply
from llamaduo.service import Request, ServiceClient
from llamaduo.store import atomic_write_jsonl, read_jsonl
from llamaduo.templates import judge_template

from ._policy import STAGE_OPTIONS, artifact, failure_records, progress_reporter
from .train import retry_on_gpu_error


@task(name="infer", **STAGE_OPTIONS, tags=["gpu"], retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_on_gpu_error)
def infer(infer_cfg: dict, base_model: str, base_model_id: str, adapter: dict | None, test: dict,
          system_prompt: str | None, out_path: str) -> dict:
    t0 = time.time()
    items = read_jsonl(test["path"])
    answers, stats = generate_answers(base_model, adapter["path"] if adapter else None, items,
                                      system_prompt=system_prompt, max_new_tokens=infer_cfg["max_new_tokens"],
                                      batch_size=micro_batch_for_attempt(infer_cfg["batch_size"],
                                                                         task_run.run_count or 1),
                                      samples=infer_cfg.get("samples_per_prompt", 1),
                                      temperature=infer_cfg.get("temperature", 0.4))
    atomic_write_jsonl(out_path, [{"id": it["id"], "answer": a[0], "samples": a} for it, a in zip(items, answers)])
    return {"answers": artifact(out_path), "stats": stats, "seconds": round(time.time() - t0, 3)}


@task(name="service-answers", **STAGE_OPTIONS, tags=["service"])
def service_answers(cfg: dict, test: dict, spent: dict, cache_dir: str, out_path: str) -> dict:
    """The service LLM's own answers to the test prompts: the ceiling the student is compared with."""
    t0 = time.time()
    run = RunConfig.model_validate(cfg)
    items = read_jsonl(test["path"])
    client = ServiceClient(run.service, cache_dir, budget=run.budget, spent=spent)
    reqs = [Request(to_chat(Example.from_dict(it), run.student.system_prompt)["prompt"], temperature=0.0,
                    max_tokens=max(run.infer.max_new_tokens, 64), variant={"purpose": "baseline-answer"})
            for it in items]
    results = client.run(reqs, lambda text: text.strip(), desc="service LLM answers")
    if client.budget_hit:
        raise BudgetExhausted("budget reached while collecting service-LLM answers")
    atomic_write_jsonl(out_path, [{"id": it["id"], "answer": r.value or "", "samples": [r.value or ""]}
                                  for it, r in zip(items, results)])
    return {"answers": artifact(out_path), "service": client.stats.to_dict(), "seconds": round(time.time() - t0, 3)}


@task(name="evaluate", **STAGE_OPTIONS, tags=["service"])
def evaluate(cfg: dict, test: dict, answers: dict, round_no: int, spent: dict, cache_dir: str,
             out_path: str) -> dict:
    """The service LLM judges every answer `judge.repeats` times; ROUGE-L, exact match and
    embedding cosine beside it."""
    t0 = time.time()
    run = RunConfig.model_validate(cfg)
    items = read_jsonl(test["path"])
    by_id = {r["id"]: r.get("samples") or [r["answer"]] for r in read_jsonl(answers["path"])}
    samples = [by_id.get(it["id"], [""]) for it in items]
    template = judge_template(run.judge.prompt_template)
    client = ServiceClient(run.service, cache_dir, model=run.judge_model, budget=run.budget, spent=spent)
    requests = build_judge_requests(items, samples, template, repeats=run.judge.repeats,
                                    temperature=run.judge.temperature, max_tokens=min(run.service.max_tokens, 1024))
    results = client.run(requests, parse_judge_reply, desc=f"round {round_no} judge",
                         on_progress=progress_reporter(f"round {round_no} judging"))
    atomic_write_jsonl(out_path.replace(".jsonl", ".failures.jsonl"),
                       failure_records("evaluate", results,
                                       [f"{it['id']}#{k}#{r}" for it, s in zip(items, samples)
                                        for k in range(len(s)) for r in range(run.judge.repeats)]))
    if client.budget_hit:
        raise BudgetExhausted(f"budget reached while judging (round {round_no})")
    cosines = None
    if run.judge.embedding_model:
        from llamaduo.embed import available, cosine_pairs

        if available(run.judge.embedding_model):
            flat = cosine_pairs([a for s in samples for a in s],
                                [it["response"] for it, s in zip(items, samples) for _ in s], run.judge.embedding_model)
            cosines, pos = [], 0
            for s in samples:
                cosines.append(flat[pos:pos + len(s)])
                pos += len(s)
    scored = score_items(items, samples, results, run.judge.repeats, aggregate=run.judge.aggregate, cosines=cosines)
    atomic_write_jsonl(out_path, scored)
    return {"judged": artifact(out_path), "metrics": aggregate(scored), "service": client.stats.to_dict(),
            "items": item_values(scored, run.gate.metric), "seconds": round(time.time() - t0, 3)}
