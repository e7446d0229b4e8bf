"""Service-call throughput against the fake OpenAI-compatible server, vs a paper-style baseline.

    python benchmarks/service_throughput.py [--calls 120] [--latency 0.25] [--rpm 1200] [--concurrency 8]

Ours: ServiceClient (async litellm, max_concurrency in flight, paced RPM limiter).
Baseline: like the paper's scripts — fixed batches of `concurrency` calls, then a sleep
so that the batch rate respects the RPM limit, regardless of how long calls took.
Ceiling: min(rpm/60, concurrency/latency) calls/s. Each run uses a fresh cache.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def requests(n: int, tag: str):
    from llamaduo.service import Request
    from llamaduo.templates import judge_template

    t = judge_template(None)
    return [Request([{"role": "user", "content": t.render(instruction=f"{tag} {i}", reference="a b c",
                                                          candidate="a b")}]) for i in range(n)]


def run_ours(url: str, n: int, rpm: int, conc: int, tag: str) -> float:
    from llamaduo.config import Endpoint, ServiceConfig
    from llamaduo.parsing import parse_judge_reply
    from llamaduo.service import ServiceClient

    cfg = ServiceConfig(model="openai/fake", api_base=url, rpm=rpm, max_concurrency=conc)
    with tempfile.TemporaryDirectory() as d:
        os.environ["BENCH_KEY"] = "sk-bench"
        endpoint = Endpoint(model=cfg.model, api_base=url, api_key_env="BENCH_KEY")
        client = ServiceClient(endpoint, cfg, d, progress=False)
        t0 = time.perf_counter()
        res = client.run(requests(n, tag), parse_judge_reply)
        dt = time.perf_counter() - t0
    assert all(r.ok for r in res)
    return n / dt


def run_baseline(url: str, n: int, rpm: int, conc: int, tag: str) -> float:
    import litellm

    reqs = requests(n, tag)

    async def go() -> float:
        t0 = time.perf_counter()
        for i in range(0, n, conc):
            batch = reqs[i:i + conc]
            await asyncio.gather(*(litellm.acompletion(model="openai/fake", api_base=url, api_key="sk-bench",
                                                       messages=r.messages, max_retries=0) for r in batch))
            if i + conc < n:
                await asyncio.sleep(len(batch) * 60 / rpm)  # fixed sleep per batch, as the paper's loop does
        return n / (time.perf_counter() - t0)

    return asyncio.run(go())


def main() -> None:
    from tests.fake_service import FakeBehaviour, FakeOpenAIServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=120)
    ap.add_argument("--latency", type=float, default=0.25)
    ap.add_argument("--rpm", type=int, default=1200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    ceiling = min(a.rpm / 60, a.concurrency / a.latency)
    ours, base = [], []
    with FakeOpenAIServer(FakeBehaviour(latency_s=a.latency, rpm=a.rpm)) as server:
        for rep in range(a.repeats):
            ours.append(run_ours(server.url, a.calls, a.rpm, a.concurrency, f"ours{rep}"))
            base.append(run_baseline(server.url, a.calls, a.rpm, a.concurrency, f"base{rep}"))
        throttled = server.statuses[429]
    mo, mb = statistics.median(ours), statistics.median(base)
    print(f"latency {a.latency}s, rpm {a.rpm}, concurrency {a.concurrency}, {a.calls} calls x {a.repeats} repeats")
    print(f"ceiling  min(R/60, C/L) = {ceiling:.2f} calls/s")
    print(f"ours     median {mo:.2f} calls/s  ratio to ceiling {mo / ceiling:.3f}  (runs: {', '.join(f'{x:.2f}' for x in ours)})")
    print(f"baseline median {mb:.2f} calls/s  ratio to ceiling {mb / ceiling:.3f}  (runs: {', '.join(f'{x:.2f}' for x in base)})")
    print(f"ours / baseline = {mo / mb:.2f}x; 429s answered by the server: {throttled}")


if __name__ == "__main__":
    main()
