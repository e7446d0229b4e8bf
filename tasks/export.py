"""Export task: merged safetensors + adapter + model card, checked against the evaluated answers."""

from __future__ import annotations

from prefect import task

from llamaduo.config import ExportConfig, InferConfig
from llamaduo.export import export_model, model_card
from llamaduo.records import Artifact, ExportResult, RoundRecord, StudentRef, Summary

from ._stage import StageTraits, stage
from ._results import RESULT_OPTIONS


@stage("export", StageTraits(kind="io"))
def export(root: str, student: StudentRef, best: RoundRecord, summary: Summary, teacher_label: str,
           infer_cfg: InferConfig, system_prompt: str | None, test: Artifact, answers: Artifact | None,
           out: str, export_cfg: ExportConfig | None = None) -> ExportResult:
    return export_model(root, student, best, lambda check, hub_base: model_card(summary, best, teacher_label, check,
                                                                                hub_base),
                        infer_cfg, system_prompt, test, answers, out, name=summary.name, export=export_cfg)


@task(name="push-to-hub", retries=2, retry_delay_seconds=10, tags=["io"], **RESULT_OPTIONS)
def push_model(final_dir: str, repo_id: str, private: bool, shipped: list[str], formats: list[str], message: str) -> str:
    """The shipped formats to the Hub (a network call: retried; nothing cached, a push is an act)."""
    from pathlib import Path

    from llamaduo.hub import push_export

    return push_export(Path(final_dir), repo_id, private=private, shipped=shipped, formats=formats, message=message)
