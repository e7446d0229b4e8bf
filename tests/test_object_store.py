"""A run directory at a URL: `llamaduo.runstore.RunStore` against a real S3 API (moto's server on
loopback) and `file://`, and the CLI end to end with `--workdir s3://…`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llamaduo.errors import InputError
from llamaduo.records import Artifact, RoundRecord, SplitResult
from tests.fake_service import FakeBehaviour, FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "llamaduo-test"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free loopback port, a bucket, and the AWS variables that select it."""
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test-access",
           "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMADUO_SCRATCH", str(tmp_path / "scratch"))
    return tmp_path / "scratch"


def _store(url: str):
    from llamaduo.runstore import RunStore

    return RunStore(url)


@pytest.fixture(params=["file", "s3"])
def store_url(request, tmp_path, scratch):
    if request.param == "file":
        return f"file://{tmp_path / 'bucket' / 'runs' / 'a'}"
    request.getfixturevalue("s3")
    return f"s3://{BUCKET}/runs/{tmp_path.name}"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_pushed_directory_comes_back_whole_on_another_machine(store_url):
    from llamaduo.store import sha256_path

    a = _store(store_url)
    adapter = a.local / "rounds/round_01/adapter"
    (adapter / "sub").mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    (adapter / "sub" / "config.json").write_text('{"r": 8}')
    a.push("rounds/round_01/adapter")
    digest = sha256_path(adapter)
    import shutil

    shutil.rmtree(a.local)  # the other machine has no scratch copy
    b = _store(store_url)
    assert b.exists("rounds/round_01/adapter") and not b.exists("rounds/round_02/adapter")
    assert b.pull("rounds/round_01/adapter")
    assert sha256_path(b.local / "rounds/round_01/adapter") == digest, "same content, same artifact hash"


def test_a_directory_whose_upload_did_not_finish_is_absent(store_url):
    a = _store(store_url)
    (a.local / "final_model").mkdir(parents=True)
    (a.local / "final_model" / "model.safetensors").write_bytes(b"w" * 100)
    a.push("final_model")
    a.fs.pipe_file(a._key(".llamaduo/uploading/final_model"), b"")  # a push killed half-way leaves its marker
    assert not a.exists("final_model")
    import shutil

    shutil.rmtree(a.local)
    assert not _store(store_url).pull("final_model"), "a half-uploaded directory is never read"
    a.fs.rm_file(a._key(".llamaduo/uploading/final_model"))


def test_only_what_a_stage_changed_is_pushed_and_local_only_files_never(store_url):
    a = _store(store_url)
    (a.local / "data").mkdir(parents=True)
    (a.local / "data" / "train.jsonl").write_text("{}\n")
    before = a.snapshot()
    (a.local / "data" / "test.jsonl").write_text('{"a": 1}\n')
    (a.local / ".llamaduo").mkdir()
    (a.local / ".llamaduo" / "run.lock").write_text("pid")
    (a.local / ".prefect").mkdir()
    (a.local / ".prefect" / "prefect.db").write_text("db")
    a.push_changed(before)
    names = a.glob("**")
    assert "data/test.jsonl" in names and "data/train.jsonl" not in names
    assert not [n for n in names if n.startswith((".llamaduo/", ".prefect/"))]


def test_write_text_and_glob_address_the_store(store_url):
    a = _store(store_url)
    a.write_text("summary.json", '{"passed": true}')
    a.write_text("rounds/round_01/report.md", "# r1")
    assert a.glob("rounds/round_*/report.md") == ["rounds/round_01/report.md"]
    assert a.read_bytes("summary.json") == b'{"passed": true}'
    assert a.where("summary.json") == f"{store_url}/summary.json"


def test_a_bucket_that_does_not_exist_is_an_input_error(s3, scratch):
    with pytest.raises(InputError, match="cannot write to s3://no-such-bucket-here") as err:
        _store("s3://no-such-bucket-here/runs/a").check_writable()
    assert "test-secret" not in str(err.value)


