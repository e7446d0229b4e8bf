"""What ships is what was judged: one row per exported format (pure; the flow judges, this decides).

A format ships only when the run's judge scored its answers on the test split and the round's gate,
applied to those scores, passes. Parity is the mean per-item difference from the evaluated adapter
(the answers the rounds were judged on) with a seeded bootstrap interval.
"""

from __future__ import annotations

from .records import EvalResult, FormatRow, GateDecision, ShippedFormat
from .stats import paired_difference


def format_row(fmt: ShippedFormat, ev: EvalResult | None, gate: GateDecision | None, *, metric: str,
               evaluated: dict[str, float], pass_score: float, not_judged: str = "") -> FormatRow:
    """`ev`/`gate`: its judgement and the gate applied to it (None: not judged, with `not_judged` saying
    why); `evaluated`: the evaluated adapter's per-item scores."""
    from .decision import quality_stats

    base = dict(name=fmt.name, path=fmt.path, bytes=fmt.bytes, engine=fmt.engine,
                identical_share=fmt.identical_share, latency_p50_s=fmt.latency_p50_s,
                latency_p95_s=fmt.latency_p95_s, tokens_per_s=fmt.tokens_per_s)
    if ev is None or gate is None:
        return FormatRow(**base, ship=False, reason=f"not judged: {not_judged or 'no answers'}")
    by_id = ev.per_item_by_id.get(metric, {})
    diff, ci = paired_difference(by_id, evaluated)
    return FormatRow(**base, quality=quality_stats(list(by_id.values()), pass_score), judged_share=ev.judged_share,
                     parity=diff, parity_ci95=ci, ship=gate.passed,
                     reason=gate.reason if not gate.passed else "passes the gate on its own answers")
