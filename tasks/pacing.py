"""One rate limit for every run on a key: `service.rpm` / `tpm` / `max_concurrency` as Prefect
global concurrency limits (GCLs), shared by all processes that talk to one Prefect server.

Names: `llamaduo-{rpm|tpm|concurrency}-{provider}[-{host}-{hash}]-{key variable}`: the endpoint
(`api_base`, normalised: `endpoint_id`) is part of the name, so a local vLLM server and the
cloud's API are two limits even when neither names a key variable; the variable's NAME, never the
key (`default` when the endpoint names none and litellm reads the provider's own variable).

Why not `rate_limit` on a decaying limit: the server decays `active_slots` by
floor(decay x seconds since the row's last update), and every denied attempt updates the row, so
waiters that poll keep restarting the clock. Measured on a real server (limit 1, decay 20/60 per s):
0.66 of the ceiling with one process, 0.76 with two. Instead, each of rpm and tpm is a sliding
window of leases: a limit of `rpm` slots (`tpm` token slots), no decay; a request takes its
slots just before it is sent and gives them back WINDOW_S + MARGIN_S after it was sent. So at
any moment the slots held cover every request sent in the last minute: requests (tokens) in any
60 s window <= the limit, over all processes together, whatever the polling. A window slot is
handed back by a per-process releaser thread, also after the stage that took it has ended; a
process that dies leaves its leases to expire (LEASE_S later, plus the server's repossessor loop).
`max_concurrency` is a plain limit counting requests in flight (held from the send to the reply).
Each process still paces itself as before (InProcessPacer), so one run alone behaves as today;
P runs on a key may send up to P requests at once, never more than rpm in any minute together.

Prefect #23183 (a released slot does not wake waiters in the same process; Prefect's own
acquisition service sleeps the server's Retry-After, up to 30 s): waiters here poll the server
themselves, at least every POLL_S, and are woken at once when this process gives a slot back.

Which limit wins: the smallest number among the LIVE runs on the key. Each run registers what
it wants (an inactive GCL `<limit>~<number>`, renewed at each stage start and every minute while
it sends); a limit is set to the smallest number registered in the last REGISTRATION_S (server
clock), so a stricter run lowers it at once, and when the stricter runs are gone the limit follows
the configs still asking (raised, with an info line). An inactive limit is re-activated and a decay
set back to 0 (either would let more through). A tpm another live run wants also paces a run that
sets none. Writes are not compare-and-set: a run that raises a limit re-reads the registrations
after its write and lowers it back if a stricter run registered meanwhile.

Every call on the key takes its slots, the preflight's probe calls included (`run_pacing`, used
by the CLI and the deployment's flow around the probe).

Shared only when a real server is in use: the resolved PREFECT_API_URL (environment, profile) is
set, is not a temporary server this process started (Prefect's ephemeral server, the test
harness), and LLAMADUO_TEMPORARY_SERVER is not set (a launcher that exports the URL of a server
it started for one run marks it so). The CLI on its temporary server keeps the in-process pacer.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import logging
import os
import random
import sys
import threading
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator
from uuid import UUID

from llamaduo.config import Endpoint, RunConfig, ServiceConfig, provider_of
from llamaduo.pacing import TEMPORARY_SERVER_ENV, InProcessPacer, Pacer, PacerSession, pacing

log = logging.getLogger("llamaduo.pacing")

PREFIX = "llamaduo"
WINDOW_S = 60.0  # the providers' window: requests (tokens) per minute
MARGIN_S = 3.0  # held this much longer: from the grant to the request reaching the provider
# Server-side expiry of a lease: >= 8 s after its release is due (a release racing the server's own
# revocation of the same lease could free its slots twice), and what frees the slots of a process
# that has ended (then LEASE_S + up to the repossessor's loop, 15 s by default).
LEASE_S = 75.0
RENEW_AFTER_S = 5.0  # a window slot granted longer ago than this is renewed just before the send
POLL_S = 1.0  # a waiter asks the server again at least this often (its Retry-After can say 30 s)
CALL_RENEW_S = 20.0  # a request in flight renews its concurrency lease this often
SERVER_ERROR_TRIES = 8  # transient errors (5xx, connection) while acquiring, before giving up


@dataclass(frozen=True)
class LimitNames:
    rpm: str
    tpm: str
    concurrency: str


def endpoint_id(api_base: str | None) -> str | None:
    """Where an endpoint's calls go, in one spelling: None for the provider's own endpoint, else
    the host (and a port other than the scheme's default) and a short hash of the normalised URL
    (scheme and host lower-cased, default port, credentials, empty and trailing `/` segments, query
    and fragment dropped). `http://LOCALHOST:80/v1/` and `http://localhost/v1` are one endpoint."""
    if not api_base:
        return None
    import hashlib
    from urllib.parse import urlsplit

    parts = urlsplit(api_base.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:  # not a number: kept as written (the URL is refused when called anyway)
        port = None
    if port == {"http": 80, "https": 443}.get(scheme):
        port = None
    path = "/".join(seg for seg in parts.path.split("/") if seg)
    canonical = f"{scheme}://{host}{f':{port}' if port else ''}/{path}"
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:8]
    return f"{host}{f'_{port}' if port else ''}-{digest}"


def key_of(endpoint: Endpoint) -> tuple[str, str | None, str]:
    """(provider, endpoint, key variable name) of an endpoint: what a rate limit belongs to. Two
    endpoints of one provider (the cloud's and a local vLLM server) are two limits, whatever key
    variable (or none) they read."""
    provider = provider_of(endpoint.model) if "/" in endpoint.model else None
    if provider is None:
        try:
            import litellm

            provider = litellm.get_llm_provider(endpoint.model)[1]
        except Exception:  # noqa: BLE001 - a model litellm cannot place: its name stands for the provider
            provider = endpoint.model
    return provider, endpoint_id(endpoint.api_base), endpoint.api_key_env or "default"


def limit_names(endpoint: Endpoint) -> LimitNames:
    provider, where, key_var = key_of(endpoint)
    ident = "-".join(p for p in (provider, where, key_var) if p)
    safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in ident)  # never `~`: see REGISTRATION
    return LimitNames(*(f"{PREFIX}-{kind}-{safe}" for kind in ("rpm", "tpm", "concurrency")))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _started_here(url: str) -> bool:
    """Whether `url` is a temporary server this process started (Prefect's ephemeral server,
    `prefect_test_harness`): such a server serves one run, there is nothing to share."""
    module = sys.modules.get("prefect.server.api.server")  # not imported: no such server here
    servers = getattr(getattr(module, "SubprocessASGIServer", None), "_instances", {}) if module else {}
    return any(getattr(s, "port", None) and s.api_url.rstrip("/") == url.rstrip("/") for s in servers.values())


def shared_server_url() -> str | None:
    """The Prefect API this process shares with other runs, else None (see the module text)."""
    if _truthy(os.environ.get(TEMPORARY_SERVER_ENV)):
        return None
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url or _started_here(url):
        return None
    return url


# -- which numbers hold -------------------------------------------------------------------
# Every run registers the limits it wants: one inactive GCL per limit and wanted number,
# `<limit>~<number>`, whose `updated` time says when a run last asked for that number (a run asks
# at each stage start and every REREGISTER_S while it sends). A limit's size is the smallest
# number asked for within REGISTRATION_S (measured on the server's clock: against this run's own
# registration, just written), so the strictest live run wins, and the limit follows the configs
# once the stricter runs are gone (up to REGISTRATION_S later). No live run wants a tpm: no tpm
# paces anyone (the limit is left as it is). Writes are not compare-and-set; a run that RAISES a
# limit reads the registrations again after its write and lowers it back if a stricter one
# arrived meanwhile, so a concurrent stricter run always ends up winning.
REGISTRATION = "~"
REGISTRATION_S = 600.0
REREGISTER_S = 60.0
FORGET_S = 86400.0  # a registration not renewed for a day is deleted (housekeeping)
LIST_PAGE = 200


def reconcile(existing, target: int) -> dict:
    """The update that makes an existing limit `target` slots, active, without decay."""
    update: dict = {}
    if existing.limit != target:
        update["limit"] = target
    if not existing.active:
        update["active"] = True
    if existing.slot_decay_per_second:
        update["slot_decay_per_second"] = 0.0
    return update


def _wants(names: LimitNames, limits: ServiceConfig) -> list[tuple[str, int | None]]:
    return [(names.rpm, limits.rpm), (names.tpm, limits.tpm), (names.concurrency, limits.max_concurrency)]


def _register(client, name: str, want: int) -> None:
    """Say (again) that a live run wants `name` at `want`: its registration's `updated` is now."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    reg = f"{name}{REGISTRATION}{want}"
    for _ in range(3):
        try:
            client.update_global_concurrency_limit(reg, GlobalConcurrencyLimitUpdate(limit=want, active=False))
            return
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                    name=reg, limit=want, active=False, slot_decay_per_second=0.0))
                return
            except ObjectAlreadyExists:
                continue
    raise RuntimeError(f"the registration {reg} kept changing while it was written")


