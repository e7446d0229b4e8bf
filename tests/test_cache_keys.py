"""Cache keys come from what determines a stage's output, nothing else (real CLI, real Prefect,
tiny student, fake HTTP service): an unrelated config change re-sends no synthesis request,
more judge repeats pay only for the new ones, an edited template file re-runs what uses it,
and a moved run directory re-trains nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fake_service import FakeBehaviour, FakeOpenAIServer
from tests.prefect_db import query

ROOT = Path(__file__).resolve().parents[1]
SYNTH_TEMPLATE = (ROOT / "llamaduo" / "prompts" / "synth.j2").read_text()


def rows(start, count):
    return [{"instruction": f"Name the colour of item {i}, a {['pen', 'cup', 'hat', 'box'][i % 4]}.",
             "response": "blue"} for i in range(start, start + count)]


def run(config_path, workdir, *overrides):
    args = [sys.executable, "-m", "flows.cli", "run", str(config_path), "--workdir", str(workdir)]
    for o in overrides:
        args += ["--set", o]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"FAKE_SERVICE_KEY": "sk-cache-test", "PYTHONUNBUFFERED": "1"})
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def task_states(workdir: Path) -> dict[str, set[str]]:
    """State names of the latest migration's task runs, by task name (read from the run's own database)."""
    states = query(workdir, """
runs = [r for r in await c.read_flow_runs() if r.name.startswith('migrate-')]
since = max(r.start_time for r in runs)
out = {}
for t in await c.read_task_runs():
    if t.start_time and t.start_time >= since:
        out.setdefault(t.name.rsplit('-', 1)[0], []).append(t.state_name)
print(json.dumps(out))
""")
    return {k: set(v) for k, v in states.items()}


@pytest.mark.slow  # five real CLI runs (~6 min): run by make test-integration / .ci/run
def test_cache_keys_follow_what_determines_each_output(tmp_path, tiny_model_dir):
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(0, 16)))
    template = tmp_path / "synth.j2"
    template.write_text(SYNTH_TEMPLATE)
    config = {
        "name": "cache-keys",
        "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 0},
        "service": {"model": "openai/fake-teacher", "api_key_env": "FAKE_SERVICE_KEY", "rpm": 6000,
                    "max_concurrency": 4, "max_retries": 1, "timeout_s": 10},
        "synth": {"rows_per_round": 8, "pairs_per_request": 4, "max_waves": 2, "prompt_template": str(template)},
        "judge": {"repeats": 2, "temperature": 0.5},
        "student": {"model": str(tiny_model_dir)},
        "train": {"epochs": 1, "batch_size": 4, "max_length": 64, "lora_r": 8, "lora_alpha": 16,
                  "quantization": "none"},
        "infer": {"max_new_tokens": 4, "batch_size": 4}, "export": {"gguf": []},
        "gate": {"metric": "judge_score", "threshold": 100, "max_rounds": 1},
        "budget": {"max_calls": 400, "max_usd": 0},
    }
    with FakeOpenAIServer(FakeBehaviour(pool=[{"instruction": f"Colour of thing {i} in set {i * 3}?",
                                               "response": "blue"} for i in range(100)])) as server:
        config["service"]["api_base"] = server.url
        cfg_path = tmp_path / "run.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        first_dir = tmp_path / "first"
        run(cfg_path, first_dir)
        synth_after_first, judge_after_first = server.kinds["synth"], server.kinds["judge"]
        assert synth_after_first >= 2 and judge_after_first >= 4 * 2

        # train.lora_r does not feed synthesis or curation: cached, no synthesis request
        out = run(cfg_path, first_dir, "train.lora_r=4")
        assert server.kinds["synth"] == synth_after_first, "a LoRA change sent synthesis requests"
        states = task_states(first_dir)
        assert states["synthesize"] == {"Cached"} and states["curate"] == {"Cached"}, states
        assert states["finetune"] == {"Completed"}, states
        assert "training steps" in out.stdout and ", 0 training steps" not in out.stdout

        # judge.repeats 2 -> 3: exactly one new judge request per answer (4 test items, 1 sample each)
        judge_before = server.kinds["judge"]
        run(cfg_path, first_dir, "judge.repeats=3")
        assert server.kinds["judge"] - judge_before == 4, server.kinds
        assert server.kinds["synth"] == synth_after_first

        # a moved run directory keeps its keys: nothing re-trained, nothing re-sent
        moved = tmp_path / "moved"
        shutil.move(str(first_dir), str(moved))
        requests_before = server.requests
        out = run(cfg_path, moved)
        assert "this invocation: 0 service calls, 0 training steps" in out.stdout, out.stdout[-1500:]
        assert server.requests == requests_before

        # editing the template file's text re-runs the stages that use it
        template.write_text(SYNTH_TEMPLATE.replace("Make every pair", "Please make every pair"))
        run(cfg_path, moved)
        assert server.kinds["synth"] > synth_after_first, "an edited template must re-run synthesis"
