"""The pools an operator applies: Docker and Kubernetes base job templates (CPU and GPU variants),
`deployments/pools.py` building them, and the compose stack (MinIO, a CPU and a GPU worker).

Fast tests read the shipped files. Where prefect-docker / prefect-kubernetes are importable, the
templates are also rendered by the workers' own job-configuration classes, with a run that asks
for everything it may not have (the flow-run API does not validate job variables). The slow test
creates every pool on a real `prefect server start` (SQLite) and has the server refuse a run's
`env`/`image` on them."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from deployments import pools

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
CONTAINER_FILES = {(t, v): pools.template_path(t, v) for t in ("docker", "kubernetes") for v in pools.VARIANTS}
EVIL = "http://127.0.0.1:9/attacker/v1"
# Every way a run could ask for what it may not have: env (both spellings), a command, another
# image, namespace, service account, host mounts, privileges, raw container options, labels.
ASKS = {"env": {"OPENAI_BASE_URL": EVIL}, "env.OPENAI_API_BASE": EVIL, "command": "touch /tmp/pwned",
        "image": "evil/image:1", "namespace": "kube-system", "service_account_name": "admin",
        "volumes": ["/:/host"], "privileged": True, "container_create_kwargs": {"cap_add": ["ALL"]},
        "networks": ["host"], "network_mode": "host", "labels": {"traefik.enable": "true"},
        "annotations": {"iam.amazonaws.com/role": "admin"}, "backoff_limit": 6, "working_dir": "/tmp"}
PROVIDER_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GROQ_API_KEY", "MISTRAL_API_KEY",
                 "COHERE_API_KEY", "TOGETHERAI_API_KEY", "AZURE_API_KEY", "HF_TOKEN")


def _all_templates():
    for (t, v), path in sorted(CONTAINER_FILES.items()):
        yield t, v, path, json.loads(path.read_text(encoding="utf-8"))


def _walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")
    yield path, node


# -- the shipped templates ----------------------------------------------------------------------

def test_every_template_is_json_the_server_accepts_with_no_way_in():
    from prefect.server.schemas.actions import validate_base_job_template

    assert set(CONTAINER_FILES.values()) | {pools.TEMPLATE_PATH} == {
        p for p in (ROOT / "deployments").glob("*.json")}, "a template file pools.py does not know"
    for t, v, path, template in _all_templates():
        assert set(template) == {"job_configuration", "variables"}, path.name
        validate_base_job_template(template)  # the server's own check (placeholders are declared)
        assert pools.template_problems(template, t) == [], path.name
        props = template["variables"]["properties"]
        assert template["variables"]["additionalProperties"] is False
        for name in pools.RUN_MAY_NOT_SET + pools.OPERATOR_FIXED[t]:
            assert name not in props, (path.name, name)
        assert "env" not in template["job_configuration"] and "command" not in template["job_configuration"]
        assert not set(ASKS) & set(props), (path.name, set(ASKS) & set(props))


def test_template_problems_finds_each_way_in():
    """The checker itself: each edit a careless operator could make is named."""
    base = pools.shipped_template("kubernetes", "cpu")
    env_var = copy.deepcopy(base)
    env_var["variables"]["properties"]["env"] = {"type": "object"}
    env_var["job_configuration"]["env"] = "{{ env }}"
    undeclared = copy.deepcopy(base)  # a placeholder a run can fill although the server never offers it
    pools._container(undeclared)["image"] = "{{ image }}"
    open_schema = copy.deepcopy(base)
    open_schema["variables"].pop("additionalProperties")
    fixed = copy.deepcopy(base)
    fixed["variables"]["properties"]["namespace"] = {"type": "string"}
    found = {name: pools.template_problems(t, "kubernetes")
             for name, t in [("env", env_var), ("undeclared", undeclared), ("open", open_schema), ("fixed", fixed)]}
    assert any("properties.env" in p for p in found["env"]) and any("job_configuration.env" in p for p in found["env"])
    assert found["undeclared"] == ["job_configuration placeholder {{ image }}: not a declared variable"]
    assert found["open"] == ["variables.additionalProperties is not false: the server accepts unknown job variables"]
    assert found["fixed"] == ["variables.properties.namespace: a run may set it (operator-fixed on a kubernetes pool)"]


def test_gpu_templates_request_exactly_one_gpu_and_cpu_templates_none():
    for t, v, path, template in _all_templates():
        assert pools.gpu_count(template, t) == (1 if v == "gpu" else 0), path.name
        assert pools.variant_problems(template, t, v) == []
        assert pools.variant_problems(template, t, "cpu" if v == "gpu" else "gpu"), "the check tells them apart"
    k8s = pools._container(pools.shipped_template("kubernetes", "gpu"))
    assert k8s["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in json.dumps(pools.shipped_template("kubernetes", "cpu"))
    docker = pools.shipped_template("docker", "gpu")["job_configuration"]["container_create_kwargs"]
    assert docker["device_requests"] == [{"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}]
    assert "device_requests" not in json.dumps(pools.shipped_template("docker", "cpu"))


def test_gpu_variant_is_the_cpu_variant_plus_a_gpu_less_the_key():
    """So the two files cannot drift apart: only the GPU request and the key differ."""
    cpu, gpu = pools.shipped_template("kubernetes", "cpu"), pools.shipped_template("kubernetes", "gpu")
    expected = copy.deepcopy(cpu)
    pod = expected["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["containers"][0].pop("env")
    pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 1
    pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert gpu == expected
    cpu, gpu = pools.shipped_template("docker", "cpu"), pools.shipped_template("docker", "gpu")
    expected = copy.deepcopy(cpu)
    job = expected["job_configuration"]
    job["volumes"] = [m for m in job["volumes"] if not m.startswith(pools.SERVICE_KEY_FILE + ":")]
    job["container_create_kwargs"]["device_requests"] = [{"driver": "nvidia", "count": 1, "capabilities": [["gpu"]]}]
    assert gpu == expected


def test_kubernetes_cpu_gets_the_key_only_by_secret_key_ref_and_gpu_no_key():
    cpu = pools.shipped_template("kubernetes", "cpu")
    env = pools._container(cpu)["env"]
    names = {e["name"] for e in env}
    assert names == {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
    for e in env:  # never a literal value: the key lives in the cluster's Secret, not in the template
        assert set(e) == {"name", "valueFrom"} and set(e["valueFrom"]) == {"secretKeyRef"}
        assert e["valueFrom"]["secretKeyRef"] == {"name": pools.SERVICE_KEY_SECRET, "key": e["name"], "optional": True}
    assert pools.secret_references(cpu, "kubernetes") == [
        f"secretKeyRef:{pools.SERVICE_KEY_SECRET}/OPENAI_API_KEY",
        f"secretKeyRef:{pools.SERVICE_KEY_SECRET}/ANTHROPIC_API_KEY", f"envFrom:{pools.STORE_SECRET}"]
    gpu = pools.shipped_template("kubernetes", "gpu")
    text = json.dumps(gpu)
    assert pools.SERVICE_KEY_SECRET not in text and "secretKeyRef" not in text
    assert not any(k in text for k in PROVIDER_KEYS)
    # the only secret a GPU job sees is the store's credentials (it writes adapters there)
    assert pools.secret_references(gpu, "kubernetes") == [f"envFrom:{pools.STORE_SECRET}"]
    for template in (cpu, gpu):
        pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
        assert "volumes" not in pod and "args" not in pod["containers"][0] and "command" not in pod["containers"][0]


def test_docker_cpu_mounts_the_key_file_read_only_and_gpu_does_not():
    cpu, gpu = pools.shipped_template("docker", "cpu"), pools.shipped_template("docker", "gpu")
    assert pools.secret_references(cpu, "docker") == ["/etc/llamaduo/store.env", pools.SERVICE_KEY_FILE]
    assert pools.secret_references(gpu, "docker") == ["/etc/llamaduo/store.env"]
    assert "service.env" not in json.dumps(gpu) and not any(k in json.dumps(gpu) for k in PROVIDER_KEYS)
    for template in (cpu, gpu):
        job = template["job_configuration"]
        assert all(v.endswith(":ro") for v in job["volumes"])
        assert job["privileged"] is False and job["network_mode"] is None and job["registry_credentials"] is None
        assert job["labels"] == {} and job["networks"] == []


def test_docker_entrypoint_exports_the_mounted_files_then_runs_the_job(tmp_path):
    """The entrypoint the templates give job containers, run by /bin/sh on a stand-in folder."""
    entry = pools.shipped_template("docker", "cpu")["job_configuration"]["container_create_kwargs"]["entrypoint"]
    assert entry[:2] == ["/bin/sh", "-c"] and "/run/llamaduo/*.env" in entry[2]
    (tmp_path / "store.env").write_text("AWS_ENDPOINT_URL=http://minio:9000\nAWS_ACCESS_KEY_ID=llamaduo\n")
    (tmp_path / "service.env").write_text("OPENAI_API_KEY='sk-test with space'\n")
    (tmp_path / "absent.env").mkdir()  # docker makes a folder where a bind-mounted host file is missing
    script = entry[2].replace("/run/llamaduo", str(tmp_path))
    probe = "import json, os; print(json.dumps({k: os.environ.get(k) for k in ('AWS_ENDPOINT_URL', " \
            "'AWS_ACCESS_KEY_ID', 'OPENAI_API_KEY')}))"
    out = subprocess.run([entry[0], "-c", script, entry[3], sys.executable, "-c", probe], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "llamaduo",
                                      "OPENAI_API_KEY": "sk-test with space"}


# -- deployments/pools.py: the requests, without a server ---------------------------------------

def test_pool_request_for_each_type_and_variant_without_a_server():
    from prefect.client.schemas.actions import WorkPoolCreate

    default = pools.pool_request()  # what `python -m deployments.pools create` sends, as before
    assert isinstance(default, WorkPoolCreate)
    assert (default.name, default.type) == ("llamaduo-pool", "process")
    assert default.base_job_template == json.loads(pools.TEMPLATE_PATH.read_text())
    for t in pools.TYPES:
        for name in ("cpu", "gpu"):
            req = pools.pool_request(name, t)  # the variant follows the name
            assert (req.name, req.type) == (name, t)
            assert req.base_job_template == pools.shipped_template(t, name)
            assert pools.gpu_count(req.base_job_template, t) == (1 if name == "gpu" and t != "process" else 0)
    explicit = pools.pool_request("gpu-a100", "kubernetes", "gpu")
    assert pools.gpu_count(explicit.base_job_template, "kubernetes") == 1


def test_operator_settings_are_written_in_and_checked():
    k8s = pools.pool_request("gpu", "kubernetes", image="registry.example.com/llamaduo:1.2", namespace="llm").base_job_template
    job = k8s["job_configuration"]
    assert pools._container(k8s)["image"] == "registry.example.com/llamaduo:1.2"
    assert job["namespace"] == job["job_manifest"]["metadata"]["namespace"] == "llm"
    assert pools.operator_settings(k8s, "kubernetes") == {"image": "registry.example.com/llamaduo:1.2",
                                                          "namespace": "llm"}
    docker = pools.pool_request("cpu", "docker", image="llamaduo-worker:2", network="docker_default").base_job_template
    assert docker["job_configuration"]["image"] == "llamaduo-worker:2"
    assert docker["job_configuration"]["networks"] == ["docker_default"]
    for bad in [dict(image="x {{ env }}"), dict(image="{{ image }}"), dict(namespace="Kube System")]:
        with pytest.raises(ValueError):
            pools.pool_request("cpu", "kubernetes", **bad)
    with pytest.raises(ValueError, match="takes no namespace"):
        pools.pool_request("cpu", "docker", namespace="llm")
    with pytest.raises(ValueError, match="takes no image"):
        pools.pool_request("cpu", "process", image="x:1")


def test_an_edited_template_is_refused(monkeypatch):
    real = pools.shipped_template

    def edited(pool_type="process", variant="cpu"):
        t = real(pool_type, variant)
        t["variables"]["properties"]["image"] = {"type": "string"}
        return t

    monkeypatch.setattr(pools, "shipped_template", edited)
    with pytest.raises(ValueError, match="properties.image"):
        pools.pool_request("cpu", "docker")
    monkeypatch.setattr(pools, "shipped_template", real)

    def two_gpus(pool_type="process", variant="cpu"):
        t = real(pool_type, variant)
        pools._container(t)["resources"]["limits"]["nvidia.com/gpu"] = 2
        return t

    monkeypatch.setattr(pools, "shipped_template", two_gpus)
    with pytest.raises(ValueError, match="exactly 1 GPU"):
        pools.pool_request("gpu", "kubernetes")


def test_cli_options():
    with pytest.raises(SystemExit):
        pools.main(["create", "--type", "ecs"])
    with pytest.raises(SystemExit):
        pools.main(["create", "--variant", "tpu"])


# -- the workers' own classes, where installed ---------------------------------------------------

class _NoClient:
    """Rendering a template without block references needs no server: any use fails loudly."""

    def __getattr__(self, name):
        raise AssertionError(f"the template needed the API client ({name})")


def _worker(pool_type):
    if pool_type == "docker":
        mod = pytest.importorskip("prefect_docker.worker", reason="prefect-docker not installed: worker checks skipped")
        return mod.DockerWorker
    mod = pytest.importorskip("prefect_kubernetes.worker",
                              reason="prefect-kubernetes not installed: worker checks skipped")
    return mod.KubernetesWorker


def _prepared(worker, template, asks):
    from prefect.client.schemas.objects import FlowRun

    config = asyncio.run(worker.job_configuration.from_template_and_values(template, asks, client=_NoClient()))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="quiet-run"))
    return config


@pytest.mark.parametrize("pool_type", ["docker", "kubernetes"])
def test_templates_have_the_workers_default_shape(pool_type):
    worker = _worker(pool_type)
    default = worker.get_default_base_job_template()
    for variant in pools.VARIANTS:
        ours = pools.shipped_template(pool_type, variant)
        assert set(ours["job_configuration"]) == set(default["job_configuration"]) - {"env", "command"}
        for name, schema in ours["variables"]["properties"].items():
            theirs = default["variables"]["properties"][name]
            assert {k: v for k, v in schema.items() if k != "default"} == \
                   {k: v for k, v in theirs.items() if k != "default"}, name
        # the defaults, less what runs may not set, still render into a valid configuration
        _prepared(worker, ours, {})


def test_kubernetes_worker_renders_no_run_asks_and_keeps_the_secret_refs():
    worker = _worker("kubernetes")
    for variant in pools.VARIANTS:
        config = _prepared(worker, pools.shipped_template("kubernetes", variant), ASKS)
        manifest = config.job_manifest
        c = manifest["spec"]["template"]["spec"]["containers"][0]
        assert c["image"] == "llamaduo-worker:latest" and manifest["metadata"]["namespace"] == "default"
        assert config.namespace == "default"
        assert c["args"] == ["prefect", "flow-run", "execute"], "the worker's own command, not the run's"
        assert "serviceAccountName" not in manifest["spec"]["template"]["spec"]
        text = json.dumps(manifest)
        for leak in (EVIL, "pwned", "evil/image", "kube-system", "traefik", "iam.amazonaws.com", "/host"):
            assert leak not in text, (variant, leak)
        refs = [e for e in c["env"] if "valueFrom" in e]
        names = {e["name"] for e in c["env"]}
        assert "PREFECT__FLOW_RUN_ID" in names, "the worker's own variables still reach the job"
        assert manifest["spec"]["backoffLimit"] == 0
        if variant == "cpu":
            assert {e["name"] for e in refs} == {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}
            assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
        else:
            assert refs == [] and c["resources"]["limits"] == {"nvidia.com/gpu": 1}
        assert c["envFrom"] == [{"secretRef": {"name": "llamaduo-store", "optional": True}}]
    # what the default template would have done with the same run
    default = _prepared(worker, worker.get_default_base_job_template(), ASKS)
    assert default.job_manifest["spec"]["template"]["spec"]["containers"][0]["image"] == "evil/image:1"


def test_docker_worker_builds_a_container_with_no_run_asks():
    worker = _worker("docker")
    from docker.models.containers import _create_container_args

    class _Engine:  # the one engine call container settings make (version: host-gateway support)
        def version(self):
            return {"Version": "27.3.1"}

    for variant in pools.VARIANTS:
        config = _prepared(worker, pools.shipped_template("docker", variant), ASKS)
        settings = worker._build_container_settings(worker.__new__(worker), _Engine(), config)
        assert settings["image"] == "llamaduo-worker:latest" and settings["privileged"] is False
        assert settings["command"] == "prefect flow-run execute", "the worker's own command, not the run's"
        assert EVIL not in json.dumps(settings["environment"]) and "OPENAI_BASE_URL" not in settings["environment"]
        assert "PREFECT__FLOW_RUN_ID" in settings["environment"]
        create = _create_container_args({**settings, "version": "1.44"})
        host = create["host_config"]
        assert create["entrypoint"][:2] == ["/bin/sh", "-c"] and create["image"] == "llamaduo-worker:latest"
        assert not host.get("Privileged") and "CapAdd" not in host
        binds = sorted(host["Binds"])
        if variant == "cpu":
            assert binds == ["/etc/llamaduo/service.env:/run/llamaduo/service.env:ro",
                             "/etc/llamaduo/store.env:/run/llamaduo/store.env:ro"]
            assert "DeviceRequests" not in host
        else:
            assert binds == ["/etc/llamaduo/store.env:/run/llamaduo/store.env:ro"]
            assert [(r["Driver"], r["Count"], r["Capabilities"], r["DeviceIDs"]) for r in host["DeviceRequests"]] == [
                ("nvidia", 1, [["gpu"]], [])]


# -- the compose stack ---------------------------------------------------------------------------

def _compose():
    return yaml.safe_load(COMPOSE.read_text())


def _env(service) -> dict:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(e.split("=", 1) for e in env)


def test_compose_has_minio_bucket_init_and_cpu_and_gpu_workers():
    services = _compose()["services"]
    assert {"postgres", "prefect-server", "minio", "minio-init", "worker-cpu", "worker-gpu"} <= set(services)
    minio, init = services["minio"], services["minio-init"]
    assert minio["image"].startswith("minio/minio:RELEASE.") and "server" in minio["command"]
    assert any(v.endswith(":/data") for v in minio["volumes"])
    assert init["image"].startswith("minio/mc:RELEASE.") and init.get("restart", "no") == "no"
    script = " ".join(init["entrypoint"] + init.get("command", []))
    assert "mc mb" in script and "--ignore-existing" in script and "mc admin user add" in script
    assert "minio" in init["depends_on"]
    for name, pool in (("worker-cpu", "llamaduo-pool"), ("worker-gpu", "gpu")):
        w = services[name]
        cmd = " ".join(w["command"])
        assert f"deployments.pools create --name {pool}" in cmd and f"worker start --pool {pool} --type process" in cmd
        assert cmd.index("deployments.pools create") < cmd.index("worker start")
        env = _env(w)
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env)
        assert "MINIO_ROOT" not in json.dumps(env), "workers use the store user, not MinIO's root"
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert w["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["worker-cpu"], "the service-stage worker needs no GPU"


def test_compose_gpu_worker_gets_no_provider_key():
    services = _compose()["services"]
    gpu, cpu = services["worker-gpu"], services["worker-cpu"]
    assert "env_file" not in gpu and "env_file" not in cpu, "an env file would hand every key to both"
    text = json.dumps(gpu)
    assert not any(k in text for k in PROVIDER_KEYS), [k for k in PROVIDER_KEYS if k in text]
    assert not re.search(r"_API_KEY|_TOKEN\b", text)
    assert {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"} <= set(_env(cpu))


def test_compose_store_secrets_are_guarded_and_ports_on_loopback():
    compose = _compose()
    text = COMPOSE.read_text()
    for name in ("MINIO_ROOT_PASSWORD", "LLAMADUO_S3_SECRET_KEY"):
        refs = re.findall(r"\$\{" + name + r"(:?[?-]?)", text)
        assert refs and set(refs) == {":?"}, f"{name} is used without a :? guard"
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all interfaces"
    assert "miniodata" in compose["volumes"]


# -- slow: a real server accepts the pools -------------------------------------------------------

@pytest.mark.slow
def test_real_server_accepts_every_pool_and_refuses_run_asks(tmp_path):
    from tests.test_deployment import Stack, http

    stack = Stack(tmp_path, {}, None)
    t0 = time.time()
    try:
        stack.start("server", [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(stack.port)])
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if http("GET", f"{stack.api}/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        else:
            raise AssertionError("server did not start: " + (tmp_path / "server.log").read_text()[-3000:])
        started = time.time() - t0

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "deployments.pools", *args], cwd=ROOT, env=stack.env,
                                  capture_output=True, text=True, timeout=120)

        for t in ("docker", "kubernetes"):
            for name in ("cpu", "gpu"):
                pool = f"{t}-{name}"
                out = cli("create", "--type", t, "--name", pool, "--variant", name, "--image", "reg.example/llamaduo:1")
                assert out.returncode == 0, out.stderr[-2000:]
                status, found = http("GET", f"{stack.api}/work_pools/{pool}")
                assert status == 200 and found["type"] == t
                assert found["base_job_template"] == pools.build_template(t, name, image="reg.example/llamaduo:1")
                ok = cli("check", "--name", pool, "--variant", name)
                assert ok.returncode == 0, ok.stderr
                wrong = cli("check", "--name", pool, "--variant", "gpu" if name == "cpu" else "cpu")
                assert wrong.returncode == 1 and "GPU" in wrong.stderr
        # the server enforces each template's variables on a deployment's runs
        status, flow = http("POST", f"{stack.api}/flows/", {"name": "pool-probe"})
        assert status in (200, 201)
        status, dep = http("POST", f"{stack.api}/deployments/", {
            "name": "probe", "flow_id": flow["id"], "work_pool_name": "kubernetes-gpu",
            "entrypoint": "flows/migrate.py:migrate_config_file", "enforce_parameter_schema": False})
        assert status in (200, 201), status
        for name, value in [("env", {"OPENAI_BASE_URL": EVIL}), ("image", "evil/image:1"), ("command", "sh"),
                            ("namespace", "kube-system"), ("service_account_name", "admin")]:
            status, _ = http("POST", f"{stack.api}/deployments/{dep['id']}/create_flow_run",
                             {"job_variables": {name: value}})
            assert status in (409, 422), (name, status)
        status, run = http("POST", f"{stack.api}/deployments/{dep['id']}/create_flow_run",
                           {"job_variables": {"memory_limit": "8Gi"}})
        assert status in (200, 201), "a declared variable is still accepted"
        # an existing pool of another type is not silently kept
        clash = cli("create", "--type", "docker", "--name", "kubernetes-cpu")
        assert clash.returncode != 0 and "exists with type 'kubernetes'" in clash.stderr
    finally:
        stack.down()
    print(f"\nserver start {started:.0f}s, pools created and checked in {time.time() - t0 - started:.0f}s")
