"""The decision a reviewer signs: can the student replace the service LLM on this task?

`build_decision` is a pure function of typed inputs (the run summary, the judged rows of the
exported student, the service baseline and the base student, the measured latencies, prices and
the hourly rate of the serving hardware); `render_markdown` turns its `Decision` into the page.
The loaders below (`load_judged`, `service_call_records`) and `write_decision` are the explicit I/O.

Verdict rules (the page states which applied):
- a judge that disagrees with people's ratings (stop `judge_disagrees`), no exported model, or
  an exported round that could not be evaluated (too few valid judgements): **not yet**;
- a category is *ready* when the 95% interval of the student's mean of `gate.metric` on it has its
  lower bound at or above `gate.threshold`, on at least MIN_CATEGORY_ITEMS test items (and, with
  `gate.min_share`, its pass rate reaches that share); one whose mean reaches the threshold without
  that is *undecided*, and the page says about how many more test items would decide it
  (n ≈ (1.96·sd / (mean − threshold))², at least MIN_CATEGORY_ITEMS);
- the exported round passed its gate and every category is ready: **replace**; some are:
  **replace for categories A, B (not: C)**; none: not yet;
- the exported round did not pass its gate: with two or more categories of which some are
  ready, **replace for categories …** (those reach the gate on their own); otherwise not yet.
Without a calibration set the verdict's first line says "judge not calibrated"; with one it says
"calibrated against people" only when the ratings are people's (`rated_by`), else what they are.

Money: service cost per request = measured mean tokens in/out x the endpoint's prices; student
cost per request = decision.usd_per_hour / (measured throughput x 3600); migration cost = this
run's service spend + training hours x decision.usd_per_hour; break-even volume = migration
cost / (service - student cost per request), "never" when the student is not cheaper.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .markdown import Raw, code_span, escape_inline, fenced, table
from .metrics import METRICS
from .records import (BreakEven, CategoryQuality, Decision, DecisionCost, DecisionLatency, FormatRow, QualityStats,
                      ServiceLatency, Summary)
from .stats import bootstrap_ci, share_at_least

if TYPE_CHECKING:
    from .config import Endpoint, GateConfig, InferConfig, ServiceConfig

VERDICT_REPLACE = "replace"
VERDICT_PARTIAL = "replace for categories"
VERDICT_NOT_YET = "not yet"
UNDECIDED = "undecided"
MIN_CATEGORY_ITEMS = 10  # below this a category's interval is too wide to sign (n = 5 gave [40.6, 100])
Z95 = 1.96
UNCATEGORISED = "uncategorised"
STUDENT, SERVICE, BASE = "student", "service", "base"
WHO = {STUDENT: "student", SERVICE: "service LLM", BASE: "base student"}
STOP_JUDGE_DISAGREES = "judge_disagrees"  # llamaduo.gate's constant (same value; read defensively)
NOT_CALIBRATED = "judge not calibrated"
SERVICE_JUDGED = "baselines/service/judged.jsonl"
WORST_ITEMS = 5
DECISION_JSON, DECISION_MD = "decision.json", "decision.md"
RATE_HINT = ("set `decision.usd_per_hour` to the hourly price of the serving hardware "
             "(e.g. `--set decision.usd_per_hour=1.2`)")


# -- statistics ----------------------------------------------------------------------------------
def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def quality_stats(values: list[float], pass_score: float, *, samples: int = 1000) -> QualityStats:
    """n, mean, 95% bootstrap interval (seeded), pass rate (share of items >= pass_score) and the
    sample standard deviation."""
    if not values:
        return QualityStats(n=0)
    lo, hi = bootstrap_ci(values, level=0.95, samples=samples)
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return QualityStats(n=len(values), mean=round(mean, 4), ci95=(round(lo, 4), round(hi, 4)),
                        pass_rate=round(share_at_least(values, pass_score), 4),
                        sd=round(sd, 4) if sd is not None else None)


def items_to_decide(q: QualityStats, threshold: float, min_items: int) -> tuple[int, str]:
    """(more test items, the arithmetic) for a category whose mean reaches `threshold` but whose
    interval or n does not: n ≈ (1.96·sd / (mean − threshold))², the normal approximation of the
    n at which the 95% interval's lower bound clears the threshold, and at least `min_items`."""
    gap = q.mean - threshold
    if q.sd and gap > 0:
        exact = (Z95 * q.sd / gap) ** 2
        arithmetic = (f"n ≈ (1.96 × sd {q.sd:.3g} / (mean {q.mean:.3g} − {threshold:g}))² = {exact:.1f}")
    else:
        exact, arithmetic = 0.0, "every item scored the same" if not q.sd else "the mean only equals the threshold"
    if gap <= 0:
        return 0, f"{arithmetic}: no number of items decides it"
    needed = max(min_items, math.ceil(exact))
    # The page's interval is a bootstrap: where the approximation says n suffices and it did not, one more
    more = max(needed - q.n, 1)
    return more, (f"n={q.n}; {arithmetic}; at least {min_items} items → about {more} more test item"
                  f"{'' if more == 1 else 's'}")


