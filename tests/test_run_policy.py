"""What a person who may start a deployment run can and cannot do, through the flow the deployment
calls; and persisted results that cannot run code."""

import json
import os
import pickle
from pathlib import Path

import pytest

from llamaduo.config import DEFAULT_RUN_OVERRIDES, check_run_overrides
from llamaduo.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override,field", [
    ("service.api_base=http://attacker.example/v1", "service.api_base"),
    ("judge.api_base=http://attacker.example/v1", "judge.api_base"),
    ("service.api_key_env=PREFECT_API_AUTH_STRING", "service.api_key_env"),
    ("judge.api_key_env=OPENAI_API_KEY", "judge.api_key_env"),
    ("service.model=openai/gpt-4o", "service.model"),
    ("data.path=/etc/passwd", "data.path"),
    ("train.subprocess=false", "train.subprocess"),
])
def test_refused_overrides_name_the_key(override, field):
    with pytest.raises(InputError, match=field.replace(".", r"\.")):
        check_run_overrides([override], DEFAULT_RUN_OVERRIDES, ROOT)


def test_allowed_overrides_pass():
    check_run_overrides(["gate.threshold=80", "budget.max_usd=2", "train.lora_r=8", "synth.rows_per_round=10"],
                        DEFAULT_RUN_OVERRIDES, ROOT)
    # an operator may allow a path, but only inside the project
    check_run_overrides(["data.path=examples/demo/coverage.jsonl"], ["data.path"], ROOT)
    with pytest.raises(InputError, match="inside the project"):
        check_run_overrides(["data.path=../../etc/passwd"], ["data.path"], ROOT)


@pytest.fixture(scope="module")
def prefect_harness(tmp_path_factory):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: str(tmp_path_factory.mktemp("results"))}):
        with prefect_test_harness(server_startup_timeout=120):
            yield


def test_deployment_flow_refuses_endpoint_override_before_anything_runs(prefect_harness, monkeypatch, tmp_path):
    from flows.migrate import migrate_config_file

    monkeypatch.chdir(ROOT)
    with pytest.raises(InputError, match="service.api_base"):
        migrate_config_file("configs/demo.yaml", overrides=["service.api_base=http://attacker.example/v1"],
                            workdir="runs/never-created")
    with pytest.raises(InputError, match="config_path"):
        migrate_config_file(str(tmp_path / "evil.yaml"), workdir="runs/never-created")
    assert not (ROOT / "runs" / "never-created").exists()


def test_tampered_result_file_is_removed_never_executed(tmp_path):
    """A results folder is writable by whoever shares the volume: a record naming pickle (or a JSON
    decoder by dotted name) is deleted before the run reads its cache; ours load as plain JSON."""
    from prefect.serializers import JSONSerializer, PickleSerializer

    from llamaduo.records import Artifact, SynthResult
    from tasks._results import RecordJSONSerializer, quarantine_untrusted_results, untrusted

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    def record(serializer, payload):
        return json.dumps({"metadata": {"storage_key": "k", "expiration": None, "serializer": serializer,
                                        "prefect_version": "3.9.1", "storage_block_id": None},
                           "result": payload}).encode()

    results = tmp_path / "results"
    results.mkdir()
    ours = RecordJSONSerializer().dumps(SynthResult(candidates=Artifact(path="a", sha256="b")))
    (results / "good").write_bytes(record({"type": "llamaduo-json"}, ours.decode()))
    (results / "pickled").write_bytes(record(PickleSerializer().model_dump(),
                                             PickleSerializer().dumps(Exploit()).decode()))
    (results / "json-decoder").write_bytes(record({**JSONSerializer().model_dump(), "object_decoder": "os.system"},
                                                  '{"a": 1}'))
    (results / "garbage").write_bytes(pickle.dumps(Exploit()))
    removed = quarantine_untrusted_results(results)
    assert sorted(Path(r).name for r in removed) == ["garbage", "json-decoder", "pickled"]
    assert [p.name for p in results.iterdir()] == ["good"] and not marker.exists()
    assert untrusted((results / "good").read_bytes()) is None
    loaded = RecordJSONSerializer().loads(ours)
    assert isinstance(loaded, SynthResult) and loaded.candidates.path == "a"
    with pytest.raises(ValueError, match="unknown result type"):
        RecordJSONSerializer().loads(b'{"__record__": "Popen", "data": {}}')


def test_no_pickle_in_persisted_results_of_a_run():
    """Every task and flow is declared with the JSON serializer."""
    import flows.migrate
    import flows.round
    from tasks import data, evaluate, export, report, synth, train
    from tasks._results import RecordJSONSerializer

    objs = [flows.migrate.migrate, flows.migrate.migrate_config_file, flows.round.migration_round]
    for mod in (data, evaluate, export, report, synth, train):
        objs += [v for v in vars(mod).values() if type(v).__name__ == "Task"]
    assert len(objs) >= 12
    for o in objs:
        assert isinstance(o.result_serializer, RecordJSONSerializer), o.name
        assert o.persist_result is True, o.name


def test_typed_form_maps_to_overrides_and_keeps_providers(prefect_harness, monkeypatch):
    from flows.form import RunSettings
    from flows.migrate import migrate_config_file

    s = RunSettings(gate_threshold=80, max_rounds=2, max_usd=1.5, judge_model="openai/gpt-4o")
    assert s.to_overrides() == ["judge.model=openai/gpt-4o", "gate.threshold=80.0", "gate.max_rounds=2",
                                "budget.max_usd=1.5"]
    with pytest.raises(Exception):
        RunSettings(gate_threshold=150)
    monkeypatch.chdir(ROOT)
    with pytest.raises(InputError, match="settings.service_model"):
        migrate_config_file("configs/openai.yaml", settings=RunSettings(service_model="anthropic/claude-3-5-haiku"),
                            workdir="runs/never-created")
    assert not (ROOT / "runs" / "never-created").exists()
