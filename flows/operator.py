"""The operator's settings: `llamaduo_*` keys of deployments/prefect.yaml, read from the project on
the worker (so a run cannot change them)."""

from __future__ import annotations

from pathlib import Path


def operator_setting(project: Path, key: str):
    """A `llamaduo_*` key of deployments/prefect.yaml, read from the project on the worker (so a run
    cannot change it); None when the file or the key is absent."""
    import yaml

    spec = project / "deployments" / "prefect.yaml"
    if not spec.is_file():
        return None
    return (yaml.safe_load(spec.read_text(encoding="utf-8")) or {}).get(key)
