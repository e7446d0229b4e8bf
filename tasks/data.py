"""Data and student preparation tasks."""

from __future__ import annotations

from prefect import task

from llamaduo.config import CurateConfig, DataConfig
from llamaduo.data import prepare_splits
from llamaduo.models import resolve_student
from llamaduo.records import SplitResult, StudentRef

from ._stage import StageTraits, stage
from ._policy import STAGE_OPTIONS


@stage("prepare-data", StageTraits(kind="io"))
def prepare_data(root: str, data: DataConfig, curate: CurateConfig, out: str = "data") -> SplitResult:
    """Clean, de-duplicated train/val/test splits (data files enter the key by content)."""
    return prepare_splits(root, data, curate, out)


@task(name="prepare-student", **STAGE_OPTIONS, tags=["io"])
def prepare_student(student_id: str) -> StudentRef:
    """Resolve the student; the offline SmolLM2 is converted from GGUF to safetensors once."""
    return StudentRef(id=student_id, path=resolve_student(student_id))
