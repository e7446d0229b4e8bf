"""What `llamaduo serve` accepts, before a request reaches the engine (pure, no I/O).

The engine underneath (transformers serve, vLLM, llama.cpp's server) accepts more of OpenAI's schema
than it honours, and some of what it honours is not the operator's to give away: a request is refused
with 400 naming the parameter when it asks for something this endpoint does not do (never ignored
silently), `max_tokens` above the operator's cap is refused, and only the served model is reachable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Honoured as OpenAI documents them (passed to the engine, or checked here).
HONOURED = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stream",
            "stream_options", "stop", "n", "seed"}
ROLES = {"system", "developer", "user", "assistant"}
MAX_STOP = 4  # OpenAI's own limit


class RequestRefused(ValueError):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class ServePolicy:
    model_id: str  # what clients send as `model`
    engine_model: str  # what the engine calls it
    system_prompt: str | None
    default_max_tokens: int  # the run's infer.max_new_tokens
    max_tokens_cap: int  # the operator's ceiling
    max_messages: int = 256


def _refuse(message: str, param: str | None = None, status: int = 400) -> RequestRefused:
    return RequestRefused(status, message, param)


def _int(body: dict, name: str, low: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise _refuse(f"{name} must be an integer >= {low}", name)
    return v


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
        raise _refuse(f"{name} must be a number in [{low:g}, {high:g}]", name)
    return float(v)


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _refuse("only text content parts are supported", f"{where}.content.{i}")
            if set(part) - {"type", "text"}:
                raise _refuse(f"content part field(s) {sorted(set(part) - {'type', 'text'})} are not supported",
                              f"{where}.content.{i}")
            parts.append(part["text"])
        return "".join(parts)
    raise _refuse("content must be a string or a list of text parts", f"{where}.content")


def messages_of(body: dict, policy: ServePolicy) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _refuse("messages must be a non-empty list", "messages")
    if len(msgs) > policy.max_messages:
        raise _refuse(f"at most {policy.max_messages} messages", "messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages.{i}"
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _refuse(f"role must be one of {sorted(ROLES)}", f"{where}.role")
        extra = set(m) - {"role", "content", "name"}
        if extra:
            raise _refuse(f"message field(s) {sorted(extra)} are not supported", f"{where}.{sorted(extra)[0]}")
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": _text(m.get("content"),
                                                                                                  where)})
    if policy.system_prompt and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": policy.system_prompt})  # as in training and evaluation
    return out


def upstream_request(body: dict, policy: ServePolicy) -> dict:
    """The engine's request for an accepted client request; RequestRefused otherwise."""
    if not isinstance(body, dict):
        raise _refuse("the request body must be a JSON object")
    unknown = sorted(set(body) - HONOURED)
    if unknown:
        raise _refuse(f"{unknown[0]} is not supported by this endpoint (llamaduo serve honours: "
                      f"{', '.join(sorted(HONOURED))})", unknown[0])
    if body.get("model") != policy.model_id:
        raise RequestRefused(404, f"model {body.get('model')!r} is not served here; this endpoint serves "
                             f"{policy.model_id!r}", "model", "not_found_error")
    if _int(body, "n", 1) not in (None, 1):
        raise _refuse("only n=1 is supported", "n")
    asked = [(k, v) for k in ("max_completion_tokens", "max_tokens") if (v := _int(body, k, 1)) is not None]
    limit = asked[0][1] if asked else policy.default_max_tokens
    if limit > policy.max_tokens_cap:
        raise _refuse(f"{asked[0][0]} {limit} is above this endpoint's cap of {policy.max_tokens_cap}", asked[0][0])
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _refuse("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _refuse("stream_options needs stream=true", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"} or \
                not isinstance(options.get("include_usage", False), bool):
            raise _refuse("only stream_options.include_usage (true/false) is supported", "stream_options")
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
            raise _refuse(f"stop must be a non-empty string or a list of at most {MAX_STOP}", "stop")
        stop = stops
    seed = _int(body, "seed", 0)
    out = {"model": policy.engine_model, "messages": messages_of(body, policy), "max_tokens": limit,
           "temperature": temperature or 0.0, "stream": stream}
    if top_p is not None:
        out["top_p"] = top_p
    if stop:
        out["stop"] = stop
    if seed is not None:
        out["seed"] = seed
    if stream:
        out["stream_options"] = {"include_usage": True}  # the front counts tokens; it drops the chunk unless asked
    return out


class StopCutter:
    """Text pieces in, the text before the first stop string out, as early as it is safe to send: a
    piece is held back only while it could still be the start of a stop string. The answer is trimmed
    as evaluation trims it (no leading whitespace; trailing whitespace is sent only once more text
    follows it), so a served answer is the evaluated one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buf, self.done, self.started, self.spaces = "", False, False, ""

    def _trimmed(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        if not text:
            return ""
        body = text.rstrip()
        out, self.spaces = (self.spaces + body, text[len(body):]) if body else ("", self.spaces + text)
        return out

    def feed(self, text: str) -> str:
        if self.done:
            return ""
        self.buf += text
        hits = [i for s in self.stops if (i := self.buf.find(s)) >= 0]
        if hits:
            out, self.buf, self.done = self.buf[:min(hits)], "", True
            return self._trimmed(out)
        cut = max(0, len(self.buf) - self.hold)
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return self._trimmed(out)

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return self._trimmed(out)
