"""What a person who may start a deployment run can and cannot do, through the flow the deployment
calls; and persisted results that cannot run code."""

import json
import os
import pickle
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamaduo.operator_policy import check_run_overrides
from llamaduo.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
# the operator's allow-list as shipped (the one copy)
SHIPPED_OVERRIDES = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["llamaduo_run_overrides"]


@pytest.mark.parametrize("override,field", [
    ("service.api_base=http://attacker.example/v1", "service.api_base"),
    ("judge.api_base=http://attacker.example/v1", "judge.api_base"),
    ("service.api_key_env=PREFECT_API_AUTH_STRING", "service.api_key_env"),
    ("judge.api_key_env=OPENAI_API_KEY", "judge.api_key_env"),
    ("service.model=openai/gpt-4o", "service.model"),
    ("data.path=/etc/passwd", "data.path"),
    ("train.subprocess=false", "train.subprocess"),
    # keys that loosen the gate without touching its threshold (the operator's floor)
    ("gate.combine=any", "gate.combine"),
    ("gate.min_judged_share=0", "gate.min_judged_share"),
    ("gate.min_share=0", "gate.min_share"),
])
def test_refused_overrides_name_the_key(override, field):
    with pytest.raises(InputError, match=field.replace(".", r"\.")):
        check_run_overrides([override], SHIPPED_OVERRIDES, ROOT)


def test_allowed_overrides_pass():
    check_run_overrides(["gate.threshold=80", "budget.max_usd=2", "train.lora_r=8", "synth.rows_per_round=10"],
                        SHIPPED_OVERRIDES, ROOT)
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
    from tasks import data, evaluate, export, promote, report, synth, train
    from tasks._results import RecordJSONSerializer

    objs = [flows.migrate.migrate, flows.migrate.migrate_config_file, flows.round.migration_round]
    for mod in (data, evaluate, export, promote, report, synth, train):
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


# -- 13. the typed form and overrides obey the operator's ceilings -----------------------------------

def _cfg(**sections):
    from llamaduo.config import config_from_dict

    return config_from_dict({"data": {"path": "x"}, "service": {"model": "openai/gpt-4o-mini"}, **sections})


@pytest.mark.parametrize("sections,field,ceiling", [
    ({"budget": {"max_usd": 1e6}}, "budget.max_usd", "25"),
    ({"budget": {"max_calls": 10**9}}, "budget.max_calls", "5000"),
    ({"gate": {"max_rounds": 50}}, "gate.max_rounds", "10"),
    ({"gate": {"threshold": 1}}, "gate.threshold", "50"),
    ({"gate": {"metric": "rougeL", "threshold": 0.01}}, "gate.threshold", "0.2"),
    ({"gate": {"threshold": 80, "combine": "any", "min_item_score": 2, "min_share": 0.1}}, "gate.min_item_score",
     "50"),
])
def test_ceilings_refuse_naming_field_and_ceiling(sections, field, ceiling):
    from llamaduo.operator_policy import RunCeilings, check_run_ceilings

    with pytest.raises(InputError) as e:
        check_run_ceilings(_cfg(**sections), RunCeilings())
    assert e.value.field == field, str(e.value)
    assert f"ceiling {ceiling}" in str(e.value) or f"floor {ceiling}" in str(e.value), str(e.value)
    assert "llamaduo_run_ceilings" in str(e.value)


def test_ceilings_admit_what_is_within_them():
    from llamaduo.operator_policy import RunCeilings, check_run_ceilings

    check_run_ceilings(_cfg(budget={"max_usd": 25, "max_calls": 5000}, gate={"max_rounds": 10, "threshold": 50}),
                       RunCeilings())
    # combine: all keeps the threshold as a bar of its own: a low per-item bar only adds a criterion
    check_run_ceilings(_cfg(gate={"threshold": 80, "min_item_score": 2, "min_share": 0.1}), RunCeilings())
    # null = no ceiling; a floor at the bottom of a metric's scale admits every threshold
    check_run_ceilings(_cfg(budget={"max_usd": 1e6}, gate={"metric": "exact_match", "threshold": 0}),
                       RunCeilings(max_usd=None, min_gate_threshold={"exact_match": 0}))


