import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One PostgreSQL + Prefect server + S3 for every `distributed` test module (imports nothing heavy).
pytest_plugins = ["tests.distributed_env"]
SHARED_DATA = ROOT.parent / "shared" / "data" / "no_robots_classify.jsonl"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def write_jsonl(tmp_path):
    import json

    def _write(name: str, rows: list) -> Path:
        p = tmp_path / name
        p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
        return p

    return _write
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture
def prefect_env(tmp_path):
    """A throwaway Prefect server and database; results in the test's own folder (the harness
    does not isolate result storage)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: str(tmp_path / "results")}):
        with prefect_test_harness(server_startup_timeout=120):
            yield
