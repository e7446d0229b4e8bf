import json

import pytest

from llamaduo.data import load_coverage, load_examples, split_examples, to_chat
from llamaduo.errors import InputError
from tests.conftest import SHARED_DATA

GOOD = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}], "category": "c"}


def test_messages_and_columns_forms(write_jsonl):
    p = write_jsonl("d.jsonl", [GOOD, {"instruction": "I", "response": "R"},
                                {"messages": [{"role": "system", "content": "S"}] + GOOD["messages"]}])
    ex = load_examples(p)
    assert [e.instruction for e in ex] == ["Q?", "I", "Q?"] and ex[2].system == "S" and ex[0].category == "c"


@pytest.mark.parametrize("row,line_field", [
    ('{"messages": [{"role": "user", "content": "Q"}]}', "messages"),
    ('{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "A"}]}', "messages[0].content"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role"),
    ('{"instruction": "I"}', "response"),
    ('{"instruction": 3, "response": "R"}', "instruction"),
    ('{"prompt": "x"}', "messages"),
])
def test_invalid_rows_name_file_line_and_field(write_jsonl, row, line_field):
    p = write_jsonl("bad.jsonl", [GOOD, GOOD, row])
    with pytest.raises(InputError) as e:
        load_examples(p)
    msg = str(e.value)
    assert "bad.jsonl" in msg and "line 3" in msg and f"'{line_field}'" in msg


def test_broken_json_line(write_jsonl):
    p = write_jsonl("bad.jsonl", [GOOD, '{"messages": ['])
    with pytest.raises(InputError, match="line 2"):
        load_examples(p)


def test_csv_row_numbers_count_header(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("instruction,response\nI1,R1\nI2,\n")
    with pytest.raises(InputError, match=r"line 3, field 'response'"):
        load_examples(p)


def test_parquet_and_datasets_dir(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_list([{"instruction": f"I{i}", "response": f"R{i}"} for i in range(5)])
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "dsdir"))
    assert len(load_examples(tmp_path / "d.parquet")) == 5
    assert len(load_examples(tmp_path / "dsdir")) == 5


def test_split_is_deterministic_and_order_independent(write_jsonl):
    rows = [{"instruction": f"I{i}", "response": f"R{i}"} for i in range(30)]
    a = split_examples(load_examples(write_jsonl("a.jsonl", rows)), 0.2, 7)
    b = split_examples(load_examples(write_jsonl("b.jsonl", rows[::-1])), 0.2, 7)
    assert {e.id for e in a[1]} == {e.id for e in b[1]} and len(a[1]) == 6
    assert not {e.id for e in a[0]} & {e.id for e in a[1]}


def data_cfg(path, **kw):
    from llamaduo.config import DataConfig

    return DataConfig(path=str(path), **{"val_size": 0, **kw})


def test_test_path_removes_test_rows_from_train(write_jsonl):
    rows = [{"instruction": f"Question number {i} about topic {i * 7}", "response": f"R{i}"} for i in range(10)]
    s = load_coverage(data_cfg(write_jsonl("a.jsonl", rows), test_path=str(write_jsonl("t.jsonl", rows[:3]))))
    assert len(s.test) == 3 and len(s.train) == 7 and s.removed == {"test_overlap": 3}


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_examples(tmp_path / "nope.jsonl")


def test_to_chat_is_prompt_completion():
    from llamaduo.data import Example

    row = to_chat(Example("x", "Q", "A"), "Be brief")
    assert row["prompt"][0] == {"role": "system", "content": "Be brief"}
    assert row["completion"] == [{"role": "assistant", "content": "A"}]


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="shared data not present")
def test_real_coverage_data_loads_and_splits():
    s = load_coverage(data_cfg(SHARED_DATA, test_size=24, val_size=20, split_seed=42))
    assert len(s.test) == 24 and len(s.val) == 20 and len(s.train) == 290 and s.removed == {}
    assert all(e.category == "Classify" for e in s.train)


# -- clean evaluation data: disguised copies of test rows; text that is not valid UTF-8 -------------
import random  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import yaml  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

VOCAB = ("apple river engine garden window silver market doctor pencil winter castle coffee planet ladder "
         "violin rocket bridge candle forest mirror").split()
TEST_ITEM = {"instruction": "Route ticket 99: my parcel number 1683 is late again", "response": "shipping"}
# Cyrillic о/а/е, a zero-width space, a soft hyphen, an accent, a bidi mark: reads the same as TEST_ITEM
DISGUISED = {"instruction": "Rоute ti\u200bcket 99:  my pаr\u00adcel numbe\u0301r 1683 is lat\u200eе AGAIN",
             "response": "billing"}


def distinct_rows(n: int) -> list[dict]:
    rng = random.Random(0)
    return [{"instruction": f"Write a line about {' '.join(rng.sample(VOCAB, 6))} number {i}",
             "response": f"A line about item {i}."} for i in range(n)]


def validate(tmp: Path, data: dict, capsys, **service) -> tuple[int, str, str]:
    """`llamaduo validate` on a config around `data` (the real CLI entry point, in-process)."""
    from flows.cli import main

    (tmp / "student").mkdir(exist_ok=True)
    (tmp / "student" / "config.json").write_text("{}")
    cfg = {"name": "clean", "data": data, "student": {"model": str(tmp / "student")}, "budget": {"max_usd": 0},
           "service": {"model": "openai/local-teacher", "api_base": "http://127.0.0.1:9/v1", **service}}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    rc = main(["validate", str(tmp / "cfg.yaml")])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_validate_removes_a_disguised_copy_of_a_test_file_row(write_jsonl, tmp_path, capsys):
    data = write_jsonl("data.jsonl", distinct_rows(12) + [DISGUISED])
    test = write_jsonl("test.jsonl", [TEST_ITEM] + distinct_rows(15)[12:])
    rc, out, err = validate(tmp_path, {"path": str(data), "test_path": str(test), "val_size": 0}, capsys)
    assert rc == 0, err
    assert "12 train rows" in out and "test_overlap 1" in out, out


