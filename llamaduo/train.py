"""LoRA / QLoRA supervised fine-tuning of the student with TRL + PEFT.

`run_training` runs `python -m llamaduo.train SPEC RESULT` in a child process by default
(llamaduo/childproc.py), so a GPU's memory is fully released when training ends. The adapter
directory appears only when training finished (written to a temp dir, then renamed). The
Trainer's logs become one line each on the `llamaduo.train` logger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

from pydantic import BaseModel

from .childproc import ChildFailed, child_main, run_json_child
from .config import TrainConfig
from .data import Example, to_chat
from .records import Artifact, FinetuneResult, StudentRef, TrainStats
from .store import atomic_write_json, read_json, read_jsonl, sha256_file, sha256_json, sha256_path, staged_dir

log = logging.getLogger(__name__)


class TrainSpec(BaseModel):
    """What the training process needs; written as JSON for the child process."""
    base_model: str
    data_path: str
    output_dir: str
    train: TrainConfig
    system_prompt: str | None = None
    micro_batch: int | None = None  # set by a retry after OOM; effective batch is kept
    init_adapter: str | None = None  # warm start: continue training this adapter instead of a fresh one


class TrainingFailed(ChildFailed):
    pass


def _use_4bit(cfg: TrainConfig) -> bool:
    import torch

    return cfg.quantization == "4bit" or (cfg.quantization == "auto" and torch.cuda.is_available())


def load_trainable_model(base_model: str, cfg: TrainConfig):
    import torch
    from transformers import AutoModelForCausalLM

    fraction = os.environ.get("LLAMADUO_CUDA_MEMORY_FRACTION")  # share a GPU: cap this process's memory
    if fraction and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(float(fraction))

    if _use_4bit(cfg):
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))  # one GPU per process under accelerate launch
        model = AutoModelForCausalLM.from_pretrained(base_model, quantization_config=bnb, device_map={"": local_rank},
                                                     dtype=torch.bfloat16)
        return prepare_model_for_kbit_training(model)
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    return model.to(f"cuda:{os.environ.get('LOCAL_RANK', '0')}") if torch.cuda.is_available() else model


def _checkpointing_kwarg(config_cls, enabled: bool) -> dict:
    """transformers >= 5.2x renamed gradient_checkpointing to activation_checkpointing."""
    fields = getattr(config_cls, "__dataclass_fields__", {})
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": enabled}


def _mean_tokens(tok, rows: list[dict], max_length: int) -> float:
    """Mean tokens of a training row as TRL will see it (chat template, truncated at max_length)."""
    lengths = []
    for row in rows:
        ids = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
        lengths.append(min(len(ids["input_ids"] if hasattr(ids, "keys") else ids), max_length))
    return sum(lengths) / max(len(lengths), 1)


def build_trainer(spec: TrainSpec):
    """An SFTTrainer with a LoRA adapter on the student; loss on the completion (assistant) only."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from .models import load_tokenizer

    cfg = spec.train
    rows = [to_chat(Example.from_dict(r), spec.system_prompt) for r in read_jsonl(spec.data_path)]
    tok = load_tokenizer(spec.base_model)
    model = load_trainable_model(spec.base_model, cfg)
    cuda = torch.cuda.is_available()
    micro = spec.micro_batch or cfg.batch_size
    if not (cuda or spec.micro_batch or cfg.group_by_length):
        from .lean_sft import cpu_micro_batch

        micro = cpu_micro_batch(_mean_tokens(tok, rows, cfg.max_length), cfg.batch_size)
    accum = cfg.grad_accum * max(1, cfg.batch_size // micro)
    args = SFTConfig(
        output_dir=str(checkpoint_dir(spec)), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=micro, gradient_accumulation_steps=accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=0.05, max_length=cfg.max_length, logging_steps=5,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1, report_to="none", seed=cfg.seed, data_seed=cfg.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(), use_cpu=not cuda, dataloader_num_workers=0,
        completion_only_loss=True, packing=False, **_checkpointing_kwarg(SFTConfig, cuda),
        disable_tqdm=os.environ.get("LLAMADUO_PROGRESS", "1" if sys.stderr.isatty() else "0") != "1",
    )
    peft_cfg = None
    if spec.init_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, spec.init_adapter, is_trainable=True)
    else:
        peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                              target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    trainer_cls = SFTTrainer
    if not cuda:  # on CUDA, TRL's Triton head already skips prompt positions (and Liger, bf16, QLoRA apply)
        from .lean_sft import lean_trainer_class

        trainer_cls = lean_trainer_class(cfg.group_by_length)
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                          peft_config=peft_cfg)
    trainer.llamaduo_meta = {"rows": len(rows), "micro_batch": micro, "grad_accum": accum,
                             "quantized_4bit": _use_4bit(cfg), "warm_start": bool(spec.init_adapter),
                             "lean_cpu_loss": trainer_cls is not SFTTrainer}
    trainer.add_callback(_progress_callback(progress_path(spec)))
    _readable_logs(trainer)
    return trainer


