"""Retry policy of the GPU tasks (finetune, infer): a CUDA OOM or a transient CUDA/NCCL error is
retried, and the task derives a halved micro-batch from its run count; anything else fails at once."""

from __future__ import annotations

from llamaduo.gpu import is_retryable_gpu_error


def retry_on_gpu_error(task, task_run_obj, state) -> bool:
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classify whatever the attempt raised
        return is_retryable_gpu_error(exc)
    return False


GPU_RETRIES = dict(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_on_gpu_error)