def test_split_collapses_a_disguised_duplicate_and_counts_it_for_the_summary(write_jsonl, tmp_path):
    from llamaduo.config import CurateConfig
    from llamaduo.data import prepare_splits

    data = write_jsonl("data.jsonl", [TEST_ITEM] + distinct_rows(12) + [DISGUISED])
    res = prepare_splits(tmp_path / "run", data_cfg(data, test_size=3), CurateConfig())
    assert res.removed == {"duplicate": 1} and res.train_rows + res.test_rows == 13  # summary `data.removed`


# A lone surrogate: JSON's "\ud800" escape decodes to a str that is not Unicode text (cannot be encoded).
LONE_SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)
FIELDS = ["instruction", "response", "category", "meta", "messages[0].content", "messages[1].content",
          "messages[1].role", "tags[1]"]


def _row_with(field: str, bad: str) -> dict:
    row = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]} \
        if field.startswith("messages") else {"instruction": "I", "response": "R", "tags": ["a", "b"]}
    if field.startswith("messages"):
        i, key = int(field[9]), field.split(".")[1]
        row["messages"][i][key] = bad
    elif field == "tags[1]":
        row["tags"][1] = bad
    else:
        row[field] = bad
    return row


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), before=st.text(max_size=8), after=st.text(max_size=8),
       surrogate=LONE_SURROGATE, good_rows=st.integers(0, 3), suffix=st.sampled_from([".jsonl", ".json"]))
def test_a_lone_surrogate_in_any_field_is_refused_naming_line_and_field(field, before, after, surrogate,
                                                                        good_rows, suffix):
    rows = [GOOD] * good_rows + [_row_with(field, before + surrogate + after)]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / f"d{suffix}"
        # json.dumps escapes the surrogate as \udXXX, as any JSON writer would
        p.write_text("\n".join(json.dumps(r) for r in rows) + "\n" if suffix == ".jsonl" else json.dumps(rows))
        with pytest.raises(InputError) as e:
            load_examples(p)
    msg = str(e.value)
    line = good_rows + 1  # .jsonl: the line; .json: the row number
    assert f"line {line}, field '{field}'" in msg and "UTF-8" in msg, msg
    msg.encode("utf-8")  # the message itself is printable


def test_a_lone_surrogate_in_a_key_is_named_printably(write_jsonl):
    p = write_jsonl("d.jsonl", [GOOD, '{"instruction": "I", "response": "R", "n\\udc80te": "x"}'])
    with pytest.raises(InputError, match=r"line 2, field 'n\\udc80te'"):
        load_examples(p)


def _arrow_table_with_invalid_utf8():
    """A string column whose second value is not UTF-8: Arrow reads it without checking."""
    import pyarrow as pa

    raw = pa.array([b"fine", b"caf\xe9 latin-1"], type=pa.binary())
    text = pa.Array.from_buffers(pa.string(), 2, raw.buffers())
    return pa.table({"instruction": pa.array(["I1", "I2"]), "response": text})


def test_parquet_and_datasets_dir_with_invalid_utf8_name_row_and_column(tmp_path):
    import pyarrow.parquet as pq
    from datasets import Dataset

    table = _arrow_table_with_invalid_utf8()
    pq.write_table(table, tmp_path / "d.parquet")
    Dataset(table).save_to_disk(str(tmp_path / "dsdir"))
    for path in (tmp_path / "d.parquet", tmp_path / "dsdir"):
        with pytest.raises(InputError, match=r"line 2, field 'response': not UTF-8"):
            load_examples(path)


@pytest.mark.parametrize("where", ["data", "standin_pool"])
def test_validate_refuses_a_lone_surrogate_with_exit_2(where, tmp_path, capsys):
    bad = '{"instruction": "Name a colour", "response": "r\\ud800ed"}\n'
    good = "".join(json.dumps(r) + "\n" for r in distinct_rows(12))
    name = "data.jsonl" if where == "data" else "pool.jsonl"
    (tmp_path / "data.jsonl").write_text(good + (bad if where == "data" else ""))
    service = {}
    if where == "standin_pool":
        (tmp_path / "pool.jsonl").write_text(bad)
        service = {"model": "llamaduo-standin/teacher", "standin_pool": str(tmp_path / "pool.jsonl")}
    rc, _, err = validate(tmp_path, {"path": str(tmp_path / "data.jsonl"), "test_size": 3}, capsys, **service)
    line = 13 if where == "data" else 1
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert name in err and f"line {line}, field 'response'" in err, err


def test_stratify_asked_for_with_a_row_without_category_is_an_input_error(write_jsonl):
    """`data.stratify: true` with one uncategorised row used to turn stratification off silently."""
    from llamaduo.config import DataConfig

    rows = [{"instruction": f"I{i}", "response": f"R{i}", "category": "ab"[i % 2]} for i in range(30)]
    rows[6] = {"instruction": "I6", "response": "R6"}
    rows[11] = {"instruction": "I11", "response": "R11", "category": "  "}
    path = write_jsonl("d.jsonl", rows)
    with pytest.raises(InputError) as e:
        load_coverage(DataConfig(path=str(path), test_size=6, stratify=True))
    assert (e.value.file, e.value.line, e.value.field) == (str(path), 7, "category")
    assert "data.stratify" in str(e.value) and "lines 7, 12" in str(e.value)
    assert load_coverage(DataConfig(path=str(path), test_size=6)).test, "not asked for: a plain shuffle"