def log_line(logs: dict, step: int, max_steps: int) -> str:
    """A Trainer log (`{'loss': 2.31, 'grad_norm': 1.2, 'learning_rate': 0.0048, 'epoch': 0.4}`) as one line."""
    epoch = logs.get("epoch")
    values = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items()
                       if k not in ("epoch", "total_flos"))
    return f"training step {step}/{max_steps}" + (f" (epoch {epoch:.2f})" if epoch is not None else "") + f": {values}"


def _readable_logs(trainer) -> None:
    """The Trainer prints every log as a raw dict, on stdout (PrinterCallback) or under its progress
    bar: a line on the `llamaduo.train` logger instead (the flow's log in-process; stderr in the child)."""
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback

    class BarOnly(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    class LogLine(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                log.info(log_line(logs, state.global_step, state.max_steps))

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(BarOnly)
    trainer.add_callback(LogLine())


def progress_path(spec: TrainSpec) -> Path:
    return Path(spec.output_dir).with_suffix(".progress.json")


def _progress_callback(path: Path):
    """Steps and epochs as they happen, in a small file the parent process shows as progress."""
    from transformers import TrainerCallback

    class ProgressFile(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                atomic_write_json(path, {"step": state.global_step, "max_steps": state.max_steps,
                                         "epoch": round(state.epoch or 0.0, 3)})

    return ProgressFile()


def _watch_progress(path: Path, on_progress, stop) -> None:
    last, done = None, False
    while not done:
        done = stop.wait(2.0)  # one last look after training ends
        try:
            p = read_json(path)
        except (OSError, ValueError):
            continue
        if p != last:
            last = p
            on_progress(p["step"], p["max_steps"])


# Training settings that change neither the steps nor the weights: a checkpoint written under
# other values of these still resumes.
_CHECKPOINT_NEUTRAL = ("subprocess", "save_steps")


def checkpoint_key(spec: TrainSpec) -> str:
    """What a checkpoint was trained from: the student, the rows (by content), the starting
    adapter (by content), the system prompt and the training settings. A re-run with another
    configuration writes the same adapter path, so an interrupted checkpoint is only resumed by
    a run with the same key (the OOM retry's smaller micro-batch keeps the effective batch, and
    the key)."""
    train = {k: v for k, v in spec.train.fingerprint().items() if k not in _CHECKPOINT_NEUTRAL}
    return sha256_json({"base_model": spec.base_model, "data": sha256_file(spec.data_path), "train": train,
                        "system_prompt": spec.system_prompt,
                        "init_adapter": sha256_path(spec.init_adapter) if spec.init_adapter else None})[:16]


def checkpoints_root(spec: TrainSpec) -> Path:
    return Path(spec.output_dir).with_name(Path(spec.output_dir).name + ".checkpoints")


def checkpoint_dir(spec: TrainSpec) -> Path:
    return checkpoints_root(spec) / checkpoint_key(spec)


def last_checkpoint(spec: TrainSpec) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    d = checkpoint_dir(spec)
    found = get_last_checkpoint(str(d)) if d.is_dir() else None
    return Path(found) if found else None


@contextlib.contextmanager
def _quiet_training():
    """Library warnings and `datasets` progress bars off for this training only (not process-wide)."""
    from datasets.utils import logging as ds_logging

    bars_were_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        if bars_were_on:
            ds_logging.enable_progress_bar()


def train_lora(spec: TrainSpec) -> TrainStats:
    """Fine-tune in this process; returns training stats. Writes the adapter to spec.output_dir.
    An interrupted run (crash, OOM, kill) resumes from its last checkpoint."""
    out = Path(spec.output_dir)
    with _quiet_training():
        trainer = build_trainer(spec)
        resume = last_checkpoint(spec)
        t0 = time.time()
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if not trainer.is_world_process_zero():  # other data-parallel ranks: rank 0 writes the adapter
            return TrainStats(steps=int(result.global_step))
        with staged_dir(out) as tmp:
            trainer.model.save_pretrained(tmp)
            trainer.processing_class.save_pretrained(tmp)
        # done: nothing left to resume (another configuration's interrupted checkpoints stay for its re-run)
        shutil.rmtree(checkpoint_dir(spec), ignore_errors=True)
        with contextlib.suppress(OSError):
            checkpoints_root(spec).rmdir()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return TrainStats(steps=int(result.global_step), train_loss=round(float(result.training_loss), 4),
                      first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                      **trainer.llamaduo_meta, resumed_from=resume.name if resume else None,
                      seconds=round(time.time() - t0, 2))


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch_command(n_gpus: int) -> list[str]:
    """What runs the training module: one process on CPU or one GPU; `accelerate launch` (data
    parallel) on several GPUs."""
    if n_gpus > 1:
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n_gpus), "--module"]
    return [sys.executable, "-m"]


def run_training(spec: TrainSpec, *, subprocess_mode: bool = True, on_progress=None) -> TrainStats:
    """Train (in a child process unless told otherwise) and return its stats; `on_progress(step,
    max_steps)` is called as training advances."""
    import threading

    Path(spec.output_dir).parent.mkdir(parents=True, exist_ok=True)
    progress_path(spec).unlink(missing_ok=True)
    stop = threading.Event()
    watcher = None
    if on_progress is not None:
        watcher = threading.Thread(target=_watch_progress, args=(progress_path(spec), on_progress, stop), daemon=True)
        watcher.start()
    try:
        return _train_here_or_in_child(spec, subprocess_mode)
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=5)


