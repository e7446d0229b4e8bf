"""End to end: the real CLI, Prefect flows, a tiny real student and the fake HTTP service.

Round 1 trains too few steps for the tiny model to answer "blue"; round 2, with the
added synthetic rows, trains enough. The fake judge scores word overlap with the
reference, so the gate goes from fail to pass. A second identical run must be fully
cached: 0 HTTP requests, 0 training steps, the same summary.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fake_service import FakeBehaviour, FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
THINGS = ["apple", "river", "stone", "cloud", "green", "paper", "music", "tiger", "lemon", "chair"]


def rows(start, count):
    return [{"instruction": f"What colour is the {THINGS[i % 10]} number {i}?", "response": "blue"}
            for i in range(start, start + count)]


@pytest.fixture
def e2e_setup(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(0, 20)))
    config = {
        "name": "e2e",
        "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 0, "split_seed": 1},
        "service": {"model": "openai/fake-teacher", "api_base": None, "api_key_env": "FAKE_SERVICE_KEY",
                    "rpm": 6000, "max_concurrency": 4, "max_retries": 2, "timeout_s": 10},
        "synth": {"rows_per_round": 16, "pairs_per_request": 4, "max_waves": 3},
        "judge": {"repeats": 2, "temperature": 0.3, "service_baseline": True},
        "student": {"model": str(tiny_model_dir)},
        "train": {"epochs": 1, "batch_size": 4, "learning_rate": 0.01, "max_length": 96, "lora_r": 8,
                  "lora_alpha": 16, "quantization": "none", "warm_start": False},
        "infer": {"max_new_tokens": 4, "batch_size": 4},
        "gate": {"metric": "judge_score", "threshold": 50, "max_rounds": 3, "baseline": True},
        "budget": {"max_calls": 400, "max_usd": 0},
    }
    return tmp_path, config


def run_cli(args, env_extra):
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def prefect_artifacts(env: dict) -> dict:
    """Artifact keys and flow-run names, read back through the Prefect API of the run's database."""
    code = ("import asyncio, json\n"
            "from prefect.client.orchestration import get_client\n"
            "from prefect.client.schemas.sorting import LogSort\n"
            "async def main():\n"
            "    async with get_client() as c:\n"
            "        arts = await c.read_artifacts()\n"
            "        runs = await c.read_flow_runs()\n"
            "        logs = await c.read_logs(sort=LogSort.TIMESTAMP_DESC, limit=50)\n"
            "        print(json.dumps({'keys': sorted({a.key for a in arts if a.key}), "
            "'flow_runs': sorted({r.name for r in runs}), 'logs': [l.message for l in logs]}))\n"
            "asyncio.run(main())\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return {"keys": set(data["keys"]), "flow_runs": set(data["flow_runs"]), "logs": data["logs"]}


def test_loop_fails_then_passes_and_rerun_is_free(e2e_setup):
    tmp_path, config = e2e_setup
    with FakeOpenAIServer(FakeBehaviour(pool=rows(1000, 200))) as server:
        config["service"]["api_base"] = server.url
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        workdir = tmp_path / "work"
        env = {"FAKE_SERVICE_KEY": "sk-e2e-secret", "PREFECT_HOME": str(tmp_path / "prefect"),
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "prefect" / "results")}
        first = run_cli(["run", str(tmp_path / "run.yaml"), "--workdir", str(workdir)], env)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
        summary = json.loads((workdir / "summary.json").read_text())
        requests_after_first = server.requests

        assert summary["rounds"][0]["round"] == 0, "round 0 is the base student"
        rounds = summary["rounds"][1:]
        assert summary["passed"] is True and summary["stop_reason"] == "passed"
        assert len(rounds) >= 2 and [r["round"] for r in rounds] == list(range(1, len(rounds) + 1))
        assert set(summary["baselines"]) == {"service LLM", "base student"}
        assert summary["baselines"]["service LLM"]["judge_score"] == 100, "the fake service answers 'blue'"
        assert rounds[-1]["parity"]["judge_score"] == rounds[-1]["metrics"]["judge_score"] / 100
        assert rounds[0]["gate"]["passed"] is False and rounds[-1]["gate"]["passed"] is True
        assert rounds[-1]["metrics"]["judge_score"] > rounds[0]["metrics"]["judge_score"]
        for r in rounds:
            assert set(r) >= {"round", "train_rows", "synthetic_rows_added", "dropped", "metrics", "gate",
                              "service", "durations_s"}
            assert r["synthetic_rows_added"] == 16
            assert r["gate"]["metric"] == "judge_score" and r["gate"]["value"] == r["metrics"]["judge_score"]
            assert set(r["service"]) == {"calls", "cached", "failed", "retries", "prompt_tokens",
                                         "completion_tokens", "cost_usd"}
            assert r["service"]["calls"] >= 4 * 2, "4 test items judged twice"
            assert {"synthesize", "curate", "finetune", "infer", "evaluate"} <= set(r["durations_s"])
        assert rounds[1]["train_rows"] == rounds[0]["train_rows"] + 16
        assert summary["final_model_dir"] == "final_model"  # relative: true wherever the run directory lies
        final = workdir / summary["final_model_dir"]
        assert (final / "merged" / "model.safetensors").is_file() and (final / "adapter" / "adapter_config.json").is_file()
        card = (final / "README.md").read_text()
        assert "judge_score" in card and "Verdict for this model: **passed**" in card
        assert summary["exported_round"] == rounds[-1]["round"] and summary["exported_round_passed"] is True
        assert summary["export_check"]["reproduces"] is True, "the exported weights give the evaluated answers"
        assert requests_after_first == summary["service_total"]["calls"] == \
            sum(r["service"]["calls"] for r in summary["rounds"]) + 4 + 4 * 2 + summary["preflight"]["calls"], \
            "all calls accounted for"
        assert summary["preflight"]["calls"] == 2, "one probe call to the service, one to the judge"
        assert summary["data"] == {"train_rows": 16, "val_rows": 0, "test_rows": 4, "removed": {}}
        png = workdir / "report" / "metrics.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "# Round 1: fail" in (workdir / "rounds" / "round_01" / "report.md").read_text()
        artifacts = prefect_artifacts(env)
        for k in range(0, len(rounds) + 1):
            assert {f"round-{k}-report", f"round-{k}-items"} <= artifacts["keys"]
        assert {"round-1", "round-2"} <= artifacts["flow_runs"]
        # the flow process exits without interpreter teardown: its last log lines still reach the server
        assert any(m.startswith("done: passed=True") for m in artifacts["logs"]), artifacts["logs"][:5]
        for f in workdir.rglob("*"):
            if f.is_file() and f.suffix in (".json", ".jsonl", ".md"):
                assert "sk-e2e-secret" not in f.read_text(errors="ignore"), f

        second = run_cli(["run", str(tmp_path / "run.yaml"), "--workdir", str(workdir)], env)
        assert second.returncode == 0, second.stderr[-5000:]
        assert server.requests == requests_after_first, "a re-run makes no HTTP request"
        assert "this invocation: 0 service calls, 0 training steps" in second.stdout, second.stdout[-1500:]
        assert json.loads((workdir / "summary.json").read_text()) == summary
        assert "Cached" in second.stdout + second.stderr