def _list(client) -> dict:
    """Every GCL of llamaduo on the server, by name."""
    found: dict = {}
    offset = 0
    while True:
        page = client.read_global_concurrency_limits(limit=LIST_PAGE, offset=offset)
        found.update({g.name: g for g in page if g.name.startswith(PREFIX)})
        if len(page) < LIST_PAGE:
            return found
        offset += LIST_PAGE


def _live_wants(gcls: dict, name: str, now, forget: list[str]) -> list[int]:
    """The numbers live runs want for `name` (registrations renewed within REGISTRATION_S of `now`)."""
    wants = []
    for reg_name, reg in gcls.items():
        if not reg_name.startswith(name + REGISTRATION):
            continue
        age = (now - reg.updated).total_seconds()
        if age <= REGISTRATION_S:
            wants.append(reg.limit)
        elif age > FORGET_S:
            forget.append(reg_name)
    return wants


def _set_limit(client, name: str, target: int, existing) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    if existing is None:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                name=name, limit=target, slot_decay_per_second=0.0))
            return
        except ObjectAlreadyExists:
            existing = client.read_global_concurrency_limit_by_name(name)
    update = reconcile(existing, target)
    if update:
        try:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(**update))
        except ObjectNotFound:  # deleted meanwhile: made again
            _set_limit(client, name, target, None)


