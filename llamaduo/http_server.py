"""The listening side shared by `llamaduo serve` and `llamaduo capture`: a socket bound before anything
slow starts (a taken port is reported at once), and uvicorn run until SIGTERM/SIGINT with a clean exit."""

from __future__ import annotations

import signal
import socket

from .errors import InputError

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def callers_key(api_key_env: str | None, host: str) -> str | None:
    """The key callers must send (`--api-key-env VAR`); none on loopback. Beyond loopback without one, or
    with the variable unset, an InputError (exit 2): the endpoint never starts open to a network."""
    import os

    if api_key_env:
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise InputError(f"--api-key-env {api_key_env}: the variable is not set or empty")
        return key
    if host not in LOOPBACK:
        raise InputError(f"--host {host} listens beyond this machine: name the key callers must send with "
                         "--api-key-env VAR")
    return None


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    return sock


class _Stopped(BaseException):
    pass


def serve_until_signal(app, sock: socket.socket) -> None:
    """Listen (connections queue from here, so a ready file may be read before uvicorn starts) and serve.
    uvicorn stops on SIGTERM/SIGINT, finishing the requests in flight (up to 10 s), then raises the signal
    again for the handler it found: ours, so the caller's cleanup runs and the exit status is 0."""
    import uvicorn

    sock.listen(2048)

    def stopped(signum, _frame):
        raise _Stopped(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stopped)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10))
    try:
        server.run(sockets=[sock])
    except _Stopped:
        pass
