"""The work pools the deployments run on, created from the shipped base job templates.

    python -m deployments.pools create [--type process|docker|kubernetes] [--name NAME] [--variant cpu|gpu]
                                       [--image IMAGE] [--namespace NS] [--network NET]
    python -m deployments.pools check  [same options]     # exit 1 unless the pool has the shipped template

`create` with no options is the local setup: process pool `llamaduo-pool` from process-pool.json.
Split pools (deployments/prefect.yaml): `llamaduo-pool` (the parent flow + service stages; the
`llamaduo-migrate` deployment's) and `--name gpu` (fine-tuning, inference, export; the `gpu`
deployment's); `--variant` defaults to `gpu` for a pool named `gpu`, else `cpu`. `--pool` is `--name`.

| type       | cpu variant                 | gpu variant                     |
|------------|-----------------------------|---------------------------------|
| process    | process-pool.json           | process-pool.json (run the worker on a GPU host) |
| docker     | docker-pool.json            | docker-gpu-pool.json: device request nvidia x1 |
| kubernetes | kubernetes-pool.json        | kubernetes-gpu-pool.json: limits nvidia.com/gpu 1 |

Whoever may start a run may set the job variables a template declares. Prefect's default process
template declares `env` (e.g. `OPENAI_BASE_URL`: litellm would send the service key to another
host), `command` (a shell command on the worker) and `working_dir`; the Docker and Kubernetes
defaults also `image`, `volumes`, `privileged`, `container_create_kwargs`, `namespace`,
`service_account_name`, labels and annotations (Traefik routes by container label; kube2iam
grants IAM roles by pod annotation) — each a way to run other code or reach other credentials.
The shipped templates declare none of them (the server refuses a run that sets them:
`additionalProperties: false`). What they fix, they fix as literals in `job_configuration`: a
run that goes around the server's check (the flow-run API does not validate job variables) can
only fill placeholders, and every placeholder names a declared variable. There is no `env` in
any `job_configuration`: the worker merges a run's `env` into an `env` dict found there.

How keys reach a job (service stages need the provider key; GPU stages get none):
- process: the worker's own environment (the CPU worker has the key, the GPU worker does not).
- docker: the worker passes only its Prefect settings to containers, not its environment. The
  CPU template bind-mounts `/etc/llamaduo/store.env` and `/etc/llamaduo/service.env` of the Docker
  host read-only and its entrypoint exports them (`KEY=value` lines); the GPU template mounts
  only store.env. Not a Prefect Secret block: every API user can read those.
- kubernetes: Secrets of the job's namespace. CPU: `llamaduo-service-keys` via `secretKeyRef`
  (OPENAI_API_KEY, ANTHROPIC_API_KEY) and `llamaduo-store` via `envFrom` (AWS_* of the store);
  GPU: `llamaduo-store` only. Pods mount no service-account token.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE_PATH = HERE / "process-pool.json"
POOL_NAME = "llamaduo-pool"
TYPES = ("process", "docker", "kubernetes")
VARIANTS = ("cpu", "gpu")
TEMPLATE_FILES = {("process", "cpu"): "process-pool.json", ("process", "gpu"): "process-pool.json",
                  ("docker", "cpu"): "docker-pool.json", ("docker", "gpu"): "docker-gpu-pool.json",
                  ("kubernetes", "cpu"): "kubernetes-pool.json", ("kubernetes", "gpu"): "kubernetes-gpu-pool.json"}
# Never a variable nor a job_configuration key: a run would redirect credentials or run code.
RUN_MAY_NOT_SET = ("env", "command", "working_dir")
# Operator-fixed: literals in job_configuration, never variables (see the module docstring).
OPERATOR_FIXED = {
    "process": (),
    "docker": ("image", "registry_credentials", "networks", "network_mode", "volumes", "privileged",
               "container_create_kwargs", "labels"),
    "kubernetes": ("image", "namespace", "service_account_name", "cluster_config", "annotations", "labels",
                   "backoff_limit"),
}
# The provider key reaches service-stage jobs through these, and GPU jobs never.
SERVICE_KEY_SECRET = "llamaduo-service-keys"  # kubernetes Secret
SERVICE_KEY_FILE = "/etc/llamaduo/service.env"  # docker host file
STORE_SECRET = "llamaduo-store"
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DOCKER_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]*$")


def default_variant(name: str) -> str:
    return "gpu" if name == "gpu" else "cpu"


def template_path(pool_type: str = "process", variant: str = "cpu") -> Path:
    return HERE / TEMPLATE_FILES[(pool_type, variant)]


def shipped_template(pool_type: str = "process", variant: str = "cpu") -> dict:
    return json.loads(template_path(pool_type, variant).read_text(encoding="utf-8"))


def guess_type(template: dict) -> str:
    job = template.get("job_configuration") or {}
    if "job_manifest" in job:
        return "kubernetes"
    return "docker" if "container_create_kwargs" in job or "image" in job else "process"


def _placeholders(node) -> set[str]:
    """Placeholder names as the server finds them (it reads the JSON text of each value)."""
    from prefect.utilities.templating import find_placeholders

    return {p.name for p in find_placeholders(json.dumps(node))}


def template_problems(template: dict, pool_type: str | None = None) -> list[str]:
    """Why a base job template would let a run set what it may not (empty = none)."""
    pool_type = pool_type or guess_type(template)
    problems = []
    variables = template.get("variables") or {}
    declared = set(variables.get("properties") or {})
    job = template.get("job_configuration") or {}
    for name in RUN_MAY_NOT_SET:
        if name in declared:
            problems.append(f"variables.properties.{name}: a run may set it")
        if name in job:
            why = "the worker merges a run's env into an env dict" if name == "env" else "leave it to the worker"
            problems.append(f"job_configuration.{name}: in the template ({why})")
    for name in OPERATOR_FIXED[pool_type]:
        if name in declared:
            problems.append(f"variables.properties.{name}: a run may set it (operator-fixed on a {pool_type} pool)")
    if variables.get("additionalProperties") is not False:
        problems.append("variables.additionalProperties is not false: the server accepts unknown job variables")
    # a placeholder without a declared variable is filled from whatever a run sends (unvalidated);
    # prefect.blocks/prefect.variables can be rewritten by any API user; $VARS are the worker's environment
    for name in sorted(_placeholders(job) - declared):
        problems.append(f"job_configuration placeholder {{{{ {name} }}}}: not a declared variable")
    return problems


def _container(template: dict) -> dict:
    return template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]


def gpu_count(template: dict, pool_type: str | None = None) -> int:
    """GPUs each job of the template asks for (-1: all the host has)."""
    pool_type = pool_type or guess_type(template)
    job = template.get("job_configuration") or {}
    if pool_type == "kubernetes":
        pod = job["job_manifest"]["spec"]["template"]["spec"]
        return sum(int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
                   for c in pod.get("containers", []))
    if pool_type == "docker":
        requests = (job.get("container_create_kwargs") or {}).get("device_requests") or []
        counts = [int(r.get("count", 0)) for r in requests if any("gpu" in caps for caps in r.get("capabilities", []))]
        return -1 if -1 in counts else sum(counts)
    return 0


def secret_references(template: dict, pool_type: str | None = None) -> list[str]:
    """Secrets a job gets: `secretKeyRef:NAME/KEY`, `envFrom:NAME`, `volume:NAME` (kubernetes) or the
    host files it mounts (docker); a process job gets its worker's environment (nothing listed)."""
    pool_type = pool_type or guess_type(template)
    job = template.get("job_configuration") or {}
    refs = []
    if pool_type == "kubernetes":
        pod = job["job_manifest"]["spec"]["template"]["spec"]
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for e in c.get("env") or []:
                if ref := (e.get("valueFrom") or {}).get("secretKeyRef"):
                    refs.append(f"secretKeyRef:{ref['name']}/{ref['key']}")
            for e in c.get("envFrom") or []:
                if ref := e.get("secretRef"):
                    refs.append(f"envFrom:{ref['name']}")
        for v in pod.get("volumes") or []:
            if "secret" in v:
                refs.append(f"volume:{v['secret'].get('secretName')}")
    elif pool_type == "docker":
        refs = [v.split(":", 1)[0] for v in job.get("volumes") or []]
    return refs


