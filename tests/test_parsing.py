import pytest

from llamaduo.parsing import extract_json, parse_judge_reply, parse_synth_reply

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


def test_extract_json_prefers_fenced_block():
    assert extract_json('noise {"a": 1} ```json\n{"b": 2}\n```') == {"b": 2}
