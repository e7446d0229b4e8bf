"""Orchestration overhead of `make demo`: the share of its wall time spent outside stage bodies.

    python benchmarks/demo_overhead.py [--config configs/demo.yaml]

Runs the real CLI (`llamaduo run`) on a fresh run directory (its own Prefect database), measures
the wall time of the whole command, then reads the task runs back from that database. Stage
bodies are the task runs that do the migration's work (data, synthesis, curation, training sets,
training, inference, judging, export); everything else — process start and imports, preflight,
the temporary Prefect server, flow and task bookkeeping, student conversion, report publishing —
is overhead. Prints the breakdown and the overhead share.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOT_STAGES = {"prepare-student", "report"}  # bookkeeping, not the migration's work
CONTAINERS = {"migration-round"}  # a subflow's run as seen from its parent: not a stage


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/demo.yaml")
    a = ap.parse_args()
    from tests.prefect_db import query

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "run"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        started = time.time()
        out = subprocess.run([sys.executable, "-m", "flows.cli", "run", a.config, "--workdir", str(work)], cwd=ROOT,
                             env=env, capture_output=True, text=True)
        wall = time.time() - started
        if out.returncode not in (0, 3):
            print(out.stderr[-3000:])
            return 1
        runs = query(work, """
tr = await c.read_task_runs()
fr = await c.read_flow_runs()
print(json.dumps({"tasks": [[t.name, t.start_time.isoformat() if t.start_time else None,
                             t.end_time.isoformat() if t.end_time else None] for t in tr],
                  "flows": [[f.name, f.start_time.isoformat(), f.end_time.isoformat()] for f in fr
                            if f.start_time and f.end_time]}))
""")
    ts = lambda s: datetime.fromisoformat(s).timestamp()  # noqa: E731
    by_name: dict[str, float] = {}
    stage_iv, other_iv = [], []
    for name, start, end in runs["tasks"]:
        if not (start and end):
            continue
        task = name.rsplit("-", 1)[0]
        if task in CONTAINERS:
            continue
        by_name[task] = by_name.get(task, 0.0) + ts(end) - ts(start)
        (other_iv if task in NOT_STAGES else stage_iv).append((ts(start), ts(end)))
    flow_start = min(ts(s) for _, s, _ in runs["flows"])
    flow_end = max(ts(e) for _, _, e in runs["flows"])
    stages = union(stage_iv)
    overhead = wall - stages
    print(f"{a.config}: wall {wall:.1f} s (exit {out.returncode})")
    print(f"  before the flow starts (imports, preflight, Prefect server): {flow_start - started:6.1f} s")
    print(f"  flow runs, first start to last end:                          {flow_end - flow_start:6.1f} s")
    print(f"  after the flow ends (shutdown):                              {started + wall - flow_end:6.1f} s")
    print(f"  stage bodies (union of stage task runs):                     {stages:6.1f} s")
    print(f"  bookkeeping tasks ({', '.join(sorted(NOT_STAGES))}): {union(other_iv):6.1f} s")
    for name, secs in sorted(by_name.items(), key=lambda kv: -kv[1]):
        print(f"    {name:28s} {secs:6.1f} s")
    print(f"  orchestration overhead: {overhead:.1f} s = {100 * overhead / wall:.1f}% of wall")
    print("  largest gaps inside the flow (no task running), after which task:")
    named = sorted((ts(s), ts(e), n.rsplit("-", 1)[0]) for n, s, e in runs["tasks"]
                   if s and e and n.rsplit("-", 1)[0] not in CONTAINERS)
    gaps, end, last = [], flow_start, "flow start"
    for s, e, n in named:
        if s > end:
            gaps.append((s - end, last, n))
        if e > end:
            end, last = e, n
    gaps.append((flow_end - end, last, "flow end"))
    for secs, before, after in sorted(gaps, reverse=True)[:8]:
        print(f"    {secs:5.1f} s  between {before} and {after}")
    return 0


def union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


if __name__ == "__main__":
    raise SystemExit(main())