def test_artifact_paths_finds_every_artifact_inside_records():
    from tasks._store import artifact_paths

    art = lambda p: Artifact(path=p, sha256="0" * 64)  # noqa: E731
    split = SplitResult(train=art("data/train.jsonl"), val=art("data/val.jsonl"), test=art("data/test.jsonl"),
                        train_rows=1, val_rows=0, test_rows=1)
    assert artifact_paths([split, {"x": [art("a.jsonl")]}, None, "data/other"]) == [
        "data/train.jsonl", "data/val.jsonl", "data/test.jsonl", "a.jsonl"]
    assert "rounds/round_01/adapter" in artifact_paths(RoundRecord.model_construct(
        round=1, adapter=art("rounds/round_01/adapter"), judged=None, answers=None))


# -- the CLI end to end on a bucket ----------------------------------------------------------------
ROWS = [{"instruction": f"Which colour is sample {i} from crate {i * 7}?", "response": "blue"} for i in range(16)]
POOL = [{"instruction": f"Name the colour of parcel {i} in bay {i % 5}.", "response": "blue"} for i in range(40)]


def _run(cfg_path: Path, workdir: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", str(cfg_path), "--workdir", workdir],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.distributed  # make test-distributed
def test_a_run_on_a_bucket_keeps_everything_there_and_a_rerun_pays_nothing(tmp_path, tiny_model_dir, s3):
    import boto3

    (tmp_path / "coverage.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = {"name": "on-a-bucket", "data": {"path": str(tmp_path / "coverage.jsonl"), "test_size": 4, "val_size": 0},
           "service": {"model": "openai/fake-teacher", "api_key_env": "FAKE_SERVICE_KEY", "rpm": 6000,
                       "max_concurrency": 2, "max_retries": 0},
           "synth": {"rows_per_round": 8, "pairs_per_request": 4, "max_waves": 1},
           "student": {"model": str(tiny_model_dir)},
           "train": {"epochs": 1, "batch_size": 4, "max_length": 64, "quantization": "none"},
           "infer": {"max_new_tokens": 4, "batch_size": 4}, "export": {"gguf": []},
           "gate": {"threshold": 1, "max_rounds": 1}, "budget": {"max_usd": 0}}
    url = f"s3://{BUCKET}/runs/e2e"
    scratch_dir = tmp_path / "scratch"
    with FakeOpenAIServer(FakeBehaviour(pool=POOL)) as server:
        cfg["service"]["api_base"] = server.url
        cfg_path = tmp_path / "run.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({"FAKE_SERVICE_KEY": "sk-on-a-bucket", "PYTHONUNBUFFERED": "1", "LLAMADUO_SCRATCH": str(scratch_dir),
                    "HOME": str(tmp_path / "home"), **s3})
        first = _run(cfg_path, url, env)
        assert first.returncode in (0, 3), first.stdout[-3000:] + first.stderr[-4000:]
        paid = server.requests
        keys = {o["Key"][len("runs/e2e/"):] for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix="runs/e2e/") for o in page.get("Contents", [])}
        for name in ("summary.json", "data/train.jsonl", "data/test.jsonl", "rounds/round_01/train.jsonl",
                     "rounds/round_01/adapter/adapter_model.safetensors", "rounds/round_01/answers.jsonl",
                     "rounds/round_01/judged.jsonl", "rounds/round_01/report.md", "report/metrics.png",
                     "final_model/README.md"):
            assert name in keys, f"{name} not on the store: {sorted(keys)}"
        assert any(k.startswith("cache/service/") for k in keys) and any(k.startswith(".prefect/results/") for k in keys)
        assert not any(k.startswith((".llamaduo/", ".prefect/prefect.db")) for k in keys)
        assert not any(".checkpoints" in k for k in keys), "finished training leaves no checkpoints behind"
        assert not scratch_dir.exists() or not any(scratch_dir.rglob("*.safetensors")), "scratch copies removed"
        summary = json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key="runs/e2e/summary.json")["Body"].read())
        assert summary["final_model_dir"] == "final_model"
        assert f"summary: {url}/summary.json" in first.stdout

        second = _run(cfg_path, url, env)  # a fresh machine's view: no scratch copy, the same URL
        assert second.returncode == first.returncode, second.stdout[-3000:] + second.stderr[-4000:]
        assert server.requests == paid, "a re-run against the same URL sends no request"
        assert "this invocation: 0 service calls, 0 training steps" in second.stdout, second.stdout[-2000:]


