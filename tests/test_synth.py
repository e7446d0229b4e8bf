from llamaduo.data import Example
from llamaduo.lineage import data_card, save_dataset
from llamaduo.service import Result
from llamaduo.synth import (build_synth_requests, candidate_rows, failure_weights, select_seeds,
                            select_seeds_weighted)
from llamaduo.templates import synth_template

TRAIN = [Example(f"s{i}", f"Classify ticket about {w} problem number {i}", "x", category=c)
         for i, (w, c) in enumerate([("billing", "billing"), ("shipping", "shipping")] * 5)]


def test_uniform_seeds_walk_without_replacement_across_rounds():
    first = select_seeds(TRAIN, 6, 0, seed=1)
    second = select_seeds(TRAIN, 4, 6, seed=1)
    assert len({e.id for e in first + second}) == 10, "no seed re-used before all were used"


def test_failure_weights_favour_seeds_near_failed_items():
    judged = [{"instruction": "Classify ticket about billing problem", "score": 10.0},
              {"instruction": "Classify ticket about shipping problem", "score": 95.0}]
    w = failure_weights(TRAIN, judged, k=1)
    billing = [wi for wi, e in zip(w, TRAIN) if e.category == "billing"]
    shipping = [wi for wi, e in zip(w, TRAIN) if e.category == "shipping"]
    assert min(billing) > max(shipping) and min(w) > 0
    picked = select_seeds_weighted(TRAIN, 5, w, seed=3)
    assert sum(e.category == "billing" for e in picked) >= 4 and len({e.id for e in picked}) == 5
    assert picked == select_seeds_weighted(TRAIN, 5, w, seed=3), "deterministic"


def test_requests_use_topic_per_category_and_distinct_variants():
    reqs = build_synth_requests(TRAIN[:2], synth_template(None), n=3, topic=None, temperature=0.7, max_tokens=100,
                                round_no=2, wave=1, topics={"billing": "refunds and invoices"})
    assert "refunds and invoices" in reqs[0].messages[0]["content"]
    assert "The topic is: shipping" in reqs[1].messages[0]["content"]
    assert reqs[0].variant == {"round": 2, "wave": 1, "slot": 0}


def test_candidate_rows_carry_lineage_and_skip_failed_requests():
    results = [Result(True, [{"instruction": "Q", "response": "A"}, {"invalid": "empty", "raw": {}}]),
               Result(False, error="boom", kind="call")]
    rows = candidate_rows(results, TRAIN[:2], round_no=3, generator="openai/x", template_sha="abc")
    assert rows[0]["origin"] == "synthetic" and rows[0]["round"] == 3 and rows[0]["seed_id"] == "s0"
    assert rows[0]["generator"] == "openai/x" and rows[0]["template_sha256"] == "abc" and "invalid" in rows[1]
    assert len(rows) == 2, "a failed request has no rows (its reason is in the failure log)"


def test_dataset_dir_and_data_card(tmp_path):
    from datasets import load_from_disk

    rows = [{"id": "c1", "instruction": "Q", "response": "A"},
            {"id": "s1", "instruction": "Q2", "response": "A2", "origin": "synthetic", "round": 1, "seed_id": "c1",
             "generator": "m", "template_sha256": "t"}]
    ds = load_from_disk(str(save_dataset(rows, tmp_path / "ds")))
    assert ds[0]["origin"] == "coverage" and ds[1]["round"] == 1 and ds[0]["round"] is None
    card = data_card(rows, {"duplicate": 2}, 1)
    assert "- coverage: 1" in card and "- synthetic: 1" in card and "- duplicate: 2" in card


def test_replay_sample_adds_ratio_earlier_rows_per_new_row_seeded():
    from llamaduo.lineage import replay_sample

    old = [{"id": f"o{i}"} for i in range(10)]
    new = [{"id": f"n{i}"} for i in range(4)]
    rows = replay_sample(old, new, 0.5, seed=3)
    assert rows[:4] == new and len(rows) == 6 and all(r in old for r in rows[4:])
    assert rows == replay_sample(old, new, 0.5, seed=3)
    assert len(replay_sample(old, new, 10.0, seed=3)) == 14, "capped at the earlier rows there are"
    assert replay_sample(old, new, 0.0, seed=3) == new
