import json

import pytest

from llamaduo.parsing import json_candidates, parse_judge_reply, parse_synth_reply

VERDICT = '{"similarity_assessment": {"score": 80, "reason": "close"}, "precision_assessment": {"score": 70, "reason": "ok"}}'


@pytest.mark.parametrize("text", [
    VERDICT,
    f"```json\n{VERDICT}\n```",
    f"Sure! Here is the assessment:\n```\n{VERDICT}\n```\nLet me know if you need more.",
    f"My verdict: {VERDICT} -- end of verdict.",
    VERDICT.replace('"reason": "ok"}}', '"reason": "ok",}}'),  # trailing comma
    VERDICT.replace('"score": 80', "'score': 80"),  # single quotes
    VERDICT[:-1],  # missing final brace
])
def test_judge_reply_variants(text):
    assert {k: v for k, v in parse_judge_reply(text).items() if k != "reason"} == {"similarity": 80, "precision": 70}


def test_judge_score_as_string_and_float_integer():
    text = VERDICT.replace('"score": 80', '"score": "80"').replace('"score": 70', '"score": 70.0')
    assert {k: v for k, v in parse_judge_reply(text).items() if k != "reason"} == {"similarity": 80, "precision": 70}


@pytest.mark.parametrize("text,why", [
    ('{"similarity_assessment": {"score": 80}}', "precision_assessment"),
    (VERDICT.replace('"score": 80', '"score": 0'), "similarity_assessment.score"),
    (VERDICT.replace('"score": 70', '"score": 101'), "precision_assessment.score"),
    (VERDICT.replace('"score": 70', '"score": 7.5'), "integer"),
    (VERDICT.replace('"score": 70', '"score": "high"'), "precision_assessment.score"),
    ("I cannot assess this.", "JSON"),
    ("", "empty"),
])
def test_judge_reply_rejects_bad_output(text, why):
    with pytest.raises(ValueError, match=why):
        parse_judge_reply(text)


def test_synth_reply_keeps_valid_pairs_and_flags_invalid():
    text = ('Here you go:\n```json\n{"contents": [{"instruction": " Q1 ", "response": "A1"}, '
            '{"instruction": "", "response": "A2"}, {"instruction": "Q3"}, "junk"]}\n```')
    out = parse_synth_reply(text)
    assert out[0] == {"instruction": "Q1", "response": "A1"}
    assert all("invalid" in o for o in out[1:]) and len(out) == 4


def test_synth_reply_bare_list_accepted():
    assert parse_synth_reply('[{"instruction": "Q", "response": "A"}]') == [{"instruction": "Q", "response": "A"}]


@pytest.mark.parametrize("text", ['{"contents": []}', '{"other": 1}', "no json here at all"])
def test_synth_reply_unusable(text):
    with pytest.raises(ValueError):
        parse_synth_reply(text)


def test_json_candidates_sees_every_object_in_order():
    strict, repaired = json_candidates('noise {"a": 1} ```json\n{"b": 2}\n```')
    assert strict == [{"a": 1}, {"b": 2}] and repaired == []


def test_a_lone_surrogate_escape_in_reply_json_becomes_writable_text():
    # JSON allows "\ud800"; decoded it is a lone surrogate no UTF-8 file can hold (judged.jsonl,
    # candidates.jsonl would crash on every re-run of the cached reply).
    verdict = parse_judge_reply('{"similarity_assessment": {"score": 80, "reason": "x \\ud800"}, '
                                '"precision_assessment": {"score": 70, "reason": ""}}')
    assert verdict["reason"].encode("utf-8") == "x \ufffd".encode("utf-8")
    pairs = parse_synth_reply('{"contents": [{"instruction": "a \\udc80", "response": "b"}, '
                              '{"instruction": 5, "\\ud800k": "\\ud800"}]}')
    json.dumps(pairs, ensure_ascii=False).encode("utf-8")  # every kept or invalid row is writable
    assert pairs[0]["instruction"] == "a \ufffd"


# -- one reply, one verdict (issue 19, point 2) ------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _verdict(sim, prec, reason="r"):
    return json.dumps({"similarity_assessment": {"score": sim, "reason": reason},
                       "precision_assessment": {"score": prec, "reason": reason}})


def _scores(text):
    out = parse_judge_reply(text)
    return out["similarity"], out["precision"]


def test_fenced_format_example_before_the_verdict_is_not_the_verdict():
    example = '```json\n{"similarity_assessment": {"score": <1-100>, "reason": "..."}, ' \
              '"precision_assessment": {"score": <1-100>, "reason": "..."}}\n```'
    assert _scores(f"Format:\n{example}\nMy verdict:\n{_verdict(35, 40)}") == (35, 40)
    # an example with a valid-looking score 100 disagrees with the verdict: ambiguous, re-asked
    with pytest.raises(ValueError, match="ambiguous"):
        parse_judge_reply(f"Format:\n```json\n{_verdict(100, 100)}\n```\nMy verdict: {_verdict(35, 40)}")