def test_finished_checkpoints_reach_the_store_while_training_and_rotated_ones_leave(tmp_path, scratch):
    import shutil
    import time

    from llamaduo.runstore import syncing_checkpoints

    store = _store(f"file://{tmp_path / 'bucket' / 'runs' / 'ck'}")
    ckroot = "rounds/round_01/adapter.checkpoints"
    first = store.local / ckroot / "key" / "checkpoint-5"
    with syncing_checkpoints(store, ckroot, every_s=0.05):
        first.mkdir(parents=True)
        (first / "adapter_model.safetensors").write_bytes(b"w" * 64)
        time.sleep(0.3)
        assert not store.exists(f"{ckroot}/key/checkpoint-5"), "unfinished: no trainer_state.json yet"
        (first / "trainer_state.json").write_text("{}")  # the Trainer writes it last
        deadline = time.time() + 5
        while not store.exists(f"{ckroot}/key/checkpoint-5") and time.time() < deadline:
            time.sleep(0.05)
        assert store.exists(f"{ckroot}/key/checkpoint-5")
        second = store.local / ckroot / "key" / "checkpoint-10"
        second.mkdir()
        (second / "trainer_state.json").write_text("{}")
        shutil.rmtree(first)  # save_total_limit rotates the older one out
    assert store.exists(f"{ckroot}/key/checkpoint-10"), "the last checkpoint is pushed when the block ends"
    assert not store.exists(f"{ckroot}/key/checkpoint-5")


def test_new_reply_cache_files_are_pushed_while_a_stage_runs(tmp_path, scratch):
    import time

    store = _store(f"file://{tmp_path / 'bucket' / 'runs' / 'sync'}")
    (store.local / "cache/service/ab").mkdir(parents=True)
    (store.local / "cache/service/ab/old.json").write_text("{}")
    with store.syncing("cache/service", every_s=0.05):
        (store.local / "cache/service/ab/new.json").write_text('{"content": "paid"}')
        deadline = time.time() + 5
        while not store.exists("cache/service/ab/new.json") and time.time() < deadline:
            time.sleep(0.05)
        assert store.read_bytes("cache/service/ab/new.json") == b'{"content": "paid"}'
    assert not store.exists("cache/service/ab/old.json"), "only what changed during the stage"


def test_a_gpu_stage_refuses_paths_outside_the_run_directory():
    from flows.gpu import _typed_params
    from tasks.evaluate import infer

    ok = {"infer_cfg": {}, "student": {"id": "acme/student-1", "path": "/etc/anything"}, "adapter": None,
          "system_prompt": None, "items": {"path": "data/test.jsonl", "sha256": "0" * 64},
          "out": "rounds/round_01/answers.jsonl"}
    typed = _typed_params(infer, ok)
    assert typed["items"].path == "data/test.jsonl"
    # the student's weights are where this worker resolves its id, not a path the caller names (issue 28, 1)
    assert typed["student"].path == "acme/student-1"
    for bad in ({**ok, "out": "../../other-run/answers.jsonl"},
                {**ok, "items": {"path": "/etc/passwd", "sha256": "0" * 64}},
                {**ok, "adapter": {"path": "s3://another-bucket/adapter", "sha256": "0" * 64}}):
        with pytest.raises(InputError, match="not a path inside the run directory"):
            _typed_params(infer, bad)
    with pytest.raises(InputError, match="unknown parameters"):
        _typed_params(infer, {**ok, "command": "rm -rf /"})


