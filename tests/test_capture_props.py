"""Properties of what capture keeps and what a promotion decides: redaction of e-mail addresses, phone
numbers and keys; which exchanges become coverage rows; shards read whole or not at all; the promotion
rule and its compare-and-swap."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamaduo.capture_coverage import coverage_row
from llamaduo.capture_store import CaptureStore
from llamaduo.errors import InputError
from llamaduo.pii import PiiRedactor
from llamaduo.promotion import PromotionStore, decide_promotion

WORDS = st.text(alphabet=string.ascii_letters + " ,.!?", max_size=40)
LOCAL = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._%+\-]{0,15}", fullmatch=True)
DOMAIN = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z]{2,6}){1,2}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(before=WORDS, after=WORDS, local=LOCAL, domain=DOMAIN)
def test_an_email_address_never_survives(before, after, local, domain):
    address = f"{local}@{domain}"
    out = PiiRedactor().text(f"{before} {address} {after}")
    assert address not in out and "[EMAIL]" in out


@settings(max_examples=200, deadline=None)
@given(before=WORDS, after=WORDS, digits=st.lists(st.integers(0, 9), min_size=10, max_size=13),
       sep=st.sampled_from(["", " ", "-", "."]), plus=st.booleans())
def test_a_phone_number_never_survives(before, after, digits, sep, plus):
    groups = ["".join(map(str, digits[i:i + 3])) for i in range(0, len(digits), 3)]
    number = ("+" if plus else "") + sep.join(groups)
    out = PiiRedactor().text(f"{before} {number} {after}")
    assert number not in out and "[PHONE]" in out


@settings(max_examples=100, deadline=None)
@given(y=st.integers(1900, 2100), m=st.integers(1, 12), d=st.integers(1, 28), h=st.integers(0, 23),
       words=WORDS)
def test_dates_and_times_are_kept(y, m, d, h, words):
    text = f"{words} on {y:04d}-{m:02d}-{d:02d} {h:02d}:30 order 4411"
    assert PiiRedactor().text(text) == text


@settings(max_examples=100, deadline=None)
@given(secret=st.from_regex(r"sk-[A-Za-z0-9]{20,30}", fullmatch=True), words=WORDS)
def test_keys_in_any_field_are_redacted(secret, words):
    record = {"messages": [{"role": "user", "content": f"{words} {secret}"}], "answer": secret,
              "tool_calls": [{"function": {"arguments": json.dumps({"key": secret})}}]}
    assert secret not in json.dumps(PiiRedactor([], []).value(record))


def test_own_patterns_apply_and_empty_matches_are_refused():
    from llamaduo.config import CaptureConfig

    assert PiiRedactor([], [r"ACCT-\d+"]).text("see ACCT-1234 now") == "see [REDACTED] now"
    with pytest.raises(ValueError, match="empty string"):
        CaptureConfig(redact_patterns=[r"x*"])
    with pytest.raises(ValueError, match="not a regular expression"):
        CaptureConfig(redact_patterns=["("])


TEXT = st.text(min_size=1, max_size=30).filter(str.strip)
ROLE_LISTS = st.lists(st.sampled_from(["system", "user", "assistant", "tool", "developer"]), min_size=0, max_size=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(roles=ROLE_LISTS, contents=st.lists(TEXT, min_size=5, max_size=5), answer=st.one_of(st.none(), TEXT),
       finish=st.sampled_from(["stop", "length", None]), tools=st.booleans(), category=st.one_of(st.none(), TEXT))
def test_only_one_turn_of_text_becomes_a_coverage_row(roles, contents, answer, finish, tools, category):
    exchange = {"id": "x", "messages": [{"role": r, "content": c} for r, c in zip(roles, contents)], "answer": answer,
                "finish_reason": finish, "tool_calls": [{"id": 1}] if tools else None, "category": category}
    row, why = coverage_row(exchange)
    one_turn = (roles.count("user") == 1 and roles and roles[-1] == "user"
                and not set(roles) - {"system", "developer", "user"}
                and roles.count("system") + roles.count("developer") <= 1)
    usable = one_turn and not tools and answer is not None and answer.strip() and finish != "length"
    assert (row is not None) == bool(usable), (roles, why)
    if row is not None:
        from llamaduo.data import parse_row

        ex = parse_row(row, file="capture", line=1)  # what a run then loads
        assert ex.response == answer.strip() and ex.category == (category.strip() if category else None)
    else:
        assert why


def test_a_shard_is_read_whole_or_not_at_all(tmp_path):
    store = CaptureStore(tmp_path / "cap")
    store.create("openai/x")
    store.commit([{"id": "a"}, {"id": "b"}])
    (tmp_path / "cap" / "shards" / ".20990101-torn.jsonl.tmp").write_text('{"id": "c"')
    assert [r["id"] for r in store.snapshot().records] == ["a", "b"]
    (tmp_path / "cap" / "shards" / "20990101-broken.jsonl").write_text('{"id": "c"\n')
    with pytest.raises(InputError, match="20990101-broken.jsonl, line 1"):
        store.snapshot()


def test_a_snapshot_notices_a_changed_shard(tmp_path):
    store = CaptureStore(tmp_path / "cap")
    store.create("openai/x")
    name = store.commit([{"id": "a"}])
    snap = store.snapshot()
    (tmp_path / "cap" / "shards" / name).write_text('{"id": "z"}\n')
    with pytest.raises(InputError, match="changed since"):
        store.snapshot([name], expect={s.name: s.sha256 for s in snap.shards})


SCORES = st.dictionaries(st.sampled_from([f"i{k}" for k in range(12)]), st.floats(0, 100), min_size=1)


@settings(max_examples=200, deadline=None)
@given(challenger=SCORES, champion=SCORES, passed=st.booleans(), gain=st.floats(-5, 20))
def test_promotion_needs_the_gate_and_a_gain_beyond_noise(challenger, champion, passed, gain):
    d = decide_promotion(passed=passed, challenger=challenger, champion=champion, has_champion=True, min_gain=gain,
                         metric="judge_score")
    if d["promote"]:
        assert passed and d["difference_ci95"][0] > gain
    if not passed:
        assert not d["promote"]
    same = decide_promotion(passed=True, challenger=champion, champion=champion, has_champion=True, min_gain=0,
                            metric="judge_score")
    assert not same["promote"]  # no better than itself


def test_a_rerun_never_pushes_back_a_replaced_model(tmp_path):
    store = PromotionStore(tmp_path / "promoted")
    first = {"run": "r1", "model_sha256": "a" * 64, "student": "s", "time": "2026-12-07T01:00:00+00:00"}
    second = {"run": "r2", "model_sha256": "b" * 64, "student": "s", "time": "2026-12-07T02:00:00+00:00"}
    assert store.promote(first, champion_sha=None) == (first, None)
    assert store.promote(second, champion_sha="a" * 64) == (second, None)
    again = {**first, "time": "2026-12-07T03:00:00+00:00"}  # run 1 re-run: it froze "no champion"
    written, refused = store.promote(again, champion_sha=None)
    assert written is None and "another model was promoted" in refused
    assert store.read()["run"] == "r2" and len(list((tmp_path / "promoted" / "history").iterdir())) == 2
    assert store.promote({**second, "time": "later"}, champion_sha="a" * 64) == (store.read(), None)  # already
