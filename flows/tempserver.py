"""The temporary Prefect server of `llamaduo run`: started by the CLI process right after its
preflight, so it boots while the flow process imports; its SQLite database copied from a
migrated empty one instead of migrated; stopped without Prefect's 5 s wait.

Prefect starts its own temporary server from inside the flow process at the first API call (a
fresh SQLite file: ~11 s of migrations, then ~10 s more before /health answers, on 2 cores), and
waits up to 5 s for it to stop at exit (benchmarks/README.md, demo overhead). This is the same
server (uvicorn serving `prefect.server.api.server:create_app`, UI off, ephemeral services) run
by `python -m flows.tempserver`, which ends with the CLI process (a lifeline, as the flow process
has). The migrated empty database is made once per Prefect version by `make install`
(`python -m flows.tempserver template`) under `$LLAMADUO_CACHE` (default ~/.cache/llamaduo);
without it, a new run's database is migrated as Prefect would.

Used only where Prefect would start a temporary server itself: no PREFECT_API_URL and no
Prefect profile (the CLI then keeps Prefect's home inside the run directory).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

# What Prefect's own temporary server sets (prefect.server.api.server.SubprocessASGIServer).
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def template_path() -> Path:
    """The migrated empty database for this Prefect version (schema and block types)."""
    from llamaduo.models import cache_root

    return cache_root() / f"prefect-{version('prefect')}-empty.db"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url(db: Path) -> str:
    return f"sqlite+aiosqlite:///{db}"


class TemporaryServer:
    """A Prefect API server on loopback over the SQLite database `db`, for the lifetime of this
    process (it ends with it). `start` returns at once; `wait_healthy` blocks until it answers."""

    def __init__(self, db: Path, *, from_template: bool = True):
        self.db, self.from_template = Path(db), from_template
        self.port: int | None = None
        self.child = None
        self.copied = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "TemporaryServer":
        from llamaduo.childproc import Child

        self.db.parent.mkdir(parents=True, exist_ok=True)
        template = template_path()
        if self.from_template and not self.db.exists() and template.exists():
            tmp = self.db.with_name(self.db.name + ".copying")
            shutil.copyfile(template, tmp)
            os.replace(tmp, self.db)  # a crash mid-copy never leaves a half database under the real name
            self.copied = True
        self.port = _free_port()
        env = {**os.environ, **SERVER_ENV, "PREFECT_API_DATABASE_CONNECTION_URL": _database_url(self.db),
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        if self.copied:  # the template is this Prefect version's schema with every block type registered
            env.update(PREFECT_API_BLOCKS_REGISTER_ON_START="false", PREFECT_API_DATABASE_MIGRATE_ON_START="false")
        for key in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"):
            env.pop(key, None)
        # Its own session: a terminal's Ctrl-C reaches the CLI, which stops the flow first, then this.
        self.child = Child([sys.executable, "-m", "flows.tempserver", "serve", str(self.port)], env=env,
                           new_session=True, stdout=subprocess.DEVNULL)
        return self

    def wait_healthy(self, timeout_s: float = 90.0) -> None:
        wait_for_api(self.api_url, timeout_s, exited=self.child.proc.poll)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (uvicorn stops its services and closes the database), SIGKILL after `grace_s`."""
        if self.child is not None:
            self.child.stop(grace_s)
            self.child = None


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for_api(api_url: str, timeout_s: float = 90.0, exited=lambda: None) -> None:
    """Block until the server at `api_url` answers: in the flow process, the one the CLI started
    (it boots while this process imports). `exited`: the server process's exit status, if known."""
    deadline = time.monotonic() + timeout_s
    while not healthy(api_url):
        if (code := exited()) is not None:
            raise RuntimeError(f"the temporary Prefect server exited with status {code} before answering")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the temporary Prefect server at {api_url} did not answer within {timeout_s:.0f} s")
        time.sleep(0.1)


def make_template(dest: Path | None = None) -> Path:
    """Migrate an empty database once (start a server on a new file, stop it cleanly) and keep it
    as this Prefect version's template; a no-op when it exists."""
    dest = dest or template_path()
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    server = TemporaryServer(work, from_template=False).start()
    try:
        server.wait_healthy(timeout_s=180)
    finally:
        server.stop(grace_s=30)
    import sqlite3

    with sqlite3.connect(work) as db:  # fold the write-ahead log into the file: one file to copy
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    for leftover in (work.with_name(work.name + "-wal"), work.with_name(work.name + "-shm")):
        leftover.unlink(missing_ok=True)
    os.replace(work, dest)
    return dest


def _serve(port: int) -> None:
    from llamaduo.childproc import hold_lifeline

    hold_lifeline()  # ends with the CLI process, even a SIGKILLed one
    import uvicorn

    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
                log_level="error", lifespan="on")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(int(sys.argv[2]))
    elif sys.argv[1:2] == ["template"]:
        print(make_template())
    else:
        raise SystemExit("usage: python -m flows.tempserver template | serve PORT")
