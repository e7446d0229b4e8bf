"""A real Prefect server, a process work pool, a worker, and a migration triggered by plain HTTP.

Slow (a server start, a deploy, a worker, a flow run): marked `slow`, run by `.ci/run`
through `make test-integration`. Processes are started in their own sessions and killed
by PID at the end.
"""

import json
import shutil
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.fake_service import FakeBehaviour, FakeOpenAIServer
from tests.test_e2e import rows

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AUTH = "admin:s3cret-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, auth: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    if auth:
        import base64

        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, {}


class Stack:
    """prefect server + work pool + deployment + worker, all on loopback, cleaned up by PID."""

    def __init__(self, tmp: Path, env: dict, auth: str | None):
        self.tmp, self.auth, self.procs = tmp, auth, []
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.env = {**os.environ, **env, "PREFECT_HOME": str(tmp / "prefect_home"), "PREFECT_API_URL": self.api,
                    "PREFECT_LOCAL_STORAGE_PATH": str(tmp / "results"), "LLAMADUO_PROJECT_DIR": str(ROOT),
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
        if auth:
            self.env["PREFECT_SERVER_API_AUTH_STRING"] = auth
            self.env["PREFECT_API_AUTH_STRING"] = auth

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.tmp / f"{name}.log", "w")
        self.procs.append(subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def cli(self, *args: str) -> str:
        out = subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                             timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout

    def up(self) -> None:
        self.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                              str(self.port)])
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if http("GET", f"{self.api}/health", auth=self.auth)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            raise AssertionError("server did not start: " + (self.tmp / "server.log").read_text()[-3000:])
        # the project's pool setup: the shipped base job template (no env/command/working_dir for runs)
        out = subprocess.run([sys.executable, "-m", "deployments.pools", "create"], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        self.cli("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "llamaduo-migrate")
        self.start("worker", [str(BIN / "prefect"), "worker", "start", "--pool", "llamaduo-pool"])

    def down(self) -> None:
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def trigger_and_wait(stack: Stack, params: dict, key: str) -> dict:
    status, dep = http("GET", f"{stack.api}/deployments/name/llamaduo-migrate-file/llamaduo-migrate", auth=stack.auth)
    assert status == 200, status
    assert dep["enforce_parameter_schema"] is True
    body = {"parameters": params, "idempotency_key": key}
    url = f"{stack.api}/deployments/{dep['id']}/create_flow_run"
    status, run = http("POST", url, body, auth=stack.auth)
    assert status in (200, 201), status
    for _ in range(5):  # a caller retries a server error with the same key: that is what the key is for
        status, again = http("POST", url, body, auth=stack.auth)
        if status < 500:
            break
        time.sleep(2)
    assert status in (200, 201), (status, again)
    assert again["id"] == run["id"], "the same idempotency key must not start a second migration"
    deadline = time.time() + 600
    while time.time() < deadline:
        _, fr = http("GET", f"{stack.api}/flow_runs/{run['id']}", auth=stack.auth)
        if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(2)
    assert fr["state"]["type"] == "COMPLETED", (fr["state"], (stack.tmp / "worker.log").read_text()[-4000:])
    return fr


def test_deploy_trigger_by_http_and_auth(tmp_path, tiny_model_dir):
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(0, 20)))
    # a deployment run may only name configs and run directories inside the project
    project_tmp = ROOT / "runs" / f"test-deploy-{os.getpid()}"
    project_tmp.mkdir(parents=True, exist_ok=True)
    try:
        _deploy_trigger(tmp_path, project_tmp, tiny_model_dir)
    finally:
        shutil.rmtree(project_tmp, ignore_errors=True)


