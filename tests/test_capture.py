"""`llamaduo capture`: the `openai` client talks to the capture pass-through in front of the fake
service; every answered exchange is in a committed shard (also after `kill -9`), redacted; a run's
`data.path` on the capture location reads a snapshot that a re-run reads again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from llamaduo.capture_store import CaptureStore
from tests.fake_service import FakeBehaviour, FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-capture-test-0123456789abcdef"


def _config(tmp_path: Path, server_url: str, **data) -> Path:
    cfg = {"name": "captured",
           "data": {"path": str(tmp_path / "store"), "test_size": 4, "val_size": 0, **data},
           "service": {"model": "openai/fake-teacher", "api_base": server_url, "api_key_env": "FAKE_SERVICE_KEY",
                       "timeout_s": 10},
           "budget": {"max_usd": 0},
           "capture": {"redact_patterns": [r"ACCT-\d+"]}}
    path = tmp_path / "capture.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Capture:
    """`llamaduo capture` as a process on a free port."""

    def __init__(self, config: Path, store: Path, *extra: str, env: dict | None = None):
        self.ready = store.parent / f"ready-{time.time_ns()}.json"
        env = {**os.environ, "FAKE_SERVICE_KEY": KEY, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "capture", str(config), "--store", str(store),
                                      "--port", "0", "--ready-file", str(self.ready), *extra], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not self.ready.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                out, err = self.proc.communicate(timeout=5) if self.proc.poll() is not None else ("", "")
                raise AssertionError(f"capture did not start: {out}{err}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{json.loads(self.ready.read_text())['port']}/v1"

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url, api_key="unused-on-loopback", max_retries=0, timeout=20)

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, err


def _records(store: Path) -> list[dict]:
    return CaptureStore(store).snapshot().records


@pytest.fixture
def fake():
    with FakeOpenAIServer(FakeBehaviour(plain_answer="Your parcel ships on Monday.")) as server:
        yield server


def test_exchanges_are_recorded_redacted_and_streamed(tmp_path, fake):
    config = _config(tmp_path, fake.url)
    cap = Capture(config, tmp_path / "store")
    try:
        client = cap.client()
        plain = client.chat.completions.create(
            model="fake-teacher", messages=[{"role": "system", "content": "You are support."},
                                            {"role": "user", "content": "Mail jo.doe@example.com or call +44 20 7946 "
                                             f"0958 about ACCT-99812, key {KEY}"}],
            extra_headers={"X-LlamaDuo-Category": "shipping"})
        assert plain.choices[0].message.content == "Your parcel ships on Monday."
        assert plain.model == "fake-teacher"
        chunks = list(client.chat.completions.create(model="openai/fake-teacher", stream=True,
                                                     messages=[{"role": "user", "content": "Where is it?"}]))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Your parcel ships on Monday."
        from openai import BadRequestError, NotFoundError

        with pytest.raises(BadRequestError) as refused:  # a parameter not passed through is refused, not dropped
            client.chat.completions.create(model="fake-teacher", messages=[{"role": "user", "content": "x"}],
                                           extra_body={"guided_json": {}})
        assert "guided_json" in str(refused.value)
        with pytest.raises(NotFoundError):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        health = __import__("httpx").get(cap.url.removesuffix("/v1") + "/health").json()
        assert health["recorded"] == 2 and health["unrecorded"] == 0
    finally:
        code, err = cap.stop()
    assert code == 0 and "2 exchange(s) recorded" in err
    records = _records(tmp_path / "store")
    assert len(records) == 2
    by_stream = {r["messages"][-1]["content"]: r for r in records}
    first = next(r for r in records if r["category"] == "shipping")
    text = json.dumps(first)
    for secret in ("jo.doe@example.com", "7946", "ACCT-99812", KEY):
        assert secret not in text
    assert "[EMAIL]" in text and "[PHONE]" in text and "[REDACTED]" in text
    assert by_stream["Where is it?"]["answer"] == "Your parcel ships on Monday."
    stored = "".join(p.read_text() for p in (tmp_path / "store").rglob("*") if p.is_file())
    assert KEY not in stored


def test_kill_9_loses_no_answered_exchange(tmp_path):
    with FakeOpenAIServer(FakeBehaviour(latency_s=0.02)) as server:
        config = _config(tmp_path, server.url)
        cap = Capture(config, tmp_path / "store")
        answered: list[str] = []
        errors: list[str] = []
        stop = threading.Event()

        def traffic(worker: int):
            client = cap.client()
            i = 0
            while not stop.is_set():
                text = f"worker {worker} request {i}"
                try:
                    client.chat.completions.create(model="fake-teacher", messages=[{"role": "user", "content": text}])
                except Exception as exc:  # noqa: BLE001 - the process was killed under this request
                    errors.append(repr(exc))
                    return
                answered.append(text)
                i += 1

        threads = [threading.Thread(target=traffic, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        deadline = time.time() + 120
        while len(answered) < 40 and time.time() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.05)
        cap.proc.send_signal(signal.SIGKILL)  # mid-traffic: six requests are in flight
        cap.proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(answered) >= 40, (errors[:3], cap.proc.stderr.read()[-2000:], cap.url)
    kept = {r["messages"][-1]["content"] for r in _records(tmp_path / "store")}
    assert set(answered) <= kept, sorted(set(answered) - kept)[:5]


def test_validate_reads_the_capture_and_names_what_is_unusable(tmp_path, fake):
    config = _config(tmp_path, fake.url, stratify=True)
    store = CaptureStore(tmp_path / "store")
    store.create("openai/fake-teacher")
    rows = [{"id": f"x{i}", "messages": [{"role": "user", "content": f"question {i}"}], "answer": f"answer {i}",
             "finish_reason": "stop", "category": "billing" if i % 2 else "returns"} for i in range(12)]
    rows.append({"id": "cut", "messages": [{"role": "user", "content": "long"}], "answer": "a", "finish_reason": "length",
                 "category": "billing"})
    rows.append({"id": "turns", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                             {"role": "user", "content": "c"}], "answer": "d", "category": "billing"})
    store.commit(rows)
    env = {**os.environ, "FAKE_SERVICE_KEY": KEY}
    out = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(config)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "14 exchanges in 1 shards" in out.stdout and "12 usable" in out.stdout
    assert "multi turn 1" in out.stdout and "truncated 1" in out.stdout
    assert "4 test rows" in out.stdout
    store.commit([{"id": "untagged", "messages": [{"role": "user", "content": "q"}], "answer": "a"}])
    out = subprocess.run([sys.executable, "-m", "flows.cli", "validate", str(config)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "untagged" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "store" / "shards" / ".half-written.jsonl.tmp").write_text('{"id": "torn", "messa')
    assert len(CaptureStore(tmp_path / "store").snapshot().records) == 15  # an uncommitted shard is never read
