"""Publish a round's report where users look: Prefect artifacts + files in the run directory."""

from __future__ import annotations

from prefect import task

from llamaduo.report import plot_rounds, round_markdown, worst_items
from llamaduo.store import atomic_write_text, read_jsonl

from ._policy import STAGE_OPTIONS, artifact


@task(name="report", **STAGE_OPTIONS, tags=["io"])
def publish_round_report(entry: dict, previous: dict | None, history: list[dict], baselines: dict[str, dict],
                         metric: str, threshold: float, teacher_note: str, judged: dict, plot_path: str,
                         out_path: str) -> dict:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    plot = plot_rounds(history, plot_path, metric=metric, threshold=threshold, baselines=baselines)
    md = round_markdown(entry, previous, baselines, plot=str(plot), teacher_note=teacher_note)
    atomic_write_text(out_path, md)
    key = f"round-{entry['round']}"
    create_markdown_artifact(markdown=md, key=f"{key}-report", description=f"Round {entry['round']} report")
    create_table_artifact(table=worst_items(read_jsonl(judged["path"])), key=f"{key}-items",
                          description=f"Round {entry['round']}: per-item scores, worst first")
    return {"report": artifact(out_path), "plot": str(plot)}