def _keep_current_schedule_and_trigger(stack, tmp_path, fake):
    """The keep-current deployment: its nightly schedule and its capture trigger ship inactive; `llamaduo
    capture` emits llamaduo.capture.rows every --event-every rows to the Prefect server; once an operator
    enables the trigger, such an event creates a run of the deployment (Prefect's automations, nothing
    home-made). The pool is paused first: the run is created, not executed (that is the migration's own test)."""
    from tests.test_capture import Capture

    stack.cli("--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "llamaduo-keep-current")
    _, dep = http("GET", f"{stack.api}/deployments/name/llamaduo-migrate-file/llamaduo-keep-current")
    assert [s["active"] for s in dep["schedules"]] == [False] and dep["parameters"]["workdir"].endswith("{scheduled}")
    automations = [a for a in http("POST", f"{stack.api}/automations/filter", {})[1]
                   if "llamaduo-keep-current" in json.dumps(a)]
    assert len(automations) == 1 and automations[0]["enabled"] is False
    assert http("PATCH", f"{stack.api}/work_pools/llamaduo-pool", {"is_paused": True})[0] in (200, 204)
    assert http("PATCH", f"{stack.api}/automations/{automations[0]['id']}", {"enabled": True})[0] in (200, 204)
    time.sleep(5)  # the triggers service reloads automations

    config = {"name": "captured", "data": {"path": str(tmp_path / "capture")},
              "service": {"model": "openai/fake-teacher", "api_base": fake.url, "api_key_env": "FAKE_SERVICE_KEY"}}
    (tmp_path / "capture.yaml").write_text(yaml.safe_dump(config))
    capture = Capture(tmp_path / "capture.yaml", tmp_path / "capture", "--event-every", "2",
                      env={"PREFECT_API_URL": stack.api, "PREFECT_HOME": str(tmp_path / "capture-home")})
    try:
        client = capture.client()
        for i in range(5):
            client.chat.completions.create(model="fake-teacher", messages=[{"role": "user", "content": f"q {i}"}])
    finally:
        assert capture.stop()[0] == 0
    deadline, runs, events = time.time() + 120, [], []
    while time.time() < deadline and not (runs and len(events) == 2):
        events = http("POST", f"{stack.api}/events/filter",
                      {"filter": {"event": {"name": ["llamaduo.capture.rows"]}}})[1].get("events", [])
        runs = http("POST", f"{stack.api}/flow_runs/filter",
                    {"deployments": {"id": {"any_": [dep["id"]]}}})[1]
        time.sleep(2)
    assert sorted(e["payload"]["rows_recorded"] for e in events) == [2, 4], events
    assert runs, "the enabled trigger started no run of llamaduo-keep-current"
    for run in runs:
        http("DELETE", f"{stack.api}/flow_runs/{run['id']}")
    http("PATCH", f"{stack.api}/work_pools/llamaduo-pool", {"is_paused": False})


def _deploy_trigger(tmp_path, project_tmp, tiny_model_dir):
    with FakeOpenAIServer(FakeBehaviour(pool=rows(1000, 200))) as fake:
        config = {
            "name": "deployed", "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 0,
                                         "split_seed": 1},
            "service": {"model": "openai/fake-teacher", "api_base": fake.url, "api_key_env": "FAKE_SERVICE_KEY"},
            "synth": {"rows_per_round": 16, "pairs_per_request": 4}, "judge": {"repeats": 1},
            "student": {"model": str(tiny_model_dir)},
            "train": {"epochs": 1, "batch_size": 4, "learning_rate": 0.01, "max_length": 96, "lora_r": 8,
                      "lora_alpha": 16},
            "infer": {"max_new_tokens": 4, "batch_size": 4}, "export": {"gguf": []},
            "gate": {"threshold": 50, "max_rounds": 3}, "budget": {"max_calls": 400, "max_usd": 0}}
        (project_tmp / "deployed.yaml").write_text(yaml.safe_dump(config))
        params = {"config_path": str(project_tmp / "deployed.yaml"), "overrides": ["gate.threshold=50"],
                  "workdir": str(project_tmp / "run")}
        env = {"FAKE_SERVICE_KEY": "sk-deploy"}
        t0 = time.time()
        stack = Stack(tmp_path / "open", env, None)
        (tmp_path / "open").mkdir()
        try:
            stack.up()
            # the typed form: Prefect itself refuses a threshold off every metric's scale
            _, dep = http("GET", f"{stack.api}/deployments/name/llamaduo-migrate-file/llamaduo-migrate")
            status, _ = http("POST", f"{stack.api}/deployments/{dep['id']}/create_flow_run",
                             {"parameters": {**params, "settings": {"gate_threshold": 150}}})
            assert status in (409, 422), status
            assert http("POST", f"{stack.api}/flow_runs/filter", {})[1] == [], "no run was created"
            schema = dep["parameter_openapi_schema"]
            assert "settings" in schema["properties"] and "RunSettings" in json.dumps(schema)
            fr = trigger_and_wait(stack, {**params, "settings": {"max_rounds": 3}}, "caller-retry-1")
            _keep_current_schedule_and_trigger(stack, tmp_path, fake)
        finally:
            stack.down()
        summary = json.loads((project_tmp / "run" / "summary.json").read_text())
        assert summary["passed"] is True and len(summary["rounds"]) >= 2
        # the flow's result (JSON-serialised) names the summary: read it from result storage
        record = json.loads((tmp_path / "open" / "results" / fr["state"]["data"]["storage_key"].split("/")[-1])
                            .read_text())
        assert str(project_tmp / "run" / "summary.json") in json.dumps(record)
        print(f"\nopen server: {time.time() - t0:.0f}s")

        t1 = time.time()
        secured = Stack(tmp_path / "auth", env, AUTH)
        (tmp_path / "auth").mkdir()
        try:
            secured.up()
            assert http("GET", f"{secured.api}/deployments/name/llamaduo-migrate-file/llamaduo-migrate")[0] == 401
            trigger_and_wait(secured, params, "caller-retry-2")  # same workdir: every stage cached
        finally:
            secured.down()
        print(f"auth server: {time.time() - t1:.0f}s")
