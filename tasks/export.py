"""Export task: merged safetensors + adapter + model card."""

from __future__ import annotations

from prefect import task

from llamaduo.export import export_model

from ._policy import STAGE_OPTIONS, artifact


@task(name="export", **STAGE_OPTIONS, tags=["io"])
def export(base_model: str, base_model_id: str, adapter: dict, card: str, out_dir: str) -> dict:
    export_model(base_model, adapter["path"], out_dir, card)
    return {"model": artifact(out_dir)}
