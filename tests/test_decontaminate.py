"""Decontamination on real coverage data (No Robots, Classify) with planted near-copies of test items."""

import random

import pytest

from llamaduo.config import CurateConfig
from llamaduo.curate import DROP_TEST_NEAR_DUPLICATE, DROP_TEST_OVERLAP, decontaminate, drop_counts
from llamaduo.data import load_coverage
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")


@pytest.fixture(scope="module")
def split():
    from llamaduo.config import DataConfig

    s = load_coverage(DataConfig(path=str(SHARED_DATA), test_size=30, val_size=0, split_seed=42))
    return [e.to_dict() for e in s.train], [e.to_dict() for e in s.test]


def reword(text: str, rng: random.Random) -> str:
    """Re-case, add whitespace, and change two words: what a paraphrasing teacher might emit."""
    toks = text.split()
    for i in rng.sample(range(len(toks)), 2):
        toks[i] = rng.choice(["quickly", "kindly", "really", "this"])
    return "  Please:  " + "   ".join(toks).upper() + "  "


def test_planted_near_copies_are_all_caught(split):
    train, test = split
    rng = random.Random(0)
    long_items = [t for t in test if len(t["instruction"].split()) >= 20]
    assert len(long_items) >= 10
    planted = []
    for t in long_items:
        planted.append({"instruction": t["instruction"].lower(), "response": "A new answer."})  # re-cased copy
        planted.append({"instruction": "  " + t["instruction"].replace(" ", "   ") + "\n", "response": "x y z w"})
        planted.append({"instruction": reword(t["instruction"], rng), "response": "Some answer."})
    clean, dropped = decontaminate(planted, test, train, CurateConfig())
    assert not clean, [c["instruction"][:80] for c in clean]
    assert set(drop_counts(dropped)) <= {DROP_TEST_OVERLAP, DROP_TEST_NEAR_DUPLICATE}
    print(f"\nplanted {len(planted)} near-copies of {len(long_items)} test items: caught {len(dropped)} "
          f"{drop_counts(dropped)}")


def test_no_false_positives_on_clean_rows(split):
    train, test = split
    clean_sample, rest = train[:60], train[60:]
    clean, dropped = decontaminate(clean_sample, test, rest, CurateConfig())
    print(f"\nclean sample of {len(clean_sample)} train rows: {len(dropped)} flagged {drop_counts(dropped)}")
    assert not dropped, [(d["drop_reason"], d["instruction"][:80]) for d in dropped]
