"""Round reports: markdown (what changed, metrics vs previous round and baselines, the gate
decision with reasons), a worst-first per-item table, and a metrics-per-round plot."""

from __future__ import annotations

from pathlib import Path

from .markdown import escape_inline, table
from .metrics import JUDGE_CURVES, METRIC_NAMES
from .records import RoundRecord
from .store import atomic_write_bytes


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _delta(cur, prev) -> str:
    if cur is None or prev is None:
        return ""
    d = cur - prev
    return f" ({'+' if d >= 0 else ''}{d:.3g})"


def round_markdown(entry: RoundRecord, previous: RoundRecord | None, baselines: dict[str, dict], *,
                   plot: str | None, teacher_note: str = "") -> str:
    m, g, sv = entry.metrics, entry.gate, entry.service
    lines = [f"# Round {entry.round}: {'PASS' if g.passed else 'fail'}", ""]
    if teacher_note:
        lines += [f"> {escape_inline(teacher_note)}", ""]
    ev = entry.evaluation
    lines += ["## What changed", "",
              f"- training rows: **{entry.train_rows}** (+{entry.synthetic_rows_added} curated synthetic rows)",
              "- dropped in curation: "
              + escape_inline(', '.join(f'{k} {v}' for k, v in sorted(entry.dropped.items())) or 'none'),
              f"- service: {sv.calls} calls ({sv.cached} cached, {sv.failed} failed, {sv.retries} retries), "
              f"${sv.cost_usd:.4f}",
              f"- judged: {ev.judged_items} of {ev.items} test items; {ev.valid_judgments} of "
              f"{ev.requested_judgments} requested judgements valid (judged share {ev.judged_share:.0%}; "
              f"{ev.parse_failures} unparseable replies, {ev.call_failures} failed calls)"]
    if entry.val_evaluation is not None:
        v = entry.val_evaluation
        lines.append(f"- validation: {v.judged_items} of {v.items} items judged; {v.valid_judgments} of "
                     f"{v.requested_judgments} judgements valid")
    if entry.selection_split:
        lines.append(f"- keep-best and plateau compare rounds on the **{escape_inline(entry.selection_split)}** split"
                     + (" (no validation split: the test split also chooses)" if entry.selection_split == "test"
                        else f" ({len(entry.selection_items)} items)"))
    lines.append("")
    cols = ["this round"] + (["validation"] if entry.val_metrics else []) + (["previous"] if previous else []) + \
        list(baselines)
    metric_rows = []
    for k in METRIC_NAMES:
        if k not in m and not any(k in b for b in baselines.values()):
            continue
        row = [_fmt(m.get(k)) + (_delta(m.get(k), previous.metrics.get(k)) if previous else "")]
        if entry.val_metrics:
            row.append(_fmt(entry.val_metrics.get(k)))
        if previous:
            row.append(_fmt(previous.metrics.get(k)))
        row += [_fmt(b.get(k)) for b in baselines.values()]
        metric_rows.append([k] + row)
    lines += ["## Metrics (test split)", ""] + table(["metric"] + cols, metric_rows)
    if entry.parity:
        lines += ["", "Parity (student / service LLM): " +
                  escape_inline(", ".join(f"{k} {v:.3f}" for k, v in sorted(entry.parity.items())))]
    lines += ["", "## Gate", "", f"**{'passed' if g.passed else 'not passed'}** — {escape_inline(g.reason)}", ""]
    lines += table(["criterion", "value", "threshold", "ok"],
                   [[c.name, _fmt(c.value), f"{c.threshold:g}", "yes" if c.passed else "no"] for c in g.criteria])
    if plot:
        lines += ["", f"![metrics per round]({plot})"]
    return "\n".join(lines) + "\n"


def worst_items(scored: list[dict], k: int = 20, width: int = 160) -> list[dict]:
    """Per-item rows, worst first by judge score (unjudged first), texts shortened for a table."""
    def cut(t: str) -> str:
        t = " ".join(t.split())
        return t if len(t) <= width else t[: width - 1] + "…"

    ordered = sorted(scored, key=lambda s: (s.get("score", -1), s["rougeL"]))
    return [{"instruction": cut(s["instruction"]), "reference": cut(s["reference"]), "answer": cut(s["answer"]),
             "judge_score": round(s["score"], 2) if "score" in s else None,
             "similarity": round(s["similarity"], 2) if "similarity" in s else None,
             "precision": round(s["precision"], 2) if "precision" in s else None,
             "rougeL": round(s["rougeL"], 3), "judge_spread": round(s.get("judge_spread", 0.0), 2),
             "judge_reason": cut(s.get("judge_reason", "") or ("not judged" if "score" not in s else ""))}
            for s in ordered[:k]]


def plot_rounds(rounds: list[RoundRecord], path: str | Path, *, metric: str, threshold: float,
                baselines: dict[str, dict] | None = None) -> Path:
    """PNG of the judge metrics per round, with the gate threshold and baselines as lines."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted(rounds, key=lambda r: r.round)
    xs = [r.round for r in rounds]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    for k in JUDGE_CURVES:
        ys = [r.metrics.get(k) for r in rounds]
        if any(y is not None for y in ys):
            ax.plot(xs, ys, marker="o", label=k, linewidth=2.5 if k == metric else 1.2)
    if metric not in JUDGE_CURVES:
        ax.plot(xs, [r.metrics.get(metric) for r in rounds], marker="s", label=metric)
    ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"gate {metric} >= {threshold:g}")
    for name, b in (baselines or {}).items():
        if b.get(metric) is not None:
            ax.axhline(b[metric], color="gray", linestyle=":", linewidth=1, label=f"{name} {metric}")
    ax.set_xlabel("round (0 = base student)")
    ax.set_ylabel("score")
    ax.set_xticks(xs)
    ax.set_title("LlamaDuo migration: metrics per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_round_report(root: str | Path, entry: RoundRecord, previous: RoundRecord | None,
                       history: list[RoundRecord], baselines: dict[str, dict], *, metric: str, threshold: float,
                       teacher_note: str, out: str, plot_rel: str = "report/metrics.png") -> tuple[str, list[dict]]:
    """Writes the plot (all rounds so far) and the round's markdown report (linking the PNG file);
    returns the markdown for the UI — the plot inlined as a data URI, since a browser cannot load a
    file path of the worker — and the worst-first per-item rows for a table."""
    import base64

    from .store import atomic_write_text, read_jsonl

    root = Path(root)
    png = plot_rounds(history, root / plot_rel, metric=metric, threshold=threshold, baselines=baselines)
    depth = len(Path(out).parent.parts)
    atomic_write_text(root / out, round_markdown(entry, previous, baselines, plot="../" * depth + plot_rel,
                                                 teacher_note=teacher_note))
    inline = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    md = round_markdown(entry, previous, baselines, plot=inline, teacher_note=teacher_note)
    return md, worst_items(read_jsonl(entry.judged.at(root))) if entry.judged else []
