"""Fine-tuning task: a child process per run, tagged `gpu` for a concurrency limit."""

from __future__ import annotations

import time

from prefect import task

from llamaduo.train import TrainSpec, run_training

from ._policy import STAGE_OPTIONS, artifact


@task(name="finetune", **STAGE_OPTIONS, tags=["gpu"])
def finetune(train_cfg: dict, base_model: str, base_model_id: str, training_set: dict, system_prompt: str | None,
             out_dir: str) -> dict:
    """`base_model_id` (the config's student name) keys the cache; `base_model` is where it lies."""
    t0 = time.time()
    spec = TrainSpec(base_model=base_model, data_path=training_set["path"], output_dir=out_dir, train=train_cfg,
                     system_prompt=system_prompt)
    stats = run_training(spec, subprocess_mode=train_cfg.get("subprocess", True))
    return {"adapter": artifact(out_dir), "stats": stats, "seconds": round(time.time() - t0, 3)}
