from pathlib import Path

import pytest

from llamaduo.config import RunConfig, apply_overrides, config_from_dict, load_config
from llamaduo.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = ["data.path", "data.test_path", "data.test_size", "service.model", "service.api_base",
                 "service.rpm", "service.max_concurrency", "synth.prompt_template", "synth.rows_per_round",
                 "judge.model", "judge.prompt_template", "judge.repeats", "student.model", "train.epochs",
                 "train.max_length", "infer.max_new_tokens", "gate.metric", "gate.threshold", "gate.max_rounds",
                 "budget.max_calls", "budget.max_usd"]


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_contract_keys_exist(key):
    section, name = key.split(".")
    assert name in RunConfig.model_fields[section].annotation.model_fields


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    cfg = load_config(path)
    assert cfg.gate.max_rounds >= 1
    assert Path(cfg.data.path).exists(), "shipped configs point at shipped data"


def test_unknown_key_is_an_error_naming_file_and_field(tmp_path):
    p = _write(tmp_path, "data: {path: x.jsonl}\nservice: {model: m}\ntrain: {epochz: 3}\n")
    with pytest.raises(InputError) as e:
        load_config(p)
    assert "c.yaml" in str(e.value) and "train.epochz" in str(e.value) and "unknown key" in str(e.value)


def test_bad_type_names_field(tmp_path):
    p = _write(tmp_path, "data: {path: x.jsonl}\nservice: {model: m}\ngate: {threshold: high}\n")
    with pytest.raises(InputError, match="gate.threshold"):
        load_config(p)


def test_invalid_yaml_names_line(tmp_path):
    p = _write(tmp_path, "data:\n  path: [unclosed\n")
    with pytest.raises(InputError, match="line"):
        load_config(p)


def test_overrides_parse_yaml_scalars(tmp_path):
    p = _write(tmp_path, "data: {path: x.jsonl}\nservice: {model: openai/gpt-4o-mini}\n")
    cfg = load_config(p, ["gate.threshold=85.5", "train.epochs=3", "student.system_prompt=Be brief",
                          "gate.baseline=true"])
    assert cfg.gate.threshold == 85.5 and cfg.train.epochs == 3 and cfg.gate.baseline is True
    assert cfg.student.system_prompt == "Be brief"


def test_override_without_equals_is_an_input_error():
    with pytest.raises(InputError):
        apply_overrides({}, ["gate.threshold"])


def test_relative_paths_resolve_against_config_dir(tmp_path):
    (tmp_path / "d.jsonl").write_text("")
    cfg = load_config(_write(tmp_path, "data: {path: d.jsonl}\nservice: {model: openai/gpt-4o-mini}\n"))
    assert Path(cfg.data.path) == tmp_path / "d.jsonl"


def test_unknown_gate_metric_rejected():
    with pytest.raises(InputError, match="gate"):
        config_from_dict({"data": {"path": "x"}, "service": {"model": "m"}, "gate": {"metric": "bleu"}})


def test_standin_requires_pool():
    with pytest.raises(InputError, match="standin_pool"):
        config_from_dict({"data": {"path": "x"}, "service": {"model": "llamaduo-standin/teacher"}})


def test_home_in_data_paths_is_expanded(tmp_path, monkeypatch):
    """`~` means the home directory in data paths, as it does for student.model (so the deployment's
    path check and the loader agree on where `~/x` points)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    cfg = load_config(_write(tmp_path, "data: {path: ~/d.jsonl}\nservice: {model: openai/gpt-4o-mini}\n"))
    assert Path(cfg.data.path) == tmp_path / "home" / "d.jsonl"
