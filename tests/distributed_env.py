"""Real services on loopback for issue 18's distributed tests (`make test-distributed`).

PostgreSQL (a throwaway cluster), a `prefect server start` on it, moto's S3 server, process work
pools made from the project's hardened template, and process workers in their own process
groups. Every process started here is stopped at teardown, also when the test fails.

Use in a test module (import the fixtures so pytest finds them):

    from tests.distributed_env import (postgres_url, prefect_server, s3_server, start_worker,  # noqa: F401
                                       create_process_pool)

    @pytest.mark.slow
    @pytest.mark.distributed
    def test_something(prefect_server, s3_server, start_worker):
        create_process_pool(prefect_server, "gpu")
        gpu = start_worker(prefect_server, "gpu", env=s3_server.env())
        gpu.wait_online()
        ...
        gpu.kill(signal.SIGKILL)          # the worker *and* the flow run it started (see Worker.kill)
        print(gpu.log_path.read_text())   # on failure

Imported fixtures are cached per module that imports them (one server per module); registering
this file as a plugin (`pytest_plugins = ["tests.distributed_env"]` in tests/conftest.py) would
share one server across modules.

The context managers beneath the fixtures (PostgresCluster, PrefectServer, S3Server) can be used
directly where a test needs its own instance or must check what is left after teardown.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from llamaduo.lifeline import descendants

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Every process started here (and everything it starts, in any session) carries this variable
# with its own value: teardown finds them in /proc even after they were re-parented.
TAG_VAR = "LLAMADUO_TEST_PROC_TAG"
_DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


# -- processes ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def tagged(tag: str) -> list[int]:
    """Live processes whose environment has TAG_VAR=tag."""
    needle = f"{TAG_VAR}={tag}".encode()
    out = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                pid = int(environ.parent.name)
                if pid != os.getpid() and running(pid):
                    out.append(pid)
        except (OSError, ValueError):
            continue
    return out


def _signal(pids, sig: int) -> None:
    for p in pids:
        with contextlib.suppress(OSError):
            os.kill(p, sig)


def _wait_gone(pids, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(running(p) for p in pids):
            return True
        time.sleep(0.1)
    return not any(running(p) for p in pids)


class Proc:
    """A subprocess in its own session (so its process group is its own), output to a log file."""

    def __init__(self, args: list[str], env: dict, log_path: Path, cwd: Path = ROOT):
        self.tag = uuid.uuid4().hex
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(args, cwd=cwd, env={**env, TAG_VAR: self.tag}, stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.popen.pid
        self.seen: set[int] = {self.pid}  # every pid of this tree observed so far (for assertions)

    def pids(self) -> list[int]:
        """The live process tree: group members, descendants, and tagged processes in other sessions."""
        found = {self.pid, *descendants(self.pid), *tagged(self.tag)} if running(self.pid) else set(tagged(self.tag))
        live = sorted(p for p in found if running(p))
        self.seen.update(live)
        return live

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL, tree: bool = True) -> list[int]:
        """Send `sig` to the process group, and with `tree` to every process it started (a flow run
        started by a process worker is in its own session: signalling the group alone leaves it
        running). Returns the pids signalled."""
        pids = self.pids() if tree else [self.pid]
        with contextlib.suppress(OSError):
            os.killpg(self.pid, sig)
        if tree:
            _signal(pids, sig)
        if sig == signal.SIGKILL:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=10)
        return pids

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the group (a graceful shutdown), then SIGKILL to whatever of the tree is left."""
        pids = self.pids()
        if self.alive():
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace_s)
        pids = sorted(set(pids) | set(self.pids()))
        if not _wait_gone(pids, 2.0):
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
            _signal(self.pids(), signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        _wait_gone(self.seen, 10.0)
        self._log.close()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# -- PostgreSQL ----------------------------------------------------------------------------------------

def find_postgres_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: Debian's /usr/lib/postgresql/N/bin
    (newest first), else PATH."""
    def version(p: Path) -> float:
        try:
            return float(p.parent.name)
        except ValueError:
            return 0.0

    for bin_dir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True):
        if all((bin_dir / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return bin_dir
    on_path = [shutil.which(b) for b in ("initdb", "pg_ctl", "postgres")]
    if all(on_path) and len({Path(p).resolve().parent for p in on_path}) == 1:
        return Path(on_path[0]).resolve().parent
    return None


class PostgresCluster:
    """A throwaway cluster: initdb into a fresh temp dir, `pg_ctl start` on a free loopback port
    (unix socket in the temp dir), database `prefect`. Runs as an unprivileged user when we are root
    (postgres refuses root): `postgres` if it exists, else `nobody`.

    Not for durability: fsync is off (a throwaway cluster; locking and concurrency are unchanged)."""

    DATABASE = "prefect"
    ROLE = "prefect"

    def __init__(self, bin_dir: Path | None = None):
        self.bin_dir = bin_dir or find_postgres_bin()
        if self.bin_dir is None:
            raise FileNotFoundError("no PostgreSQL binaries (initdb, pg_ctl, postgres) in /usr/lib/postgresql/*/bin "
                                    "or on PATH; Debian: apt-get install postgresql")
        self.port: int | None = None
        self.base: Path | None = None
        self.postmaster_pids: set[int] = set()
        self.start_s: float | None = None

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    @property
    def log_path(self) -> Path:
        return self.base / "postgres.log"

    @property
    def url(self) -> str:
        # trust authentication on loopback: no password to leak into logs
        return f"postgresql+asyncpg://{self.ROLE}@127.0.0.1:{self.port}/{self.DATABASE}"

    def _as_owner(self) -> dict:
        """subprocess arguments that run a command as the cluster's owner."""
        if os.geteuid() != 0:
            return {}
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                pw = pwd.getpwnam(name)
                return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(self.base)}
        out = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], cwd=self.base, env=env, capture_output=True,
                             text=True, timeout=timeout, **self._as_owner())
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({out.returncode}): {out.stdout[-2000:]}"
                               f"{out.stderr[-2000:]}\n{self._log_tail()}")
        return out

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self) -> list[int]:
        """The postmaster and its backends/auxiliary processes."""
        pm = self._postmaster_pid()
        if pm:
            self.postmaster_pids.add(pm)
        live = [p for pm in self.postmaster_pids for p in (pm, *descendants(pm)) if running(p)]
        return sorted(set(live))

    def __enter__(self) -> "PostgresCluster":
        t0 = time.monotonic()
        # not under pytest's tmp (mode 0700, root's): the cluster's owner must reach its directory
        self.base = Path(tempfile.mkdtemp(prefix="llamaduo-pg-"))
        try:
            self.socket_dir.mkdir()
            owner = self._as_owner()
            if owner:
                for p in (self.base, self.socket_dir):
                    os.chown(p, owner["user"], owner["group"])
            self._run("initdb", "-D", str(self.data_dir), "-U", self.ROLE, "-A", "trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
            for attempt in range(3):  # the free port may be taken between choosing and binding
                self.port = free_port()
                opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} "
                        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
                try:
                    self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-w", "-t", "60",
                              "-o", opts)
                    break
                except RuntimeError:
                    self.pids()
                    if attempt == 2 or "could not bind" not in self._log_tail():
                        raise
            self.pids()
            self._run("createdb", "-h", str(self.socket_dir), "-p", str(self.port), "-U", self.ROLE, self.DATABASE)
        except BaseException:
            self.__exit__()
            raise
        self.start_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc) -> None:
        if self.base is None:
            return
        pids = self.pids()
        if self.data_dir.joinpath("postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", timeout=60)
        if not _wait_gone(pids, 5.0):
            _signal(self.pids(), signal.SIGKILL)  # backends end with their postmaster
            _wait_gone(pids, 10.0)
        shutil.rmtree(self.base, ignore_errors=True)


