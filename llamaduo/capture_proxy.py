"""The HTTP side of `llamaduo capture`: an OpenAI-compatible pass-through to the service LLM that
records every answered exchange before the application receives the answer.

Why not LiteLLM's own proxy: its logging callbacks run after the response has been sent, so a crash
between the two loses an answered exchange, and it brings its own key database and ~15 packages. Here
litellm still makes the call (any provider it knows); the front is the same FastAPI + middleware that
`llamaduo serve` uses (bearer key, body limit).

Commit before answer: each answered exchange joins a group commit (llamaduo.capture_store writes one
shard per batch, whole or not at all) and the response leaves only after its shard is committed. A
`kill -9` therefore loses only exchanges whose callers got no answer. If the store cannot be written,
the application still gets its answer (capture must never break it): the loss is counted at /health and
logged, never silent.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.

import asyncio
import json
import logging
import time
import uuid
from datetime import datetime, timezone

from .pii import PiiRedactor
from .redact import safe_message

log = logging.getLogger(__name__)

# What is passed through to the service as the application sent it; anything else is refused (400),
# never dropped silently.
PASSED_THROUGH = frozenset({
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "n", "presence_penalty",
    "frequency_penalty", "seed", "response_format", "tools", "tool_choice", "parallel_tool_calls", "logprobs",
    "top_logprobs", "logit_bias", "user", "stream_options", "reasoning_effort", "metadata",
})


def _error(status: int, message: str, kind: str = "invalid_request_error", param=None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status)


class GroupCommit:
    """Exchanges waiting for their shard: one writer commits whatever has queued while the previous
    shard was written (no timer: one request alone is committed at once)."""

    def __init__(self, store, redactor: PiiRedactor, on_commit=None):
        self.store, self.redactor, self.on_commit = store, redactor, on_commit
        self.queue: asyncio.Queue | None = None
        self.recorded = self.unrecorded = self.shards = 0
        self.last_error: str | None = None

    async def record(self, exchange: dict) -> bool:
        """True once `exchange` is in a committed shard; False if the store refused it (counted)."""
        if self.queue is None:  # the writer lives on the server's loop: started by the first exchange
            self.queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run())
        done = asyncio.get_running_loop().create_future()
        await self.queue.put((exchange, done))
        return await done

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            try:
                exchanges = [exchange for exchange, _ in batch]
                # redaction (regexes over every string) and the write run off the event loop
                await asyncio.to_thread(lambda: self.store.commit([self.redactor.value(e) for e in exchanges]))
                self.recorded += len(batch)
                self.shards += 1
                ok = True
                if self.on_commit is not None:
                    try:
                        self.on_commit(self.recorded, len(batch))
                    except Exception as exc:  # noqa: BLE001 - an event not sent never costs an exchange
                        log.warning("capture: row event not sent (%s)", safe_message(str(exc), 200))
            except Exception as exc:  # noqa: BLE001 - the store is down: answer anyway, count and say it
                self.unrecorded += len(batch)
                self.last_error = safe_message(f"{type(exc).__name__}: {exc}", 200)
                log.error("capture: %d exchange(s) could not be recorded (%s)", len(batch), self.last_error)
                ok = False
            for _, done in batch:
                if not done.done():
                    done.set_result(ok)


def _is_text(content) -> bool:
    return isinstance(content, str)


def create_capture_app(*, service, api_key: str | None, model_names: set[str], redactor: PiiRedactor, store,
                       category_header: str, timeout_s: float, shadow=None, on_commit=None):
    """`service` is the config's Endpoint; `api_key` the value of its key variable (never logged)."""
    import litellm  # here, not in the first request: its import takes seconds
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    litellm.suppress_debug_info = True

    committer = GroupCommit(store, redactor, on_commit)
    app = FastAPI(title="llamaduo capture", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.committer = committer
    served_name = sorted(model_names)[0]

    def exchange(body: dict, messages: list, answer: dict, usage: dict | None, started: float, category):
        return {"id": uuid.uuid4().hex, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "model": service.model, "messages": messages, "answer": answer.get("content"),
                "tool_calls": answer.get("tool_calls"), "finish_reason": answer.get("finish_reason"),
                "params": {k: body[k] for k in ("temperature", "max_tokens", "top_p") if k in body},
                "usage": usage, "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                "category": category}

    def upstream_kwargs(body: dict, stream: bool) -> dict:
        kwargs = {k: v for k, v in body.items() if k in PASSED_THROUGH}
        kwargs.update(model=service.model, messages=body["messages"], stream=stream, timeout=timeout_s,
                      max_retries=0)  # the application retries as it did against the service
        if service.api_base:
            kwargs["api_base"] = service.api_base
        if api_key:
            kwargs["api_key"] = api_key
        return kwargs

    def upstream_error(exc: Exception):
        status = getattr(exc, "status_code", None)
        status = status if isinstance(status, int) and 400 <= status < 600 else 502
        return _error(status, "the service refused the request: " + safe_message(str(exc), 500),
                      "upstream_error")

    @app.get("/health")
    async def health():
        c = committer
        return {"status": "ok", "recorded": c.recorded, "unrecorded": c.unrecorded, "shards": c.shards,
                "last_error": c.last_error, "shadow": dict(shadow.counts) if shadow is not None else None,
                "shadow_queue": shadow.queue.qsize() if shadow is not None and shadow.queue is not None else 0}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "llamaduo-capture"}
                                           for name in sorted(model_names)]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        unknown = sorted(set(body) - PASSED_THROUGH - {"model", "messages", "stream"})
        if unknown:
            return _error(400, f"parameter {unknown[0]!r} is not passed through by llamaduo capture", param=unknown[0])
        if body.get("model") not in model_names:
            return _error(404, f"model {body.get('model')!r} is not served here (use {served_name!r})",
                          "not_found_error", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return _error(400, "'messages' must be a non-empty list of objects", param="messages")
        category = (request.headers.get(category_header) or "").strip()[:100] or None
        started = time.perf_counter()
        stream = bool(body.get("stream"))
        try:
            response = await litellm.acompletion(**upstream_kwargs(body, stream))
        except Exception as exc:  # noqa: BLE001 - the provider's status and (redacted) message
            return upstream_error(exc)
        if not stream:
            payload = response.model_dump(mode="json", exclude_none=True)
            payload["model"] = body["model"]
            choice = (payload.get("choices") or [{}])[0]
            answer = {**(choice.get("message") or {}), "finish_reason": choice.get("finish_reason")}
            record = exchange(body, messages, answer, payload.get("usage"), started, category)
            await committer.record(record)
            if shadow is not None:
                shadow.offer(record)
            return JSONResponse(payload)

        async def events():
            parts, finish, usage, tool_calls = [], None, None, False
            try:
                async for chunk in response:
                    data = chunk.model_dump(mode="json", exclude_none=True)
                    data["model"] = body["model"]
                    for choice in data.get("choices") or []:
                        if choice.get("index", 0) == 0:
                            delta = choice.get("delta") or {}
                            if isinstance(delta.get("content"), str):
                                parts.append(delta["content"])
                            tool_calls = tool_calls or bool(delta.get("tool_calls"))
                            finish = choice.get("finish_reason") or finish
                    usage = data.get("usage") or usage
                    yield f"data: {json.dumps(data)}\n\n"
            except Exception as exc:  # noqa: BLE001 - the stream broke upstream: say so in the stream
                message = "the service's stream broke: " + safe_message(str(exc), 300)
                yield f"data: {json.dumps({'error': {'message': message, 'type': 'upstream_error'}})}\n\n"
                return
            answer = {"content": "".join(parts), "finish_reason": finish,
                      "tool_calls": True if tool_calls else None}
            # The end of the stream waits for the commit: an application that saw [DONE] has its exchange kept.
            record = exchange(body, messages, answer, usage, started, category)
            await committer.record(record)
            yield "data: [DONE]\n\n"
            if shadow is not None:
                shadow.offer(record)

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
