"""Inference and judging tasks."""

from __future__ import annotations

import time

from prefect import task
from prefect.runtime import task_run

from llamaduo.gpu import micro_batch_for_attempt

from llamaduo.config import RunConfig
from llamaduo.errors import BudgetExhausted
from llamaduo.infer import generate_answers
from llamaduo.judge import aggregate, build_judge_requests, score_items
from llamaduo.parsing import parse_judge_reply
from llamaduo.service import ServiceClient
from llamaduo.store import atomic_write_jsonl, read_jsonl
from llamaduo.templates import judge_template

from ._policy import STAGE_OPTIONS, artifact
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
                                                                         task_run.run_count or 1))
    atomic_write_jsonl(out_path, [{"id": it["id"], "answer": a} for it, a in zip(items, answers)])
    return {"answers": artifact(out_path), "stats": stats, "seconds": round(time.time() - t0, 3)}


@task(name="evaluate", **STAGE_OPTIONS, tags=["service"])
def evaluate(cfg: dict, test: dict, answers: dict, round_no: int, spent: dict, cache_dir: str,
             out_path: str) -> dict:
    """The service LLM judges every answer `judge.repeats` times; ROUGE-L etc. beside it."""
    t0 = time.time()
    run = RunConfig.model_validate(cfg)
    items = read_jsonl(test["path"])
    by_id = {r["id"]: r["answer"] for r in read_jsonl(answers["path"])}
    texts = [by_id.get(it["id"], "") for it in items]
    template = judge_template(run.judge.prompt_template)
    client = ServiceClient(run.service, cache_dir, model=run.judge_model, budget=run.budget, spent=spent)
    requests = build_judge_requests(items, texts, template, repeats=run.judge.repeats,
                                    temperature=run.judge.temperature, max_tokens=min(run.service.max_tokens, 1024))
    results = client.run(requests, parse_judge_reply, desc=f"round {round_no} judge")
    if client.budget_hit:
        raise BudgetExhausted(f"budget reached while judging (round {round_no})")
    scored = score_items(items, texts, results, run.judge.repeats)
    atomic_write_jsonl(out_path, scored)
    return {"judged": artifact(out_path), "metrics": aggregate(scored), "service": client.stats.to_dict(),
            "seconds": round(time.time() - t0, 3)}