def category_of(row: dict, categories: dict[str, str | None]) -> str:
    return row.get("category") or categories.get(row.get("id", "")) or UNCATEGORISED


def per_category(rows: list[dict], field: str, categories: dict[str, str | None], pass_score: float, *,
                 samples: int = 1000) -> dict[str, QualityStats]:
    """Quality per category of the items that have `field` (unjudged items are not scored 0)."""
    by: dict[str, list[float]] = {}
    for r in rows:
        if field in r and r[field] is not None:
            by.setdefault(category_of(r, categories), []).append(float(r[field]))
    return {c: quality_stats(v, pass_score, samples=samples) for c, v in by.items()}


def _category_order(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=lambda c: (c == UNCATEGORISED, c.lower()))


# -- latency and money ---------------------------------------------------------------------------
def service_latency(records: list[dict], *, standin: bool) -> ServiceLatency | None:
    """p50/p95 of the recorded service calls (reply-cache records with `latency_s`) and their mean
    tokens in/out per request; None without any record."""
    if not records:
        return None
    lat = [float(r["latency_s"]) for r in records if isinstance(r.get("latency_s"), (int, float))]
    pt = [int(r.get("prompt_tokens") or 0) for r in records]
    ct = [int(r.get("completion_tokens") or 0) for r in records]
    return ServiceLatency(records=len(records), timed=len(lat),
                          p50_s=round(percentile(lat, 50), 4) if lat else None,
                          p95_s=round(percentile(lat, 95), 4) if lat else None,
                          prompt_tokens_mean=round(sum(pt) / len(pt), 2),
                          completion_tokens_mean=round(sum(ct) / len(ct), 2), standin=standin)


def service_usd_per_1k(endpoint: "Endpoint", prompt_tokens_mean: float, completion_tokens_mean: float
                       ) -> tuple[float | None, str]:
    """(USD per 1,000 requests, how it was priced). The stand-in is free unless the config prices
    it as the service it stands for (`service.input_cost_per_mtok` / `output_cost_per_mtok`)."""
    from .service import explicit_prices, price_usd

    pt, ct = prompt_tokens_mean * 1000, completion_tokens_mean * 1000
    if endpoint.is_standin:
        if explicit_prices(endpoint):
            return ((endpoint.input_cost_per_mtok * pt + endpoint.output_cost_per_mtok * ct) / 1e6,
                    "stand-in priced at the configured service.input_cost_per_mtok / output_cost_per_mtok")
        return 0.0, ("the stand-in costs nothing; set service.input_cost_per_mtok and service.output_cost_per_mtok "
                     "to price it as the service it stands for")
    usd = price_usd(endpoint, round(pt), round(ct))
    if usd is None:
        return None, (f"no price known for {endpoint.model}: set service.input_cost_per_mtok and "
                      "service.output_cost_per_mtok")
    how = ("configured service.*_cost_per_mtok" if explicit_prices(endpoint) else "litellm's price map")
    return usd, f"measured tokens x {how}"


def student_usd_per_1k(usd_per_hour: float | None, throughput_rps: float | None) -> float | None:
    """The serving hardware's hourly rate spread over the requests it answers in an hour."""
    if usd_per_hour is None or not throughput_rps or throughput_rps <= 0 or not math.isfinite(throughput_rps):
        return None
    return usd_per_hour / (throughput_rps * 3600) * 1000


def break_even(migration_usd: float | None, service_per_1k: float | None, student_per_1k: float | None
               ) -> BreakEven:
    """Requests after which the migration has paid for itself; `never` when the student is not
    cheaper per request (or the saving is too small to ever recover the cost)."""
    if migration_usd is None or service_per_1k is None or student_per_1k is None:
        missing = [n for n, v in (("migration cost", migration_usd), ("service cost", service_per_1k),
                                  ("student cost", student_per_1k)) if v is None]
        return BreakEven(requests=None, never=False, note="not computed: " + ", ".join(missing) + " unknown")
    saving = (service_per_1k - student_per_1k) / 1000
    if saving <= 0:
        return BreakEven(requests=None, never=True, note=f"never: the student is not cheaper per request "
                         f"({usd(student_per_1k)} vs {usd(service_per_1k)} per 1,000)")
    n = migration_usd / saving
    if not math.isfinite(n):
        return BreakEven(requests=None, never=True, note="never: the saving per request is too small to recover "
                         "the migration cost")
    return BreakEven(requests=n, never=False, saving_per_request_usd=saving,
                     note=f"migration cost {usd(migration_usd)} / saving {usd(saving)} per request")


