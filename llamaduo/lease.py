"""The run lock of a run directory on S3, across machines: a lease object in the store.

An `flock` holds only on one machine (and on a URL run directory it locked this machine's scratch
copy): two workers of one pool both took it and both paid. The lease is `.llamaduo/lease.json` in
the run directory, created with a conditional put (`If-None-Match: *`: exactly one creator wins),
renewed by a heartbeat thread with `If-Match` on the ETag it last wrote (a holder that lost it
notices), and taken over only once its `expires` has passed (the holder died). Children of the
holder (the CLI's flow process) find it theirs through LEASE_TOKEN_ENV.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from .store import RunDirBusy

LEASE = ".llamaduo/lease.json"
LEASE_TOKEN_ENV = "LLAMADUO_RUN_LEASE"
TTL_S = 90.0  # a dead holder's run directory frees itself after this long
RENEW_S = 30.0  # three renewals per TTL: a slow store or a paused process does not lose it
S3_PROTOCOLS = ("s3", "s3a")


class Lease:
    """A held lease; `release()` (or leaving the block) stops the heartbeat and deletes it."""

    def __init__(self, store, bucket: str, key: str, token: str, etag: str | None, ttl_s: float, renew_s: float,
                 owned: bool):
        self.store, self.bucket, self.key, self.token, self.etag = store, bucket, key, token, etag
        self.ttl_s, self.owned, self.lost = ttl_s, owned, False
        self._stop = threading.Event()
        if owned:
            os.environ[LEASE_TOKEN_ENV] = token  # the flow child this process starts holds it too
            threading.Thread(target=self._renew, args=(renew_s,), name="llamaduo-run-lease", daemon=True).start()

    def _renew(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.etag = _put(self.store.fs, self.bucket, self.key, _body(self.token, self.ttl_s), IfMatch=self.etag)
            except _Precondition:
                self.lost = True  # another run took it over: it thought this one dead
                return
            except Exception:  # noqa: BLE001 - a brief store outage: renew at the next beat
                continue

    def release(self) -> None:
        self._stop.set()
        if self.owned and not self.lost:
            try:
                self.store.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)
            except Exception:  # noqa: BLE001 - it expires on its own
                pass
            os.environ.pop(LEASE_TOKEN_ENV, None)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class _Precondition(Exception):
    pass


def _body(token: str, ttl_s: float, command: str | None = None) -> bytes:
    return json.dumps({"token": token, "host": socket.gethostname(), "pid": os.getpid(), "command": command,
                       "expires": time.time() + ttl_s}).encode()


def _put(fs, bucket: str, key: str, body: bytes, **condition) -> str:
    try:
        return fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, **condition)["ETag"]
    except FileExistsError:  # s3fs's translation of 412 PreconditionFailed
        raise _Precondition() from None
    except Exception as exc:  # noqa: BLE001 - untranslated: the status and code stay in the text
        if "PreconditionFailed" in str(exc) or "412" in str(exc) or "ConditionalRequestConflict" in str(exc):
            raise _Precondition() from None
        raise


def take_lease(store, command: str | None = None, *, ttl_s: float = TTL_S, renew_s: float = RENEW_S) -> Lease | None:
    """Take the run directory's lease (S3 run directories; None for others, whose lock is the
    local flock). RunDirBusy (exit 2) naming the holder while another live run holds it."""
    protocols = store.fs.protocol if store.remote and isinstance(store.fs.protocol, tuple) else \
        ((store.fs.protocol,) if store.remote else ())
    if not set(protocols) & set(S3_PROTOCOLS):
        return None
    bucket, key = store._key(LEASE).split("/", 1)
    inherited = os.environ.get(LEASE_TOKEN_ENV)
    for _ in range(3):  # create, or take over an expired one; a race lost is looked at again
        try:
            token = uuid.uuid4().hex
            etag = _put(store.fs, bucket, key, _body(token, ttl_s, command), IfNoneMatch="*")
            return Lease(store, bucket, key, token, etag, ttl_s, renew_s, owned=True)
        except _Precondition:
            pass
        try:
            # the ETag first: if the lease changes after it, the conditional takeover below fails
            etag = store.fs.call_s3("head_object", Bucket=bucket, Key=key)["ETag"]
            holder = json.loads(store.fs.cat_file(f"{bucket}/{key}"))
        except Exception:  # noqa: BLE001 - released in between: try to create it again
            continue
        if inherited and holder.get("token") == inherited:
            return Lease(store, bucket, key, inherited, etag, ttl_s, renew_s, owned=False)
        if holder.get("expires", 0) > time.time():
            raise RunDirBusy(store.where(""), {k: holder.get(k) for k in ("pid", "host", "command")})
        try:  # expired: its holder died; the takeover is conditional on what was read
            token = uuid.uuid4().hex
            etag = _put(store.fs, bucket, key, _body(token, ttl_s, command), IfMatch=etag)
            return Lease(store, bucket, key, token, etag, ttl_s, renew_s, owned=True)
        except _Precondition:
            continue
    raise RunDirBusy(store.where(""), {})
