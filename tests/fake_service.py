"""A fake OpenAI-compatible chat-completions server for tests and benchmarks (loopback only).

It speaks `POST /v1/chat/completions` and can add latency, enforce an RPM limit with
429 + Retry-After, and inject 500s, hangs (client timeouts) and malformed JSON. It
answers synthesis prompts with pairs from a pool and judge prompts with a score it
computes from the candidate and the reference. Every request is counted per body
(`answered[body_sha]`), so tests can prove that nothing was paid for twice.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_BLOCK = r"{label}:\s*```\n?(.*?)\n?```"


def _block(prompt: str, label: str) -> str | None:
    m = re.search(_BLOCK.format(label=re.escape(label)), prompt, re.DOTALL)
    return m.group(1) if m else None


def overlap_score(candidate: str, reference: str) -> int:
    """Share of reference words found in the candidate, in 1..100 (deliberately simple)."""
    ref = reference.lower().split()
    cand = set(candidate.lower().split())
    if not ref:
        return 1
    return max(1, round(100 * sum(w in cand for w in ref) / len(ref)))


@dataclass
class FakeBehaviour:
    latency_s: float = 0.0
    rpm: int | None = None
    retry_after_s: float = 1.0
    p_500: float = 0.0
    p_hang: float = 0.0
    hang_s: float = 5.0
    p_malformed: float = 0.0
    seed: int = 0
    pool: list[dict] = field(default_factory=list)
    judge: str = "overlap"  # or "fenced" to wrap replies in ```json fences with chatter
    plain_answer: str = "blue"  # reply to anything that is neither a synthesis nor a judge prompt
    plain_answers: dict = field(default_factory=dict)  # word in the prompt -> that reply (first match wins)
    pool_pick: str = "random"  # or "similar": the pool pairs closest to the seed example (a teacher that follows it)
    judge_score_as: str | None = None  # "null" | "list" | "string": valid JSON, wrong type (first answer only)
    p_judge_malformed: float = 0.0  # share of judge replies that are not JSON at all
    judge_good_first: int = 0  # this many judge replies are valid before p_judge_malformed applies
    reject_models: dict = field(default_factory=dict)  # model -> HTTP status (401 echoes the caller's key)
    reject_after: int | None = None  # after this many requests every request gets a key-echoing 401
    synth_finish_reason: str = "stop"  # "length": synthesis replies say they stopped at max_tokens
    echo_key_at: int | None = None  # rejections echo the bare key this many characters into the message


class FakeOpenAIServer:
    def __init__(self, behaviour: FakeBehaviour | None = None):
        self.behaviour = behaviour or FakeBehaviour()
        self.requests = 0  # every HTTP request, faults included
        self.answered: Counter = Counter()  # body sha -> 200 replies sent
        self.statuses: Counter = Counter()
        self.kinds: Counter = Counter()  # 200 replies by request kind: synth / judge / plain
        self.bodies: list[dict] = []  # every request body received
        self._lock = threading.Lock()
        self._window: deque = deque()
        self._rng = random.Random(self.behaviour.seed)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- replies -------------------------------------------------------------------------
    def reply_text(self, prompt: str) -> str:
        reference = _block(prompt, "Human Response")
        candidate = _block(prompt, "Language Model Response")
        if reference is not None and candidate is not None:
            if self.behaviour.judge == "rouge":
                from llamaduo.similarity import rouge_l

                s = max(1, min(100, round(100 * rouge_l(candidate, reference)["f"]))) if candidate.strip() else 1
            else:
                s = overlap_score(candidate, reference)
            self._judged = getattr(self, "_judged", 0) + 1
            if self.behaviour.p_judge_malformed and self._judged > self.behaviour.judge_good_first and \
                    self._rng.random() < self.behaviour.p_judge_malformed:
                return "I think the candidate is quite good, maybe 80 out of 100."
            bad = {"null": None, "list": [s], "string": "eighty"}
            first = "Your previous reply" not in prompt  # a re-ask with the error gets a valid reply
            score = bad[self.behaviour.judge_score_as] if self.behaviour.judge_score_as and first else s
            body = json.dumps({"similarity_assessment": {"score": score, "reason": "word overlap"},
                               "precision_assessment": {"score": s, "reason": "word overlap"}})
            return f"Here is my assessment:\n```json\n{body}\n```\nHope this helps." if self.behaviour.judge == "fenced" else body
        m = re.search(r"generate (\d+) more pairs", prompt)
        if not m and '"contents"' not in prompt:
            words = set(re.findall(r"\w+", prompt.lower()))
            return next((a for w, a in self.behaviour.plain_answers.items() if w in words), self.behaviour.plain_answer)
        n = int(m.group(1)) if m else 3
        rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
        pool = self.behaviour.pool
        seed = re.search(r"Instruction: (.*?)\nResponse:", prompt, re.DOTALL)
        if self.behaviour.pool_pick == "similar" and seed:
            seed_words = set(seed.group(1).lower().split())
            ranked = sorted(pool, key=lambda p: -len(seed_words & set(p["instruction"].lower().split())) /
                            (len(seed_words | set(p["instruction"].lower().split())) or 1))
            pool = ranked[: max(3 * n, 10)]
        picks = rng.sample(pool, min(n, len(pool)))
        return json.dumps({"contents": [{"instruction": p["instruction"], "response": p["response"]} for p in picks]})

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: dict | str, headers: dict | None = None) -> bool:
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                    return True
                except (BrokenPipeError, ConnectionResetError):  # the client is gone (killed, timed out)
                    return False

            def _stream(self, body: dict, text: str, prompt_tokens: int) -> bool:
                base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                        "model": body.get("model", "fake")}
                words = text.split(" ")
                events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "finish_reason": None}]}]
                events += [{**base, "choices": [{"index": 0, "delta": {"content": (" " if i else "") + w},
                                                 "finish_reason": None}]} for i, w in enumerate(words)]
                events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                if (body.get("stream_options") or {}).get("include_usage"):
                    events.append({**base, "choices": [], "usage": {
                        "prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                        "total_tokens": prompt_tokens + len(words)}})
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for event in events:
                        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                    self.close_connection = True
                    return True
                except (BrokenPipeError, ConnectionResetError):
                    return False

            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                b = server.behaviour
                with server._lock:
                    server.requests += 1
                    now = time.monotonic()
                    while server._window and now - server._window[0] > 60:
                        server._window.popleft()
                    limited = b.rpm is not None and len(server._window) >= b.rpm
                    if not limited:
                        server._window.append(now)
                    roll = server._rng.random()
                if limited:
                    server.statuses[429] += 1
                    return self._send(429, {"error": {"message": "rate limit", "type": "rate_limit"}},
                                      {"Retry-After": str(b.retry_after_s)})
                if b.latency_s:
                    time.sleep(b.latency_s)
                if roll < b.p_500:
                    server.statuses[500] += 1
                    return self._send(500, {"error": {"message": "injected fault", "type": "server_error"}})
                if roll < b.p_500 + b.p_hang:
                    server.statuses["hang"] += 1
                    time.sleep(b.hang_s)
                    return
                body = json.loads(raw)
                server.bodies.append(body)
                status = b.reject_models.get(body.get("model"))
                if b.reject_after is not None and server.requests > b.reject_after:
                    status = 401
                if status:
                    server.statuses[status] += 1
                    key = self.headers.get("Authorization", "")
                    message = f"Incorrect API key provided: {key}"
                    if b.echo_key_at is not None:  # a gateway that dumps the key deep into a long message
                        filler = "Request rejected by the upstream gateway; details follow. " * 20
                        message = filler[: b.echo_key_at] + key.removeprefix("Bearer ") + " was not accepted."
                    return self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})
                prompt = "\n".join(m.get("content") or "" for m in body["messages"])
                kind = "judge" if "Language Model Response" in prompt else "synth" if '"contents"' in prompt else "plain"
                text = server.reply_text(prompt)
                if roll < b.p_500 + b.p_hang + b.p_malformed:
                    server.statuses["malformed"] += 1
                    text = text[: len(text) // 3]  # truncated JSON
                if body.get("stream"):  # as OpenAI streams: word chunks, a finish chunk, usage when asked, [DONE]
                    delivered = self._stream(body, text, len(prompt) // 4)
                else:
                    delivered = self._send(200, {
                        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                        "model": body.get("model", "fake"),
                        "choices": [{"index": 0, "finish_reason": b.synth_finish_reason if kind == "synth" else "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                                  "total_tokens": (len(prompt) + len(text)) // 4},
                    })
                if delivered:  # only a reply the client received counts as answered (and paid)
                    with server._lock:
                        server.answered[hashlib.sha256(raw).hexdigest()] += 1
                        server.statuses[200] += 1
                        server.kinds[kind] += 1

        return Handler
