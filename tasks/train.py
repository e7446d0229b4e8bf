"""Fine-tuning task: a child process per attempt, tagged `gpu` for a concurrency limit.

On CUDA OOM (or a transient CUDA/NCCL error) Prefect retries the task; each retry
halves the micro-batch and raises gradient accumulation, keeping the effective batch.
"""

from __future__ import annotations

from prefect.runtime import task_run

from llamaduo.config import TrainConfig
from llamaduo.gpu import micro_batch_for_attempt
from llamaduo.records import Artifact, FinetuneResult, StudentRef
from llamaduo.train import finetune as finetune_student

from ._gpu_retry import GPU_RETRIES
from ._stage import StageTraits, stage
from ._policy import progress_reporter


@stage("finetune", StageTraits(kind="gpu", checkpoints=True), **GPU_RETRIES)
def finetune(root: str, train: TrainConfig, student: StudentRef, system_prompt: str | None, training_set: Artifact,
             out: str, init_adapter: Artifact | None = None) -> FinetuneResult:
    attempt = task_run.run_count or 1
    report = progress_reporter(f"training steps: {out}")
    result = finetune_student(root, train, student, system_prompt, training_set, out, init_adapter=init_adapter,
                              micro_batch=micro_batch_for_attempt(train.batch_size, attempt),
                              on_progress=(lambda step, total: report(step, max(total, 1))) if report else None)
    result.stats.attempt = attempt
    return result
