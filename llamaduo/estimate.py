"""Before anything is spent: calls, tokens and cost per round (printed by `llamaduo validate`)."""

from __future__ import annotations

import math
from statistics import mean

from .config import RunConfig
from .data import Example
from .service import estimate_cost_usd
from .templates import judge_template, synth_template

JUDGE_REPLY_TOKENS = 120  # two scores with short reasons


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)  # ~4 characters per token for English text


def round_estimate(cfg: RunConfig, train: list[Example], test: list[Example]) -> dict:
    seed = train[0]
    pair_tokens = mean(_tokens(e.instruction) + _tokens(e.response) for e in train) + 10
    synth_calls = math.ceil(cfg.synth.rows_per_round / cfg.synth.pairs_per_request)
    synth_prompt = _tokens(synth_template(cfg.synth.prompt_template).render(
        instruction=seed.instruction, response=seed.response, topic=seed.category or "", n=cfg.synth.pairs_per_request))
    synth_completion = int(pair_tokens * cfg.synth.pairs_per_request)
    judge_calls = len(test) * cfg.judge.repeats
    item = test[0]
    judge_prompt = _tokens(judge_template(cfg.judge.prompt_template).render(
        instruction=item.instruction, reference=item.response, candidate=item.response))
    synth_cost = estimate_cost_usd(cfg.service.model, synth_calls * synth_prompt, synth_calls * synth_completion)
    judge_cost = estimate_cost_usd(cfg.judge_model, judge_calls * judge_prompt, judge_calls * JUDGE_REPLY_TOKENS)
    cost = None if synth_cost is None or judge_cost is None else synth_cost + judge_cost
    return {"synth_calls": synth_calls, "judge_calls": judge_calls, "calls": synth_calls + judge_calls,
            "prompt_tokens": synth_calls * synth_prompt + judge_calls * judge_prompt,
            "completion_tokens": synth_calls * synth_completion + judge_calls * JUDGE_REPLY_TOKENS,
            "cost_usd": cost}
