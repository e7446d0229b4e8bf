"""Migration that keeps up, end to end: the `openai` client talks to `llamaduo capture` in front of the
fake service; 200 captured exchanges → a run migrates and is promoted (`llamaduo serve --follow` serves
it); 100 more arrive in a category the first data lacked → the next run's challenger, warm-started from
the champion, is better on it beyond noise and is promoted, and `llamaduo serve --follow` switches to it
without dropping a request; a deliberately worse challenger (learning rate 0.1) is not promoted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.fake_service import FakeBehaviour, FakeOpenAIServer
from tests.test_capture import KEY, Capture

ROOT = Path(__file__).resolve().parents[1]
THINGS = ["apple", "river", "stone", "cloud", "green", "paper", "music", "tiger", "lemon", "chair"]


# The asked-for property comes last: a tiny student conditions on the tokens next to its answer most easily.
def colour(i: int) -> str:
    return f"The {THINGS[i % 10]} number {i}: which colour?"


def shape(i: int) -> str:
    return f"The {THINGS[i % 10]} number {i}: which shape?"


@pytest.fixture(scope="module")
def learning_student(tmp_path_factory) -> Path:
    """A tiny student whose larger initial weights let LoRA learn an answer per question kind in a few
    dozen steps (the shared tiny student learns one answer for everything)."""
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("student"), hidden=64, init_range=0.5)


def _run(config: dict, tmp_path: Path, workdir: str, **overrides) -> subprocess.CompletedProcess:
    cfg = json.loads(json.dumps(config))
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    path = tmp_path / f"{workdir}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "FAKE_SERVICE_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", str(path), "--workdir", str(tmp_path / workdir)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


class Follower:
    """`llamaduo serve --follow PROMOTE_LOCATION` as a process."""

    def __init__(self, location: Path, tmp_path: Path):
        self.ready = tmp_path / "serve-ready.json"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "LLAMADUO_FOLLOW_EVERY_S": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--follow", str(location),
                                      "--port", "0", "--ready-file", str(self.ready)], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 300
        while not self.ready.exists():
            assert self.proc.poll() is None and time.time() < deadline, self.proc.stdout.read()[-3000:]
            time.sleep(0.2)
        port = json.loads(self.ready.read_text())["port"]
        self.base = f"http://127.0.0.1:{port}"
        from openai import OpenAI

        self.client = OpenAI(base_url=self.base + "/v1", api_key="x", max_retries=0, timeout=120)
        self.model = self.client.models.list().data[0].id

    def ask(self, question: str) -> str:
        r = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": question}],
                                                max_tokens=1, temperature=0)
        return r.choices[0].message.content

    def serving(self) -> str:
        import httpx

        return httpx.get(self.base + "/health", timeout=10).json()["model_sha256"]

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=60)
        return out


@pytest.mark.timeout(1800)
def test_capture_promote_follow_and_refuse_a_worse_challenger(tmp_path, learning_student):
    pool = [{"instruction": colour(i), "response": "blue"} for i in range(1000, 1100)] + \
           [{"instruction": shape(i), "response": "round"} for i in range(1000, 1100)]
    behaviour = FakeBehaviour(plain_answer="blue", plain_answers={"shape": "round", "colour": "blue"}, pool=pool,
                              pool_pick="similar")
    promoted_dir = tmp_path / "promoted"
    with FakeOpenAIServer(behaviour) as server:
        config = {
            "name": "keep-current",
            "data": {"path": str(tmp_path / "capture"), "test_size": 12, "val_size": 0, "split_seed": 1,
                     "stratify": True},
            "service": {"model": "openai/fake-teacher", "api_base": server.url, "api_key_env": "FAKE_SERVICE_KEY",
                        "rpm": 6000, "max_concurrency": 4, "max_retries": 2, "timeout_s": 10},
            "synth": {"rows_per_round": 16, "pairs_per_request": 4, "max_waves": 3},
            "judge": {"repeats": 1},
            "student": {"model": str(learning_student)},
            "train": {"epochs": 2, "batch_size": 8, "learning_rate": 0.01, "max_length": 64, "lora_r": 8,
                      "lora_alpha": 16, "quantization": "none"},
            "infer": {"max_new_tokens": 1, "batch_size": 8},  # the first token is the answer
            "gate": {"metric": "judge_score", "threshold": 50, "max_rounds": 3},
            "budget": {"max_calls": 800, "max_usd": 0},
            "export": {"gguf": []},
            "promote": {"location": str(promoted_dir)},
        }
        (tmp_path / "capture.yaml").write_text(yaml.safe_dump(config))
        capture = Capture(tmp_path / "capture.yaml", tmp_path / "capture")
        client = capture.client()
        for i in range(200):
            client.chat.completions.create(model="fake-teacher", messages=[{"role": "user", "content": colour(i)}],
                                           extra_headers={"X-LlamaDuo-Category": "colour"})

        first = _run(config, tmp_path, "run1")
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        promoted = json.loads((promoted_dir / "promoted.json").read_text())
        assert promoted["run"] == str(tmp_path / "run1")
        summary1 = json.loads((tmp_path / "run1" / "summary.json").read_text())
        assert summary1["promotion"]["promote"] is True and summary1["capture_snapshot"]["exchanges"] == 200

        follower = Follower(promoted_dir, tmp_path)
        try:
            assert follower.serving() == promoted["model_sha256"]
            assert follower.ask(colour(5)).strip().startswith("blue")

            for i in range(200, 300):  # a category the first data lacked
                client.chat.completions.create(model="fake-teacher", messages=[{"role": "user", "content": shape(i)}],
                                               extra_headers={"X-LlamaDuo-Category": "shape"})
            assert capture.stop()[0] == 0

            second = _run(config, tmp_path, "run2")
            assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
            summary2 = json.loads((tmp_path / "run2" / "summary.json").read_text())
            promotion = summary2["promotion"]
            assert promotion["promote"] is True, promotion
            assert promotion["difference_ci95"][0] > 0 and promotion["champion"]["run"] == str(tmp_path / "run1")
            assert "warm start" in second.stdout + second.stderr
            promoted2 = json.loads((promoted_dir / "promoted.json").read_text())
            assert promoted2["run"] == str(tmp_path / "run2") and promoted2["previous"]["run"] == str(tmp_path / "run1")
            decision = (tmp_path / "run2" / "decision.md").read_text()
            assert "## Champion and challenger" in decision and "**promoted**" in decision

            # the follower switches without dropping a request: traffic runs through the swap
            failures, answered = [], []

            def traffic():
                while follower.serving() != promoted2["model_sha256"] or len(answered) < 3:
                    try:
                        answered.append(follower.ask(colour(7)))
                    except Exception as exc:  # noqa: BLE001
                        failures.append(repr(exc))
                    if len(answered) + len(failures) > 2000:
                        return

            t = threading.Thread(target=traffic)
            t.start()
            t.join(timeout=600)
            assert not failures, failures[:3]
            assert follower.serving() == promoted2["model_sha256"]
            assert follower.ask(shape(250)).strip().startswith("round")

            # shadow before the switch: run2's student answers real traffic on the side, the judge compares
            shadow = Capture(tmp_path / "capture.yaml", tmp_path / "capture", "--shadow", str(tmp_path / "run2"),
                             "--shadow-sample", "1", "--shadow-max-usd", "0")
            sclient = shadow.client()
            for i in range(300, 310):
                for ask, tag in ((colour, "colour"), (shape, "shape")):
                    sclient.chat.completions.create(model="fake-teacher", messages=[{"role": "user", "content": ask(i)}],
                                                    extra_headers={"X-LlamaDuo-Category": tag})
            import httpx

            deadline = time.time() + 300
            while (httpx.get(shadow.url.removesuffix("/v1") + "/health").json()["shadow"] or {}).get("judged", 0) < 20:
                assert time.time() < deadline, httpx.get(shadow.url.removesuffix("/v1") + "/health").json()
                time.sleep(0.5)
            code, err = shadow.stop()
            assert code == 0, err
            report = json.loads((tmp_path / "run2" / "shadow.json").read_text())
            assert report["judged"] == 20 and set(report["categories"]) == {"colour", "shape"}
            assert all(q["n"] == 10 and q["mean"] >= 50 for q in report["categories"].values()), report
            page = (tmp_path / "run2" / "decision.md").read_text()
            assert "## Shadow on real traffic" in page and "| shape | 10 |" in page
            assert "## Champion and challenger" in page  # the re-rendered page keeps the run's sections

            worse = _run(config, tmp_path, "run3", train__learning_rate=0.1)
            assert worse.returncode in (0, 3), worse.stdout[-3000:] + worse.stderr[-3000:]
            summary3 = json.loads((tmp_path / "run3" / "summary.json").read_text())
            assert summary3["promotion"]["promote"] is False, summary3["promotion"]
            assert json.loads((promoted_dir / "promoted.json").read_text()) == promoted2
            assert len(list((promoted_dir / "history").glob("*.json"))) == 2
            time.sleep(2)
            assert follower.serving() == promoted2["model_sha256"]
        finally:
            follower.stop()
