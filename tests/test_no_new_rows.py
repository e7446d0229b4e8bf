"""With `train.warm_start`, a round whose synthesis keeps no new rows (the service only returns
copies of rows the model has already seen) stops cleanly — exit 4, `stop_reason: no_new_rows` —
instead of training on an empty set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fake_service import FakeBehaviour, FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a real CLI run (temporary Prefect server, one training round): make test-integration

ROWS = [{"instruction": f"Which colour is sample {i} from crate {i * 5}?", "response": "blue"} for i in range(16)]


def test_a_warm_started_round_with_no_new_rows_stops_with_exit_4(tmp_path, tiny_model_dir):
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    workdir = tmp_path / "run"
    cfg = {"name": "no-new-rows", "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 0},
           "service": {"model": "openai/fake-teacher", "api_key_env": "FAKE_SERVICE_KEY", "rpm": 6000,
                       "max_concurrency": 2, "max_retries": 0},
           "synth": {"rows_per_round": 8, "pairs_per_request": 4, "max_waves": 1},
           "student": {"model": str(tiny_model_dir)},
           "train": {"epochs": 1, "batch_size": 4, "max_length": 64, "quantization": "none", "warm_start": True},
           "infer": {"max_new_tokens": 4, "batch_size": 4}, "export": {"gguf": []},
           "gate": {"threshold": 100, "max_rounds": 3}, "budget": {"max_usd": 0}}
    # the teacher only ever returns rows of the coverage set: curation drops every one as a duplicate
    with FakeOpenAIServer(FakeBehaviour(pool=ROWS)) as server:
        cfg["service"]["api_base"] = server.url
        cfg_path = tmp_path / "run.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({"FAKE_SERVICE_KEY": "sk-no-new-rows", "PYTHONUNBUFFERED": "1"})
        out = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(cfg_path), "--workdir", str(workdir)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-4000:]
    assert "stop_reason=no_new_rows" in out.stdout and "Traceback" not in out.stderr, out.stdout[-2000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["stop_reason"] == "no_new_rows" and summary["passed"] is False
    assert "round 2 kept no new synthetic rows" in summary["stop_detail"]
    assert [r["round"] for r in summary["rounds"]] == [1], "round 1 trained on the coverage rows; round 2 did not"
    assert summary["rounds"][0]["synthetic_rows_added"] == 0
    round_2 = workdir / "rounds" / "round_02"
    assert not (round_2 / "adapter").exists() and not list(round_2.glob("adapter*")), "no training on nothing"
    assert summary["final_model_dir"], "round 1's model is still exported"
