"""GPU failure classification and the OOM back-off rule (pure; the task layer applies them)."""

from __future__ import annotations

_OOM_MARKERS = ("CUDA out of memory", "OutOfMemoryError", "CUBLAS_STATUS_ALLOC_FAILED", "out of memory")
_TRANSIENT_MARKERS = ("NCCL", "CUDA error: an illegal memory access", "CUDA error: unspecified launch failure",
                      "cudaErrorLaunchTimeout", "ECC error", "CUDA error: device-side assert")


def is_cuda_oom(error: BaseException | str) -> bool:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return any(m in text for m in _OOM_MARKERS)


def is_retryable_gpu_error(error: BaseException | str) -> bool:
    """OOM and transient CUDA/NCCL failures are worth a retry; config or data errors are not."""
    from .errors import InputError

    if isinstance(error, InputError):
        return False
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return is_cuda_oom(text) or any(m in text for m in _TRANSIENT_MARKERS)


def micro_batch_for_attempt(batch_size: int, attempt: int) -> int:
    """Attempt 1 uses the configured micro-batch; each retry halves it (never below 1).
    Gradient accumulation grows to match, so the effective batch stays the same."""
    return max(1, batch_size // (2 ** max(0, attempt - 1)))
