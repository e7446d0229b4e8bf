"""`llamaduo serve`'s request policy and stop-string cutting (pure; no server)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from llamaduo.serve_policy import HONOURED, RequestRefused, ServePolicy, StopCutter, upstream_request

POLICY = ServePolicy(model_id="llamaduo-x", engine_model="/models/x", system_prompt="Be brief.", default_max_tokens=8,
                     max_tokens_cap=64)
MSG = [{"role": "user", "content": "hi"}]


def test_an_accepted_request_reaches_the_engine_with_the_runs_defaults():
    up = upstream_request({"model": "llamaduo-x", "messages": MSG}, POLICY)
    assert up == {"model": "/models/x", "max_tokens": 8, "temperature": 0.0, "stream": False,
                  "messages": [{"role": "system", "content": "Be brief."}, *MSG]}
    own = upstream_request({"model": "llamaduo-x", "messages": [{"role": "developer", "content": "x"}, *MSG],
                            "stop": "\n", "stream": True, "max_completion_tokens": 64}, POLICY)
    assert own["messages"][0] == {"role": "system", "content": "x"} and own["stop"] == ["\n"]
    assert own["max_tokens"] == 64 and own["stream_options"] == {"include_usage": True}


@given(st.text(min_size=1, max_size=30).filter(lambda k: k not in HONOURED))
def test_any_parameter_not_honoured_is_refused_by_name(name):
    with pytest.raises(RequestRefused) as e:
        upstream_request({"model": "llamaduo-x", "messages": MSG, name: 1}, POLICY)
    assert e.value.status == 400 and e.value.param == name


@pytest.mark.parametrize("extra,param", [({"max_tokens": 65}, "max_tokens"), ({"max_tokens": 0}, "max_tokens"),
                                         ({"max_tokens": True}, "max_tokens"), ({"temperature": float("nan")},
                                                                                "temperature"),
                                         ({"n": 3}, "n"), ({"stop": ["a"] * 5}, "stop"), ({"stop": [""]}, "stop"),
                                         ({"stream_options": {"include_usage": True}}, "stream_options"),
                                         ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
                                         ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                                          "messages.0.content.0")])
def test_values_out_of_bounds_are_refused_naming_the_parameter(extra, param):
    with pytest.raises(RequestRefused) as e:
        upstream_request({"model": "llamaduo-x", "messages": MSG, **extra}, POLICY)
    assert e.value.param == param


def test_another_model_is_a_404():
    with pytest.raises(RequestRefused) as e:
        upstream_request({"model": "gpt-4o", "messages": MSG}, POLICY)
    assert e.value.status == 404 and e.value.param == "model"


@given(st.lists(st.text(alphabet=" ab\n", max_size=5), max_size=10),
       st.lists(st.text(alphabet="ab \n", min_size=1, max_size=3), max_size=3))
def test_stop_cutting_equals_cutting_the_whole_text_however_it_is_split(pieces, stops):
    c = StopCutter(stops)
    out = "".join(c.feed(p) for p in pieces)
    if not c.done:
        out += c.flush()
    text = "".join(pieces)
    hits = [text.find(s) for s in stops if s in text]
    assert out == (text[:min(hits)] if hits else text).strip()
    assert c.done == bool(hits)
