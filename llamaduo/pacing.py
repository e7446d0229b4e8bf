"""How service calls are paced: requests per minute, tokens per minute, calls in flight.

`ServiceClient` asks a `Pacer` for two things around every attempt: `call()` (one call in flight,
held across its retries) and `send(tokens)` (the request and its tokens may go out now). The
default, `InProcessPacer`, paces one process alone (a leaky bucket of one request every 60/rpm
s, a tpm bucket refilled every 10 s, a semaphore). A pacer shared between processes (Prefect
global concurrency limits, `tasks/pacing.py`) implements the same interface; this module never
imports prefect.

A pacer is built outside any event loop (in a task, before `asyncio.run`); whatever belongs to a
loop (semaphores, limiters, HTTP clients) lives in its `session()`, one per `ServiceClient.arun`.
`send` is one step, not two (request slot, then tokens): a shared sliding window starts when the
request goes out, so every window must start after the last wait, not at the first acquisition.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import AsyncContextManager, AsyncIterator, Iterator, Protocol

from .config import Endpoint, ServiceConfig

# Set by a launcher that exports the URL of a Prefect server it started for one run (`llamaduo run`'s
# temporary server): that server is not shared, so limits stay in this process.
TEMPORARY_SERVER_ENV = "LLAMADUO_TEMPORARY_SERVER"


class PacerSession(Protocol):
    def call(self) -> AsyncContextManager[None]:
        """One call in flight (held across the call's retries and their backoff)."""

    def send(self, tokens: int) -> AsyncContextManager[None]:
        """One request of about `tokens` tokens (prompt + max completion) may be sent now."""


class Pacer(ABC):
    @abstractmethod
    def session(self) -> AsyncContextManager[PacerSession]:
        """The pacer's state for one event loop (one `arun`)."""

    def serves(self, endpoint: Endpoint) -> bool:
        """Whether this pacer holds the limits of `endpoint` (see `pacing`)."""
        return True


class InProcessPacer(Pacer):
    """This process's own limits (today's behaviour, and the CLI's on its temporary server).
    Paced, not bursty: one request every 60/rpm s never exceeds a sliding-window RPM limit."""

    def __init__(self, rpm: int, tpm: int | None, max_concurrency: int):
        self.rpm, self.tpm, self.max_concurrency = rpm, tpm, max_concurrency

    @classmethod
    def of(cls, limits: ServiceConfig) -> "InProcessPacer":
        return cls(limits.rpm, limits.tpm, limits.max_concurrency)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[PacerSession]:
        yield _LocalSession(self)


class _LocalSession:
    def __init__(self, pacer: InProcessPacer):
        from aiolimiter import AsyncLimiter

        # Limiters belong to the event loop they are made in: one set per session.
        self._sem = asyncio.Semaphore(pacer.max_concurrency)
        self._rpm = AsyncLimiter(1, 60 / pacer.rpm)
        self._tpm = AsyncLimiter(pacer.tpm / 6, 10) if pacer.tpm else None

    @asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        async with self._sem:
            yield

    @asynccontextmanager
    async def send(self, tokens: int) -> AsyncIterator[None]:
        async with self._rpm:
            if self._tpm is not None:
                await self._tpm.acquire(min(tokens, self._tpm.max_rate))
            yield


# Pacers a task put in place for the service clients it (through the library) creates: the
# library's stage functions build their own ServiceClient, and need not know who paces it.
_AMBIENT: ContextVar[tuple[Pacer, ...]] = ContextVar("llamaduo_pacers", default=())


@contextmanager
def pacing(*pacers: Pacer | None) -> Iterator[None]:
    """Within this block, a ServiceClient for an endpoint one of `pacers` serves uses it."""
    token = _AMBIENT.set(_AMBIENT.get() + tuple(p for p in pacers if p is not None))
    try:
        yield
    finally:
        _AMBIENT.reset(token)


def ambient_pacer(endpoint: Endpoint) -> Pacer | None:
    """The innermost pacer put in place by `pacing` that serves `endpoint`, else None."""
    return next((p for p in reversed(_AMBIENT.get()) if p.serves(endpoint)), None)
