"""Generate the demo's coverage set and stand-in teacher pool (written for this project).

Task: triage customer-support tickets of a fictional online store into one of five
queues. `coverage.jsonl` plays the user's coverage dataset (train + test split);
`pool.jsonl` is what the offline stand-in teacher draws "synthetic" pairs from.
Both are disjoint by construction. Run: python examples/demo/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

INSTRUCTION = "Route this ticket to billing, shipping, technical, account or returns.\n\n{ticket}"

ISSUES = {
    "billing": ["I was charged twice for order {n}", "my invoice {n} shows the wrong amount",
                "the discount code was not applied to my payment", "I see an unknown charge of ${n} on my card",
                "my refund of ${n} has not reached my bank yet", "the subscription fee went up without notice",
                "I need a VAT invoice for my purchase", "my payment was declined but the money left my account",
                "you billed me after I cancelled my plan", "the tax on order {n} looks too high",
                "I was charged in euros instead of dollars", "my gift card balance was not deducted correctly"],
    "shipping": ["my parcel {n} has not moved for a week", "the tracking link for order {n} does not work",
                 "the courier left my package at the wrong address", "my delivery is three days late",
                 "can I change the delivery address for order {n}", "the box arrived crushed and open",
                 "only half of my order {n} was delivered", "I need express delivery before Friday",
                 "the driver never rang the bell and took the parcel back", "shipping to my country is not offered",
                 "my order {n} says delivered but nothing came", "how long does standard shipping take to my town"],
    "technical": ["the app crashes when I open my basket", "the checkout page shows error {n}",
                  "I cannot upload a photo to my review", "the website is very slow on my phone",
                  "the search bar returns no results at all", "push notifications stopped working after the update",
                  "the page goes blank after I press pay", "the size filter does not work in the app",
                  "the app logs me out every few minutes", "images do not load on the product page",
                  "the barcode scanner in the app freezes", "I get a certificate warning on your site"],
    "account": ["I forgot my password and the reset email never comes", "please delete my account and my data",
                "I want to change the email on my profile", "someone else logged into my account",
                "my loyalty points disappeared from my profile", "I cannot verify my phone number",
                "how do I merge my two accounts", "my account {n} is locked after failed logins",
                "I want to unsubscribe from the newsletter", "the two-factor code never arrives",
                "please update the name on my account", "I cannot find my order history in my profile"],
    "returns": ["I want to return the shoes from order {n}", "the jacket does not fit, how do I send it back",
                "my return label has expired", "you received my return but I got no confirmation",
                "can I exchange the blue shirt for a red one", "the item is faulty and I want a replacement",
                "is the return free for sale items", "I lost the original packaging, can I still return it",
                "the return window closed yesterday, can you make an exception",
                "I sent back order {n} two weeks ago and heard nothing", "how do I return a gift I received",
                "the wrong size was sent so I need to swap it"],
}
OPENERS = ["Hello,", "Hi team,", "Good morning.", "Hey there!", "Dear support,", "", "Quick question:", "Urgent:"]
CLOSERS = ["", "Thanks.", "Please help.", "Regards, Sam", "Can you fix this today?", "Thank you in advance!",
           "This is the second time I write.", "Best, Alex"]


COVERAGE_ROWS = 56  # test 24, validation 16, train 16 (configs/demo.yaml)
POOL_ROWS = 400


def tickets(rng: random.Random, balanced: bool = False):
    """Distinct tickets; `balanced` cycles through the queues (the coverage set: every queue is
    in train, validation and test), otherwise each ticket's queue is drawn at random."""
    seen = set()
    queues = sorted(ISSUES)
    while True:
        cat = queues[len(seen) % len(queues)] if balanced else rng.choice(queues)
        issue = rng.choice(ISSUES[cat]).format(n=rng.randint(1000, 99999))
        text = " ".join(x for x in (rng.choice(OPENERS), issue[0].upper() + issue[1:] + ".", rng.choice(CLOSERS)) if x)
        if text not in seen:
            seen.add(text)
            yield cat, text


def main() -> None:
    rng = random.Random(20261126)
    coverage_gen = tickets(rng, balanced=True)
    coverage = [next(coverage_gen) for _ in range(COVERAGE_ROWS)]
    rng.shuffle(coverage)
    taken = {text for _, text in coverage}
    pool_gen = tickets(rng)
    pool = []
    while len(pool) < POOL_ROWS:
        cat, text = next(pool_gen)
        if text not in taken:
            pool.append((cat, text))
    out = Path(__file__).parent
    for name, part in (("coverage.jsonl", coverage), ("pool.jsonl", pool)):
        with open(out / name, "w", encoding="utf-8") as fh:
            for cat, text in part:
                fh.write(json.dumps({"messages": [{"role": "user", "content": INSTRUCTION.format(ticket=text)},
                                                  {"role": "assistant", "content": cat}],
                                     "category": cat}) + "\n")


if __name__ == "__main__":
    main()