def test_removing_a_directory_also_removes_the_marker_a_killed_push_left(store_url):
    a = _store(store_url)
    (a.local / "ck" / "checkpoint-5").mkdir(parents=True)
    (a.local / "ck" / "checkpoint-5" / "w.bin").write_bytes(b"w")
    a.push("ck/checkpoint-5")
    a.fs.pipe_file(a._key(".llamaduo/uploading/ck/checkpoint-10"), b"")  # a worker killed mid-push
    a.remove("ck")
    a.fs.invalidate_cache()
    left = [k for k in a.fs.find(a.base) if "/ck/" in k]
    assert not left, left


# -- issue 28, points 1, 4, 6: one canonical run location; only stores that keep files; file:// works ----------
STORE = "s3://llamaduo-store/runs"


@pytest.mark.parametrize("spelling", [f"{STORE}//run", f"{STORE}/./run", f"{STORE}/run/", f"S3://llamaduo-store/runs/run",
                                      f"{STORE}/./x/./run".replace("/x/./run", "/run")])
def test_every_spelling_of_one_run_location_is_one_place(spelling, scratch):
    from llamaduo.location import canonical_location, place_key

    assert canonical_location(spelling) == f"{STORE}/run"
    assert _store(spelling).local == _store(f"{STORE}/run").local  # one scratch copy, so one lock
    assert place_key(spelling) == place_key(f"s3://user:pw@llamaduo-store/runs/run")


