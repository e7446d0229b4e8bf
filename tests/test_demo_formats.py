"""The demo's exported formats in other runtimes (`make test-formats`: after `make demo`, with
llama-cpp-python built from the registry's source package). Not in `.ci/run`: the build alone takes
~6-10 min on 2 cores (benchmarks/README.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from llamaduo.store import read_jsonl

pytestmark = pytest.mark.formats
RUN = Path(os.environ.get("LLAMADUO_DEMO_RUN", Path(__file__).resolve().parents[1] / "runs" / "demo"))


def _evaluated() -> tuple[list[dict], dict[str, str]]:
    if not (RUN / "final_model" / "llamaduo.json").is_file():
        pytest.skip(f"no exported demo run at {RUN} (make demo)")
    summary = json.loads((RUN / "summary.json").read_text())
    round_no = summary["exported_round"]
    answers = {r["id"]: r["answer"] for r in read_jsonl(RUN / f"rounds/round_{round_no:02d}/answers.jsonl")}
    return read_jsonl(RUN / "data" / "test.jsonl"), answers


def test_llama_cpp_answers_from_the_q8_0_gguf_match_the_evaluated_ones():
    """llama.cpp given the GGUF and a user message only (the system prompt comes from the file's chat
    template): at least 90% of its greedy answers equal the evaluated adapter's."""
    llama_cpp = pytest.importorskip("llama_cpp")
    items, evaluated = _evaluated()
    gguf = next(iter(sorted((RUN / "final_model" / "gguf").glob("*-q8_0.gguf"))))
    meta = json.loads((RUN / "final_model" / "llamaduo.json").read_text())
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=2048, seed=0, verbose=False)
    same = 0
    for it in items:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": it["instruction"]}], temperature=0,
                                         max_tokens=meta["max_new_tokens"])
        same += out["choices"][0]["message"]["content"].strip() == evaluated[it["id"]]
    assert same / len(items) >= 0.9, f"{same}/{len(items)}"


def test_the_transformers_pipeline_given_merged_and_no_system_message_answers_as_evaluated():
    import torch
    from transformers import pipeline

    items, evaluated = _evaluated()
    meta = json.loads((RUN / "final_model" / "llamaduo.json").read_text())
    generate = pipeline("text-generation", model=str(RUN / "final_model" / "merged"), dtype=torch.float32)
    got = [generate([{"role": "user", "content": it["instruction"]}], max_new_tokens=meta["max_new_tokens"],
                    do_sample=False)[0]["generated_text"][-1]["content"].strip() for it in items]
    same = sum(g == evaluated[it["id"]] for g, it in zip(got, items))
    assert same == len(items), f"{same}/{len(items)}"