def ensure_limits(client, names: LimitNames, limits: ServiceConfig) -> dict[str, int]:
    """Register this run's numbers and set the key's limits to the smallest a live run wants
    (sync client); their sizes now, by name (a tpm no live run wants is absent)."""
    from prefect.exceptions import ObjectNotFound

    wants = _wants(names, limits)
    mine = [f"{name}{REGISTRATION}{want}" for name, want in wants if want is not None]
    for (name, want) in wants:
        if want is not None:
            _register(client, name, want)
    gcls = _list(client)
    written = [gcls[m] if m in gcls else client.read_global_concurrency_limit_by_name(m) for m in mine]
    now = max(reg.updated for reg in written)  # the server's clock: this run just wrote these
    forget: list[str] = []
    sizes: dict[str, int] = {}
    raised: list[str] = []
    for name, want in wants:
        live = _live_wants(gcls, name, now, forget) + ([want] if want is not None else [])
        if not live:
            continue
        target = min(live)
        existing = gcls.get(name)
        if existing is not None and target > existing.limit:
            raised.append(name)
        if existing is not None and target < existing.limit:
            log.info("%s: lowered from %d to %d (the strictest run on this key now)", name, existing.limit, target)
        _set_limit(client, name, target, existing)
        sizes[name] = target
    if raised:  # a stricter run may have registered while we raised: its number wins
        gcls = _list(client)
        for name in raised:
            target = min(_live_wants(gcls, name, now, []) + [sizes[name]])
            if target < sizes[name]:
                _set_limit(client, name, target, gcls.get(name))
                sizes[name] = target
            else:
                log.info("%s: raised to %d (the stricter runs on this key have ended)", name, target)
    for reg in forget:
        try:
            client.delete_global_concurrency_limit_by_name(reg)
        except ObjectNotFound:
            pass
    return sizes