def test_invalid_data_exits_2_naming_file_line_field(e2e_setup):
    tmp_path, config = e2e_setup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows(0, 1)[0]) + "\n" + json.dumps({"instruction": "x", "response": 5}) + "\n")
    config["data"]["path"] = str(bad)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    out = run_cli(["validate", str(tmp_path / "bad.yaml")], {"FAKE_SERVICE_KEY": "k"})
    assert out.returncode == 2
    assert "bad.jsonl, line 2, field 'response'" in out.stderr
    out = run_cli(["run", str(tmp_path / "bad.yaml"), "--workdir", str(tmp_path / "w")], {"FAKE_SERVICE_KEY": "k"})
    assert out.returncode == 2 and not (tmp_path / "w" / "summary.json").exists()


def test_unknown_override_exits_2(e2e_setup):
    tmp_path, config = e2e_setup
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(config))
    out = run_cli(["validate", str(tmp_path / "ok.yaml"), "--set", "train.epohcs=2"], {"FAKE_SERVICE_KEY": "k"})
    assert out.returncode == 2 and "train.epohcs" in out.stderr and "unknown key" in out.stderr


def test_warm_started_rounds_continue_the_previous_adapter(e2e_setup):
    tmp_path, config = e2e_setup
    config["train"].update({"warm_start": True, "replay_ratio": 0.5})
    with FakeOpenAIServer(FakeBehaviour(pool=rows(1000, 200))) as server:
        config["service"]["api_base"] = server.url
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        workdir = tmp_path / "work"
        env = {"FAKE_SERVICE_KEY": "sk-e2e-secret", "PREFECT_HOME": str(tmp_path / "prefect"),
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "prefect" / "results")}
        run = run_cli(["run", str(tmp_path / "run.yaml"), "--workdir", str(workdir)], env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    summary = json.loads((workdir / "summary.json").read_text())
    rounds = summary["rounds"][1:]
    assert len(rounds) >= 2 and summary["passed"] is True
    assert rounds[0]["train_stats"]["warm_start"] is False and rounds[0]["train_stats"]["rows"] == 32
    assert rounds[1]["train_stats"]["warm_start"] is True
    assert rounds[1]["train_stats"]["rows"] == 16 + 8, "16 new rows + 0.5 replayed per new row"
    assert rounds[1]["train_rows"] == 48, "the lineage set still lists every row the model has seen"
    warm_rows = [json.loads(l) for l in (workdir / "rounds" / "round_02" / "train_warm.jsonl").read_text().splitlines()]
    assert sum(r.get("round") == 2 for r in warm_rows) == 16
