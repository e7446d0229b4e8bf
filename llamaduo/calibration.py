"""Judge calibration: does the judge agree with people on this task?

`judge.calibration_path` holds people's ratings of candidate answers (`instruction`,
`reference`, `candidate`, and `human_score` 1-100 and/or `human_pass` true/false). Before any
training the judge scores every row exactly as the evaluate stage scores an answer (same
template, repeats, aggregation, parsing, reply cache, budget and circuit breaker), and the run
reports the agreement:

* rank agreement over all judged rows: Kendall tau-b and Spearman rho, each with a seeded
  percentile-bootstrap 95% interval (rows resampled). A row's human value is its `human_score`,
  else its `human_pass` read as 100 (pass) or 1 (fail) on the same 1-100 scale;
* pass/fail agreement over the rows with `human_pass`: Cohen's kappa and accuracy, where the
  judge passes a row when its score is at least the gate's threshold (the gate's judge metric
  and threshold; 50, the middle of the judge's 1-100 scale, when the gate compares a metric
  that is not the judge's);
* the worst-agreeing rows: the largest gaps between the row's rank among the people's ratings
  and its rank among the judge's scores.

Fewer than MIN_ROWS rows in the file is an input error; fewer than MIN_ROWS with a valid
judgement, or ratings (or judge scores) that are all equal, leave agreement not computed, and
the record says why. `agreement_stop` is the flow's decision against `judge.min_agreement`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import BudgetConfig, Endpoint, GateConfig, JudgeConfig, ServiceConfig
from .data import iter_rows
from .errors import InputError
from .judge import JudgeInputs, JudgeStage
from .metrics import METRICS
from .records import Artifact, Calibration, CalibrationResult, CalibrationRow, ServiceStats
from .service import Result
from .service_stage import run_service_stage
from .store import sha256_path

MIN_ROWS = 10  # fewer rated rows cannot tell agreement from luck (tau's 95% interval spans ~±0.5 at n=10)
WORST_ROWS = 5
BOOTSTRAP_SAMPLES = 1000
CI_LEVEL = 0.95
PASS_AS_SCORE = {True: 100.0, False: 1.0}  # a pass/fail row's place on the judge's 1-100 scale
JUDGE_SCALE_MIDDLE = 50.0
FIELD = "judge.calibration_path"
_TRUE, _FALSE = {"true", "yes", "1", "pass"}, {"false", "no", "0", "fail"}
_CUT = 300  # characters of a row kept in the record (the judged file has them whole)
PEOPLE = "people"
# `rated_by` starting with one of these names ratings that are not people's ("rubric: ...", "model: gpt-4o")
NOT_PEOPLE_KINDS = ("rubric", "model", "llm", "judge", "rule", "rules", "script", "heuristic", "synthetic",
                    "generated", "automatic")
_SAYS_NOT_PEOPLE = ("not people", "not by people", "not human", "not a person")


@dataclass(frozen=True)
class Rating:
    line: int
    instruction: str
    reference: str
    candidate: str
    human_score: float | None = None
    human_pass: bool | None = None
    rater: str = PEOPLE  # who rated, from `rated_by` (rater_kind)
    copies: int = 1  # rows of the file that are this rating (duplicates collapsed into one)

    @property
    def human_value(self) -> float:
        """The rating on the judge's 1-100 scale: the score, else pass = 100 / fail = 1."""
        return self.human_score if self.human_score is not None else PASS_AS_SCORE[bool(self.human_pass)]


# -- loading ---------------------------------------------------------------------------------------
def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(raw: dict, name: str, *, file: str, line: int) -> str:
    value = raw.get(name)
    if value is None:
        raise InputError("missing (calibration rows need instruction, reference, candidate)", file=file, line=line,
                         field=name)
    if not isinstance(value, str):
        raise InputError(f"expected a string, got {type(value).__name__}", file=file, line=line, field=name)
    if not value.strip():
        raise InputError("must not be empty", file=file, line=line, field=name)
    return value.strip()


