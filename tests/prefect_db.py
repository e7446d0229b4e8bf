"""Read a finished run's own Prefect database (PREFECT_HOME=<run>/.prefect) in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_PRELUDE = ("import asyncio, json\n"
            "from prefect.client.orchestration import get_client\n"
            "async def main():\n"
            "    async with get_client() as c:\n")


def query(workdir: Path, body: str):
    """`body` runs inside `async with get_client() as c:` (indented 8 spaces) and must
    `print(json.dumps(...))` its answer as the last line."""
    code = _PRELUDE + "".join(f"        {line}\n" for line in body.strip().splitlines()) + "asyncio.run(main())\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(Path(workdir) / ".prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
