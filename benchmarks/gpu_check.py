"""CUDA path check (run on a GPU machine): QLoRA with bitsandbytes, bf16 inference, a warm-started
QLoRA round, the vLLM backend (where vLLM is installed), OOM back-off.

    python benchmarks/gpu_check.py TOKENIZER_DIR OUT_DIR

Builds a small random Llama with the given tokenizer, trains it with QLoRA in a child
process (as the pipeline does), generates in bf16, then forces a real CUDA OOM with a
capped memory fraction and checks that halving the micro-batch (the retry rule of the
finetune task) recovers with the same effective batch. Prints one JSON report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(tok_dir: str, out: str) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from llamaduo.gpu import is_cuda_oom, micro_batch_for_attempt
    from llamaduo.infer import generate_answers
    from llamaduo.store import atomic_write_jsonl
    from llamaduo.train import TrainingFailed, TrainSpec, run_training

    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
                    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported()}
    try:
        import bitsandbytes

        report["bitsandbytes"] = bitsandbytes.__version__
    except Exception as exc:  # noqa: BLE001
        report["bitsandbytes"] = f"missing: {exc}"
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model_dir = out_dir / "model"
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rows = [{"id": str(i), "instruction": f"Route ticket {i}: my card was charged twice", "response": "billing"}
            for i in range(64)]
    data = atomic_write_jsonl(out_dir / "train.jsonl", rows)
    train_cfg = {"epochs": 3, "batch_size": 8, "max_length": 128, "learning_rate": 2e-3, "quantization": "auto"}
    t0 = time.time()
    stats = run_training(TrainSpec(base_model=str(model_dir), data_path=str(data),
                                   output_dir=str(out_dir / "adapter"), train=train_cfg))
    report["qlora"] = {**stats.model_dump(mode="json"), "wall_s": round(time.time() - t0, 1)}
    answers, istats = generate_answers(str(model_dir), str(out_dir / "adapter"), rows[:8], system_prompt=None,
                                       max_new_tokens=8, batch_size=8)
    report["infer"] = {**istats.model_dump(mode="json"), "answers": answers[:3]}
    warm = run_training(TrainSpec(base_model=str(model_dir), data_path=str(data), output_dir=str(out_dir / "adapter2"),
                                  train={**train_cfg, "epochs": 1}, init_adapter=str(out_dir / "adapter")))
    report["warm_start"] = warm.model_dump(mode="json", include={"warm_start", "quantized_4bit", "steps", "first_loss",
                                                                 "last_loss"})
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:  # infer.backend: vllm, same prompts as the HF path
        vanswers, vstats = generate_answers(str(model_dir), str(out_dir / "adapter"), rows[:8], system_prompt=None,
                                            max_new_tokens=8, batch_size=8, backend="vllm")
        report["vllm"] = {**vstats.model_dump(mode="json"), "same_as_hf": sum(a == b for a, b in zip(answers, vanswers))}
    else:
        report["vllm"] = "not installed"

    # OOM back-off: long rows + a memory cap make micro-batch 64 fail for real on the GPU.
    long_rows = [{"id": str(i), "instruction": "word " * 500, "response": "reply " * 400} for i in range(64)]
    atomic_write_jsonl(out_dir / "long.jsonl", long_rows)
    # About 0.6 GiB whatever the card: a fixed fraction of an H200 (4.3 GiB at 0.03) held micro-batch 64.
    cap = min(0.03, 0.6 * 2**30 / torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else 0.03
    os.environ["LLAMADUO_CUDA_MEMORY_FRACTION"] = os.environ.get("OOM_FRACTION", f"{cap:.4f}")
    report["oom_memory_fraction"] = os.environ["LLAMADUO_CUDA_MEMORY_FRACTION"]
    oom_cfg = {"epochs": 1, "batch_size": 64, "max_length": 1024, "learning_rate": 1e-3, "quantization": "auto",
               "max_steps": 2}
    attempts = []
    for attempt in range(1, 8):
        micro = micro_batch_for_attempt(64, attempt)
        spec = TrainSpec(base_model=str(model_dir), data_path=str(out_dir / "long.jsonl"),
                         output_dir=str(out_dir / "adapter_oom"), train=oom_cfg, micro_batch=micro)
        try:
            s = run_training(spec)
            attempts.append({"attempt": attempt, "micro_batch": s.micro_batch, "grad_accum": s.grad_accum,
                             "ok": True})
            break
        except TrainingFailed as exc:
            attempts.append({"attempt": attempt, "micro_batch": micro, "ok": False, "oom": is_cuda_oom(exc)})
            if not is_cuda_oom(exc):
                attempts[-1]["error"] = str(exc)[-800:]
                break
    report["oom_backoff"] = attempts
    print(json.dumps(report, indent=1))
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    ok = (report["qlora"]["quantized_4bit"] and report["warm_start"]["warm_start"] and attempts[-1]["ok"] and any(a.get("oom") for a in attempts)
          and attempts[-1]["micro_batch"] * attempts[-1]["grad_accum"] == 64)
    print("GPU CHECK", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