def usd(v: float | None) -> str:
    """Money for people: cents for large sums, significant digits for fractions of a cent."""
    if v is None or not math.isfinite(v):
        return "–"
    if v == 0:
        return "$0"
    if abs(v) >= 1:
        return f"${v:,.2f}"
    decimals = min(12, 2 - math.floor(math.log10(abs(v))))  # three significant digits, never 1e-05
    return f"${v:.{decimals}f}"


def _requests(n: float) -> str:
    return f"{math.ceil(n):,}"


# -- the decision ----------------------------------------------------------------------------------
def _raters(cal: dict | None) -> str:
    """Who the calibration ratings are from, as the page may claim it (calibration.rater_phrase)."""
    from .calibration import rater_phrase  # the stage module (judging, service): only its wording here

    return rater_phrase(cal or {})


def _ratings_of(cal: dict | None) -> str:
    who = _raters(cal)
    return "people's ratings" if who == "people" else who


def _calibration(summary: Summary) -> dict | None:
    cal = getattr(summary, "calibration", None)  # Summary.calibration: added with judge calibration
    if cal is None:
        return None
    return cal.model_dump(mode="json") if hasattr(cal, "model_dump") else dict(cal)


def _exported(summary: Summary):
    return next((r for r in summary.rounds if r.round == summary.exported_round), None)


def _training_hours(summary: Summary) -> float:
    return sum(r.durations_s.get("finetune", 0.0) for r in summary.rounds if r.round >= 1) / 3600


def _worst(rows: list[dict], field: str, categories: dict, k: int = WORST_ITEMS, width: int = 120) -> list[dict]:
    def cut(t) -> str:
        t = " ".join(str(t or "").split())
        return t if len(t) <= width else t[:width - 1] + "…"

    ordered = sorted(rows, key=lambda r: (r.get(field) is not None, r.get(field) or 0.0))
    return [{"id": r.get("id"), "category": category_of(r, categories),
             "value": round(r[field], 4) if r.get(field) is not None else None,
             "instruction": cut(r.get("instruction")), "answer": cut(r.get("answer")),
             "reference": cut(r.get("reference")), "judge_reason": cut(r.get("judge_reason", ""))}
            for r in ordered[:k]]