@pytest.mark.parametrize("workdir", [
    "file://{store}/../outside/run", "file://{store}/./../outside/run", "file://{store}/x/../../outside/run",
    "{store}/../outside/run", "file://{store}-evil/run", f"{STORE}/../../other-bucket/run",
    f"{STORE}/x/../../../run", "s3://another-bucket/runs/run", f"{STORE}-evil/run",
])
def test_a_gpu_stage_refuses_every_way_out_of_the_operator_store(workdir, tmp_path, monkeypatch):
    """`file://STORE/../outside/run`, `STORE/./../…` and `STORE/x/../../…` passed the prefix check."""
    from flows.gpu import _check_store_base

    store = tmp_path / "store"
    (tmp_path / "deployments").mkdir()
    base = workdir.startswith("s3") and STORE or f"file://{store}"
    (tmp_path / "deployments" / "prefect.yaml").write_text(yaml.safe_dump({"llamaduo_run_store": base}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError):
        _check_store_base(workdir.format(store=store))
    _check_store_base(f"{base}/run-1")  # inside: accepted
    _check_store_base(f"{base}//./run-1/")


@pytest.mark.parametrize("workdir,expect", [
    ("memory://user:S3cr3t@bucket/run", "memory:// cannot hold a run directory"),
    ("http://example.invalid/run", "http:// cannot hold a run directory"),
    ("s3:///run", "needs a bucket"),
    ("s3://bucket/run?versionId=1", "no query"),
])
def test_a_run_directory_on_a_store_that_keeps_nothing_is_refused(workdir, expect):
    with pytest.raises(InputError, match=expect) as e:
        _store(workdir)
    assert e.value.field == "--workdir" and "S3cr3t" not in str(e.value)


def test_an_unreachable_store_is_one_line_and_exit_2_before_any_call(tmp_path, capsys, monkeypatch):
    """`--workdir memory://…` ran a paid run that left nothing; an ftp:// store whose server refuses
    the connection gave a traceback and exit 1. Both: one line, exit 2, no service call."""
    import socket

    from flows.cli import main
    from tests.test_bad_inputs import _base, _student

    monkeypatch.setenv("LLAMADUO_SCRATCH", str(tmp_path / "scratch"))
    _student(tmp_path)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with FakeOpenAIServer(FakeBehaviour()) as server:
        cfg = _base(tmp_path)
        cfg["service"]["api_base"] = server.url
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        for workdir in ("memory://user:S3cr3t@bucket/run", f"ftp://127.0.0.1:{port}/run"):
            rc = main(["run", str(tmp_path / "cfg.yaml"), "--workdir", workdir])
            err = capsys.readouterr().err
            assert rc == 2 and err.startswith("error: ") and "Traceback" not in err, err
            assert len(err.strip().splitlines()) == 1 and "--workdir" in err and "S3cr3t" not in err
        assert sum(server.statuses.values()) == 0, "no call before the store is known to keep the run"


def test_a_file_url_run_directory_keeps_its_results_beside_it(tmp_path):
    """`file:///…/run` failed after the paid probe: Prefect's RemoteFileSystem refuses file:///."""
    from tasks._results import _storage_at, results_location

    root = _store(f"file://{tmp_path}/./store//run").location
    storage = _storage_at(results_location(root))
    storage.write_path("probe.json", b"{}")
    assert (tmp_path / "store" / "run" / ".prefect" / "results" / "probe.json").read_bytes() == b"{}"


def test_a_gpu_stage_whose_parent_was_deleted_stops():
    """A 404 for the parent flow run was taken for "server briefly unreachable": 59 polls in 3 s, forever."""
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelled, Running

    from flows.gpu import parent_gone

    def deleted():
        raise ObjectNotFound(http_exc=Exception("404"))

    def unreachable():
        raise ConnectionError("refused")

    assert parent_gone(deleted) == "deleted"
    assert parent_gone(unreachable) is None  # look again
    assert parent_gone(lambda: Running()) is None
    assert parent_gone(lambda: Cancelled()) == "Cancelled" and Cancelled().type == StateType.CANCELLED


# -- issue 28, point 2: one lock per run location that holds across machines (a lease in the store) --------
def test_one_run_directory_on_s3_is_held_by_one_machine_whatever_the_spelling(s3, tmp_path, monkeypatch):
    """The lock was an flock on this machine's scratch copy named by the URL string: `STORE//run`,
    `STORE/./run`, or a second worker (another scratch dir) all got it, and both paid."""
    from llamaduo.lease import LEASE_TOKEN_ENV, take_lease
    from llamaduo.store import RunDirBusy

    monkeypatch.delenv(LEASE_TOKEN_ENV, raising=False)
    url = f"s3://{BUCKET}/lease/{tmp_path.name}"
    monkeypatch.setenv("LLAMADUO_SCRATCH", str(tmp_path / "machine-a"))
    held = take_lease(_store(url), "llamaduo run a.yaml")
    assert held is not None
    monkeypatch.delenv(LEASE_TOKEN_ENV)  # another machine: not this process's child
    monkeypatch.setenv("LLAMADUO_SCRATCH", str(tmp_path / "machine-b"))
    for spelling in (url, url.replace("/lease/", "/lease//"), url.replace("/lease/", "/lease/./"), url + "/"):
        with pytest.raises(RunDirBusy, match="in use by another run"):
            take_lease(_store(spelling))
    held.release()
    second = take_lease(_store(url))
    assert second is not None
    second.release()


def test_a_lease_whose_holder_died_expires_and_a_live_one_is_renewed(s3, tmp_path, monkeypatch):
    import time

    from llamaduo.lease import LEASE_TOKEN_ENV, take_lease
    from llamaduo.store import RunDirBusy

    monkeypatch.delenv(LEASE_TOKEN_ENV, raising=False)
    url = f"s3://{BUCKET}/lease-ttl/{tmp_path.name}"
    live = take_lease(_store(url), ttl_s=0.6, renew_s=0.15)
    monkeypatch.delenv(LEASE_TOKEN_ENV)
    time.sleep(0.9)  # renewed meanwhile: still held
    with pytest.raises(RunDirBusy):
        take_lease(_store(url), ttl_s=0.6)
    live._stop.set()  # the holder dies: no more heartbeats, no release
    time.sleep(0.8)
    taker = take_lease(_store(url), ttl_s=0.6, renew_s=0.15)
    assert taker is not None and not taker.lost
    time.sleep(0.3)
    taker.release()