def _score(value: Any, *, file: str, line: int) -> float | None:
    if _blank(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"expected a number from 1 to 100, got {type(value).__name__}", file=file, line=line,
                         field="human_score")
    try:
        number = float(value)  # CSV cells arrive as text
    except ValueError:
        raise InputError(f"expected a number from 1 to 100, got {str(value)[:40]!r}", file=file, line=line,
                         field="human_score") from None
    if not math.isfinite(number) or not 1 <= number <= 100:
        raise InputError(f"{number:g} is outside 1-100 (the judge's scale)", file=file, line=line,
                         field="human_score")
    return number


def _pass(value: Any, *, file: str, line: int) -> bool | None:
    if _blank(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InputError(f"expected true or false, got {str(value)[:40]!r}", file=file, line=line, field="human_pass")


def rater_kind(rated_by: Any) -> str:
    """Who rated a row: `people` (the file's contract: people's ratings), unless its `rated_by`
    says otherwise: a first word such as `rubric` or `model` (NOT_PEOPLE_KINDS), or "not people"
    in its text (`other`). The page may say "calibrated against people" only for people's rows."""
    text = str(rated_by or "").strip().lower()
    first = text.replace(":", " ").split()[0] if text.split() else ""
    if first in NOT_PEOPLE_KINDS:
        return first
    return "other" if any(s in text for s in _SAYS_NOT_PEOPLE) else PEOPLE


def parse_rating(raw: Any, *, file: str, line: int) -> Rating:
    """One calibration row, checked field by field (the error names file, line and field).
    `rated_by` says who rated (rater_kind); other fields (`id`, `category`, notes) are ignored."""
    if not isinstance(raw, dict):
        raise InputError(f"row must be an object, got {type(raw).__name__}", file=file, line=line)
    texts = {name: _text(raw, name, file=file, line=line) for name in ("instruction", "reference", "candidate")}
    score = _score(raw.get("human_score"), file=file, line=line)
    passed = _pass(raw.get("human_pass"), file=file, line=line)
    if score is None and passed is None:
        raise InputError("a calibration row needs human_score (1-100) or human_pass (true/false)", file=file,
                         line=line, field="human_score")
    return Rating(line=line, human_score=score, human_pass=passed, rater=rater_kind(raw.get("rated_by")), **texts)


def collapse_duplicates(ratings: list[Rating]) -> list[Rating]:
    """One rating per answer (same instruction, reference and candidate): a copied row is not an
    independent rating (3 ratings x 4 read as 12 rows with tau 1.00 [1.00, 1.00]). Ratings of one
    answer that differ are averaged on the 1-100 scale; `copies` counts the rows merged."""
    groups: dict[tuple[str, str, str], list[Rating]] = {}
    for r in ratings:
        groups.setdefault((r.instruction, r.reference, r.candidate), []).append(r)
    out = []
    for same in groups.values():
        first = same[0]
        if len(same) == 1:
            out.append(first)
            continue
        scores = [r.human_score for r in same if r.human_score is not None]
        passes = {r.human_pass for r in same if r.human_pass is not None}
        passed = passes.pop() if len(passes) == 1 else None
        score = sum(scores) / len(scores) if scores else None
        if score is None and passed is None:  # pass and fail for one answer: their mean on the scale
            score = sum(r.human_value for r in same) / len(same)
        out.append(replace(first, human_score=score, human_pass=passed, copies=len(same)))
    return out


def load_ratings(path: str | Path) -> list[Rating]:
    """Every row of the calibration file, validated, duplicates collapsed; at least MIN_ROWS
    distinct ratings."""
    path = Path(path)
    if not path.exists():
        raise InputError("calibration file not found", file=str(path), field=FIELD)
    rows = [parse_rating(raw, file=str(path), line=line) for line, raw in iter_rows(path)]
    ratings = collapse_duplicates(rows)
    if len(ratings) < MIN_ROWS:
        dups = len(rows) - len(ratings)
        raise InputError(f"{len(ratings)} distinct rated rows" + (f" ({dups} duplicate rows collapsed)" if dups else "")
                         + f"; agreement needs at least {MIN_ROWS}", file=str(path), field=FIELD)
    return ratings


def kind_of(ratings: list[Rating]) -> str:
    if all(r.human_score is not None for r in ratings):
        return "score"
    if all(r.human_score is None for r in ratings):
        return "pass"
    return "mixed"


# -- what the judge is compared on -----------------------------------------------------------------
def judge_metric_for(gate: GateConfig) -> str:
    """The judge's score the gate relies on (judge_score unless the gate compares another judge metric)."""
    m = METRICS[gate.metric]
    return m.name if m.judge and m.gateable else "judge_score"


def pass_score_for(gate: GateConfig) -> float:
    """A judge score at or above this passes: the gate's threshold when the gate compares a judge
    metric (same 1-100 scale), else the middle of the judge's scale."""
    m = METRICS[gate.metric]
    return float(gate.threshold) if m.judge and m.gateable else JUDGE_SCALE_MIDDLE


# -- agreement: pure functions ---------------------------------------------------------------------
def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def kendall_tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b (ties in either list accounted for); None when either list is constant."""
    from scipy.stats import kendalltau

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return _finite(kendalltau(x, y, variant="b").statistic)


def spearman_rho(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (average ranks for ties); None when either list is constant."""
    from scipy.stats import spearmanr

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return _finite(spearmanr(x, y).statistic)


TABLE_CELLS = 100_000  # distinct (human, judge) value pairs up to which resamples are counted in a table


def _table_statistics(table, statistic: str):
    """tau-b or rho of each resample given as a table of counts (resamples x distinct human
    values x distinct judge values, both ascending): O(cells) per resample whatever the rows.
    tau-b = (concordant - discordant) / sqrt(pairs untied in x * pairs untied in y), as scipy;
    rho = Pearson of average ranks. nan where a resample is constant."""
    import numpy as np

    rows, cols = table.sum(axis=2), table.sum(axis=1)
    total = rows.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        if statistic == "kendall":
            later = np.flip(np.flip(table, 1).cumsum(1), 1) - table  # counts with a larger human value
            above = np.flip(np.flip(later, 2).cumsum(2), 2) - later  # ... and a larger judge value
            below = later.cumsum(2) - later  # ... and a smaller judge value
            s = (table * (above - below)).sum(axis=(1, 2))
            untied_x = (total ** 2 - (rows ** 2).sum(axis=1)) / 2
            untied_y = (total ** 2 - (cols ** 2).sum(axis=1)) / 2
            return s / np.sqrt(untied_x * untied_y)
        mid = (total[:, None] + 1) / 2  # the mean rank
        rx = rows.cumsum(1) - rows + (rows + 1) / 2 - mid  # average rank of each value, centred
        ry = cols.cumsum(1) - cols + (cols + 1) / 2 - mid
        cov = np.einsum("sa,sab,sb->s", rx, table, ry)
        return cov / np.sqrt((rows * rx * rx).sum(axis=1) * (cols * ry * ry).sum(axis=1))


def _rho_rows(xs, ys):
    """Spearman rho of each row pair (Pearson of average ranks); nan when a row is constant."""
    import numpy as np
    from scipy.stats import rankdata

    rx, ry = rankdata(xs, axis=1), rankdata(ys, axis=1)
    rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(axis=1) / np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))


