"""LoRA / QLoRA supervised fine-tuning of the student with TRL + PEFT.

`run_training` runs `python -m llamaduo.train SPEC.json` in a child process by default,
so a GPU's memory is fully released when training ends. The adapter directory appears
only when training finished (written to a temp dir, then renamed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import TrainConfig
from .data import Example, to_chat
from .store import atomic_write_json, read_json, read_jsonl


@dataclass
class TrainSpec:
    base_model: str
    data_path: str
    output_dir: str
    train: dict
    system_prompt: str | None = None
    micro_batch: int | None = None  # set by a retry after OOM; effective batch is kept
    extra: dict = field(default_factory=dict)


class TrainingFailed(RuntimeError):
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
        model = AutoModelForCausalLM.from_pretrained(base_model, quantization_config=bnb, device_map={"": 0},
                                                     dtype=torch.bfloat16)
        return prepare_model_for_kbit_training(model)
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    return model.to("cuda") if torch.cuda.is_available() else model


def _checkpointing_kwarg(config_cls, enabled: bool) -> dict:
    """transformers >= 5.2x renamed gradient_checkpointing to activation_checkpointing."""
    fields = getattr(config_cls, "__dataclass_fields__", {})
    return {"activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing": enabled}


def build_trainer(spec: TrainSpec, work_dir: Path):
    """An SFTTrainer with a LoRA adapter on the student; loss on the completion (assistant) only."""
    import warnings

    import torch
    from datasets import Dataset, disable_progress_bars
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from .models import load_tokenizer

    disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    cfg = TrainConfig(**spec.train)
    rows = [to_chat(Example.from_dict(r), spec.system_prompt) for r in read_jsonl(spec.data_path)]
    tok = load_tokenizer(spec.base_model)
    model = load_trainable_model(spec.base_model, cfg)
    micro = spec.micro_batch or cfg.batch_size
    accum = cfg.grad_accum * max(1, cfg.batch_size // micro)
    cuda = torch.cuda.is_available()
    args = SFTConfig(
        output_dir=str(work_dir / "trainer"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=micro, gradient_accumulation_steps=accum, learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=0.05, max_length=cfg.max_length, logging_steps=5,
        save_strategy="no", report_to="none", seed=cfg.seed, data_seed=cfg.seed,
        bf16=cuda and torch.cuda.is_bf16_supported(), use_cpu=not cuda, dataloader_num_workers=0,
        completion_only_loss=True, packing=False, **_checkpointing_kwarg(SFTConfig, cuda),
        disable_tqdm=os.environ.get("LLAMADUO_PROGRESS", "1" if sys.stderr.isatty() else "0") != "1",
    )
    peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=peft_cfg)
    trainer.llamaduo_meta = {"rows": len(rows), "micro_batch": micro, "grad_accum": accum,
                             "quantized_4bit": _use_4bit(cfg)}
    return trainer


def train_lora(spec: TrainSpec) -> dict:
    """Fine-tune in this process; returns training stats. Writes the adapter to spec.output_dir."""
    out = Path(spec.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        trainer = build_trainer(spec, work)
        t0 = time.time()
        result = trainer.train()
        adapter_tmp = work / "adapter"
        trainer.model.save_pretrained(adapter_tmp)
        trainer.processing_class.save_pretrained(adapter_tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(adapter_tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"steps": int(result.global_step), "train_loss": round(float(result.training_loss), 4),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            **trainer.llamaduo_meta, "seconds": round(time.time() - t0, 2)}


# Optimizer steps taken by this process's training runs: the CLI reports them (0 on a cached re-run).
PROCESS_TRAINING_STEPS = [0]


def run_training(spec: TrainSpec, *, subprocess_mode: bool = True) -> dict:
    """Train (in a child process unless told otherwise) and return its stats."""
    Path(spec.output_dir).parent.mkdir(parents=True, exist_ok=True)
    stats = _run_training(spec, subprocess_mode)
    PROCESS_TRAINING_STEPS[0] += stats["steps"]
    return stats


def _run_training(spec: TrainSpec, subprocess_mode: bool) -> dict:
    if not subprocess_mode:
        return train_lora(spec)
    spec_path = Path(spec.output_dir).with_suffix(".spec.json")
    result_path = Path(spec.output_dir).with_suffix(".result.json")
    result_path.unlink(missing_ok=True)
    atomic_write_json(spec_path, asdict(spec))
    env = {**os.environ, "LLAMADUO_PROGRESS": "1" if sys.stderr.isatty() else os.environ.get("LLAMADUO_PROGRESS", "0")}
    proc = subprocess.Popen([sys.executable, "-m", "llamaduo.train", str(spec_path), str(result_path)],
                            stderr=subprocess.PIPE, env=env)
    tail = b""
    for chunk in iter(lambda: proc.stderr.read1(4096), b""):  # live progress, and the tail for errors
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail = (tail + chunk)[-6000:]
    returncode = proc.wait()
    if returncode != 0 or not result_path.is_file():
        text = tail.decode("utf-8", "replace").replace("\r", "\n")
        raise TrainingFailed(f"training process exited with {returncode}:\n" + "\n".join(text.splitlines()[-15:]))
    return read_json(result_path)


def _exit_with_parent() -> None:
    """A killed or crashed parent must not leave a training process holding the CPU/GPU."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    _exit_with_parent()
    spec = TrainSpec(**json.loads(Path(argv[0]).read_text()))
    stats = train_lora(spec)
    atomic_write_json(argv[1], stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