def variant_problems(template: dict, pool_type: str, variant: str) -> list[str]:
    """A GPU template asks for exactly one GPU and gets no provider key; a CPU one asks for none."""
    if pool_type == "process":
        return []
    problems = []
    gpus = gpu_count(template, pool_type)
    if variant == "gpu" and gpus != 1:
        problems.append(f"a GPU job must ask for exactly 1 GPU, this one asks for {gpus}")
    if variant == "cpu" and gpus:
        problems.append(f"a CPU job asks for {gpus} GPU(s)")
    if variant == "gpu":
        key_refs = [r for r in secret_references(template, pool_type) if SERVICE_KEY_SECRET in r or r == SERVICE_KEY_FILE]
        if key_refs:
            problems.append(f"a GPU job gets the provider key: {', '.join(key_refs)}")
    return problems


def with_operator_settings(template: dict, pool_type: str, image: str | None = None,
                           namespace: str | None = None, network: str | None = None) -> dict:
    """The template with the operator's image / namespace / network written in as literals."""
    given = {k: v for k, v in (("image", image), ("namespace", namespace), ("network", network)) if v is not None}
    allowed = {"process": set(), "docker": {"image", "network"}, "kubernetes": {"image", "namespace"}}[pool_type]
    if extra := set(given) - allowed:
        raise ValueError(f"a {pool_type} pool takes no {', '.join(sorted(extra))}")
    # a value is written into the template: refuse anything that could become a placeholder
    checks = {"image": _IMAGE, "namespace": _K8S_NAME, "network": _DOCKER_NETWORK}
    for key, value in given.items():
        if not checks[key].match(value):
            raise ValueError(f"{key} {value!r} is not a valid {key} name")
    out = copy.deepcopy(template)
    job = out["job_configuration"]
    if pool_type == "docker":
        if image:
            job["image"] = image
        if network:
            job["networks"] = [network]
    elif pool_type == "kubernetes":
        if image:
            _container(out)["image"] = image
        if namespace:
            job["namespace"] = namespace
            job["job_manifest"]["metadata"]["namespace"] = namespace
    return out