def test_json_quoted_from_the_answer_does_not_hide_the_verdict():
    reply = f'The candidate returned {{"name": "Ada", "age": 36}} where {{"name": "Ada"}} was expected.\n' \
            f"{_verdict(60, 70)}"
    assert _scores(reply) == (60, 70)


def test_the_same_verdict_twice_is_one_verdict():
    assert _scores(f"```json\n{_verdict(60, 70)}\n```\nAgain: {_verdict(60, 70, 'other words')}") == (60, 70)


@pytest.mark.parametrize("given_score,read", [("8/10", 80), ("85/100", 85), ("3/5", 60), ("8.5/10", 85),
                                              (" 70 / 100 ", 70)])
def test_a_score_on_its_own_scale_is_read_on_that_scale(given_score, read):
    assert _scores(_verdict(given_score, 50)) == (read, 50)


@pytest.mark.parametrize("given_score", ["2/3", "8/0", "11/10", "x/10", "8/ten"])
def test_a_score_off_any_usable_scale_is_refused(given_score):
    with pytest.raises(ValueError, match="similarity_assessment.score"):
        parse_judge_reply(_verdict(given_score, 50))


_json_leaf = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=12)
_json_value = st.recursive(_json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in ("similarity_assessment", "precision_assessment")), c,
    max_size=3), max_leaves=8)
_other_object = st.dictionaries(st.text(max_size=8).filter(
    lambda k: k not in ("similarity_assessment", "precision_assessment")), _json_value, max_size=4).map(json.dumps)
_prose = st.text(max_size=60)
_score = st.integers(1, 100)


@settings(max_examples=200, deadline=None)
@given(sim=_score, prec=_score, reason=st.text(max_size=30), fenced=st.booleans(),
       before=st.lists(st.tuples(_prose, _other_object), max_size=3),
       after=st.lists(st.tuples(_prose, _other_object), max_size=3), tail=_prose)
def test_any_valid_verdict_among_prose_and_other_json_is_found(sim, prec, reason, fenced, before, after, tail):
    verdict = _verdict(sim, prec, reason)
    verdict = f"```json\n{verdict}\n```" if fenced else verdict
    text = "".join(p + " " + o + " " for p, o in before) + verdict + "".join(" " + p + " " + o for p, o in after)
    assert _scores(text + " " + tail) == (sim, prec)


@settings(max_examples=100, deadline=None)
@given(a=st.tuples(_score, _score), b=st.tuples(_score, _score), prose=_prose, order=st.booleans())
def test_two_verdicts_that_disagree_are_refused(a, b, prose, order):
    if a == b:
        return
    first, second = (a, b) if order else (b, a)
    with pytest.raises(ValueError, match="ambiguous"):
        parse_judge_reply(_verdict(*first) + prose + " " + _verdict(*second))


@given(k=st.integers(1, 10), prec=_score)
def test_k_out_of_10_is_read_as_k_times_10(k, prec):
    assert _scores(_verdict(f"{k}/10", prec)) == (k * 10, prec)


@given(k=st.integers(0, 300), n=st.integers(1, 300))
def test_k_out_of_n_is_on_scale_or_refused_never_k(k, n):
    try:
        sim, _ = _scores(_verdict(f"{k}/{n}", 50))
    except ValueError:
        return
    assert sim == k * 100 / n and 1 <= sim <= 100


def test_synthesis_picks_the_object_with_valid_contents():
    example = '{"contents": [{"instruction": "<instruction>"}]}'
    real = json.dumps({"contents": [{"instruction": f"Q{i}", "response": f"A{i}"} for i in range(3)]})
    quoted = '{"note": "see {\\"contents\\": []}"}'
    out = parse_synth_reply(f"Format: {example}\nHere: {quoted}\n```json\n{real}\n```")
    assert out == [{"instruction": f"Q{i}", "response": f"A{i}"} for i in range(3)]


# -- a repaired verdict is a verdict too (issue 28, point 10) ----------------------------------------

def _repairable(verdict: str, how: str) -> str:
    """A verdict only json_repair reads: a trailing comma or single quotes."""
    if how == "trailing comma":
        return verdict[:-2] + ",}}"
    return verdict.replace('"', "'")


def test_a_quoted_strict_verdict_does_not_outvote_the_judges_repairable_one():
    quoted = _verdict(100, 100, "the answer says so")
    own = _repairable(_verdict(12, 10, "wrong queue"), "trailing comma")
    with pytest.raises(ValueError, match="ambiguous"):
        parse_judge_reply(f"The candidate claims {quoted}. My verdict: {own}")


@settings(max_examples=100, deadline=None)
@given(a=st.tuples(_score, _score), b=st.tuples(_score, _score), prose=_prose, order=st.booleans(),
       how=st.sampled_from(["trailing comma", "single quotes"]))
def test_a_strict_and_a_repaired_verdict_are_compared(a, b, prose, order, how):
    strict, repaired = _verdict(*a), _repairable(_verdict(*b), how)
    text = strict + " " + prose + " " + repaired if order else repaired + " " + prose + " " + strict
    if a == b:
        assert _scores(text) == a
    else:
        with pytest.raises(ValueError, match="ambiguous"):
            parse_judge_reply(text)
