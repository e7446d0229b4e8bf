"""Bad input, table-driven: every case exits 2 with a message naming the file and/or field (and the
line where there is one), shows no traceback, and writes nothing. Runs the real CLI entry point
in-process (`flows.cli.main`), so the cases stay fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flows.cli import main

GOOD_ROWS = [{"instruction": f"Route ticket {i}: my parcel number {i * 17} is late again", "response": "shipping"}
             for i in range(20)]
PASTED_KEY = "sk-pasted-secret-key-0123456789"


def _base(tmp: Path) -> dict:
    (tmp / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD_ROWS))
    return {"name": "bad", "data": {"path": str(tmp / "data.jsonl"), "test_size": 4},
            "service": {"model": "openai/local-teacher", "api_base": "http://127.0.0.1:9/v1"},
            "student": {"model": str(tmp / "student")}, "budget": {"max_usd": 0}}


def _student(tmp: Path) -> None:
    (tmp / "student").mkdir(exist_ok=True)
    (tmp / "student" / "config.json").write_text("{}")


def setdeep(cfg: dict, dotted: str, value) -> dict:
    node = cfg
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


def write(tmp: Path, name: str, data: bytes | str) -> str:
    p = tmp / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p)


# Each case: (id, builder(tmp, cfg) -> config path or None to use cfg, expected substrings, command)
def cfg_case(key, value, *expect):
    return lambda tmp, cfg: (setdeep(cfg, key, value), None)[1], list(expect)


def data_case(name, content, *expect, key="data.path"):
    def build(tmp, cfg):
        setdeep(cfg, key, write(tmp, name, content))
    return build, [name, *expect]


def tmpl_case(key, text, *expect, as_file=False):
    def build(tmp, cfg):
        setdeep(cfg, key, write(tmp, "t.j2", text) if as_file else text)
    return build, list(expect)


def raw_config(text, *expect):
    def build(tmp, cfg):
        return write(tmp, "raw.yaml", text)
    return build, ["raw.yaml", *expect]


LATIN1_CSV = "instruction,response\ncaf\xe9 order {i} late,shipping\n".encode("latin-1")
CASES = {
    # -- encoding
    "config-not-utf8": raw_config(b"name: caf\xe9\n".decode("latin-1").encode("latin-1"), "line 1", "UTF-8"),
    "jsonl-not-utf8": data_case("d.jsonl", json.dumps(GOOD_ROWS[0]).encode() + b"\n" + b'{"instruction": "caf\xe9 x",'
                                b' "response": "y"}\n', "line 2", "UTF-8"),
    "csv-latin1": data_case("d.csv", LATIN1_CSV, "UTF-8"),
    "json-not-utf8": data_case("d.json", b'[{"instruction": "caf\xe9", "response": "x"}]', "UTF-8"),
    "template-not-utf8": tmpl_case("judge.prompt_template", b"caf\xe9 {{candidate}} {{reference}}", "t.j2", "UTF-8",
                                   as_file=True),
    "pool-not-utf8": (lambda tmp, cfg: (setdeep(cfg, "service.model", "llamaduo-standin/teacher"),
                                        setdeep(cfg, "service.standin_pool", write(tmp, "pool.jsonl", b'{"a": "\xe9"}\n')),
                                        None)[-1], ["pool.jsonl", "line 1", "UTF-8"]),
    # -- structure
    "json-malformed": data_case("d.json", '[{"instruction": "a", "response": "b"', "invalid JSON"),
    "json-not-a-list": data_case("d.json", '{"instruction": "a", "response": "b"}', "list of rows"),
    "jsonl-broken-line": data_case("d.jsonl", json.dumps(GOOD_ROWS[0]) + "\n{broken\n", "line 2", "invalid JSON"),
    "jsonl-row-not-object": data_case("d.jsonl", "[1, 2]\n", "line 1", "object"),
    "parquet-corrupt": data_case("d.parquet", b"PAR1 this is not parquet", "parquet"),
    "not-a-datasets-dir": (lambda tmp, cfg: ((tmp / "dsdir").mkdir(), setdeep(cfg, "data.path", str(tmp / "dsdir")),
                                             None)[-1], ["dsdir", "datasets"]),
    "unsupported-format": data_case("d.txt", "hello", "unsupported"),
    "empty-dataset": data_case("d.jsonl", "\n\n", "empty"),
    "missing-response": data_case("d.jsonl", '{"instruction": "x"}\n', "line 1", "response"),
    "response-not-string": data_case("d.jsonl", '{"instruction": "x", "response": 5}\n', "line 1", "response"),
    "empty-instruction": data_case("d.jsonl", '{"instruction": "  ", "response": "y"}\n', "line 1", "instruction"),
    "category-not-string": data_case("d.jsonl", '{"instruction": "x", "response": "y", "category": 3}\n', "category"),
    "messages-no-assistant": data_case("d.jsonl", '{"messages": [{"role": "user", "content": "x"}]}\n', "messages"),
    "messages-bad-role": data_case("d.jsonl", '{"messages": [{"role": "bot", "content": "x"}]}\n', "role"),
    "messages-multi-turn": data_case("d.jsonl", json.dumps({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]})
        + "\n", "messages[2].role"),
    "csv-missing-column": data_case("d.csv", "instruction,answer\nq,a\n", "line 2"),
    "test-file-bad": data_case("t.jsonl", '{"instruction": "x"}\n', "response", key="data.test_path"),
    "data-missing": cfg_case("data.path", "/nonexistent/data.jsonl", "not found"),
    "config-is-dir": (lambda tmp, cfg: str(tmp), ["directory"]),
    "config-missing": (lambda tmp, cfg: str(tmp / "nope.yaml"), ["nope.yaml", "not found"]),
    "yaml-duplicate-top-key": raw_config("data: {path: a}\nservice: {model: m}\ndata: {path: b}\n", "line 3",
                                         "duplicate key 'data'"),
    "yaml-duplicate-nested-key": raw_config("data: {path: a, path: b}\nservice: {model: m}\n", "duplicate key 'path'"),
    "yaml-syntax": raw_config("data:\n  path: [unclosed\n", "invalid YAML"),
    "yaml-top-level-list": raw_config("- a\n- b\n", "mapping"),
    # -- templates
    "tmpl-attr-on-undefined": tmpl_case("synth.prompt_template", "{{instruction.foo.bar}} {{response}}",
                                        "synth.prompt_template", "cannot render"),
    "tmpl-judge-no-candidate": tmpl_case("judge.prompt_template", "Q {{instruction}} R {{reference}}\n",
                                         "candidate"),
    "tmpl-judge-no-reference": tmpl_case("judge.prompt_template", "Q {{instruction}} C {{candidate}}\n",
                                         "reference"),
    "tmpl-synth-no-seed": tmpl_case("synth.prompt_template", "Write {{n}} pairs about {{topic}}\n",
                                    "instruction or response"),
    "tmpl-syntax": tmpl_case("synth.prompt_template", "{{instruction} {{response}}\n", "syntax"),
    "tmpl-unknown-var": tmpl_case("judge.prompt_template", "{{candidate}} {{reference}} {{answer}}\n", "answer"),
    "tmpl-file-missing": cfg_case("synth.prompt_template", "/nonexistent/synth.j2", "synth.j2", "not found"),
    "tmpl-file-attr": tmpl_case("synth.prompt_template", "{{ response.upper.x }} {{instruction}}", "t.j2",
                                as_file=True),
    # -- values
    "test-size-1.5": cfg_case("data.test_size", 1.5, "data.test_size"),
    "test-size-too-big": cfg_case("data.test_size", 20, "data.test_size"),
    "test-size-zero": cfg_case("data.test_size", 0, "data.test_size"),
    "val-size-2.5": cfg_case("data.val_size", 2.5, "data.val_size"),
    "val-size-too-big": cfg_case("data.val_size", 16, "data.val_size"),
    "threshold-rougeL-70": (lambda tmp, cfg: (setdeep(cfg, "gate.metric", "rougeL"),
                                              setdeep(cfg, "gate.threshold", 70), None)[-1], ["gate", "rougeL"]),
    "threshold-judge-150": cfg_case("gate.threshold", 150, "gate", "scale"),
    "threshold-judge-0": cfg_case("gate.threshold", 0, "gate", "scale"),
    "min-item-score-off-scale": (lambda tmp, cfg: (setdeep(cfg, "gate.min_item_score", 500),
                                                   setdeep(cfg, "gate.min_share", 0.5), None)[-1], ["min_item_score"]),
    "gate-metric-unknown": cfg_case("gate.metric", "bleu", "gate"),
    "gate-metric-not-gateable": cfg_case("gate.metric", "judge_spread", "gate"),
    "provider-typo": cfg_case("service.model", "opnai/gpt-4o", "service.model", "opnai"),
    "judge-provider-typo": cfg_case("judge.model", "antropic/claude", "judge.model", "antropic"),
    "api-base-not-url": cfg_case("service.api_base", "localhost:8000/v1", "service.api_base", "http"),
    "api-base-ftp": cfg_case("service.api_base", "ftp://host/v1", "service.api_base"),
    "judge-api-base-bad": cfg_case("judge.api_base", "not a url", "judge.api_base"),
    "key-pasted-into-env-name": cfg_case("service.api_key_env", PASTED_KEY, "service.api_key_env", "NAME"),
    "judge-key-pasted": cfg_case("judge.api_key_env", PASTED_KEY, "judge.api_key_env"),
    "key-env-unset": cfg_case("service.api_key_env", "LLAMADUO_TEST_UNSET_KEY", "LLAMADUO_TEST_UNSET_KEY"),
    "unpriced-with-money-cap": (lambda tmp, cfg: (setdeep(cfg, "budget.max_usd", 5), None)[-1],
                                ["service.model", "input_cost_per_mtok"]),
    "student-missing-dir": cfg_case("student.model", "/nonexistent/student/dir", "student.model"),
    "student-dir-no-config": (lambda tmp, cfg: ((tmp / "empty_model").mkdir(),
                                                setdeep(cfg, "student.model", str(tmp / "empty_model")), None)[-1],
                              ["empty_model", "config.json"]),
    "row-too-large": (lambda tmp, cfg: (setdeep(cfg, "data.max_row_chars", 20), None)[-1],
                      ["data.jsonl", "line 1", "max_row_chars"]),
    "unknown-key": cfg_case("train.epohcs", 3, "train.epohcs", "unknown key"),
    "wrong-type": cfg_case("gate.threshold", "high", "gate.threshold"),
    "negative-epochs": cfg_case("train.epochs", -1, "train.epochs"),
    "rpm-zero": cfg_case("service.rpm", 0, "service.rpm"),
    "failure-rate-above-1": cfg_case("service.max_failure_rate", 1.5, "service.max_failure_rate"),
    "parity-needs-baseline": cfg_case("gate.min_parity", 0.9, "service_baseline"),
    "standin-without-pool": cfg_case("service.model", "llamaduo-standin/teacher", "standin_pool"),
    "quantization-unknown": cfg_case("train.quantization", "8bit", "train.quantization"),
}

OVERRIDE_CASES = {
    "override-no-equals": (["gate.threshold"], ["gate.threshold"]),
    "override-unknown-key": (["train.epohcs=2"], ["train.epohcs", "unknown key"]),
    "override-into-scalar": (["data.path.x=1"], ["data.path"]),
    "override-bad-value": (["gate.threshold=200"], ["gate"]),
}


def _listing(tmp: Path) -> set[str]:
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*")}


def _check(capsys, rc: int, expect: list[str], tmp: Path, before: set[str]) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for e in expect:
        assert e in err, f"{e!r} not in {err!r}"
    assert PASTED_KEY not in err, "a pasted key must never be echoed"
    assert _listing(tmp) == before, "bad input must write nothing"
    return err


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_naming_where(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLAMADUO_TEST_UNSET_KEY", raising=False)
    _student(tmp_path)
    cfg = _base(tmp_path)
    build, expect = CASES[case]
    path = build(tmp_path, cfg)
    if path is None:
        path = write(tmp_path, "cfg.yaml", yaml.safe_dump(cfg))
    before = _listing(tmp_path)
    _check(capsys, main(["validate", path]), expect, tmp_path, before)


@pytest.mark.parametrize("case", sorted(OVERRIDE_CASES))
def test_bad_override_exits_2(case, tmp_path, capsys):
    _student(tmp_path)
    path = write(tmp_path, "cfg.yaml", yaml.safe_dump(_base(tmp_path)))
    overrides, expect = OVERRIDE_CASES[case]
    before = _listing(tmp_path)
    _check(capsys, main(["validate", path] + [a for o in overrides for a in ("--set", o)]), expect, tmp_path, before)


@pytest.mark.parametrize("case", ["workdir-is-a-file", "workdir-under-a-file"])
def test_bad_run_directory_is_found_before_the_plan(case, tmp_path, capsys):
    _student(tmp_path)
    path = write(tmp_path, "cfg.yaml", yaml.safe_dump(_base(tmp_path)))
    write(tmp_path, "afile", "x")
    workdir = tmp_path / "afile" if case == "workdir-is-a-file" else tmp_path / "afile" / "sub"
    before = _listing(tmp_path)
    err = _check(capsys, main(["run", path, "--workdir", str(workdir)]), ["--workdir", "afile"], tmp_path, before)
    assert "run '" not in err


def test_csv_with_bom_is_read(tmp_path, capsys):
    _student(tmp_path)
    cfg = _base(tmp_path)
    rows = "".join(f"{r['instruction']},{r['response']}\n" for r in GOOD_ROWS)
    cfg["data"]["path"] = write(tmp_path, "bom.csv", "\ufeffinstruction,response\n" + rows)
    assert main(["validate", write(tmp_path, "cfg.yaml", yaml.safe_dump(cfg))]) == 0, capsys.readouterr().err


def test_case_count():
    n = len(CASES) + len(OVERRIDE_CASES) + 2
    print(f"\n{n} bad inputs across encoding, structure, templates, values, overrides and run directory")
    assert n >= 60
