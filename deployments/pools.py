"""The work pool the deployment runs on, created from the shipped base job template.

    python -m deployments.pools create [--pool llamaduo-pool]   # create, or reset an existing pool
    python -m deployments.pools check  [--pool llamaduo-pool]   # exit 1 unless the pool has it

Prefect's default process template lets whoever may start a run set the job variables `env`
(e.g. `OPENAI_BASE_URL`: litellm would send the service key to another host), `command` (a shell
command on the worker) and `working_dir`. `process-pool.json` is that default without them: they
are not variables (the server refuses a run that sets them: `additionalProperties: false`) and
not in the job configuration (so even a run that got past the server could not set them; an
`env` *dict* there would be merged with the run's `env` by the worker, so there is none). The
worker's environment is what the worker was started with.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TEMPLATE_PATH = Path(__file__).resolve().with_name("process-pool.json")
POOL_NAME = "llamaduo-pool"
# Job variables that would let a run redirect credentials or run code on the worker.
RUN_MAY_NOT_SET = ("env", "command", "working_dir")


def shipped_template() -> dict:
    return json.loads(TEMPLATE_PATH.read_text(encoding="utf-8"))


def template_problems(template: dict) -> list[str]:
    """Why a base job template would let a run set what it may not (empty = none)."""
    problems = []
    variables = template.get("variables") or {}
    for name in RUN_MAY_NOT_SET:
        if name in (variables.get("properties") or {}):
            problems.append(f"variables.properties.{name}: a run may set it")
        if name in (template.get("job_configuration") or {}):
            problems.append(f"job_configuration.{name}: set from the template (an env dict merges the run's env)")
    if variables.get("additionalProperties") is not False:
        problems.append("variables.additionalProperties is not false: the server accepts unknown job variables")
    return problems


def create(pool: str = POOL_NAME) -> None:
    """Create the process pool from the shipped template, or reset an existing one's template."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    template = shipped_template()
    if problems := template_problems(template):  # an edited copy: refuse to install it
        raise SystemExit(f"{TEMPLATE_PATH}: " + "; ".join(problems))
    with get_client(sync_client=True) as client:
        made = client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template),
                                       overwrite=True)
    if made.type != "process":  # overwrite keeps an existing pool's type
        raise SystemExit(f"work pool {pool!r} exists with type {made.type!r}; delete it or pick another name")


def check(pool: str = POOL_NAME) -> list[str]:
    """What is wrong with the pool on the server (empty = it has the shipped template)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        found = client.read_work_pool(pool)
    problems = template_problems(found.base_job_template)
    if found.type != "process":
        problems.append(f"type is {found.type!r}, not 'process'")
    if not problems and found.base_job_template != shipped_template():
        problems.append(f"the base job template differs from {TEMPLATE_PATH.name}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.pools", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["create", "check"])
    parser.add_argument("--pool", default=POOL_NAME)
    args = parser.parse_args(argv)
    if args.action == "create":
        create(args.pool)
        print(f"work pool {args.pool!r}: process, base job template {TEMPLATE_PATH.name} "
              f"(runs may not set {', '.join(RUN_MAY_NOT_SET)})")
        return 0
    problems = check(args.pool)
    for p in problems:
        print(f"work pool {args.pool!r}: {p}", file=sys.stderr)
    if not problems:
        print(f"work pool {args.pool!r}: has the shipped base job template")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
