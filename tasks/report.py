"""Publish a round's report where users look: Prefect artifacts + files in the run directory."""

from __future__ import annotations


from llamaduo.records import Artifact, RoundRecord
from llamaduo.report import write_round_report

from ._stage import StageTraits, stage


@stage("report", StageTraits(kind="io"))
def publish_round_report(root: str, entry: RoundRecord, previous: RoundRecord | None, history: list[RoundRecord],
                         baselines: dict[str, dict[str, float]], metric: str, threshold: float, teacher_note: str,
                         out: str) -> Artifact:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    md, items = write_round_report(root, entry, previous, history, baselines, metric=metric, threshold=threshold,
                                   teacher_note=teacher_note, out=out)
    key = f"round-{entry.round}"
    create_markdown_artifact(markdown=md, key=f"{key}-report", description=f"Round {entry.round} report")
    create_table_artifact(table=items, key=f"{key}-items",
                          description=f"Round {entry.round}: per-item scores and judge reasons, worst first")
    return Artifact.of(root, out)