def test_a_metric_the_operator_did_not_list_keeps_its_default_floor():
    # Listing only judge_score must not let a run switch gate.metric to rougeL and gate at 0.
    from llamaduo.operator_policy import RunCeilings, check_run_ceilings

    ceilings = RunCeilings(min_gate_threshold={"judge_score": 60})
    assert ceilings.min_gate_threshold["judge_score"] == 60 and ceilings.min_gate_threshold["rougeL"] == 0.2
    with pytest.raises(InputError) as e:
        check_run_ceilings(_cfg(gate={"metric": "rougeL", "threshold": 0}), ceilings)
    assert e.value.field == "gate.threshold"


@pytest.mark.parametrize("ceilings", [{"max_usd": float("inf")}, {"max_calls": float("nan")}])
def test_infinite_ceilings_are_refused(ceilings):
    from pydantic import ValidationError

    from llamaduo.operator_policy import RunCeilings

    with pytest.raises(ValidationError):
        RunCeilings(**ceilings)


@settings(max_examples=200, deadline=None)
@given(usd=st.floats(0, 1e9, allow_nan=False), calls=st.integers(1, 10**10), rounds=st.integers(1, 1000),
       threshold=st.floats(1, 100, allow_nan=False), ceiling_usd=st.floats(0, 1e4, allow_nan=False),
       ceiling_calls=st.integers(1, 10**6), ceiling_rounds=st.integers(1, 100), floor=st.floats(1, 100))
def test_ceilings_property_refused_exactly_when_above(usd, calls, rounds, threshold, ceiling_usd, ceiling_calls,
                                                      ceiling_rounds, floor):
    from llamaduo.operator_policy import RunCeilings, check_run_ceilings

    cfg = _cfg(budget={"max_usd": usd, "max_calls": calls}, gate={"max_rounds": rounds, "threshold": threshold})
    ceilings = RunCeilings(max_usd=ceiling_usd, max_calls=ceiling_calls, max_rounds=ceiling_rounds,
                           min_gate_threshold={"judge_score": floor})
    over = usd > ceiling_usd or calls > ceiling_calls or rounds > ceiling_rounds or threshold < floor
    try:
        check_run_ceilings(cfg, ceilings)
        refused = False
    except InputError:
        refused = True
    assert refused == over


def test_shipped_prefect_yaml_sets_the_ceilings_the_worker_reads(tmp_path):
    from llamaduo.operator_policy import OperatorPolicy

    def run_ceilings(project):
        return OperatorPolicy.load(project).ceilings

    from llamaduo.operator_policy import RunCeilings

    shipped = run_ceilings(ROOT)
    assert shipped.max_usd == 25 and shipped.max_calls == 5000 and shipped.max_rounds == 10
    assert shipped.min_gate_threshold["judge_score"] == 50 and shipped == RunCeilings()
    (tmp_path / "deployments").mkdir()
    (tmp_path / "deployments" / "prefect.yaml").write_text("llamaduo_run_ceilings: {max_usd: lots}\n")
    with pytest.raises(InputError, match="llamaduo_run_ceilings.max_usd"):
        run_ceilings(tmp_path)
    (tmp_path / "deployments" / "prefect.yaml").write_text("llamaduo_run_ceilings:\n  min_gate_threshold: "
                                                           "{bleu: 3}\n")
    with pytest.raises(InputError, match="min_gate_threshold"):
        run_ceilings(tmp_path)


@pytest.mark.parametrize("settings_kw,overrides,field,ceiling", [
    ({"max_usd": 1e6}, [], "settings.max_usd", "ceiling 25"),
    ({"max_calls": 10**9}, [], "settings.max_calls", "ceiling 5000"),
    ({"gate_threshold": 1}, [], "settings.gate_threshold", "floor 50"),
    ({"max_rounds": 50}, [], "settings.max_rounds", "ceiling 10"),
    (None, ["budget.max_usd=1000000"], "budget.max_usd", "ceiling 25"),
])
def test_deployment_flow_refuses_a_run_above_the_ceilings(prefect_harness, monkeypatch, settings_kw, overrides,
                                                          field, ceiling):
    """End to end through the deployment's flow: the run fails before anything is spent, naming the
    field the person set and the operator's ceiling."""
    from flows.form import RunSettings
    from flows.migrate import migrate_config_file

    monkeypatch.chdir(ROOT)
    settings_ = RunSettings(**settings_kw) if settings_kw else None
    with pytest.raises(InputError) as e:
        migrate_config_file("configs/demo.yaml", settings=settings_, overrides=overrides, workdir="runs/never-created")
    assert e.value.field == field and ceiling in str(e.value), str(e.value)
    assert not (ROOT / "runs" / "never-created").exists()


