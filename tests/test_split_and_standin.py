"""The stratified split (each category keeps its share of a small test or validation split) and the
offline stand-in teacher's two shortcuts: repeated seeds draw new pairs per request variant, and the
service-baseline answer is the exact ROUGE-L argmax without scoring every pool row."""

import json
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from llamaduo.data import Example, split_examples, stratified_quotas
from llamaduo.similarity import rouge_l
from llamaduo.standin import _pool, answer_reply, synth_reply

ROOT = Path(__file__).resolve().parents[1]
POOL = str(ROOT / "examples/demo/pool.jsonl")


def rows(categories: list[str]) -> list[Example]:
    return [Example(id=f"{i:04d}", instruction=f"ticket {i}", response=c, category=c) for i, c in enumerate(categories)]


@given(sizes=st.dictionaries(st.sampled_from("abcdefg"), st.integers(1, 40), min_size=1), data=st.data())
def test_quotas_add_up_and_stay_within_one_of_the_exact_share(sizes, data):
    n = data.draw(st.integers(0, sum(sizes.values())))
    quotas = stratified_quotas(sizes, n)
    total = sum(sizes.values())
    assert sum(quotas.values()) == n
    for c, k in sizes.items():
        assert 0 <= quotas[c] <= k and abs(quotas[c] - n * k / total) < 1


@settings(max_examples=60)
@given(cats=st.lists(st.sampled_from(["billing", "shipping", "returns", "account"]), min_size=3, max_size=80),
       seed=st.integers(0, 10_000), data=st.data())
def test_stratified_split_gives_each_category_its_share(cats, seed, data):
    examples = rows(cats)
    n_test = data.draw(st.integers(1, len(examples) - 1))
    train, test = split_examples(examples, n_test, seed, stratify=True)
    assert len(test) == n_test and {e.id for e in train} | {e.id for e in test} == {e.id for e in examples}
    assert not {e.id for e in train} & {e.id for e in test}
    counts, got = Counter(cats), Counter(e.category for e in test)
    for c, k in counts.items():
        assert abs(got[c] - n_test * k / len(cats)) < 1, (c, got, counts)
    again = split_examples(list(reversed(examples)), n_test, seed, stratify=True)[1]
    assert {e.id for e in again} == {e.id for e in test}, "independent of file order"


def test_a_small_test_split_of_a_balanced_set_misses_no_category():
    examples = rows(["billing", "shipping", "technical", "account", "returns"] * 8)
    misses = sum(len({e.category for e in split_examples(examples, 5, seed, stratify=True)[1]}) < 5
                 for seed in range(50))
    plain = sum(len({e.category for e in split_examples(examples, 5, seed)[1]}) < 5 for seed in range(50))
    assert misses == 0 and plain > 20  # one shuffle of all rows misses a category most of the time


def test_rows_without_a_category_are_split_as_one_group_with_a_warning_naming_them(caplog):
    examples = rows(["a", "b"] * 10)
    examples[3] = Example(id="x", instruction="no category", response="?")
    with caplog.at_level("WARNING", logger="llamaduo.data"):
        assert split_examples(examples, 4, 1, stratify=True) == split_examples(examples, 4, 1)
    assert "1 row without a category (x)" in caplog.text and "not stratified" in caplog.text


def test_leftover_slots_go_where_the_seed_draws_them_not_alphabetically():
    """100 categories of 3 rows, 50 test rows: every category's exact share is 0.5, so each slot is
    a leftover. They went to cat000..cat049 whatever the seed."""
    examples = rows([f"cat{i:03d}" for i in range(100) for _ in range(3)])
    tested = {seed: frozenset(e.category for e in split_examples(examples, 50, seed, stratify=True)[1])
              for seed in (1, 2, 3, 42)}
    assert all(len(t) == 50 for t in tested.values()), "still one row per category at most"
    assert len(set(tested.values())) == 4, "each seed draws its own categories"
    assert tested[1] != frozenset(f"cat{i:03d}" for i in range(50))
    ever: set[str] = set()
    for seed in range(20):
        ever |= {e.category for e in split_examples(examples, 50, seed, stratify=True)[1]}
    assert len(ever) > 90, "over seeds, nearly every category gets tested"


def _synth_prompt(topic: str) -> str:
    return (f'Generate 5 more pairs like this one. The topic is: {topic}. Reply as JSON: {{"contents": [...]}}\n'
            "Route this ticket: my parcel is late")


def test_the_stand_in_draws_new_pairs_when_a_seed_is_asked_again():
    prompt = _synth_prompt("shipping")
    first = json.loads(synth_reply(prompt, POOL, {"round": 1, "wave": 0, "slot": 0}))["contents"]
    again = json.loads(synth_reply(prompt, POOL, {"round": 1, "wave": 0, "slot": 0}))["contents"]
    later = json.loads(synth_reply(prompt, POOL, {"round": 2, "wave": 0, "slot": 0}))["contents"]
    assert first == again, "the same request gets the same reply (deterministic)"
    assert first != later, "a later round's request for the same seed draws other pairs"
    shipping = {i for i, r, c in _pool(POOL) if c == "shipping"}
    assert all(p["instruction"] in shipping for p in first + later)


@settings(max_examples=25, deadline=None)
@given(words=st.lists(st.sampled_from("my parcel order refund app crashes password return shoes invoice "
                                      "charged twice delivery late account locked the a of".split()),
                      min_size=1, max_size=14))
def test_the_stand_in_answer_is_the_exact_rouge_l_best_pool_row(words):
    prompt = " ".join(words)
    best = max(_pool(POOL), key=lambda p: (rouge_l(prompt, p[0])["f"], p[0]))
    assert answer_reply(prompt, POOL) == best[1]


def test_an_offline_run_probes_the_stand_in_without_importing_litellm(tmp_path):
    """Importing litellm costs ~5 s on 2 cores; the stand-in teacher needs none of it."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from llamaduo.config import load_config\n"
            "from llamaduo.preflight import preflight, probe_run_dir\n"
            "cfg = load_config('configs/demo.yaml')\n"
            f"pf = preflight(cfg, {str(tmp_path)!r}, probe=False)\n"
            f"stats = probe_run_dir(cfg, pf.splits, {str(tmp_path)!r})\n"
            "print(stats.calls, 'litellm' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["2", "False"], out.stdout
