"""Generate the demo's judge calibration set (written for this project).

The ratings are NOT from people: each ticket's true queue is known by construction (the
generator of make_data.py picks it), so whether a candidate answer routes the ticket correctly
is a fact, and each row's rating follows a fixed rubric from that fact:

| candidate                                   | human_pass | human_score |
|---------------------------------------------|------------|-------------|
| the correct queue alone ("shipping")         | true       | 100         |
| the correct queue in a sentence              | true       | 90          |
| the correct queue and a wrong one (a hedge)  | false      | 30          |
| a wrong queue, alone or in a sentence        | false      | 1           |

The tickets are new ones (another seed) that appear in neither coverage.jsonl nor pool.jsonl.
Run: python examples/demo/make_calibration.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from make_data import INSTRUCTION, ISSUES, tickets

RATED_BY = "rubric: the ticket's queue is known by construction (demo data; not people's ratings)"
QUEUES = sorted(ISSUES)
# How many tickets get each kind of candidate (24 rows).
PLAN = [("exact", 8), ("sentence", 5), ("hedge", 4), ("wrong", 4), ("wrong_sentence", 3)]
SENTENCES = ["This ticket belongs in the {q} queue.", "Route it to {q}.", "The right queue here is {q}."]


def candidate(kind: str, queue: str, rng: random.Random) -> tuple[str, bool, int]:
    other = rng.choice([q for q in QUEUES if q != queue])
    if kind == "exact":
        return queue, True, 100
    if kind == "sentence":
        return rng.choice(SENTENCES).format(q=queue), True, 90
    if kind == "hedge":
        first, second = (queue, other) if rng.random() < 0.5 else (other, queue)
        return f"{first} or {second}", False, 30
    if kind == "wrong":
        return other, False, 1
    return rng.choice(SENTENCES).format(q=other), False, 1


def main() -> None:
    here = Path(__file__).parent
    taken = set()
    for name in ("coverage.jsonl", "pool.jsonl"):
        for line in (here / name).read_text(encoding="utf-8").splitlines():
            taken.add(json.loads(line)["messages"][0]["content"])
    rng = random.Random(20261130)
    gen = tickets(rng)
    rows = []
    for kind, count in PLAN:
        for _ in range(count):
            queue, text = next(gen)
            while INSTRUCTION.format(ticket=text) in taken:
                queue, text = next(gen)
            cand, passed, score = candidate(kind, queue, rng)
            rows.append({"instruction": INSTRUCTION.format(ticket=text), "reference": queue, "candidate": cand,
                         "human_score": score, "human_pass": passed, "rated_by": RATED_BY})
    random.Random(7).shuffle(rows)
    with open(here / "calibration.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
