from llamaduo.judge import aggregate, build_judge_requests, item_values, parity, score_items
from llamaduo.service import Result
from llamaduo.templates import judge_template

ITEMS = [{"id": "a", "instruction": "Q1", "response": "billing"}, {"id": "b", "instruction": "Q2", "response": "shipping"}]


def test_requests_render_paper_prompt_and_distinguish_repeats():
    reqs = build_judge_requests(ITEMS, [["billing"], ["x"]], judge_template(None), repeats=3, temperature=0.5,
                                max_tokens=100)
    assert len(reqs) == 6 and [r.variant["repeat"] for r in reqs[:3]] == [0, 1, 2]
    text = reqs[0].messages[0]["content"]
    assert "similarity_assessment" in text and "precision_assessment" in text and "billing" in text


def test_scores_average_repeats_and_exclude_parse_failures():
    res = [Result(True, {"similarity": 80, "precision": 60}), Result(False, kind="parse"),
           Result(False, kind="parse"), Result(False, kind="parse")]
    scored = score_items(ITEMS, [["billing"], ["no idea"]], res, repeats=2)
    assert scored[0]["score"] == 70 and scored[0]["judge_parse_failures"] == 1
    assert "score" not in scored[1] and scored[1]["judge_parse_failures"] == 2
    m = aggregate(scored)
    # the unjudged item is excluded from judge means, never counted as 0
    assert m["judge_score"] == 70 and sum("score" in s for s in scored) == 1
    assert sum(s["judge_parse_failures"] for s in scored) == 3
    assert m["rougeL"] == 0.5 and m["exact_match"] == 0.5


def test_no_judged_items_means_no_judge_metric():
    scored = score_items(ITEMS[:1], [["x"]], [Result(False, kind="call")], repeats=1)
    assert "judge_score" not in aggregate(scored)


def v(s, p):
    return Result(True, {"similarity": s, "precision": p})


def test_median_aggregation_and_agreement_spread():
    res = [v(10, 10), v(80, 80), v(90, 90)]
    mean_row = score_items(ITEMS[:1], [["billing"]], res, repeats=3)[0]
    median_row = score_items(ITEMS[:1], [["billing"]], res, repeats=3, aggregate="median")[0]
    assert mean_row["score"] == 60 and median_row["score"] == 80
    assert round(mean_row["judge_spread"], 2) == 35.59
    agree = score_items(ITEMS[:1], [["billing"]], [v(70, 70)] * 3, repeats=3)[0]
    assert agree["judge_spread"] == 0


def test_samples_scored_separately_then_averaged():
    res = [v(100, 100), v(20, 40)]  # two sampled answers, one repeat each
    row = score_items(ITEMS[:1], [["billing", "the queue is shipping"]], res, repeats=1)[0]
    assert row["samples"] == 2 and row["score"] == 65 and row["exact_match"] == 0.5


def test_embedding_cosine_and_item_values_and_parity():
    scored = score_items(ITEMS, [["billing"], ["x"]], [v(90, 90), Result(False, kind="parse")], repeats=1,
                         cosines=[[1.0], [0.2]])
    m = aggregate(scored)
    assert m["embedding_cosine"] == 0.6 and item_values(scored, "judge_score") == [90]
    assert item_values(scored, "rougeL") == [1.0, 0.0]
    assert parity({"judge_score": 60, "rougeL": 0.5}, {"judge_score": 80, "rougeL": 0}) == {"judge_score": 0.75}
