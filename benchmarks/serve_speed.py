"""Serving engines on one exported model: p50/p95 latency and tokens/s at 1, 4 and 16 concurrent
clients, and the p95 of 8-token requests while one 1,024-token request generates (against the same
requests alone: the goal is at most 2x).

    .venv/bin/python benchmarks/serve_speed.py RUN_DIR [--engines llamaduo,handwritten,llama.cpp]
        [--handwritten-rev REV] [--gguf FILE] [--requests 16]

- `llamaduo`: `llamaduo serve RUN_DIR` (the front + `transformers serve` with continuous batching);
- `handwritten`: the server this project wrote before (its own batcher), from git revision REV, run
  from a temporary worktree: the baseline, measured in the same run on the same machine;
- `llama.cpp`: llama-cpp-python's OpenAI server on the run's GGUF (needs `pip install
  'llama-cpp-python[server]'`, built from source: see benchmarks/README.md).
Each engine runs alone (the others stopped). Medians of the per-request latencies are quoted.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["My invoice shows the wrong amount.", "The app crashes when I open settings on my phone.",
           "How do I reset my password?", "Please cancel my subscription", "Where is my parcel?",
           "I was charged twice this month.", "The delivery box arrived damaged.", "Can I change my email address?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(base: str, proc: subprocess.Popen, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            models = httpx.get(f"{base}/v1/models", timeout=2).json()["data"]
            if models:
                return models[0]["id"]
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise SystemExit("server did not start")


def start(engine: str, run_dir: Path, args) -> tuple[subprocess.Popen, str, str, tempfile.TemporaryDirectory | None]:
    port = free_port()
    tmp = None
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if engine == "llamaduo":
        cmd = [sys.executable, "-m", "llamaduo.serve", str(run_dir), "--port", str(port), "--max-tokens-cap", "1024"]
        cwd = ROOT
    elif engine == "handwritten":
        tmp = tempfile.TemporaryDirectory(prefix="serve-baseline-")
        subprocess.run(["git", "worktree", "add", "--detach", tmp.name, args.handwritten_rev], cwd=ROOT, check=True,
                       capture_output=True)
        cmd = [sys.executable, "-m", "llamaduo.serve", str(run_dir), "--port", str(port)]
        cwd, env["PYTHONPATH"] = tmp.name, tmp.name
    elif engine == "llama.cpp":
        gguf = args.gguf or next(iter(sorted((run_dir / "final_model" / "gguf").glob("*.gguf"))))
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--port", str(port), "--n_ctx", "2048"]
        cwd = ROOT
    else:
        raise SystemExit(f"unknown engine {engine}")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    return proc, base, wait(base, proc), tmp


def ask(base: str, model: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = httpx.post(f"{base}/v1/chat/completions", timeout=600, json={
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0})
    r.raise_for_status()
    return time.perf_counter() - t0, r.json()["usage"]["completion_tokens"]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def load(base: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    with ThreadPoolExecutor(clients) as pool:
        t0 = time.perf_counter()
        out = list(pool.map(lambda i: ask(base, model, PROMPTS[i % len(PROMPTS)], max_tokens), range(requests)))
        wall = time.perf_counter() - t0
    lat = [s for s, _ in out]
    return {"clients": clients, "p50_s": round(statistics.median(lat), 3), "p95_s": round(pct(lat, 95), 3),
            "tokens_per_s": round(sum(n for _, n in out) / wall, 1)}


def beside_long(base: str, model: str, n: int = 8) -> dict:
    alone = [ask(base, model, PROMPTS[i % len(PROMPTS)], 8)[0] for i in range(n)]
    with ThreadPoolExecutor(1) as pool:
        long = pool.submit(ask, base, model, "Write a very long story about a lighthouse keeper.", 1024)
        time.sleep(1.0)
        beside = [ask(base, model, PROMPTS[i % len(PROMPTS)], 8)[0] for i in range(n)]
        long_s, long_tokens = long.result()
    return {"p95_alone_s": round(pct(alone, 95), 3), "p95_beside_long_s": round(pct(beside, 95), 3),
            "ratio": round(pct(beside, 95) / pct(alone, 95), 2), "long_tokens": long_tokens,
            "long_s": round(long_s, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--engines", default="llamaduo,handwritten")
    p.add_argument("--handwritten-rev", default="eea0a8a")
    p.add_argument("--gguf", type=Path, default=None)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args()
    results = {}
    for engine in args.engines.split(","):
        proc, base, model, tmp = start(engine, args.run_dir.resolve(), args)
        try:
            ask(base, model, PROMPTS[0], 4)  # warm-up
            row = {"load": [load(base, model, c, max(args.requests, c), args.max_tokens) for c in (1, 4, 16)],
                   "beside_long": beside_long(base, model)}
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
            if tmp is not None:
                subprocess.run(["git", "worktree", "remove", "--force", tmp.name], cwd=ROOT, capture_output=True)
        results[engine] = row
        print(engine, json.dumps(row), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
