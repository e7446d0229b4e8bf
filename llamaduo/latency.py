"""The student's latency and throughput, measured through the endpoint an application would call.

`measure_student` starts `llamaduo serve` (the same code as the CLI) on a free loopback port in a child
process, so the numbers include what a caller pays: HTTP, the chat template, batching. Single-request
latency comes from requests sent one after another; throughput from `batch_size` requests kept in
flight (the server batches what waits). The child is stopped before returning, and ends by itself if
this process dies (llamaduo/childproc.py's lifeline).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .childproc import Child, failure_text
from .records import LatencyStats

START_TIMEOUT_S = 600.0  # loading a large model from a slow disk
REQUEST_TIMEOUT_S = 600.0


class EndpointFailed(RuntimeError):
    pass


# Straight to loopback: an http_proxy in the environment must not carry these requests.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with _OPENER.open(req, timeout=REQUEST_TIMEOUT_S) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise EndpointFailed(f"{url} answered {exc.code}: {exc.read()[:500].decode(errors='replace')}") from None


def _get(url: str, timeout: float = 5.0) -> dict:
    with _OPENER.open(url, timeout=timeout) as r:
        return json.loads(r.read())


class _Endpoint:
    """`llamaduo serve MODEL_DIR --port 0` in a child process, until the `with` block ends."""

    def __init__(self, model_dir: str | Path, *, system_prompt: str | None, backend: str):
        self.tmp = tempfile.TemporaryDirectory(prefix="llamaduo-latency-")
        ready, self.log = Path(self.tmp.name) / "ready.json", Path(self.tmp.name) / "serve.log"
        cmd = [sys.executable, "-m", "llamaduo.serve", str(model_dir), "--host", "127.0.0.1", "--port", "0",
               "--engine", {"hf": "transformers"}.get(backend, backend), "--ready-file", str(ready)]
        cmd += ["--no-system-prompt"] if system_prompt is None else ["--system-prompt", system_prompt]
        with open(self.log, "wb") as log:
            self.child = Child(cmd, stdout=log, stderr=log, env={**os.environ, "TQDM_DISABLE": "1"})
        self.ready = ready

    def __enter__(self) -> "_Endpoint":
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.child.proc.poll() is not None:
                self._fail(f"the endpoint exited with {self.child.proc.returncode} while starting")
            if self.ready.is_file():
                info = json.loads(self.ready.read_text())
                self.base = f"http://127.0.0.1:{info['port']}"
                try:  # the socket listens once uvicorn has started
                    self.health = _get(f"{self.base}/health")
                    return self
                except OSError:
                    pass
            time.sleep(0.2)
        self._fail(f"the endpoint did not start within {START_TIMEOUT_S:.0f} s")

    def _fail(self, why: str):
        self.stop()
        tail = self.log.read_text(errors="replace") if self.log.is_file() else ""
        self.tmp.cleanup()
        raise EndpointFailed(failure_text(why, tail, cut=False))

    def stop(self) -> None:
        self.child.stop(grace_s=15)  # uvicorn shuts down on SIGTERM

    def __exit__(self, *exc) -> None:
        self.stop()
        self.tmp.cleanup()

    def chat(self, prompt: str, max_new_tokens: int) -> tuple[float, dict]:
        body = {"model": self.health["model"], "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_new_tokens}
        t0 = time.perf_counter()
        reply = _post(f"{self.base}/v1/chat/completions", body)
        return time.perf_counter() - t0, reply


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def measure_student(model_dir: str | Path, prompts: list[str], *, system_prompt: str | None, batch_size: int,
                    max_new_tokens: int, requests: int = 20, backend: str = "auto") -> LatencyStats:
    """p50/p95 of one request at a time (`requests` of them, after one warm-up request) and throughput
    with `batch_size` requests in flight (at least `requests`, and two rounds of the batch), greedy,
    `max_new_tokens` per answer. `model_dir`: a run directory (folder or URL), its `final_model/`, or
    the `merged/` folder. `system_prompt` is the one training used (None: no system message)."""
    if not prompts:
        raise ValueError("measure_student needs at least one prompt")
    if requests < 1 or batch_size < 1:
        raise ValueError("requests and batch_size must be at least 1")
    with _Endpoint(model_dir, system_prompt=system_prompt, backend=backend) as ep:
        ep.chat(prompts[0], max_new_tokens)  # warm-up: first-call costs (allocations, kernels) are not latency
        timed = [ep.chat(prompts[i % len(prompts)], max_new_tokens) for i in range(requests)]
        latencies = [s for s, _ in timed]
        n = max(requests, 2 * batch_size)
        with ThreadPoolExecutor(max_workers=batch_size) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda i: ep.chat(prompts[i % len(prompts)], max_new_tokens), range(n)))
            wall = time.perf_counter() - t0
        health = ep.health
    usage = [r["usage"] for _, r in timed]
    backend_name = f"{health['engine']} on {health['device']}"
    note = (f"measured through `llamaduo serve` ({backend_name}) on loopback HTTP: {requests} requests one at a "
            f"time for p50/p95 (after 1 warm-up), {n} requests with {batch_size} in flight for throughput; greedy, "
            f"max_tokens={max_new_tokens}, {len(prompts)} distinct prompts, "
            f"system prompt {'included' if system_prompt else 'none'}")
    return LatencyStats(p50_s=round(percentile(latencies, 50), 4), p95_s=round(percentile(latencies, 95), 4),
                        throughput_rps=round(n / wall, 3), concurrency=batch_size, requests=requests,
                        hardware=health["hardware"], backend=backend_name, endpoint_note=note,
                        completion_tokens_mean=round(sum(u["completion_tokens"] for u in usage) / len(usage), 2),
                        prompt_tokens_mean=round(sum(u["prompt_tokens"] for u in usage) / len(usage), 2))
