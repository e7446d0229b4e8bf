"""The HTTP front of `llamaduo serve`: the operator's policy in front of a maintained engine.

It does what an engine does not decide for the operator: a bearer key (`--api-key-env`), a bound on
the request body, the parameter allow-list and the `max_tokens` cap (llamaduo/serve_policy.py), the
run's model id and system prompt, Prometheus `/metrics`; and nothing an engine already does:
generation, batching, streaming and stop strings are the engine's (llamaduo/serve_engines.py). A caller
that hangs up closes the upstream connection, and the engine stops generating for it.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.

import asyncio
import dataclasses
import hmac
import json
import time
import uuid

from .serve_policy import RequestRefused, ServePolicy, StopCutter, upstream_request

DEFAULT_MAX_REQUEST_BYTES = 1_000_000
OPEN_PATHS = {"/health"}  # a load balancer's probe needs no key; it says nothing a caller could misuse


def _error(status: int, message: str, kind: str = "invalid_request_error", param=None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status)


class Metrics:
    """Prometheus counters of this endpoint (a registry of its own: nothing else's metrics leak in)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("llamaduo_requests", "Chat completion requests by HTTP status", ["status"],
                                registry=self.registry)
        self.latency = Histogram("llamaduo_request_seconds", "Seconds from request to its last byte",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=self.registry)
        self.tokens = Counter("llamaduo_tokens", "Tokens by kind (prompt, completion)", ["kind"],
                              registry=self.registry)
        self.in_flight = Gauge("llamaduo_requests_in_flight", "Requests accepted and not yet answered (the queue "
                               "depth as the front sees it)", registry=self.registry)

    def usage(self, usage: dict | None) -> None:
        if usage:
            self.tokens.labels("prompt").inc(usage.get("prompt_tokens") or 0)
            self.tokens.labels("completion").inc(usage.get("completion_tokens") or 0)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class BodyLimit:
    """ASGI middleware: a body beyond `limit` bytes is refused with 413 before it is read further
    (Content-Length, or counted as it streams in)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _error(413, f"the request body is over {self.limit} bytes")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise RequestRefused(413, f"the request body is over {self.limit} bytes")
            return message

        try:
            await self.app(scope, limited, send)
        except RequestRefused as exc:
            await _error(exc.status, str(exc))(scope, receive, send)


class BearerKey:
    """ASGI middleware: every path but /health needs `Authorization: Bearer KEY` (compared in constant time)."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            got = dict(scope.get("headers") or []).get(b"authorization", b"")
            scheme, _, token = got.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return await _error(401, "a valid API key is required (Authorization: Bearer KEY)",
                                    "authentication_error")(scope, receive, send)
        return await self.app(scope, receive, send)


