"""Prepare the coverage splits as run artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from llamaduo.data import load_coverage
from llamaduo.store import atomic_write_jsonl, sha256_path

from ._policy import STAGE_OPTIONS, artifact


def data_inputs_sha(path: str, test_path: str | None) -> str:
    return sha256_path(path) + (sha256_path(test_path) if test_path else "")


@task(name="prepare-data", **STAGE_OPTIONS, tags=["io"])
def prepare_data(data_cfg: dict, inputs_sha: str, out_dir: str) -> dict:
    """`inputs_sha` is the content hash of the data files: editing them re-runs everything downstream."""
    train, test = load_coverage(data_cfg["path"], data_cfg.get("test_path"), data_cfg["test_size"],
                                data_cfg["split_seed"])
    out = Path(out_dir)
    atomic_write_jsonl(out / "test.jsonl", [e.to_dict() for e in test])
    atomic_write_jsonl(out / "coverage_train.jsonl", [e.to_dict() for e in train])
    return {"train": artifact(out / "coverage_train.jsonl"), "test": artifact(out / "test.jsonl"),
            "train_rows": len(train), "test_rows": len(test)}