def _resample_statistics(x, y, idx, statistic: str):
    """`statistic` of each resample (rows `idx` of x and y). Few distinct value pairs (scores on
    the 1-100 scale): counted into tables, all resamples at once; otherwise ranks of all resamples
    at once for rho, scipy per resample for tau (O(n log n) each). The pairwise form this replaces was quadratic: 0.1-0.3 s per resample at
    3,000 rows."""
    import numpy as np

    ux, ix = np.unique(x, return_inverse=True)
    uy, iy = np.unique(y, return_inverse=True)
    cells = len(ux) * len(uy)
    samples, n = idx.shape
    chunk = max(1, 4_000_000 // max(cells, n))  # a chunk's arrays stay around 32 MB each
    if cells > TABLE_CELLS:
        if statistic == "spearman":
            return np.concatenate([_rho_rows(x[idx[i:i + chunk]], y[idx[i:i + chunk]])
                                   for i in range(0, samples, chunk)])
        return np.array([np.nan if v is None else v for v in (kendall_tau_b(x[row], y[row]) for row in idx)])
    cell = (ix * len(uy) + iy)[idx]  # samples x n
    out = []
    for i in range(0, samples, chunk):
        part = cell[i:i + chunk]
        k = len(part)
        counts = np.bincount((part + np.arange(k)[:, None] * cells).ravel(), minlength=k * cells)
        out.append(_table_statistics(counts.reshape(k, len(ux), len(uy)).astype(float), statistic))
    return np.concatenate(out)


def bootstrap_interval(x: list[float], y: list[float], statistic: str, *, samples: int = BOOTSTRAP_SAMPLES,
                       level: float = CI_LEVEL, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `statistic` ("kendall" tau-b or "spearman" rho), rows
    resampled with replacement (seeded: the same rows give the same interval). Resamples where
    it is undefined (all ratings equal) are left out; None when most are. Seconds at 10,000 rows."""
    import numpy as np

    n = len(x)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    idx = rng.integers(0, n, size=(samples, n))
    values = _resample_statistics(xs, ys, idx, statistic)
    values = values[np.isfinite(values)]
    if len(values) < samples / 2:
        return None
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's kappa of two pass/fail raters; None when chance agreement is certain (both
    raters gave one and the same verdict to every row: agreement beyond chance is undefined)."""
    n = len(a)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    if expected >= 1:
        return None
    return (observed - expected) / (1 - expected)


def rank_gaps(human: list[float], judge: list[float]) -> tuple[list[float], list[float], list[float]]:
    """Average ranks of both lists and each row's |gap| / n (0 = same place, near 1 = opposite ends)."""
    from scipy.stats import rankdata

    hr, jr = rankdata(human).tolist(), rankdata(judge).tolist()
    n = len(human)
    return hr, jr, [abs(h - j) / n for h, j in zip(hr, jr)]


def worst_rows(ratings: list[Rating], judge: list[float], k: int = WORST_ROWS) -> list[CalibrationRow]:
    """The k rows whose place among the people's ratings and among the judge's scores differ
    most (rows in the same place are never listed)."""
    hr, jr, gaps = rank_gaps([r.human_value for r in ratings], judge)
    order = sorted(range(len(ratings)), key=lambda i: (-gaps[i], ratings[i].line))
    return [CalibrationRow(line=ratings[i].line, instruction=ratings[i].instruction[:_CUT],
                           reference=ratings[i].reference[:_CUT], candidate=ratings[i].candidate[:_CUT],
                           human_score=ratings[i].human_score, human_pass=ratings[i].human_pass,
                           judge_score=round(judge[i], 2), human_rank=hr[i], judge_rank=jr[i],
                           rank_gap=round(gaps[i], 4))
            for i in order[:k] if gaps[i] > 0]


def measure(ratings: list[Rating], judge: list[float | None], *, judge_metric: str, pass_score: float,
            source: str = "", sha256: str = "", judge_model: str = "", samples: int = BOOTSTRAP_SAMPLES,
            seed: int = 0) -> Calibration:
    """The agreement of the judge's scores (None = no valid judgement for that row) with the
    people's ratings, or a record that says why it was not computed."""
    pairs = [(r, s) for r, s in zip(ratings, judge) if s is not None]
    rated, scores = [r for r, _ in pairs], [s for _, s in pairs]
    kinds: dict[str, int] = {}
    for r in ratings:
        kinds[r.rater] = kinds.get(r.rater, 0) + 1
    cal = Calibration(source=source, sha256=sha256, judge=judge_model, kind=kind_of(ratings), rows=len(ratings),
                      duplicate_rows=sum(r.copies - 1 for r in ratings),
                      raters=next(iter(kinds)) if len(kinds) == 1 else "mixed", rater_rows=kinds,
                      n=len(pairs), computed=False, judge_metric=judge_metric, pass_score=pass_score,
                      ci_level=CI_LEVEL)
    if len(pairs) < MIN_ROWS:
        cal.note = (f"not computed: only {len(pairs)} of {len(ratings)} rated rows got a valid judgement "
                    f"(agreement needs at least {MIN_ROWS})")
        return cal
    human = [r.human_value for r in rated]
    if len(set(human)) < 2:
        cal.note = "not computed: every row has the same human rating, so there is no order to agree with"
        return cal
    cal.worst = worst_rows(rated, scores)
    if len(set(scores)) < 2:
        cal.note = f"not computed: the judge gave every row the same score ({scores[0]:g}): it does not tell them apart"
        return cal
    cal.computed = True
    cal.kendall_tau = round(kendall_tau_b(human, scores), 4)
    cal.spearman_rho = round(spearman_rho(human, scores), 4)
    for name, statistic in (("tau_ci", "kendall"), ("rho_ci", "spearman")):
        ci = bootstrap_interval(human, scores, statistic, samples=samples, seed=seed)
        setattr(cal, name, (round(ci[0], 4), round(ci[1], 4)) if ci else None)
    cal.bootstrap_samples = samples
    pf = [(r.human_pass, s >= pass_score) for r, s in pairs if r.human_pass is not None]
    cal.pass_rows = len(pf)
    if pf:
        cal.accuracy = round(sum(h == j for h, j in pf) / len(pf), 4)
        kappa = cohen_kappa([h for h, _ in pf], [j for _, j in pf])
        cal.kappa = round(kappa, 4) if kappa is not None else None
    return cal


def rater_phrase(cal: dict) -> str:
    """Who the judge was calibrated against, as a page says it: "people" only when every rating is
    people's; otherwise what the ratings are ("rubric ratings (not people's)")."""
    raters, kinds = cal.get("raters") or PEOPLE, cal.get("rater_rows") or {}
    if raters == PEOPLE:
        return PEOPLE
    if raters != "mixed":
        return f"{raters} ratings (not people's)"
    return (f"mixed ratings ({kinds.get(PEOPLE, 0)} of {sum(kinds.values())} rows people's; others: "
            + ", ".join(sorted(k for k in kinds if k != PEOPLE)) + ")")


def describe(cal: Calibration) -> str:
    """One line for logs and reports."""
    dups = f"; {cal.duplicate_rows} duplicate rows collapsed" if cal.duplicate_rows else ""
    who = "" if cal.raters == PEOPLE else f"; against {rater_phrase(cal.model_dump())}"
    if not cal.computed:
        return f"judge calibration ({cal.source}{dups}{who}): {cal.note}"
    ci = lambda c: f" [{c[0]:.2f}, {c[1]:.2f}]" if c else " [interval undefined]"  # noqa: E731
    text = (f"judge calibration ({cal.source}, {cal.n} rows{dups}{who}): "
            f"Kendall tau-b {cal.kendall_tau:.2f}{ci(cal.tau_ci)}, "
            f"Spearman rho {cal.spearman_rho:.2f}{ci(cal.rho_ci)} ({cal.ci_level:.0%} bootstrap)")
    if cal.pass_rows:
        kappa = "undefined" if cal.kappa is None else f"{cal.kappa:.2f}"
        text += (f"; pass/fail ({cal.pass_rows} rows, judge passes at {cal.judge_metric} >= {cal.pass_score:g}): "
                 f"accuracy {cal.accuracy:.0%}, Cohen's kappa {kappa}")
    return text


def _row_text(row: CalibrationRow) -> str:
    human = f"{row.human_score:g}" if row.human_score is not None else ("pass" if row.human_pass else "fail")
    return f"line {row.line} (human {human}, judge {row.judge_score:g}: {row.candidate[:60]!r})"


def agreement_stop(cal: Calibration, min_agreement: float | None) -> tuple[Calibration, str | None]:
    """The record with the floor it was checked against, and why the run must stop (None: it
    goes on). No floor: report only. A floor that cannot be checked (agreement not computed)
    stops the run too: training on an unverified judge is what the floor forbids."""
    if min_agreement is None:
        return cal.model_copy(update={"min_agreement": None, "agrees": None}), None
    worst = "; worst-agreeing rows: " + ", ".join(_row_text(r) for r in cal.worst[:3]) if cal.worst else ""
    if not cal.computed:
        detail = (f"the judge's agreement with people could not be measured on {cal.source} ({cal.note}); "
                  f"judge.min_agreement {min_agreement:g} needs it{worst}")
        return cal.model_copy(update={"min_agreement": min_agreement, "agrees": False}), detail
    agrees = cal.kendall_tau >= min_agreement
    cal = cal.model_copy(update={"min_agreement": min_agreement, "agrees": agrees})
    if agrees:
        return cal, None
    ci = f" (95% interval [{cal.tau_ci[0]:.2f}, {cal.tau_ci[1]:.2f}])" if cal.tau_ci else ""
    return cal, (f"the judge disagrees with {rater_phrase(cal.model_dump())} on {cal.source}: Kendall tau-b {cal.kendall_tau:.2f}{ci} on "
                 f"{cal.n} rated rows is below judge.min_agreement {min_agreement:g}{worst}")


# -- the stage -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RatedAnswers(JudgeInputs):
    ratings: list[Rating]


@dataclass(frozen=True)
class CalibrationJudging(JudgeStage[RatedAnswers, CalibrationResult]):
    """The judge scores every calibration row as the evaluate stage scores an answer; one line per
    row out: the people's rating, the judge's scores and ranks."""
    name = "calibrate"
    label = "calibration judging"
    result_type = CalibrationResult
    ratings_file: str
    judge_metric: str
    pass_score: float
    judge_model: str

    def read_inputs(self, root: Path) -> RatedAnswers:
        ratings = load_ratings(self.ratings_file)
        return RatedAnswers([{"id": f"line{r.line}", "instruction": r.instruction, "response": r.reference}
                             for r in ratings], [[r.candidate] for r in ratings], ratings)

    def output_rows(self, inputs: RatedAnswers, results: list[Result]) -> list[dict]:
        scored = self.score(inputs, results)
        field = METRICS[self.judge_metric].item_field
        judged = [(r, s) for r, s in zip(inputs.ratings, scored) if field in s]
        hr, jr, gaps = rank_gaps([r.human_value for r, _ in judged], [s[field] for _, s in judged]) if judged \
            else ([], [], [])
        ranks = {r.line: (h, j, g) for (r, _), h, j, g in zip(judged, hr, jr, gaps)}
        return [{"line": r.line, "instruction": r.instruction, "reference": r.reference, "candidate": r.candidate,
                 "human_score": r.human_score, "human_pass": r.human_pass, "judge_score": s.get(field),
                 "judge_pass": None if field not in s else s[field] >= self.pass_score,
                 "judge_similarity": s.get("similarity"), "judge_precision": s.get("precision"),
                 "judge_reason": s.get("judge_reason"), "judge_valid": s["judge_valid"],
                 "judge_requested": s["judge_requested"],
                 **dict(zip(("human_rank", "judge_rank", "rank_gap"), ranks.get(r.line, (None, None, None))))}
                for r, s in zip(inputs.ratings, scored)]

    def fill(self, result: CalibrationResult, inputs: RatedAnswers, results: list[Result], rows: list[dict] | None,
             written: Artifact | None) -> None:
        if rows is None:
            return
        cal = measure(inputs.ratings, [row["judge_score"] for row in rows], judge_metric=self.judge_metric,
                      pass_score=self.pass_score, source=Path(self.ratings_file).name,
                      sha256=sha256_path(self.ratings_file), judge_model=self.judge_model)
        cal.service = result.service
        result.calibration = cal
        result.judged = written


def calibrate_judge(root: str | Path, judge: JudgeConfig, endpoint: Endpoint, limits: ServiceConfig,
                    budget: BudgetConfig, spent: ServiceStats, ratings_file: str, judge_metric: str,
                    pass_score: float, out: str, on_progress=None) -> CalibrationResult:
    """The judge scores every calibration row as the evaluate stage scores an answer; writes
    `out` (one line per row: the people's rating, the judge's scores and ranks) and its failure
    log. On a budget stop or a failing judge `out` is not written (the stage is redone, its
    replies from the cache)."""
    stage = CalibrationJudging(judge=judge, service_max_tokens=limits.max_tokens, ratings_file=ratings_file,
                               judge_metric=judge_metric, pass_score=pass_score, judge_model=endpoint.model)
    return run_service_stage(root, stage, endpoint, limits, budget, spent, out=out, on_progress=on_progress)