class _EngineRefused(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status, self.text = status, text


class Target:
    """The engine requests go to, with what serving its model needs. `llamaduo serve --follow` swaps in a
    new one when a model is promoted; a request keeps the target it started on (in_flight counts them, so
    the old engine is stopped only once they are answered)."""

    def __init__(self, policy: ServePolicy, engine_url: str, model_dir=None, model_sha256: str | None = None):
        import httpx

        self.policy, self.engine_url, self.model_dir, self.model_sha256 = policy, engine_url, model_dir, model_sha256
        self.client = httpx.AsyncClient(base_url=engine_url, timeout=httpx.Timeout(None, connect=10), trust_env=False)
        self.in_flight = 0
        self.tokenizer = None


def create_front(policy: ServePolicy, engine_url: str, *, engine_name: str, hardware: str, device: str = "cpu",
                 model_dir=None, model_sha256: str | None = None):
    import httpx
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    app = FastAPI(title=f"llamaduo serve: {policy.model_id}", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics()
    created = int(time.time())
    app.state.target = Target(policy, engine_url, model_dir, model_sha256)

    def swap(new: Target) -> Target:
        """Requests from now on go to `new` (under the model id clients already use); returns the old one."""
        old = app.state.target
        new.policy = dataclasses.replace(new.policy, model_id=old.policy.model_id)
        app.state.target = new
        return old

    app.state.swap = swap

    @app.get("/health")
    def health():
        t = app.state.target
        policy = t.policy
        return {"status": "ok", "model": policy.model_id, "engine": engine_name, "device": device, "hardware": hardware,
                "system_prompt": policy.system_prompt is not None, "max_new_tokens": policy.default_max_tokens,
                "max_tokens_cap": policy.max_tokens_cap, "in_flight": int(metrics.in_flight._value.get()),
                "model_sha256": t.model_sha256}

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": app.state.target.policy.model_id, "object": "model", "created": created,
                                            "owned_by": "llamaduo"}]}

    def refused(exc: RequestRefused):
        metrics.requests.labels(str(exc.status)).inc()
        return JSONResponse(exc.body(), status_code=exc.status)

    def engine_error(status: int, text: str):
        try:
            detail = json.loads(text)
            detail = detail.get("error", detail.get("detail", detail)) if isinstance(detail, dict) else detail
            message = detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)
        except ValueError:
            message = text[:500]
        status = 400 if 400 <= status < 500 else 502
        return refused(RequestRefused(status, f"the engine refused the request: {message}"[:1000], None,
                                      "invalid_request_error" if status == 400 else "server_error"))

    def prompt_tokens(t: Target, messages: list[dict]) -> int:
        """Counted here only for a request cut at a stop string (the engine's usage never came)."""
        if t.tokenizer is None:
            from transformers import AutoTokenizer

            t.tokenizer = AutoTokenizer.from_pretrained(str(t.model_dir))
        tok = t.tokenizer
        return len(tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"])

    async def chunks(t: Target, up: dict):
        """The engine's stream, parsed; closing this generator closes the connection (the engine stops)."""
        async with t.client.stream("POST", "/v1/chat/completions", json=up) as r:
            if r.status_code != 200:
                raise _EngineRefused(r.status_code, (await r.aread()).decode(errors="replace"))
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    yield json.loads(data)

    async def answer(t: Target, up: dict, stops: list[str] | None):
        """(content pieces, finish_reason, usage) as they come: the engine's stream cut at the first stop
        string, where generation ends (OpenAI leaves the stop string out)."""
        cutter = StopCutter(stops or [])
        received = 0
        stream = chunks(t, up)
        try:
            async for chunk in stream:
                if chunk.get("usage") and not chunk.get("choices"):
                    yield None, None, chunk["usage"]
                    continue
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    received += 1 if text else 0
                    piece = cutter.feed(text)
                    if cutter.done:
                        yield piece, "stop", None
                        usage_tokens = await asyncio.to_thread(prompt_tokens, t, up["messages"])
                        yield None, None, {"prompt_tokens": usage_tokens, "completion_tokens": received,
                                           "total_tokens": usage_tokens + received}
                        return
                    if piece:
                        yield piece, None, None
                    if choice.get("finish_reason"):
                        rest = cutter.flush()
                        yield rest, choice["finish_reason"], None
        finally:
            await stream.aclose()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        t0 = time.perf_counter()
        try:
            body = json.loads(await request.body())
        except ValueError:
            return refused(RequestRefused(400, "the request body is not JSON"))
        t = app.state.target  # this request's engine, also if a promotion swaps in another meanwhile
        policy = t.policy
        try:
            up = upstream_request(body, policy)
        except RequestRefused as exc:
            return refused(exc)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stops, client_streams = up.pop("stop", None), up["stream"]
        # Always a stream from the engine: stop strings are cut here (the engine's continuous batching
        # does not honour them) and a hang-up ends generation at once.
        up.update(stream=True, stream_options={"include_usage": True})
        ident, created_at = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        metrics.in_flight.inc()
        t.in_flight += 1
        if client_streams:
            return StreamingResponse(_events(t, answer(t, up, stops), ident, created_at, include_usage, t0),
                                     media_type="text/event-stream")
        try:
            collect = asyncio.ensure_future(_collect(answer(t, up, stops)))
            while not collect.done():  # a caller that hangs up: drop the engine's stream, it stops
                done, _ = await asyncio.wait({collect}, timeout=0.25)
                if not done and await request.is_disconnected():
                    collect.cancel()
                    metrics.requests.labels("499").inc()
                    return Response(status_code=499)
            text, finish, usage = collect.result()
            metrics.usage(usage)
            metrics.requests.labels("200").inc()
            return {"id": ident, "object": "chat.completion", "created": created_at, "model": policy.model_id,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish or "stop", "logprobs": None}],
                    "usage": usage or {}}
        except _EngineRefused as exc:
            return engine_error(exc.status, exc.text)
        except httpx.HTTPError as exc:
            return refused(RequestRefused(502, f"the engine did not answer: {type(exc).__name__}", None,
                                          "server_error"))
        finally:
            t.in_flight -= 1
            metrics.in_flight.dec()
            metrics.latency.observe(time.perf_counter() - t0)

    async def _collect(parts):
        text, finish, usage = [], None, None
        async for piece, reason, use in parts:
            text.append(piece or "")
            finish = reason or finish
            usage = use or usage
        return "".join(text), finish, usage

    async def _events(t: Target, parts, ident: str, created_at: int, include_usage: bool, t0: float):
        def event(choices: list, **extra) -> str:
            chunk = {"id": ident, "object": "chat.completion.chunk", "created": created_at,
                     "model": t.policy.model_id, "choices": choices, **extra}
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

        try:
            yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            async for piece, reason, usage in parts:
                if usage is not None:
                    metrics.usage(usage)
                    if include_usage:
                        yield event([], usage=usage)
                    continue
                if piece:
                    yield event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                if reason:
                    yield event([{"index": 0, "delta": {}, "finish_reason": reason}])
            yield "data: [DONE]\n\n"
            metrics.requests.labels("200").inc()
        except _EngineRefused as exc:
            yield f"data: {json.dumps({'error': {'message': exc.text[:500], 'type': 'server_error'}})}\n\n"
        finally:  # also when the caller hung up: `parts` closes the engine's stream, the engine stops
            await parts.aclose()
            t.in_flight -= 1
            metrics.in_flight.dec()
            metrics.latency.observe(time.perf_counter() - t0)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def not_here(path: str):  # the engine's other routes (model loading, resets) are not reachable
        return _error(404, f"/{path} is not served here", "not_found_error")

    app.state.metrics = metrics
    return app


def wrap(app, *, api_key: str | None, max_request_bytes: int):
    """The app with the body bound outermost, then the key check."""
    if api_key:
        app = BearerKey(app, api_key)
    return BodyLimit(app, max_request_bytes)