# -- Prefect server -----------------------------------------------------------------------------------

def _clean_env() -> dict:
    """This process's environment without Prefect or AWS settings (a test's own settings, a
    developer's profile or credentials must not reach the processes started here)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}


def http_get(url: str, timeout: float = 10):
    import json

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")


class PrefectServer:
    """`prefect server start` on a free loopback port, its own PREFECT_HOME, analytics off; backed by
    `database_url` (PostgreSQL) or, with None, Prefect's default SQLite in its home."""

    def __init__(self, tmp: Path, database_url: str | None, startup_timeout: float = 240.0):
        self.tmp = Path(tmp)
        self.database_url = database_url
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.home = self.tmp / "server-home"
        self.proc: Proc | None = None
        self.startup_s: float | None = None

    def env(self, home: Path | str | None = None, **extra: str) -> dict:
        """Environment for a client process (CLI, worker, flow): this server's API, its own
        PREFECT_HOME (`home`, default: a client home shared by callers that give none)."""
        home = Path(home) if home else self.tmp / "client-home"
        home.mkdir(parents=True, exist_ok=True)
        return {**_clean_env(), "PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(home),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "LLAMADUO_PROJECT_DIR": str(ROOT),
                "PYTHONUNBUFFERED": "1", **extra}

    def _server_env(self) -> dict:
        env = {**_clean_env(), "PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url,
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        return env

    @property
    def log_path(self) -> Path:
        return self.tmp / "server.log"

    def healthy(self) -> bool:
        try:
            return http_get(f"{self.api_url}/health", timeout=5) == (200, True)
        except (OSError, ValueError):
            return False

    def __enter__(self) -> "PrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        self.proc = Proc([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                         self._server_env(), self.log_path)
        try:
            deadline = t0 + self.startup_timeout
            while not self.healthy():
                if not self.proc.alive():
                    raise RuntimeError(f"prefect server exited ({self.proc.popen.returncode}):\n{self.proc.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"prefect server not healthy after {self.startup_timeout:.0f}s:\n"
                                       f"{self.proc.log_tail()}")
                time.sleep(0.5)
        except BaseException:
            self.__exit__()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc) -> None:
        if self.proc:
            self.proc.stop()

    def cli(self, *args: str, timeout: float = 180, **env: str) -> str:
        """`prefect ARGS` against this server; fails with its output on a non-zero exit."""
        out = subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=self.env(**env), capture_output=True,
                             text=True, timeout=timeout)
        assert out.returncode == 0, f"prefect {' '.join(args)}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
        return out.stdout

    @contextlib.asynccontextmanager
    async def client(self):
        """`prefect.client.orchestration.get_client()` pointed at this server, in this process."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            async with get_client() as client:
                yield client


# -- work pools and workers --------------------------------------------------------------------------

def create_process_pool(server: PrefectServer, name: str, hardened: bool = True) -> None:
    """A process work pool `name`: with `hardened`, the project's own setup (`python -m deployments.pools
    create`: the shipped template, runs may set no env/command/working_dir); else Prefect's default."""
    if hardened:
        args = [sys.executable, "-m", "deployments.pools", "create", "--pool", name]
    else:
        args = [str(BIN / "prefect"), "work-pool", "create", name, "--type", "process", "--overwrite"]
    out = subprocess.run(args, cwd=ROOT, env=server.env(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, f"creating pool {name!r}: {out.stdout[-2000:]}{out.stderr[-2000:]}"


class Worker(Proc):
    """`prefect worker start --pool POOL --type process --limit N` (cwd: the repository root)."""

    def __init__(self, server: PrefectServer, pool: str, tmp: Path, name: str | None = None,
                 env: dict | None = None, limit: int = 1):
        self.server, self.pool = server, pool
        self.name = name or f"{pool}-worker-{uuid.uuid4().hex[:6]}"
        self.home = Path(tmp) / self.name / "home"  # its own PREFECT_HOME, as on another machine
        args = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--limit", str(limit),
                "--name", self.name]
        super().__init__(args, server.env(home=self.home, **(env or {})), Path(tmp) / self.name / "worker.log")

    async def status(self) -> str | None:
        """'ONLINE' / 'OFFLINE' as the server sees this worker; None before its first heartbeat."""
        async with self.server.client() as c:
            for w in await c.read_workers_for_work_pool(work_pool_name=self.pool):
                if w.name == self.name:
                    return w.status.value if w.status else None
        return None

    def wait_online(self, timeout: float = 120.0) -> float:
        """Seconds until the server lists this worker ONLINE; fails with the worker's log."""
        import asyncio

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not self.alive():
                raise AssertionError(f"worker {self.name} exited ({self.popen.returncode}):\n{self.log_tail()}")
            if asyncio.run(self.status()) == "ONLINE":
                return time.monotonic() - t0
            time.sleep(0.5)
        raise AssertionError(f"worker {self.name} not ONLINE after {timeout:.0f}s:\n{self.log_tail()}")


def pool_exists(server: PrefectServer, pool: str) -> bool:
    import asyncio

    from prefect.exceptions import ObjectNotFound

    async def read() -> bool:
        async with server.client() as c:
            try:
                await c.read_work_pool(pool)
                return True
            except ObjectNotFound:
                return False

    return asyncio.run(read())


def launch_worker(server: PrefectServer, pool: str, tmp: Path, **kwargs) -> Worker:
    """Start a worker on an existing pool (a worker would create a missing pool with Prefect's default
    template, not the hardened one: create it first with create_process_pool)."""
    if not pool_exists(server, pool):
        raise AssertionError(f"work pool {pool!r} does not exist: create_process_pool(server, {pool!r}) first")
    return Worker(server, pool, tmp, **kwargs)


# -- S3 (moto) --------------------------------------------------------------------------------------

class S3Server:
    """moto's ThreadedMotoServer on a free loopback port (in this process, reached over HTTP by
    subprocesses too), with `bucket` created."""

    def __init__(self, bucket: str = "llamaduo-test"):
        self.bucket = bucket
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server = None

    def env(self) -> dict:
        """The standard AWS variables that select this store (botocore/s3fs read AWS_ENDPOINT_URL)."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, **_DUMMY_AWS}

    def boto3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def make_bucket(self, name: str) -> str:
        self.boto3_client().create_bucket(Bucket=name)
        return name

    def __enter__(self) -> "S3Server":
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per S3 request otherwise

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        try:
            self.make_bucket(self.bucket)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres_url():
    """asyncpg URL of a throwaway PostgreSQL cluster's `prefect` database (skips without PostgreSQL)."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries in /usr/lib/postgresql/*/bin or on PATH "
                    "(`make distributed-deps` installs Debian's postgresql)")
    with PostgresCluster(bin_dir) as pg:
        yield pg.url


@pytest.fixture(scope="session")
def prefect_server(postgres_url, tmp_path_factory):
    """A real `prefect server start` on PostgreSQL; `.api_url`, `.env()` for client processes."""
    with PrefectServer(tmp_path_factory.mktemp("prefect-server"), postgres_url) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback with a bucket; `.endpoint_url`, `.bucket`, `.env()`."""
    with S3Server() as s3:
        yield s3


@pytest.fixture
def start_worker(tmp_path):
    """`start_worker(server, pool, name=None, env=None, limit=1) -> Worker`; every worker started is
    stopped when the test ends. Logs: `worker.log_path`."""
    workers: list[Worker] = []

    def start(server: PrefectServer, pool: str, **kwargs) -> Worker:
        workers.append(launch_worker(server, pool, tmp_path / "workers", **kwargs))
        return workers[-1]

    yield start
    for w in reversed(workers):
        w.stop()
