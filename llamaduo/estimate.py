"""Before anything is spent: calls, tokens and cost per round and for the whole run (printed by
`llamaduo validate`). Counts waves, judge repeats, sampled answers, the validation split, the
baselines and the judge calibration set (read and validated here, so a bad rating is an input
error before anything is spent), priced per endpoint (service and judge may differ)."""

from __future__ import annotations

import math
from statistics import mean

from .config import RunConfig
from .data import Example
from .judge import JUDGE_MAX_TOKENS
from .records import RunEstimate
from .service import approx_tokens, explicit_prices, price_usd
from .templates import judge_template, synth_template

JUDGE_REPLY_TOKENS = 120  # two scores with short reasons


def _cost(endpoint, prompt: int, completion: int, *, standin_as=None) -> float | None:
    """What the calls cost; with `standin_as` (the service endpoint), a stand-in's calls priced at
    its configured pair instead of $0 — the decision page's basis for the demo's migration cost."""
    if standin_as is not None and endpoint.is_standin:
        if not explicit_prices(standin_as):
            return None
        return (standin_as.input_cost_per_mtok * prompt + standin_as.output_cost_per_mtok * completion) / 1e6
    return price_usd(endpoint, prompt, completion)


def run_estimate(cfg: RunConfig, train: list[Example], val: list[Example], test: list[Example]) -> RunEstimate:
    seed, item = train[0], test[0]
    pair_tokens = mean(approx_tokens(e.instruction) + approx_tokens(e.response) for e in train) + 10
    synth_calls = math.ceil(cfg.synth.rows_per_round / cfg.synth.pairs_per_request)
    synth_prompt = approx_tokens(synth_template(cfg.synth.prompt_template).render(
        instruction=seed.instruction, response=seed.response, topic=seed.category or "", n=cfg.synth.pairs_per_request))
    synth_completion = int(pair_tokens * cfg.synth.pairs_per_request)
    per_eval = cfg.infer.samples_per_prompt * cfg.judge.repeats
    judge_calls = (len(test) + len(val)) * per_eval
    judge_prompt = approx_tokens(judge_template(cfg.judge.prompt_template).render(
        instruction=item.instruction, reference=item.response, candidate=item.response))
    judge_completion = min(JUDGE_REPLY_TOKENS, JUDGE_MAX_TOKENS)
    base_calls = (len(test) + len(val)) * per_eval if cfg.gate.baseline else 0
    service_baseline_calls = len(test) * (1 + cfg.judge.repeats) if cfg.judge.service_baseline else 0
    calibration_calls, calibration_prompt = _calibration_calls(cfg)
    rounds = cfg.gate.max_rounds

    def costs(standin_as=None) -> tuple[float | None, float | None]:  # (per round, whole run at most)
        synth = _cost(cfg.service_endpoint(), synth_calls * synth_prompt, synth_calls * synth_completion,
                      standin_as=standin_as)
        judge = _cost(cfg.judge_endpoint(), judge_calls * judge_prompt, judge_calls * judge_completion,
                      standin_as=standin_as)
        extra = _cost(cfg.judge_endpoint(), (base_calls + service_baseline_calls) * judge_prompt + calibration_prompt,
                      (base_calls + service_baseline_calls + calibration_calls) * judge_completion,
                      standin_as=standin_as)
        if None in (synth, judge, extra):
            return None, None
        return synth + judge, (synth * cfg.synth.max_waves + judge) * rounds + extra

    per_round, run_max = costs()
    standin = cfg.service_endpoint().is_standin or cfg.judge_endpoint().is_standin
    standin_round, standin_max = costs(cfg.service_endpoint()) if standin else (None, None)
    worst_synth = synth_calls * cfg.synth.max_waves
    return RunEstimate(
        synth_calls=synth_calls, synth_calls_max=worst_synth, judge_calls=judge_calls, calls=synth_calls + judge_calls,
        baseline_calls=base_calls + service_baseline_calls, calibration_calls=calibration_calls,
        prompt_tokens=synth_calls * synth_prompt + judge_calls * judge_prompt,
        completion_tokens=synth_calls * synth_completion + judge_calls * judge_completion, cost_usd=per_round,
        run_calls_max=(worst_synth + judge_calls) * rounds + base_calls + service_baseline_calls + calibration_calls,
        run_cost_usd_max=run_max, standin_cost_usd=standin_round, standin_run_cost_usd_max=standin_max)


def _calibration_calls(cfg: RunConfig) -> tuple[int, int]:
    """(judge calls, prompt tokens) of judging the calibration set once: every row x repeats."""
    if not cfg.judge.calibration_path:
        return 0, 0
    from .calibration import load_ratings

    template = judge_template(cfg.judge.prompt_template)
    ratings = load_ratings(cfg.judge.calibration_path)
    prompt = sum(approx_tokens(template.render(instruction=r.instruction, reference=r.reference,
                                               candidate=r.candidate)) for r in ratings)
    return len(ratings) * cfg.judge.repeats, prompt * cfg.judge.repeats


def warnings_for(cfg: RunConfig) -> list[str]:
    out = []
    calibration_calls, _ = _calibration_calls(cfg)
    if calibration_calls >= cfg.budget.max_calls:
        out.append(f"judging the calibration set takes {calibration_calls} calls, budget.max_calls is "
                   f"{cfg.budget.max_calls}: the run would stop at the budget before any training")
    if cfg.judge.repeats > 1 and cfg.judge.temperature == 0:
        out.append(f"judge.repeats is {cfg.judge.repeats} at judge.temperature 0: repeats will mostly agree and "
                   "cost as much as independent judgements (set a temperature > 0, or repeats: 1)")
    return out