def shared_pacer(endpoint: Endpoint, limits: ServiceConfig) -> Pacer | None:
    """The GCL pacer for `endpoint` when a shared Prefect server is in use (this run's numbers
    registered and the limits set now), else None: the service client paces this process alone."""
    if endpoint.is_standin:  # the offline stand-in: no provider, no key
        return None
    if shared_server_url() is None:
        return None
    from prefect.client.orchestration import get_client

    names = limit_names(endpoint)
    with get_client(sync_client=True) as client:
        sizes = ensure_limits(client, names, limits)
    log.info("%s: rate limits shared with every run on this endpoint and key (Prefect global concurrency limits): "
             "%s", endpoint.field, ", ".join(f"{n}={s}" for n, s in sizes.items()))
    return GclPacer(endpoint, limits, names, sizes)


@contextmanager
def run_pacing(cfg: RunConfig) -> Iterator[None]:
    """The shared limits of the run's service and judge endpoints for every call made in this
    block by clients the library builds: the preflight's probes take their slots like any call."""
    service, judge = cfg.service_endpoint(), cfg.judge_endpoint()
    first = shared_pacer(service, cfg.service)
    second = None if first is not None and first.serves(judge) else shared_pacer(judge, cfg.service)
    with pacing(first, second):
        yield


# -- the pacer ----------------------------------------------------------------------------
class GclPacer(Pacer):
    """This process's own pacing (InProcessPacer: no bursts from one process) inside the key's
    shared limits on the Prefect server."""

    def __init__(self, endpoint: Endpoint, limits: ServiceConfig, names: LimitNames, sizes: dict[str, int]):
        self.key = key_of(endpoint)
        self.limits, self.names, self.sizes = limits, names, dict(sizes)
        self.local = InProcessPacer.of(limits)
        self.registered_at = time.monotonic()  # shared_pacer registered this run's numbers just now

    def refresh(self) -> dict[str, int]:
        """Register this run's numbers again (it is alive) and re-read the limits (sync: a thread)."""
        from prefect.client.orchestration import get_client

        self.registered_at = time.monotonic()
        with get_client(sync_client=True) as client:
            self.sizes.update(ensure_limits(client, self.names, self.limits))
        return self.sizes

    def serves(self, endpoint: Endpoint) -> bool:
        return key_of(endpoint) == self.key

    @asynccontextmanager
    async def session(self) -> AsyncIterator[PacerSession]:
        from prefect.client.orchestration import get_client

        async with self.local.session() as local, get_client() as client:
            yield _GclSession(self, local, client)


class _Limit:
    """One GCL as seen from one session: one poller at a time (FIFO), woken by this process's releases."""

    def __init__(self, name: str, size: int, client):
        self.name, self.size, self.client = name, size, client
        self.turn = asyncio.Lock()  # FIFO: the first waiter polls, the others queue behind it
        self.freed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake() -> None:  # called from the releaser thread
            try:
                loop.call_soon_threadsafe(self.freed.set)
            except RuntimeError:  # the session's loop is closed: nobody waits there any more
                pass

        self.wake = wake

    async def acquire(self, slots: int) -> UUID:
        import httpx

        errors = 0
        async with self.turn:
            while True:
                self.freed.clear()  # before asking: a release during the request wakes the wait below
                try:
                    # No lease holder: a window slot outlives the task run that took it.
                    response = await self.client.increment_concurrency_slots_with_lease(
                        names=[self.name], slots=min(slots, max(1, self.size)), mode="concurrency",
                        lease_duration=LEASE_S)
                    body = response.json()
                    if body.get("limits"):
                        return UUID(body["lease_id"])
                    wait = await self._missing()
                except httpx.HTTPStatusError as exc:
                    status = exc.response.status_code
                    if status == 423:  # all slots taken: the server's Retry-After, at most POLL_S
                        wait = min(float(exc.response.headers.get("Retry-After") or POLL_S), POLL_S)
                    elif status == 422 and await self._refresh(slots):  # another run lowered the limit
                        wait = 0.0 if self.size >= 1 else POLL_S  # 0: the key is paused
                    elif status >= 500 and errors < SERVER_ERROR_TRIES:
                        errors += 1
                        wait = min(30.0, 2.0 ** errors) * random.uniform(0.5, 1.0)
                    else:
                        raise
                except (httpx.TransportError, OSError):
                    if errors >= SERVER_ERROR_TRIES:
                        raise
                    errors += 1
                    wait = min(30.0, 2.0 ** errors) * random.uniform(0.5, 1.0)
                if wait > 0:
                    try:
                        await asyncio.wait_for(self.freed.wait(), wait)
                    except asyncio.TimeoutError:
                        pass

    async def _refresh(self, slots: int) -> bool:
        """Re-read the limit's size after a 422; False when that was not the cause."""
        asked = min(slots, max(1, self.size))
        self.size = (await self.client.read_global_concurrency_limit_by_name(self.name)).limit
        return self.size < asked

    async def _missing(self) -> float:
        """The limit was deleted during the run (the server grants anything then): put it back."""
        from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
        from prefect.exceptions import ObjectAlreadyExists

        log.warning("global concurrency limit %s is gone: creating it again (%d)", self.name, self.size)
        try:
            await self.client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                name=self.name, limit=self.size, slot_decay_per_second=0.0))
        except ObjectAlreadyExists:
            pass
        return 0.0

    async def renew(self, lease: UUID) -> bool:
        import httpx

        try:
            await self.client.renew_concurrency_lease(lease, lease_duration=LEASE_S)
            return True
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code in (404, 410):  # expired and revoked: its slots went back
                return False
            raise

    async def release(self, lease: UUID) -> None:
        try:
            await self.client.release_concurrency_slots_with_lease(lease)
        finally:
            self.wake()


