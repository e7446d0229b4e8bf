"""Serve the migration flow without a work pool: `python deployments/serve.py`.

Creates the deployment `llamaduo-migrate-file/llamaduo-serve` on the configured Prefect
server and runs its flow runs in this process (PREFECT_API_URL must point at a server).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.migrate import migrate_config_file  # noqa: E402

if __name__ == "__main__":
    migrate_config_file.serve(
        name="llamaduo-serve",
        tags=["llamaduo"],
        parameters={"config_path": "configs/demo.yaml"},
        limit=1,  # one migration at a time in this process
    )
