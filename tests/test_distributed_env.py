"""The distributed test environment works and cleans up (tests/distributed_env.py): a Prefect server
on PostgreSQL answers, a pool made by the project's setup holds in PostgreSQL, a worker on it comes
ONLINE, moto's S3 bucket is writable by s3fs with only the standard AWS variables, and nothing
started is left running afterwards.

Uses the context managers beneath the fixtures (not the fixtures) so it can look after teardown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.distributed_env import (PostgresCluster, PrefectServer, S3Server, create_process_pool, find_postgres_bin,
                                   launch_worker, running)

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


async def _pg_rows(url: str, sql: str) -> list[tuple]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def _s3fs_round_trip(s3: S3Server) -> subprocess.CompletedProcess:
    """Write, list and read the bucket with s3fs in a process that has only PATH and the AWS variables."""
    code = ("import fsspec\n"
            "fs = fsspec.filesystem('s3')\n"
            f"fs.pipe('{s3.bucket}/smoke/hello.txt', b'written by s3fs')\n"
            f"assert fs.ls('{s3.bucket}/smoke') == ['{s3.bucket}/smoke/hello.txt'], fs.ls('{s3.bucket}/smoke')\n"
            f"with fsspec.open('s3://{s3.bucket}/smoke/hello.txt') as f:\n"
            "    assert f.read() == b'written by s3fs'\n")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", **s3.env()}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        return True
    return False


def test_server_on_postgres_worker_online_s3_writable_and_nothing_left_behind(tmp_path):
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries in /usr/lib/postgresql/*/bin or on PATH")
    t0 = time.monotonic()
    seen: set[int] = set()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(PostgresCluster(bin_dir))
        seen.update(pg.pids())
        assert seen, "the postmaster runs"
        server = stack.enter_context(PrefectServer(tmp_path / "server", pg.url))
        assert server.healthy()

        create_process_pool(server, "cpu")
        # the server keeps its state in PostgreSQL, not in a SQLite file of its own
        assert asyncio.run(_pg_rows(pg.url, "SELECT name, type FROM work_pool WHERE name = 'cpu'")) == \
            [("cpu", "process")]
        assert not list(server.home.rglob("*.db")), list(server.home.rglob("*.db"))

        worker = launch_worker(server, "cpu", tmp_path / "workers")
        stack.callback(worker.stop)
        online_s = worker.wait_online()
        assert worker.log_path.is_file()
        seen.update(worker.pids(), server.proc.pids(), pg.pids())
        # the handle a test uses to kill a worker mid-run: nothing of its tree survives SIGKILL
        killed = worker.kill(signal.SIGKILL)
        assert worker.pid in killed and not any(running(p) for p in killed)

        s3 = stack.enter_context(S3Server())
        out = _s3fs_round_trip(s3)
        assert out.returncode == 0, out.stderr[-3000:]
        body = s3.boto3_client().get_object(Bucket=s3.bucket, Key="smoke/hello.txt")["Body"].read()
        assert body == b"written by s3fs", "s3fs wrote to moto, not somewhere else"
        seen.update(pg.pids(), server.proc.seen)

    left = sorted(p for p in seen | worker.seen if running(p))
    assert not left, f"left running after teardown: {left}"
    assert not _accepts(s3.port), "moto's server still listens"
    assert not _accepts(server.port) and not _accepts(pg.port)
    assert not pg.base.exists(), "the cluster's directory is removed"
    print(f"\npostgres start {pg.start_s:.1f}s, prefect server on postgres healthy {server.startup_s:.1f}s, "
          f"worker ONLINE {online_s:.1f}s, whole smoke test {time.monotonic() - t0:.1f}s")
