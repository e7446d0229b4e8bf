"""Job variables are no way in: the work pool the project creates (deployments/pools.py, from
deployments/process-pool.json) lets a run set no `env`, `command` or `working_dir`.

Fast tests read the shipped template and render it the way a process worker does; the slow one
starts a real Prefect server, creates the pool with `python -m deployments.pools create`, deploys,
starts a process worker, and has a run ask for them both through the deployment's API (refused)
and through the lower-level flow-run API that does not validate job variables (no effect)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployments.pools import RUN_MAY_NOT_SET, TEMPLATE_PATH, shipped_template, template_problems

ROOT = Path(__file__).resolve().parents[1]
EVIL_URL = "http://127.0.0.1:9/attacker/v1"


class _NoClient:
    """Rendering a template without block references needs no server: any use fails loudly."""

    def __getattr__(self, name):
        raise AssertionError(f"the template needed the API client ({name})")


def _render(template: dict, job_variables: dict):
    from prefect.workers.process import ProcessJobConfiguration

    return asyncio.run(ProcessJobConfiguration.from_template_and_values(template, job_variables, client=_NoClient()))


ASKS = {"env": {"OPENAI_BASE_URL": EVIL_URL}, "env.OPENAI_API_BASE": EVIL_URL, "command": "touch /tmp/pwned",
        "working_dir": "/tmp"}


def test_shipped_template_exposes_no_env_command_or_working_dir():
    template = shipped_template()
    assert template_problems(template) == []
    for name in RUN_MAY_NOT_SET:
        assert name not in template["variables"]["properties"]
        assert name not in template["job_configuration"]
    assert template["variables"]["additionalProperties"] is False


def test_shipped_template_is_prefects_default_less_those_variables():
    """So a Prefect upgrade that changes the default shows here (regenerate the file, keep the cuts)."""
    from prefect.workers.process import ProcessWorker

    default = ProcessWorker.get_default_base_job_template()
    assert template_problems(default), "the default template exposes them: the reason this file exists"
    expected = json.loads(json.dumps(default))
    for name in RUN_MAY_NOT_SET:
        expected["variables"]["properties"].pop(name)
        expected["job_configuration"].pop(name)
    expected["variables"]["additionalProperties"] = False
    assert shipped_template() == expected


def test_job_variables_asked_by_a_run_have_no_effect_on_the_worker_config():
    from prefect.workers.process import ProcessWorker

    shipped = _render(shipped_template(), ASKS)
    assert "OPENAI_BASE_URL" not in shipped.env and "OPENAI_API_BASE" not in shipped.env
    assert shipped.command is None and shipped.working_dir is None
    # what the default template would have done with the same request
    default = _render(ProcessWorker.get_default_base_job_template(), ASKS)
    assert default.env["OPENAI_BASE_URL"] == EVIL_URL and default.command == "touch /tmp/pwned"


# -- slow: a real server, the pool from the shipped template, a process worker ------------------------

@pytest.mark.slow
def test_run_asking_for_env_or_command_gets_no_effect(tmp_path):
    from tests.test_deployment import Stack, http

    marker = tmp_path / "pwned"  # `command` would create it
    inject = tmp_path / "inject"  # `env` PYTHONPATH would make every python of the run import this
    inject.mkdir()
    seen = tmp_path / "env-seen"
    (inject / "sitecustomize.py").write_text(
        f"import os\nopen({str(seen)!r}, 'w').write(os.environ.get('OPENAI_BASE_URL', ''))\n")
    # the observation works: a python started with that environment writes the file
    subprocess.run([sys.executable, "-c", "pass"], env={**os.environ, "PYTHONPATH": str(inject)}, check=True)
    assert seen.exists()
    seen.unlink()

    stack = Stack(tmp_path / "stack", {}, None)
    (tmp_path / "stack").mkdir()
    asks = {"env": {"OPENAI_BASE_URL": EVIL_URL, "PYTHONPATH": str(inject)}, "command": f"touch {marker}",
            "working_dir": str(tmp_path)}
    t0 = time.time()
    try:
        stack.up()
        status, pool = http("GET", f"{stack.api}/work_pools/llamaduo-pool")
        assert status == 200 and pool["base_job_template"] == shipped_template(), "pool made from the shipped file"
        check = subprocess.run([sys.executable, "-m", "deployments.pools", "check"], cwd=ROOT, env=stack.env,
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stderr
        _, dep = http("GET", f"{stack.api}/deployments/name/llamaduo-migrate-file/llamaduo-migrate")
        params = {"config_path": "configs/no-such-config.yaml"}  # the run fails fast, in the flow

        # 1. through the deployment's API: refused, nothing created
        for name, value in asks.items():
            status, _ = http("POST", f"{stack.api}/deployments/{dep['id']}/create_flow_run",
                             {"parameters": params, "job_variables": {name: value}})
            assert status in (409, 422), (name, status)
        assert http("POST", f"{stack.api}/flow_runs/filter", {})[1] == [], "no run was created"

        # 2. through the flow-run API, which does not validate job variables: the worker ignores them
        status, run = http("POST", f"{stack.api}/flow_runs/", {
            "flow_id": dep["flow_id"], "deployment_id": dep["id"], "parameters": params,
            "work_pool_name": "llamaduo-pool", "job_variables": asks, "state": {"type": "SCHEDULED"}})
        assert status in (200, 201), status
        assert run["job_variables"] == asks, "the server stored them: only the template stands in the way"
        deadline = time.time() + 300
        while time.time() < deadline:
            _, fr = http("GET", f"{stack.api}/flow_runs/{run['id']}")
            if fr["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        worker_log = (tmp_path / "stack" / "worker.log").read_text()
        # the worker ran the flow (the engine, in the project), which refused the missing config
        assert fr["state"]["type"] == "FAILED", (fr["state"], worker_log[-3000:])
        assert "no-such-config.yaml" in json.dumps(fr["state"]) or "config file not found" in worker_log, \
            worker_log[-3000:]
    finally:
        stack.down()
    assert not marker.exists(), "the run's `command` ran on the worker"
    assert not seen.exists(), f"the run's `env` reached the flow process: {seen.read_text()!r}"
    print(f"\npool/job-variables check: {time.time() - t0:.0f}s")


def test_pool_module_cli_has_both_actions():
    from deployments.pools import main

    with pytest.raises(SystemExit):
        main(["delete"])
    assert TEMPLATE_PATH.is_file() and TEMPLATE_PATH.parent.name == "deployments"