# -- 17. path overrides are checked where they will point: ~ expanded, .. and symlinks resolved --------

@pytest.fixture
def project(tmp_path):
    """A project directory with a config in a subfolder, a symlink out of it in each, and data inside."""
    root = tmp_path / "project"
    (root / "configs").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "ok.jsonl").write_text("")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text("")
    (root / "escape").symlink_to(outside)
    (root / "configs" / "escape").symlink_to(outside)
    return root


@pytest.mark.parametrize("override", [
    "student.model=~/x", "data.path=~/x", "data.test_path=~root/x",
    "student.model=../x", "data.path=data/../../x", "data.path=/etc/passwd",
    "data.path='/etc/passwd'", 'data.path="~/.ssh/id_rsa"',  # quoted: YAML strips the quotes before use
    "data.path=escape/secret.jsonl", "student.model=escape",  # symlinks out of the project
    "data.path=configs/escape/secret.jsonl",
    "synth.prompt_template=~/t.j2", "judge.prompt_template=escape/t.j2",
])
def test_path_overrides_escaping_the_project_are_refused(project, override):
    key = override.split("=")[0]
    paths = ["data.path", "data.test_path", "student.model", "synth.prompt_template", "judge.prompt_template"]
    with pytest.raises(InputError, match="inside the project") as e:
        check_run_overrides([override], paths, project, project / "configs")
    assert e.value.field == key


def test_config_relative_symlink_escape_is_refused(project):
    """data paths resolve against the config's folder: `escape/…` there leaves the project even
    though the same text under the project root would not exist."""
    (project / "escape").unlink()
    with pytest.raises(InputError, match="inside the project"):
        check_run_overrides(["data.path=escape/secret.jsonl"], ["data.path"], project, project / "configs")


def test_path_overrides_inside_the_project_pass(project):
    paths = ["data.path", "student.model", "synth.prompt_template"]
    check_run_overrides(["data.path=data/ok.jsonl", f"data.path={project}/data/ok.jsonl",
                         "student.model=HuggingFaceTB/SmolLM2-135M-Instruct", "student.model=smollm2-135m-instruct",
                         "synth.prompt_template='{{ instruction }} {{ response }}'"], paths, project,
                        project / "configs")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(["..", ".", "~", "escape", "data", "ok.jsonl", "x", "configs", ""]),
                      min_size=1, max_size=5),
       absolute=st.booleans(), quote=st.sampled_from(["", "'", '"']))
def test_accepted_path_overrides_load_inside_the_project(project, parts, absolute, quote):
    """Property: whatever path text an override carries, if the check admits it then the path the
    loader ends up with (quotes parsed, ~ expanded, relative to the config's folder or the working
    directory) lies inside the project once resolved."""
    from llamaduo.config import _resolve_paths, apply_overrides

    text = ("/" if absolute else "") + "/".join(parts)
    if not text.strip() or text.strip() in ("~", "/"):
        return
    override = f"data.path={quote}{text}{quote}"
    try:
        check_run_overrides([override], ["data.path"], project, project / "configs")
    except InputError:
        return
    cwd = os.getcwd()
    os.chdir(project)  # a deployment run's working directory is the project
    try:
        raw = apply_overrides({"data": {}}, [override])
        _resolve_paths(raw, project / "configs")
        loaded = (project / Path(raw["data"]["path"]).expanduser()).resolve()
    finally:
        os.chdir(cwd)
    assert loaded == project.resolve() or project.resolve() in loaded.parents, (override, loaded)


@pytest.mark.parametrize("student", ["~/x", "~root/models/x", "../x", "/etc", "'/etc'"])
def test_deployment_flow_refuses_a_student_path_outside_the_project(prefect_harness, monkeypatch, student):
    from flows.form import RunSettings
    from flows.migrate import migrate_config_file

    monkeypatch.chdir(ROOT)
    with pytest.raises(InputError, match="inside the project") as e:
        migrate_config_file("configs/demo.yaml", settings=RunSettings(student_model=student),
                            workdir="runs/never-created")
    assert e.value.field == "student.model"
    assert not (ROOT / "runs" / "never-created").exists()
