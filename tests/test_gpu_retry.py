"""GPU task policy: OOM (and transient CUDA errors) retry with a halved micro-batch; config errors do not."""

import pytest
import torch

import llamaduo.train as train_mod
from llamaduo.errors import InputError
from llamaduo.gpu import is_cuda_oom, is_retryable_gpu_error, micro_batch_for_attempt
from llamaduo.store import atomic_write_jsonl


def test_classification_and_halving():
    assert is_cuda_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_retryable_gpu_error(RuntimeError("NCCL error in: ... unhandled system error"))
    assert not is_retryable_gpu_error(InputError("bad", field="train.epochs"))
    assert not is_retryable_gpu_error(ValueError("wrong shape"))
    assert [micro_batch_for_attempt(8, a) for a in (1, 2, 3, 4, 5)] == [8, 4, 2, 1, 1]


def _run_finetune(tmp_path, tiny_model_dir):
    from prefect import flow

    from llamaduo.config import TrainConfig
    from llamaduo.records import Artifact, StudentRef
    from tasks.train import finetune

    atomic_write_jsonl(tmp_path / "train.jsonl",
                       [{"id": str(i), "instruction": f"Q{i}", "response": "blue"} for i in range(8)])
    cfg = TrainConfig(epochs=1, batch_size=4, max_length=64, learning_rate=1e-3, quantization="none",
                      subprocess=False)

    @flow
    def one_training():
        return finetune.with_options(retry_delay_seconds=0)(
            str(tmp_path), cfg, StudentRef(id="tiny", path=str(tiny_model_dir)), None,
            Artifact.of(tmp_path, "train.jsonl"), "adapter")

    return one_training()


def test_oom_on_first_attempt_retries_with_half_micro_batch(tmp_path, tiny_model_dir, monkeypatch, prefect_env):
    seen = []
    real = train_mod.train_lora

    def flaky(spec):
        seen.append(spec.micro_batch)
        if len(seen) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(spec)

    monkeypatch.setattr(train_mod, "train_lora", flaky)
    result = _run_finetune(tmp_path, tiny_model_dir)
    stats = result.stats
    assert seen == [4, 2] and stats.attempt == 2
    assert stats.micro_batch == 2 and stats.grad_accum == 2, "effective batch 4 kept"


def test_config_error_is_not_retried(tmp_path, tiny_model_dir, monkeypatch, prefect_env):
    seen = []

    def broken(spec):
        seen.append(spec.micro_batch)
        raise InputError("bad value", field="train.lora_r")

    monkeypatch.setattr(train_mod, "train_lora", broken)
    with pytest.raises(InputError):
        _run_finetune(tmp_path, tiny_model_dir)
    assert seen == [4]


def test_launch_command_uses_accelerate_only_with_several_gpus():
    from llamaduo.train import launch_command

    assert launch_command(0)[1:] == ["-m"] and launch_command(1)[1:] == ["-m"]
    multi = launch_command(4)
    assert multi[1:3] == ["-m", "accelerate.commands.launch"] and multi[multi.index("--num_processes") + 1] == "4"
    assert multi[-1] == "--module", "the module and its SPEC RESULT follow"