def _train_here_or_in_child(spec: TrainSpec, subprocess_mode: bool) -> TrainStats:
    if not subprocess_mode:
        return train_lora(spec)
    env = {**os.environ, "LLAMADUO_PROGRESS": "1" if sys.stderr.isatty() else os.environ.get("LLAMADUO_PROGRESS", "0")}
    # stderr goes on live (progress); a stopped flow stops training, which resumes from its last
    # checkpoint next time; an OOM's text is in the error, where the task's retry condition finds it.
    return TrainStats.model_validate(run_json_child(
        "llamaduo.train", spec, Path(spec.output_dir).with_suffix(".spec.json"),
        Path(spec.output_dir).with_suffix(".result.json"), what="training process", error=TrainingFailed,
        launcher=launch_command(_visible_gpus()), env=env, echo_stderr=True))


def _train_in_child(spec: dict) -> TrainStats | None:
    stats = train_lora(TrainSpec.model_validate(spec))
    return stats if int(os.environ.get("RANK", "0")) == 0 else None  # rank 0 reports for all


def main(argv: list[str] | None = None) -> int:
    import signal

    handler = logging.StreamHandler(sys.stderr)  # the parent shows this process's stderr
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    # A killed or crashed parent (the flow process, or accelerate's launcher) must not leave training
    # holding the CPU/GPU: the kernel ends it at once.
    return child_main(_train_in_child, argv, death_signal=signal.SIGKILL)


def finetune(root: str | Path, train: TrainConfig, student: StudentRef, system_prompt: str | None,
             training_set: Artifact, out: str, *, init_adapter: Artifact | None = None, micro_batch: int | None = None,
             on_progress=None) -> FinetuneResult:
    """LoRA SFT of the student on `training_set` (from `init_adapter` when warm-starting); the adapter
    lands in `out` (relative to root)."""
    t0 = time.time()
    root = Path(root)
    spec = TrainSpec(base_model=student.path, data_path=str(training_set.at(root)), output_dir=str(root / out),
                     train=train, system_prompt=system_prompt, micro_batch=micro_batch,
                     init_adapter=str(init_adapter.at(root)) if init_adapter else None)
    stats = run_training(spec, subprocess_mode=train.subprocess, on_progress=on_progress)
    return FinetuneResult(adapter=Artifact.of(root, out), stats=stats, seconds=round(time.time() - t0, 3))


if __name__ == "__main__":
    raise SystemExit(main())
