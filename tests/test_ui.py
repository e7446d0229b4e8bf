"""What a person sees in the Prefect UI, in a real headless browser (Debian's chromium driven by
Playwright for Python): a tiny migration runs against a real `prefect server start`, then the
flow run page lists the round subflows and the round report shows the verdict, the metrics
table and the plot (its image really loaded). Screenshots land in runs/ui-screenshots/.

`make test-ui` installs what it needs (apt chromium, PyPI playwright); without a browser the
test skips and says why."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.fake_service import FakeBehaviour, FakeOpenAIServer
from tests.test_e2e import rows

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "runs" / "ui-screenshots"
pytestmark = pytest.mark.slow


def _browser():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.skip("no chromium on this machine (make test-ui installs Debian's chromium package)")
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright for Python is not installed (make test-ui installs it)")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api"})
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if _get(f"{api}/health") is True:
                break
        except OSError:
            pass
        time.sleep(1)
    else:
        raise AssertionError((tmp_path / "server.log").read_text()[-3000:])
    yield api
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_round_report_plot_and_subflows_visible_in_the_ui(tmp_path, tiny_model_dir, server):
    exe = _browser()
    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(0, 20)))
    config = {"name": "ui", "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 0,
                                     "split_seed": 1},
              "service": {"model": "openai/fake-teacher", "api_key_env": "FAKE_SERVICE_KEY", "rpm": 6000},
              "synth": {"rows_per_round": 16, "pairs_per_request": 4}, "judge": {"embedding_model": None},
              "student": {"model": str(tiny_model_dir)},
              "train": {"epochs": 1, "batch_size": 4, "learning_rate": 0.01, "max_length": 96, "lora_r": 8,
                        "lora_alpha": 16, "quantization": "none"},
              "infer": {"max_new_tokens": 4, "batch_size": 4}, "export": {"gguf": []},
              "gate": {"threshold": 50, "max_rounds": 2, "baseline": True}, "budget": {"max_usd": 0}}
    with FakeOpenAIServer(FakeBehaviour(pool=rows(1000, 200))) as fake:
        config["service"]["api_base"] = fake.url
        (tmp_path / "ui.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({"PREFECT_API_URL": server, "FAKE_SERVICE_KEY": "sk-ui",
                    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results")})
        out = subprocess.run([sys.executable, "-m", "flows.cli", "run", str(tmp_path / "ui.yaml"), "--workdir",
                              str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode in (0, 3), out.stderr[-3000:]
    flow_runs = _post(f"{server}/flow_runs/filter", {})
    parent = next(r for r in flow_runs if r["name"] == "migrate-ui")
    assert "round-1" in {r["name"] for r in flow_runs}
    artifacts = {a["key"]: a for a in _post(f"{server}/artifacts/filter", {}) if a.get("key")}
    assert {"round-0-report", "round-1-report", "round-1-items"} <= set(artifacts)
    base = server.removesuffix("/api")

    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/runs/flow-run/{parent['id']}", wait_until="networkidle")
        page.get_by_text("Subflow Runs", exact=True).first.click()
        page.get_by_text("round-1").first.wait_for(timeout=30000)
        page.screenshot(path=str(SHOTS / "flow-run-subflows.png"), full_page=True)

        report = artifacts["round-1-report"]
        page.goto(f"{base}/artifacts/artifact/{report['id']}", wait_until="networkidle")
        page.get_by_text("Gate").first.wait_for(timeout=30000)
        text = page.inner_text("body")
        assert "Round 1:" in text and ("PASS" in text or "fail" in text)
        assert "judge_score" in text and "criterion" in text, "metrics and gate tables rendered"
        img = page.locator("img[alt='metrics per round']").first
        img.wait_for(timeout=30000)
        page.wait_for_function("img => img.complete", arg=img.element_handle(), timeout=30000)
        width = img.evaluate("img => img.naturalWidth")
        img.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "round-1-report.png"), full_page=True)
        assert width > 0, "the plot image did not load in the browser"

        items = artifacts["round-1-items"]
        page.goto(f"{base}/artifacts/artifact/{items['id']}", wait_until="networkidle")
        page.get_by_text("judge_reason").first.wait_for(timeout=30000)
        page.screenshot(path=str(SHOTS / "round-1-items.png"), full_page=True)
        browser.close()
    print(f"\nscreenshots: {SHOTS}; plot natural width {width}px")
