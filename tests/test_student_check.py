"""The student is checked before anything is spent: a Hub id must exist, be reachable and (gated)
open to HF_TOKEN; offline (HF_HUB_OFFLINE=1) it must be in the local cache. Through the real CLI
(`llamaduo validate`), against a small local HTTP server standing in for the Hub (huggingface_hub
honours HF_ENDPOINT), and against the real Hub address on this machine without internet."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from flows.cli import main
from llamaduo.errors import InputError
from llamaduo.models import SMOLLM2, resolve_student
from tests.test_bad_inputs import _base, _check, _listing, _student, write

EXISTING, GATED = "acme/tiny-student", "acme/gated-student"


class FakeHub:
    """`GET /api/models/<id>`: 200 for EXISTING and GATED (gated: manual), 404 (RepoNotFound) otherwise;
    `/auth-check` refuses GATED unless the request carries the token `hf_granted`."""

    def __init__(self):
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                hub.requests.append(self.path)
                path = self.path.split("?")[0]
                repo = path.removeprefix("/api/models/").removesuffix("/auth-check")
                if repo not in (EXISTING, GATED):
                    return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                if path.endswith("/auth-check"):
                    if repo == GATED and self.headers.get("Authorization") != "Bearer hf_granted":
                        return self._send(403, {"error": "gated"}, {"X-Error-Code": "GatedRepo"})
                    return self._send(200, {})
                self._send(200, {"id": repo, "modelId": repo, "private": False,
                                 "gated": "manual" if repo == GATED else False, "sha": "0" * 40})

            def _send(self, status, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch):
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield fake


def _validate(tmp_path, capsys, student: str) -> tuple[int, str]:
    _student(tmp_path)
    cfg = _base(tmp_path)
    cfg["student"]["model"] = student
    path = write(tmp_path, "cfg.yaml", yaml.safe_dump(cfg))
    rc = main(["validate", path])
    return rc, capsys.readouterr().err


def test_hub_id_that_does_not_exist_is_refused_by_validate(hub, tmp_path, capsys):
    _student(tmp_path)
    cfg = _base(tmp_path)
    cfg["student"]["model"] = "nobody-xyz/no-such-model"
    path = write(tmp_path, "cfg.yaml", yaml.safe_dump(cfg))
    before = _listing(tmp_path)
    err = _check(capsys, main(["validate", path]), ["student.model", "nobody-xyz/no-such-model", "no model"],
                 tmp_path, before)
    assert "Traceback" not in err
    assert any("/api/models/nobody-xyz/no-such-model" in r for r in hub.requests), "the Hub was asked"


def test_hub_id_that_exists_passes_validate(hub, tmp_path, capsys):
    rc, err = _validate(tmp_path, capsys, EXISTING)
    assert rc == 0, err
    assert any(f"/api/models/{EXISTING}" in r for r in hub.requests)


def test_gated_hub_model_needs_a_token_with_access(hub, monkeypatch):
    with pytest.raises(InputError, match="gated.*HF_TOKEN") as e:
        resolve_student(GATED, check=True)
    assert e.value.field == "student.model"
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    resolve_student(GATED, check=True)


def test_unreachable_hub_is_an_input_error_quickly(tmp_path, capsys, monkeypatch):
    """A refused connection (a closed loopback port) names the Hub and the HF_HUB_OFFLINE way out."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    rc, err = _validate(tmp_path, capsys, "acme/any-model")
    assert rc == 2 and "student.model" in err and "cannot be reached" in err and "HF_HUB_OFFLINE=1" in err, err
    assert "Traceback" not in err


def test_real_hub_address_without_internet(tmp_path, capsys, monkeypatch):
    """This machine has no internet: the real Hub address fails within the timeout, as exit 2 naming
    student.model (where a machine is online, the id simply does not exist there: exit 2 as well)."""
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "3")
    t0 = time.monotonic()
    rc, err = _validate(tmp_path, capsys, "nobody-xyz/no-such-model")
    elapsed = time.monotonic() - t0
    assert rc == 2 and "student.model" in err and ("cannot be reached" in err or "no model" in err), err
    assert elapsed < 15, f"{elapsed:.1f} s"
    print(f"\nunreachable Hub found in {elapsed:.2f} s: {err.strip()[:160]}")


def test_offline_hub_id_must_be_in_the_local_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # never asked
    with pytest.raises(InputError, match="not in the local Hugging Face cache") as e:
        resolve_student(EXISTING, check=True)
    assert e.value.field == "student.model"
    # the cache layout huggingface_hub writes: refs/main -> snapshots/<commit>/config.json
    repo = cache / ("models--" + EXISTING.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / "config.json").write_text("{}")
    resolve_student(EXISTING, check=True)


def test_local_student_and_smollm2_need_no_network(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any Hub call would fail
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    resolve_student(SMOLLM2, check=True)
    resolve_student(str(tiny_model_dir), check=True)


def test_resolving_a_checked_hub_id_mid_run_asks_the_hub_nothing(monkeypatch):
    # The preflight looked it up; a Hub outage during the run must not become an input error.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert resolve_student("nobody-xyz/no-such-model") == "nobody-xyz/no-such-model"