def build_decision(*, summary: Summary, gate: "GateConfig", judged: dict[str, list[dict]],
                   categories: dict[str, str | None], service_endpoint: "Endpoint",
                   student_latency=None, student_latency_note: str = "", service_records: list[dict] | None = None,
                   usd_per_hour: float | None = None, min_agreement: float | None = None,
                   port: int = 8000, min_items: int = MIN_CATEGORY_ITEMS, formats: list[FormatRow] | None = None) -> Decision:
    """The decision from typed inputs. `judged`: judged rows per `student` (exported round),
    `service` (service baseline) and `base` (round 0), each present when it ran;
    `categories`: test item id -> category; `student_latency`: `LatencyStats` measured through
    `llamaduo serve` (None: `student_latency_note` says why)."""
    metric = METRICS[gate.metric]
    field = metric.item_field
    pass_score = gate.min_item_score if gate.min_item_score is not None else gate.threshold
    samples = gate.bootstrap_samples
    standin = service_endpoint.is_standin

    # quality per category, per who
    stats = {who: per_category(rows, field, categories, pass_score, samples=samples)
             for who, rows in judged.items() if rows is not None}
    overall = {who: quality_stats([float(r[field]) for r in rows if r.get(field) is not None], pass_score,
                                  samples=samples) for who, rows in judged.items() if rows is not None}
    names = _category_order(c for s in stats.values() for c in s)
    quality = [CategoryQuality(category=c, **{who: stats[who].get(c) for who in stats}) for c in names]

    def reaches(q: QualityStats | None) -> bool:  # on its mean (and pass rate) alone
        return (q is not None and q.n > 0 and q.mean is not None and q.mean >= gate.threshold
                and (gate.min_share is None or (q.pass_rate or 0.0) >= gate.min_share))

    def ready(q: QualityStats | None) -> bool:  # ... and its interval clears the threshold on enough items
        return reaches(q) and q.n >= min_items and q.ci95 is not None and q.ci95[0] >= gate.threshold

    student_stats = stats.get(STUDENT, {})
    ready_cats = [c for c in names if ready(student_stats.get(c))]
    not_ready = [c for c in names if c not in ready_cats]
    undecided = {c: items_to_decide(student_stats[c], gate.threshold, min_items)[1]
                 for c in not_ready if reaches(student_stats.get(c))}
    below_cats = [c for c in not_ready if c not in undecided]

    # verdict
    cal = _calibration(summary)
    reasons: list[str] = []
    exported = _exported(summary)
    tau = (cal or {}).get("kendall_tau")
    if summary.stop_reason == STOP_JUDGE_DISAGREES:
        verdict = VERDICT_NOT_YET
        reasons.append(f"the judge disagrees with {_ratings_of(cal)} of this task"
                       + (f" (Kendall τ {tau:.2f}" if isinstance(tau, (int, float)) else " (")
                       + (f" below judge.min_agreement {min_agreement:g})" if min_agreement is not None else ")")
                       + ": its scores cannot decide; no student was trained")
    elif exported is None or summary.final_model_dir is None:
        verdict = VERDICT_NOT_YET
        reasons.append(f"no model was exported (run stopped: {summary.stop_reason}"
                       + (f" — {summary.stop_detail}" if summary.stop_detail else "") + ")")
    elif any(c.name == "judged share" for c in exported.gate.criteria):
        verdict = VERDICT_NOT_YET
        reasons.append(f"round {exported.round} could not be evaluated: {exported.gate.reason}")
    else:
        g = exported.gate
        several = len(names) > 1
        if g.passed:
            reasons.append(f"round {exported.round} passed the gate ({g.reason})")
            if not not_ready:
                verdict = VERDICT_REPLACE
            elif ready_cats:
                verdict = VERDICT_PARTIAL
            else:
                verdict = VERDICT_NOT_YET
                reasons.append("no category is ready on its own" if undecided
                               else "no category reaches the threshold on its own")
        else:
            reasons.append(f"round {exported.round} did not pass the gate ({g.reason})")
            if several and ready_cats:
                verdict = VERDICT_PARTIAL
                reasons.append(f"{', '.join(ready_cats)} reach{'es' if len(ready_cats) == 1 else ''} "
                               f"{gate.metric} >= {gate.threshold:g} on {'its' if len(ready_cats) == 1 else 'their'} "
                               "own")
            else:
                verdict = VERDICT_NOT_YET
        if undecided:
            reasons.append(f"{UNDECIDED} (the mean reaches {gate.metric} {gate.threshold:g}, but the 95% interval's "
                           f"lower bound does not, or fewer than {min_items} test items): "
                           + "; ".join(f"{c}: {note}" for c, note in undecided.items()))
        if below_cats and several:
            below = ", ".join(f"{c} ({_mean_text(student_stats.get(c))})" for c in below_cats)
            reasons.append(f"below {gate.metric} {gate.threshold:g}"
                           + (f" or pass rate {gate.min_share:.0%}" if gate.min_share is not None else "")
                           + f": {below}")
    if verdict == VERDICT_PARTIAL:
        others = [f"{UNDECIDED}: {', '.join(undecided)}"] * bool(undecided) + [f"not: {', '.join(below_cats)}"] * bool(
            below_cats)
        head = f"replace for categories {', '.join(ready_cats)} ({'; '.join(others)})"
    else:
        head = verdict
    if cal is None:
        verdict_line = (f"{head} — {NOT_CALIBRATED}: no judge.calibration_path, so the scores are the judge's "
                        "word alone")
    elif isinstance(tau, (int, float)):
        ci = cal.get("tau_ci")
        verdict_line = f"{head} — judge calibrated against {_raters(cal)}: Kendall τ {tau:.2f}" + (
            f" [{ci[0]:.2f}, {ci[1]:.2f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "")
    else:  # a calibration set whose agreement could not be computed (too few judged rows)
        verdict_line = f"{head} — {NOT_CALIBRATED}: " + (cal.get("note") or "agreement not computed")
    if standin:
        reasons.append("the service LLM is the offline stand-in teacher (a demo): its scores, latency and price "
                       "are not a real service's")

    # latency and cost
    svc = service_latency(service_records or [], standin=standin)
    cost_notes: list[str] = []
    service_1k, how = (service_usd_per_1k(service_endpoint, svc.prompt_tokens_mean, svc.completion_tokens_mean)
                       if svc is not None else (None, "no recorded service baseline calls "
                                                "(judge.service_baseline: true records them)"))
    throughput = getattr(student_latency, "throughput_rps", None)
    student_1k = student_usd_per_1k(usd_per_hour, throughput)
    if usd_per_hour is None:
        cost_notes.append("student cost not computed: " + RATE_HINT)
    elif student_latency is None:
        cost_notes.append("student cost not computed: the student's throughput was not measured"
                          + (f" ({student_latency_note})" if student_latency_note else ""))
    hours = _training_hours(summary)
    spend, spend_how = summary.service_total.cost_usd, "recorded"
    if standin and service_endpoint.input_cost_per_mtok is not None and \
            service_endpoint.output_cost_per_mtok is not None:
        t = summary.service_total
        spend = (service_endpoint.input_cost_per_mtok * t.prompt_tokens +
                 service_endpoint.output_cost_per_mtok * t.completion_tokens) / 1e6
        spend_how = "the stand-in's tokens at the configured service prices"
    training_usd = hours * usd_per_hour if usd_per_hour is not None else None
    migration = spend + training_usd if training_usd is not None else None
    cost = DecisionCost(service_per_1k_usd=service_1k, service_pricing=how, student_per_1k_usd=student_1k,
                        usd_per_hour=usd_per_hour, throughput_rps=throughput, service_spend_usd=spend,
                        service_spend_basis=spend_how, training_hours=round(hours, 6), training_usd=training_usd,
                        migration_usd=migration, notes=cost_notes)
    formats = priced_formats(formats or [], student_latency, usd_per_hour)
    held = [f.name for f in formats if not f.ship]
    if held:
        reasons.append(f"do not ship: {', '.join(held)} (below the gate on their own answers, or not judged)")
    model_id, lines = _swap_in(summary.name, port)
    return Decision(
        name=summary.name, verdict=verdict, verdict_line=verdict_line, reasons=reasons, calibrated=cal is not None,
        ready_categories=ready_cats, not_ready_categories=not_ready, undecided=undecided,
        min_category_items=min_items, metric=gate.metric, threshold=gate.threshold,
        pass_score=pass_score, quality=quality, overall=overall, calibration=cal,
        latency=DecisionLatency(student=student_latency, student_note=student_latency_note, service=svc),
        cost=cost, break_even=break_even(migration, service_1k, student_1k),
        worst_items=_worst(judged.get(STUDENT) or [], field, categories),
        spent={"service": summary.service_total.model_dump(), "preflight": summary.preflight.model_dump(),
               "rounds": len([r for r in summary.rounds if r.round >= 1]), "training_hours": round(hours, 6),
               "durations_s": _durations(summary)},
        endpoint={"command": f"llamaduo serve RUN_DIR --port {port}", "base_url": lines[0], "model": lines[1],
                  "model_id": model_id},
        standin=standin, exported_round=summary.exported_round, stop_reason=summary.stop_reason, formats=formats,
        promotion=summary.promotion)


def priced_formats(formats: list[FormatRow], student_latency, usd_per_hour: float | None) -> list[FormatRow]:
    """`merged/` is what `llamaduo serve` served when the student was measured: its row takes that
    latency and throughput; a format timed one request at a time serves 1/mean-latency requests per second.
    Cost per 1,000 requests = the hourly rate / that throughput."""
    out = []
    for f in formats:
        update: dict = {}
        rps = None
        if f.name == "merged" and student_latency is not None:
            update = dict(latency_p50_s=student_latency.p50_s, latency_p95_s=student_latency.p95_s,
                          engine=f"{f.engine}; served by llamaduo serve ({student_latency.backend})")
            rps = student_latency.throughput_rps
        elif f.latency_p50_s:
            rps = 1 / f.latency_p50_s
        update["usd_per_1k"] = student_usd_per_1k(usd_per_hour, rps)
        out.append(f.model_copy(update=update))
    return out


def _swap_in(name: str, port: int) -> tuple[str, list[str]]:
    """The served model's id and the two lines an application changes, as `llamaduo serve` names them."""
    try:
        from .serve import served_model_id, swap_in_lines
    except ImportError:  # the endpoint module is optional for the page: same naming, written out
        model_id = f"llamaduo-{name}"
        return model_id, [f'base_url="http://127.0.0.1:{port}/v1"', f'model="{model_id}"']
    model_id = served_model_id(name)
    return model_id, swap_in_lines(model_id, port=port)


def _durations(summary: Summary) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in summary.rounds:
        for k, v in r.durations_s.items():
            out[k] = round(out.get(k, 0.0) + v, 2)
    return out


def _mean_text(q: QualityStats | None) -> str:
    return "not judged" if q is None or q.mean is None else f"mean {q.mean:.3g}, n={q.n}"


# -- the page --------------------------------------------------------------------------------------
def _q(q: QualityStats | None) -> str:
    if q is None or q.n == 0:
        return "–"
    ci = f" [{q.ci95[0]:.3g}, {q.ci95[1]:.3g}]" if q.ci95 else ""
    return f"{q.mean:.3g}{ci}"


def _rate(q: QualityStats | None) -> str:
    return "–" if q is None or q.pass_rate is None else f"{q.pass_rate:.0%}"


def _s(v: float | None) -> str:
    return "–" if v is None else (f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s")


def render_markdown(d: Decision, *, plot: str | None = None) -> str:
    """decision.md: verdict first, then quality per category, calibration, latency, cost,
    break-even, the worst items, what was spent and how an application switches."""
    L = [f"# Decision: {escape_inline(d.name)}", "", f"**Verdict: {escape_inline(d.verdict_line)}**", ""]
    L += [f"- {escape_inline(r)}" for r in d.reasons] + [""]
    if d.retirement:  # the reason to migrate has a date
        L += [f"- **Teacher retirement**: {escape_inline(r)}" for r in d.retirement] + [""]
    who = [w for w in (STUDENT, SERVICE, BASE) if w in d.overall]
    L += [f"## Quality per category ({escape_inline(d.metric)}; pass = item >= {d.pass_score:g}; "
          f"ready = 95% interval's lower bound >= {d.threshold:g} on at least {d.min_category_items} items)", ""]
    quality_rows = []
    for cq in d.quality:
        qs = [getattr(cq, w) for w in who]
        n = (cq.student.n if cq.student else max((q.n for q in qs if q), default=0))
        quality_rows.append([cq.category, n, *[Raw(x) for q in qs for x in (_q(q), _rate(q))],
                             "yes" if cq.category in d.ready_categories else
                             UNDECIDED if cq.category in d.undecided else "no"])
    st = d.overall.get(STUDENT)
    quality_rows.append([Raw("**all**"), st.n if st else 0,
                         *[Raw(x) for w in who for x in (_q(d.overall[w]), _rate(d.overall[w]))], ""])
    L += table([Raw(h) for h in ["category", "n", *[h for w in who for h in (f"{WHO[w]} mean [95% CI]",
                                                                            f"{WHO[w]} pass")], "ready"]],
               quality_rows, align="lr" + "lr" * len(who) + "l")
    if d.undecided:
        L += ["", f"Undecided: the mean reaches {d.threshold:g}, the evidence does not yet (more test items in "
              "the category would decide):", ""]
        L += [f"- {escape_inline(c)}: {escape_inline(note)}" for c, note in d.undecided.items()]
    L += _formats_section(d)
    L += _promotion_section(d)
    L += _shadow_section(d)
    L += ["", "## Judge calibration", ""]
    cal = d.calibration
    if cal is None:
        L.append(f"{NOT_CALIBRATED}: set `judge.calibration_path` to people's ratings of candidate answers on this "
                 "task (rows `instruction`, `reference`, `candidate`, `human_score` 1-100 or `human_pass`; "
                 "10 or more).")
    else:
        L.append(_calibration_line(cal))
        worst = [r for r in (cal.get("worst") or [])[:3] if isinstance(r, dict)]
        if worst:
            L += ["", "Rows the judge ranks farthest from the ratings:", ""]
            L += table(["line", "rating", "judge", "candidate"],
                       [[r.get("line", ""), r.get("human_score") if r.get("human_score") is not None
                         else r.get("human_pass"), _num(r.get("judge_score")), _short(r.get("candidate"))]
                        for r in worst], align="rrrl")
    L += ["", "## Latency", ""]
    latency_rows = []
    s = d.latency.student
    if s is not None:
        latency_rows.append([Raw("student (`llamaduo serve`)"), _s(s.p50_s), _s(s.p95_s),
                             f"{s.throughput_rps:.3g} req/s at {s.concurrency} concurrent",
                             f"{s.hardware} ({s.backend})"])
    else:
        latency_rows.append(["student", "–", "–", "–", f"not measured: {d.latency.student_note or 'no exported model'}"])
    v = d.latency.service
    label = "service LLM (stand-in)" if d.standin else "service LLM"
    if v is not None:
        latency_rows.append([label, _s(v.p50_s), _s(v.p95_s), "–", f"{v.timed} of {v.records} recorded baseline "
                             f"calls; {v.prompt_tokens_mean:.1f} tokens in, {v.completion_tokens_mean:.1f} out per "
                             "request"])
    else:
        latency_rows.append([label, "–", "–", "–", "no recorded service baseline calls (judge.service_baseline: true)"])
    L += table(["", "p50", "p95", "throughput", "measured on"], latency_rows, align="lrrrl")
    if s is not None and s.endpoint_note:
        L += ["", f"Student: {escape_inline(s.endpoint_note, keep=['`llamaduo serve`'])}."]
    if d.standin:
        L += ["", "The service's latency is the stand-in's (a local function, not a network service)."]
    c = d.cost
    cost_rows = [[f"service LLM{' (stand-in)' if d.standin else ''}", usd(c.service_per_1k_usd), c.service_pricing]]
    if c.student_per_1k_usd is not None:
        cost_rows.append(["student", usd(c.student_per_1k_usd), f"decision.usd_per_hour {usd(c.usd_per_hour)} / "
                          f"({c.throughput_rps:.3g} req/s x 3600) x 1000"])
    else:
        cost_rows.append(["student", "–", Raw("; ".join(escape_inline(n, keep=[RATE_HINT]) for n in c.notes)
                                               or "not computed")])
    L += ["", "## Cost per 1,000 requests", ""] + table(["", "per 1,000 requests", "how"], cost_rows, align="lrl")
    L += ["", "## Break-even", ""]
    if c.migration_usd is not None:
        L.append(f"Migration cost {usd(c.migration_usd)}: service spend {usd(c.service_spend_usd)} "
                 f"({escape_inline(c.service_spend_basis)}) + {c.training_hours:.3g} training hours x "
                 f"{usd(c.usd_per_hour)}/h.")
    else:
        L.append(f"Migration cost not computed: {RATE_HINT} (service spend so far {usd(c.service_spend_usd)}, "
                 f"{c.training_hours:.3g} training hours).")
    be = d.break_even
    L += ["", (f"**Break-even after {_requests(be.requests)} requests** ({escape_inline(be.note)})."
               if be.requests is not None
               else f"**Break-even: {'never' if be.never else 'not computed'}** — {escape_inline(be.note)}.")]
    if d.worst_items:
        L += ["", f"## Worst items (student, {escape_inline(d.metric)})", ""]
        L += table(["category", "value", "instruction", "answer", "reference"],
                   [[w["category"], "not judged" if w["value"] is None else f"{w['value']:.3g}", w["instruction"],
                     w["answer"], w["reference"]] for w in d.worst_items], align="lrlll")
    sv = d.spent["service"]
    L += ["", "## What was spent", "",
          f"- service LLM: {sv['calls']} calls ({sv['cached']} cached, {sv['failed']} failed, {sv['retries']} "
          f"retries), {sv['prompt_tokens']:,} tokens in, {sv['completion_tokens']:,} out, {usd(sv['cost_usd'])}"
          + (" (stand-in: free)" if d.standin else ""),
          f"- fine-tuning: {d.spent['rounds']} round(s), {d.spent['training_hours'] * 60:.1f} minutes",
          "- stage time: " + (", ".join(f"{k} {v:.0f} s" for k, v in sorted(d.spent["durations_s"].items()))
                              or "none")]
    L += ["", "## Switching an application", ""]
    if d.exported_round is not None:
        L += [f"Serve the exported model: {code_span(d.endpoint['command'])}, then change two lines:", ""]
        L += fenced("\n".join((d.endpoint["base_url"], d.endpoint["model"])), "python")
    else:
        L.append("No model was exported.")
    if plot:
        L += ["", f"![metrics per round]({plot})"]
    return "\n".join(L) + "\n"


def _formats_section(d: Decision) -> list[str]:
    """One row per shipped format: its own answers judged, parity with the evaluated adapter, identical
    greedy answers, size, latency on the engine that answered, cost; below the gate = do not ship."""
    if not d.formats:
        return []
    rows = []
    for f in d.formats:
        parity = "–" if f.parity is None else f"{f.parity:+.3g}" + (
            f" [{f.parity_ci95[0]:+.3g}, {f.parity_ci95[1]:+.3g}]" if f.parity_ci95 else "")
        rows.append([Raw(code_span(f.name)), Raw(_q(f.quality)), Raw(parity),
                     "–" if f.identical_share is None else f"{f.identical_share:.0%}", _bytes(f.bytes),
                     _s(f.latency_p50_s), _s(f.latency_p95_s), usd(f.usd_per_1k), f.engine,
                     Raw("**ship**") if f.ship else Raw("**do not ship**: " + escape_inline(f.reason))])
    return ["", f"## Formats (each judged on the test split by the same judge, {escape_inline(d.metric)})", ""] + table(
        ["format", "mean [95% CI]", "parity vs adapter", "identical answers", "size", "p50", "p95",
         "per 1,000 requests", "answered by", "ship?"], rows, align="llrrrrrrll")


def _promotion_section(d: Decision) -> list[str]:
    """Champion vs challenger on this run's test split, and what was decided (promote.location)."""
    p = d.promotion
    if not p:
        return []
    L = ["", "## Champion and challenger", ""]
    champ = p.get("champion")
    if champ:
        L.append(f"Champion: run {code_span(str(champ.get('run')))}, promoted {escape_inline(str(champ.get('time')))} "
                 f"(model sha256 {code_span(str(champ.get('model_sha256'))[:16])}…).")
        rows = [["challenger (this run)", _num(p.get("challenger_mean"))], ["champion", _num(p.get("champion_mean"))]]
        diff, ci = p.get("difference"), p.get("difference_ci95")
        rows.append(["difference (paired, per item)", "–" if diff is None else f"{diff:+.2f}" + (
            f" [{ci[0]:+.2f}, {ci[1]:+.2f}] on {p.get('items')} items" if ci else "")])
        L += [""] + table(["", f"{p.get('metric')} mean"], rows, align="lr") + [""]
    else:
        L.append("No champion yet: a passing run becomes the first promoted model.")
        L.append("")
    verdict = "**promoted**" if p.get("promote") else ("**the champion stays**" if champ else "**not promoted**")
    L.append(f"{verdict}: {escape_inline(str(p.get('reason')))}")
    if p.get("promoted"):
        L.append(f"`promoted.json` now names {code_span(str(p['promoted'].get('model_dir')))}; `llamaduo serve "
                 "--follow` switches to it.")
    return L


def _shadow_section(d: Decision) -> list[str]:
    """Agreement on real traffic: the student answered the application's requests on the side and the
    judge compared a sample with the service's answers (`llamaduo capture --shadow`)."""
    sh = d.shadow
    if not sh:
        return []
    L = ["", "## Shadow on real traffic", "",
         f"The student answered {sh['answered']} captured requests on the side; {sh['judged']} were judged against "
         f"the service's answers ({sh['not_judged']} not judged: not sampled, over the shadow's budget, or no "
         f"verdict). Pass = judge score >= {sh['pass_score']:g}.", ""]
    if not sh.get("all"):
        return L + ["No shadow answer was judged yet: no evidence from real traffic."]
    rows = [[c, q["n"], Raw(_q(QualityStats.model_validate(q))), Raw(_rate(QualityStats.model_validate(q)))]
            for c, q in sh["categories"].items()]
    allq = QualityStats.model_validate(sh["all"])
    rows.append([Raw("**all**"), allq.n, Raw(_q(allq)), Raw(_rate(allq))])
    return L + table(["category", "n", "mean [95% CI]", "pass"], rows, align="lrrr")


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _num(v) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else "–"


def _short(t, width: int = 100) -> str:
    t = " ".join(str(t or "").split())
    return t if len(t) <= width else t[:width - 1] + "…"


def _calibration_line(cal: dict) -> str:
    def ci(name: str) -> str:
        v = cal.get(name)
        return f" [{v[0]:.2f}, {v[1]:.2f}]" if isinstance(v, (list, tuple)) and len(v) == 2 else ""

    parts = []
    if isinstance(cal.get("kendall_tau"), (int, float)):
        parts.append(f"Kendall τ-b **{cal['kendall_tau']:.2f}**{ci('tau_ci')} (95% interval)")
    if isinstance(cal.get("spearman_rho"), (int, float)):
        parts.append(f"Spearman ρ {cal['spearman_rho']:.2f}{ci('rho_ci')}")
    if isinstance(cal.get("kappa"), (int, float)):
        parts.append(f"Cohen's κ {cal['kappa']:.2f}")
    if isinstance(cal.get("accuracy"), (int, float)):
        parts.append(f"accuracy {cal['accuracy']:.0%}")
    if cal.get("computed") is False:
        parts.append("agreement not computed" + (f": {cal['note']}" if cal.get("note") else ""))
    n = cal.get("n")
    return (", ".join(parts) or "calibration recorded") + (f" on {n} rated rows" if n is not None else "") + \
        (f" ({cal['kind']})" if cal.get("kind") else "") + "."


# -- I/O -------------------------------------------------------------------------------------------
def load_judged(root: str | Path, summary: Summary, service_judged: str | None = None) -> dict[str, list[dict]]:
    """Judged rows of the exported round (`student`), the service baseline and round 0 (`base`),
    each only when it exists."""
    from .store import read_jsonl

    root = Path(root)
    out: dict[str, list[dict]] = {}
    exported = _exported(summary)
    base = next((r for r in summary.rounds if r.round == 0), None)
    for who, art in ((STUDENT, exported.judged if exported else None), (BASE, base.judged if base else None)):
        if art is not None and art.at(root).is_file():
            out[who] = read_jsonl(art.at(root))
    if service_judged and (root / service_judged).is_file():
        out[SERVICE] = read_jsonl(root / service_judged)
    return out


def service_call_records(root: str | Path, endpoint: "Endpoint", limits: "ServiceConfig", infer: "InferConfig",
                         items: list[dict], system_prompt: str | None) -> list[dict]:
    """The reply-cache records of the service baseline's answers (`llamaduo.baseline`): its
    requests rebuilt exactly, looked up by their cache key. Records of a re-asked reply and
    items never answered are left out."""
    from .baseline import answer_request
    from .service import ResponseCache, supports_structured_output

    cache = ResponseCache(Path(root) / "cache" / "service")
    salt = {"structured": supports_structured_output(endpoint, limits.structured_output)}  # as ServiceClient.arun
    out = []
    for it in items:
        record = cache.get(cache.key(endpoint.model, answer_request(it, infer, system_prompt), salt))
        if record is not None:
            out.append(record)
    return out


def write_decision(root: str | Path, decision: Decision, *, plot_rel: str | None = None) -> tuple[Path, Path]:
    """decision.json and decision.md in a local run directory, each written atomically."""
    from .store import atomic_write_text

    root = Path(root)
    j = atomic_write_text(root / DECISION_JSON, json.dumps(decision.model_dump(mode="json"), indent=2,
                                                           ensure_ascii=False) + "\n")
    m = atomic_write_text(root / DECISION_MD, render_markdown(decision, plot=plot_rel))
    return j, m
