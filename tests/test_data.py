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