def operator_settings(template: dict, pool_type: str) -> dict:
    """The operator settings a template holds (to compare a pool on the server with the shipped file)."""
    job = template.get("job_configuration") or {}
    try:
        if pool_type == "docker":
            nets = job.get("networks") or []
            return {"image": job.get("image"), "network": nets[0] if len(nets) == 1 else None}
        if pool_type == "kubernetes":
            return {"image": _container(template).get("image"), "namespace": job.get("namespace")}
    except (KeyError, IndexError, TypeError):
        pass
    return {}


def build_template(pool_type: str = "process", variant: str = "cpu", **settings) -> dict:
    """The base job template to install (pure: no server): shipped file + operator settings, checked."""
    if pool_type not in TYPES or variant not in VARIANTS:
        raise ValueError(f"unknown pool type/variant {pool_type!r}/{variant!r}")
    template = with_operator_settings(shipped_template(pool_type, variant), pool_type, **settings)
    problems = template_problems(template, pool_type) + variant_problems(template, pool_type, variant)
    if problems:  # an edited copy: refuse to install it
        raise ValueError(f"{template_path(pool_type, variant)}: " + "; ".join(problems))
    return template


def pool_request(name: str = POOL_NAME, pool_type: str = "process", variant: str | None = None, **settings):
    """The `WorkPoolCreate` that `create` sends (pure: no server)."""
    from prefect.client.schemas.actions import WorkPoolCreate

    variant = variant or default_variant(name)
    return WorkPoolCreate(name=name, type=pool_type, base_job_template=build_template(pool_type, variant, **settings),
                          description=f"llamaduo {variant.upper()} pool ({template_path(pool_type, variant).name})")


def create(pool: str = POOL_NAME, pool_type: str = "process", variant: str | None = None, **settings) -> None:
    """Create the pool from the shipped template, or reset an existing one's template."""
    from prefect.client.orchestration import get_client

    try:
        request = pool_request(pool, pool_type, variant, **settings)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    with get_client(sync_client=True) as client:
        made = client.create_work_pool(request, overwrite=True)
    if made.type != pool_type:  # overwrite keeps an existing pool's type
        raise SystemExit(f"work pool {pool!r} exists with type {made.type!r}; delete it or pick another name")


def check(pool: str = POOL_NAME, pool_type: str | None = None, variant: str | None = None, **settings) -> list[str]:
    """What is wrong with the pool on the server (empty = it has the shipped template)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_work_pool(pool)
    variant = variant or default_variant(pool)
    if pool_type and found.type != pool_type:
        return [f"type is {found.type!r}, not {pool_type!r}"]
    if found.type not in TYPES:
        return [f"type is {found.type!r}: not one of {', '.join(TYPES)}"]
    template = found.base_job_template
    problems = template_problems(template, found.type) + variant_problems(template, found.type, variant)
    if not problems:
        # the operator settings are the pool's own unless given: compare everything else
        held = {k: v for k, v in operator_settings(template, found.type).items() if v is not None}
        wanted = {**held, **{k: v for k, v in settings.items() if v is not None}}
        try:
            expected = build_template(found.type, variant, **wanted)
        except ValueError as exc:
            return [str(exc)]
        if template != expected:
            problems.append(f"the base job template differs from {template_path(found.type, variant).name}"
                            + (f" with {wanted}" if wanted else ""))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.pools", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["create", "check"])
    parser.add_argument("--name", "--pool", dest="name", default=POOL_NAME, help="work pool name (default %(default)s)")
    parser.add_argument("--type", dest="pool_type", choices=TYPES, default=None,
                        help="create: default process; check: the pool's own")
    parser.add_argument("--variant", choices=VARIANTS, default=None, help="default: gpu for a pool named gpu, else cpu")
    parser.add_argument("--image", help="docker/kubernetes: the job image (operator-fixed)")
    parser.add_argument("--namespace", help="kubernetes: the jobs' namespace (where its Secrets live)")
    parser.add_argument("--network", help="docker: the network job containers join (e.g. the compose network)")
    args = parser.parse_args(argv)
    settings = {"image": args.image, "namespace": args.namespace, "network": args.network}
    variant = args.variant or default_variant(args.name)
    if args.action == "create":
        pool_type = args.pool_type or "process"
        create(args.name, pool_type, variant, **settings)
        print(f"work pool {args.name!r}: {pool_type}, {variant}, base job template "
              f"{template_path(pool_type, variant).name} (runs may not set "
              f"{', '.join(RUN_MAY_NOT_SET + OPERATOR_FIXED[pool_type])})")
        return 0
    problems = check(args.name, args.pool_type, variant, **settings)
    for p in problems:
        print(f"work pool {args.name!r}: {p}", file=sys.stderr)
    if not problems:
        print(f"work pool {args.name!r}: has the shipped {variant} base job template")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
