from llamaduo.judge import aggregate, build_judge_requests, score_items
from llamaduo.service import Result
from llamaduo.templates import judge_template

ITEMS = [{"id": "a", "instruction": "Q1", "response": "billing"}, {"id": "b", "instruction": "Q2", "response": "shipping"}]


def test_requests_render_paper_prompt_and_distinguish_repeats():
    reqs = build_judge_requests(ITEMS, ["billing", "x"], judge_template(None), repeats=3, temperature=0.5,
                                max_tokens=100)
    assert len(reqs) == 6 and [r.variant["repeat"] for r in reqs[:3]] == [0, 1, 2]
    text = reqs[0].messages[0]["content"]
    assert "similarity_assessment" in text and "precision_assessment" in text and "billing" in text


def test_scores_average_repeats_and_exclude_parse_failures():
    res = [Result(True, {"similarity": 80, "precision": 60}), Result(False, kind="parse"),
           Result(False, kind="parse"), Result(False, kind="parse")]
    scored = score_items(ITEMS, ["billing", "no idea"], res, repeats=2)
    assert scored[0]["score"] == 70 and scored[0]["judge_parse_failures"] == 1
    assert "score" not in scored[1] and scored[1]["judge_parse_failures"] == 2
    m = aggregate(scored)
    # the unjudged item is excluded from judge means, never counted as 0
    assert m["judge_score"] == 70 and m["judged_items"] == 1 and m["judge_parse_failures"] == 3
    assert m["rougeL"] == 0.5 and m["exact_match"] == 0.5


def test_no_judged_items_means_no_judge_metric():
    scored = score_items(ITEMS[:1], ["x"], [Result(False, kind="call")], repeats=1)
    assert "judge_score" not in aggregate(scored)
