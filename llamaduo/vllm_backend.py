"""vLLM generation for `infer.backend: vllm` (CUDA).

vLLM keeps most of the GPU's memory until its process ends, and the next round trains on the same
GPU, so generation runs in a child process (`python -m llamaduo.vllm_backend REQUEST RESULT`,
llamaduo/childproc.py: it ends with this process, its error text is redacted). The
adapter is merged into the base first (the weights the export ships), and vLLM is given the prompt
token ids the transformers path uses, so both engines answer the same prompts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .childproc import ChildFailed, child_main, run_json_child


class VLLMFailed(ChildFailed):
    pass


def merged_model_dir(base_model: str, adapter_dir: str | None, dest: Path) -> str:
    from .models import save_merged

    return str(save_merged(base_model, adapter_dir, dest)) if adapter_dir else base_model


def generate_vllm(base_model: str, adapter_dir: str | None, ids: list[list[int]], *, max_new_tokens: int,
                  samples: int, temperature: float) -> tuple[list[list[str]], int]:
    with tempfile.TemporaryDirectory(prefix="llamaduo-vllm-") as tmp:
        request = {"model": merged_model_dir(base_model, adapter_dir, Path(tmp) / "merged"), "prompt_token_ids": ids,
                   "max_new_tokens": max_new_tokens, "samples": samples, "temperature": temperature}
        result = run_json_child("llamaduo.vllm_backend", request, Path(tmp) / "request.json",
                                Path(tmp) / "result.json", what="vLLM generation", error=VLLMFailed)
    return result["answers"], result["new_tokens"]


def run_request(request: dict) -> dict:
    from vllm import LLM, SamplingParams

    llm = LLM(model=request["model"], seed=0, gpu_memory_utilization=float(
        os.environ.get("LLAMADUO_VLLM_GPU_MEMORY", "0.85")))
    greedy = request["samples"] == 1
    params = SamplingParams(n=request["samples"], temperature=0.0 if greedy else request["temperature"],
                            max_tokens=request["max_new_tokens"], seed=None if greedy else 0)
    outputs = llm.generate([{"prompt_token_ids": p} for p in request["prompt_token_ids"]], params, use_tqdm=False)
    return {"answers": [[c.text.strip() for c in out.outputs] for out in outputs],
            "new_tokens": sum(len(c.token_ids) for out in outputs for c in out.outputs)}


def main(argv: list[str] | None = None) -> int:
    return child_main(run_request, argv)


if __name__ == "__main__":
    raise SystemExit(main())
