"""A stand-in for the `vllm` package in CPU tests of the vLLM backend's plumbing (request file,
child process, prompt ids, order, samples). It does not generate: each answer names the prompt it
got. The real engine is checked on a GPU machine (benchmarks/gpu_check.py)."""

from dataclasses import dataclass, field
import json
import os


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    max_tokens: int = 16
    seed: int | None = None


@dataclass
class _Completion:
    text: str
    token_ids: list = field(default_factory=list)


@dataclass
class _Output:
    outputs: list


class LLM:
    def __init__(self, model: str, seed: int = 0, gpu_memory_utilization: float = 0.9, **kw):
        self.model = model
        log = os.environ.get("FAKE_VLLM_LOG")
        if log:
            with open(log, "a") as f:
                f.write(json.dumps({"model": model, "config": os.path.isfile(os.path.join(model, "config.json"))}) + "\n")

    def generate(self, prompts, params: SamplingParams, use_tqdm: bool = True):
        return [_Output([_Completion(f" {len(p['prompt_token_ids'])} tokens, sample {k}, t={params.temperature} ",
                                     [1] * min(3, params.max_tokens)) for k in range(params.n)]) for p in prompts]
