"""Fine-tuning task: a child process per attempt, tagged `gpu` for a concurrency limit.

On CUDA OOM (or a transient CUDA/NCCL error) Prefect retries the task; each retry
halves the micro-batch and raises gradient accumulation, keeping the effective batch.
"""

from __future__ import annotations

import time

from prefect import task
from prefect.runtime import task_run

from llamaduo.gpu import is_retryable_gpu_error, micro_batch_for_attempt
from llamaduo.train import TrainSpec, run_training

from ._policy import STAGE_OPTIONS, artifact


def retry_on_gpu_error(task, task_run_obj, state) -> bool:
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classify whatever the attempt raised
        return is_retryable_gpu_error(exc)
    return False


@task(name="finetune", **STAGE_OPTIONS, tags=["gpu"], retries=2, retry_delay_seconds=5,
      retry_condition_fn=retry_on_gpu_error)
def finetune(train_cfg: dict, base_model: str, base_model_id: str, training_set: dict, system_prompt: str | None,
             out_dir: str) -> dict:
    """`base_model_id` (the config's student name) keys the cache; `base_model` is where it lies."""
    t0 = time.time()
    attempt = task_run.run_count or 1
    spec = TrainSpec(base_model=base_model, data_path=training_set["path"], output_dir=out_dir, train=train_cfg,
                     system_prompt=system_prompt,
                     micro_batch=micro_batch_for_attempt(train_cfg["batch_size"], attempt))
    stats = run_training(spec, subprocess_mode=train_cfg.get("subprocess", True))
    return {"adapter": artifact(out_dir), "stats": {**stats, "attempt": attempt}, "seconds": round(time.time() - t0, 3)}