class _GclSession:
    def __init__(self, pacer: GclPacer, local: PacerSession, client):
        self.local, self.client, self.pacer = local, client, pacer
        self._warm = False  # a reply came in through this session's client
        self._refreshing: asyncio.Task | None = None
        self.releaser = releaser_for(str(client.api_url))
        names = pacer.names
        self.rpm = _Limit(names.rpm, pacer.sizes[names.rpm], client)
        self.tpm = _Limit(names.tpm, pacer.sizes[names.tpm], client) if names.tpm in pacer.sizes else None
        self.conc = _Limit(names.concurrency, pacer.sizes[names.concurrency], client)

    def call(self):
        # This process's calls only: a call waits here for its turn at the window, and a global
        # slot held while waiting would starve the other runs. The key's concurrency limit counts
        # requests in flight (`send`), which is what the provider counts.
        return self.local.call()

    async def _keep(self, lease: UUID) -> None:
        while True:
            await asyncio.sleep(CALL_RENEW_S)
            try:
                if not await self.conc.renew(lease):
                    log.warning("the slot of %s expired during a request", self.conc.name)
                    return
            except Exception as exc:  # noqa: BLE001 - tried again at the next beat
                log.warning("could not renew a slot of %s: %s", self.conc.name, type(exc).__name__)

    def _keep_registered(self) -> None:
        """Every REREGISTER_S while this run sends: it is still alive (its numbers keep holding),
        and a limit the other runs changed meanwhile is taken up (in the background)."""
        if time.monotonic() - self.pacer.registered_at < REREGISTER_S or (
                self._refreshing is not None and not self._refreshing.done()):
            return
        self.pacer.registered_at = time.monotonic()

        async def refresh() -> None:
            try:
                sizes = await asyncio.to_thread(self.pacer.refresh)
            except Exception as exc:  # noqa: BLE001 - tried again REREGISTER_S later
                log.warning("could not renew this run's rate limits on the server: %s", type(exc).__name__)
                return
            for limit in (self.rpm, self.tpm, self.conc):
                if limit is not None and limit.name in sizes:
                    limit.size = sizes[limit.name]

        self._refreshing = asyncio.create_task(refresh())

    @asynccontextmanager
    async def send(self, tokens: int) -> AsyncIterator[None]:
        self._keep_registered()
        async with self.local.send(tokens):
            # Window slots first, the in-flight slot last: a window slot held while waiting for
            # the in-flight slot only delays this process, not another run.
            wants = [(self.rpm, 1)] + ([(self.tpm, tokens)] if self.tpm is not None else []) + [(self.conc, 1)]
            held: list = []
            try:
                while True:
                    held = []
                    for limit, n in wants:
                        held.append((limit, await limit.acquire(n), time.monotonic()))
                    # A slot granted a while ago (it waited for the next limit) must outlive the
                    # window that starts now: renewed; one that expired meanwhile went back: again.
                    now, fresh = time.monotonic(), True
                    for limit, lease, at in held[:-1]:
                        if now - at >= RENEW_AFTER_S and not await limit.renew(lease):
                            fresh = False
                    if fresh:
                        break
                    await _give_back(held)
            except BaseException:
                await _give_back(held)
                raise
            window, conc_lease = held[:-1], held[-1][1]
            due = time.monotonic() + WINDOW_S + MARGIN_S
            # Until one reply is in, litellm is still setting up (1.7 s from the call to the wire
            # measured on a loaded machine, 30 ms after): such a request's window is counted from
            # its reply, the latest moment it can have reached the provider.
            cold = not self._warm
            if not cold:
                for limit, lease, _ in window:
                    self.releaser.schedule(due, lease, limit.wake)
            keep = asyncio.create_task(self._keep(conc_lease))
            try:
                yield
                self._warm = True
            finally:
                keep.cancel()
                if cold:
                    due = max(due, time.monotonic() + WINDOW_S)
                    for limit, lease, _ in window:
                        try:  # the lease must outlive the later release
                            await limit.renew(lease)
                        except Exception:  # noqa: BLE001 - an expired one is gone already; its release is a no-op
                            pass
                        self.releaser.schedule(due, lease, limit.wake)
                try:  # the in-flight slot goes back when the reply is in (on a stop: it expires)
                    await self.conc.release(conc_lease)
                except Exception as exc:  # noqa: BLE001
                    log.warning("could not release a slot of %s (it expires in %.0f s): %s", self.conc.name,
                                LEASE_S, type(exc).__name__)


async def _give_back(held: list) -> None:
    """Slots no request was sent under: they may go back at once."""
    for limit, lease, _ in held:
        try:
            await limit.release(lease)
        except Exception:  # noqa: BLE001 - it expires on the server then
            pass


class _Releaser:
    """Gives window slots back when their window has passed, in a thread of its own: the stage
    (event loop) that took them may have ended by then. Never early; late only if the server is
    slow (stricter, not looser)."""

    def __init__(self):
        self._heap: list[tuple[float, int, UUID, Callable[[], None]]] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._seq = 0

    def schedule(self, due: float, lease: UUID, wake: Callable[[], None]) -> None:
        with self._cv:
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, lease, wake))
            if self._thread is None or not self._thread.is_alive():
                # the caller's settings context (API URL, auth) goes with the thread
                ctx = contextvars.copy_context()
                self._thread = threading.Thread(target=ctx.run, args=(self._run,), name="llamaduo-gcl-releaser",
                                                daemon=True)
                self._thread.start()
            self._cv.notify()

    def pending(self) -> int:
        with self._cv:
            return len(self._heap)

    def _run(self) -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while True:
                with self._cv:
                    while True:
                        if not self._heap:
                            if not self._cv.wait(timeout=300):  # idle: the thread ends, a new one starts on demand
                                if not self._heap:
                                    self._thread = None
                                    return
                            continue
                        due = self._heap[0][0]
                        if due <= time.monotonic():
                            _, _, lease, wake = heapq.heappop(self._heap)
                            break
                        self._cv.wait(timeout=due - time.monotonic())
                try:
                    client.release_concurrency_slots_with_lease(lease)
                except Exception as exc:  # noqa: BLE001 - the lease then expires on the server
                    log.warning("could not give back a window slot (it expires in %.0f s): %s", LEASE_S,
                                type(exc).__name__)
                wake()


_RELEASERS: dict[str, _Releaser] = {}
_RELEASERS_LOCK = threading.Lock()


def releaser_for(api_url: str) -> _Releaser:
    """The releaser of this process for one Prefect API (its thread's client talks to that one)."""
    with _RELEASERS_LOCK:
        return _RELEASERS.setdefault(api_url, _Releaser())
