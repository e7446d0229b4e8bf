"""`llamaduo serve RUN_DIR`: the exported student behind an OpenAI-compatible endpoint.

An application swaps the service LLM for the student by changing two lines (`base_url`, `model`):
`POST /v1/chat/completions` (also `stream=true`), `GET /v1/models`, and Prometheus `GET /metrics`.

Generation is a maintained engine's (llamaduo/serve_engines.py: `transformers serve`, vLLM, llama.cpp's
server), in a child process on a private loopback port; the front (llamaduo/serve_front.py) holds the
operator's policy: the key, the body bound, the parameter allow-list, the `max_tokens` cap, the run's
model id and system prompt (recorded at export in `final_model/llamaduo.json`; the exported chat
template carries it too). Greedy decoding is the default, with the run's `infer.max_new_tokens` as the
default `max_tokens`. What is served is what the run exported: every file is checked against the
sha256 recorded at export, after every pull of a run directory at a URL.
"""

import argparse
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .http_server import bind, callers_key, serve_until_signal
from .serve_front import DEFAULT_MAX_REQUEST_BYTES

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
META_FILE = "llamaduo.json"  # beside the model card in final_model/: what serving needs from the run
DEFAULT_MAX_NEW_TOKENS = 128  # InferConfig's default, for an export without llamaduo.json


def served_model_id(name: str) -> str:
    """The `model` an application sends (and `/v1/models` lists) for run `name`."""
    return f"llamaduo-{name}"


def swap_in_lines(model_id: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The two lines an application using the OpenAI client changes to call the student."""
    return [f'base_url="http://{host}:{port}/v1"', f'model="{model_id}"']


def export_metadata(*, name: str | None, system_prompt: str | None, max_new_tokens: int, batch_size: int,
                    backend: str, student: str, round: int | None) -> dict:
    """`final_model/llamaduo.json`: the settings the student was trained and evaluated with."""
    return {"name": name, "model_id": served_model_id(name) if name else None, "system_prompt": system_prompt,
            "max_new_tokens": max_new_tokens, "batch_size": batch_size, "backend": backend, "student": student,
            "round": round}


# -- finding the exported model ------------------------------------------------------------------

@dataclass
class ServedModel:
    model_dir: Path  # the merged weights with tokenizer and chat template
    model_id: str
    system_prompt: str | None
    max_new_tokens: int
    recorded: bool  # settings found (llamaduo.json, or an older export's run config); else no system prompt


def _has_weights(d: Path) -> bool:
    return (d / "config.json").is_file()


def locate(location: str | Path) -> ServedModel:
    """A run directory (folder or URL: its `final_model/` is pulled into the scratch copy), or locally a
    `final_model/` folder or the `merged/` folder itself -> the model and its recorded settings."""
    from .runstore import RunStore, is_url

    store = RunStore(location)
    if store.remote:
        store.pull("final_model")
        store.pull("summary.json")
        if stale_files(store.local / "final_model"):  # a scratch copy of an earlier export: never served
            import shutil

            shutil.rmtree(store.local / "final_model", ignore_errors=True)
            store.pull("final_model")
    top = store.local
    if _has_weights(top / "final_model" / "merged"):
        run_dir, export_dir = top, top / "final_model"
    elif not is_url(location) and _has_weights(top / "merged"):
        run_dir, export_dir = top.parent, top
    elif not is_url(location) and _has_weights(top) and top.name == "merged":
        run_dir, export_dir = top.parent.parent, top.parent
    else:
        raise InputError("no exported model here: expected the merged weights at "
                         f"{store.where('final_model/merged')}/config.json (a run writes final_model/ once it "
                         "has exported a round)", file=store.location)
    stale = stale_files(export_dir)
    if stale:
        raise InputError(f"{len(stale)} file(s) differ from the sha256 recorded at export (first: {stale[0]}): "
                         "not serving a model other than the one the run exported", file=str(export_dir / META_FILE))
    meta_path = export_dir / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else _from_invocation(run_dir)
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable ({exc})", file=str(meta_path)) from None
    name = meta.get("name") or _summary_name(run_dir) or run_dir.name
    return ServedModel(model_dir=export_dir / "merged", model_id=meta.get("model_id") or served_model_id(name),
                       system_prompt=meta.get("system_prompt"),
                       max_new_tokens=int(meta.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS), recorded=bool(meta))


def stale_files(export_dir: Path) -> list[str]:
    """Files of `final_model/` whose content is not what `llamaduo.json` recorded (missing included)."""
    from .store import sha256_path

    try:
        recorded = json.loads((export_dir / META_FILE).read_text(encoding="utf-8")).get("files") or {}
    except (OSError, ValueError, AttributeError):
        return []  # an export without hashes (older version): nothing to check against
    return [rel for rel, digest in sorted(recorded.items())
            if not (export_dir / rel).is_file() or sha256_path(export_dir / rel) != digest]


def _from_invocation(run_dir: Path) -> dict:
    """An export made before llamaduo.json existed: the run's own config, which `llamaduo run` leaves in
    a local run directory (`.llamaduo/invocation.json`), has the same settings."""
    try:
        cfg = json.loads((run_dir / ".llamaduo" / "invocation.json").read_text(encoding="utf-8"))["config"]
        return export_metadata(name=cfg["name"], system_prompt=cfg["student"].get("system_prompt"),
                               max_new_tokens=cfg["infer"]["max_new_tokens"], batch_size=cfg["infer"]["batch_size"],
                               backend=cfg["infer"]["backend"], student=cfg["student"]["model"], round=None)
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _summary_name(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        return None


def hardware_name(device: str) -> str:
    """The GPU's name on CUDA; otherwise the CPU's model name (/proc/cpuinfo) and how many cores."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import platform

    return f"{model or platform.processor() or platform.machine() or 'unknown CPU'} ({os.cpu_count()} cores)"


# -- command line ------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """`llamaduo serve`'s options (flows/cli.py adds them to its subcommand)."""
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="run directory (a folder or a URL) holding "
                   "final_model/")
    p.add_argument("--follow", metavar="PROMOTE_LOCATION", default=None,
                   help="serve the model promoted at this location (a run config's promote.location) and switch "
                        "to each newly promoted one without dropping a request (instead of RUN_DIR)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this "
                   "machine only; any other address needs --api-key-env)")
    p.add_argument("--api-key-env", dest="api_key_env", default=None, metavar="VAR",
                   help="environment variable holding the key callers must send (Authorization: Bearer KEY)")
    p.add_argument("--max-tokens-cap", dest="max_tokens_cap", type=int, default=None,
                   help="largest max_tokens a request may ask for (default: the run's infer.max_new_tokens)")
    p.add_argument("--max-request-bytes", dest="max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help=f"largest request body (default {DEFAULT_MAX_REQUEST_BYTES})")
    p.add_argument("--engine", choices=["auto", "transformers", "vllm"], default="auto",
                   help="auto: vLLM where it is installed and CUDA is present, else transformers serve")
    p.add_argument("--backend", dest="engine", choices=["auto", "transformers", "vllm", "hf"],
                   help=argparse.SUPPRESS)  # the flag's old name; hf = transformers
    # For llamaduo.latency's child: no help (not for people).
    p.add_argument("--system-prompt", dest="system_prompt", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-system-prompt", dest="no_system_prompt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ready-file", dest="ready_file", default=None, help=argparse.SUPPRESS)


def _fail(message: str) -> int:
    from .redact import redact

    print(redact(f"error: {message}"), file=sys.stderr)
    return 2


def serve(args: argparse.Namespace) -> int:
    """Exit 2 when RUN_DIR holds no exported model (or not the one recorded), the port is taken, or a
    host beyond loopback has no key; otherwise serve until SIGTERM/SIGINT (then 0)."""
    from .childproc import hold_lifeline
    from .serve_engines import EngineProcess, resolve_engine

    hold_lifeline()  # started by a measuring parent (llamaduo.latency): do not outlive it
    try:
        api_key = callers_key(args.api_key_env, args.host)
    except InputError as exc:
        return _fail(str(exc))
    if bool(args.run_dir) == bool(args.follow):
        return _fail("name a run directory (RUN_DIR) or a promotion location (--follow), not both or neither")
    try:
        promoted = _promoted(args.follow) if args.follow else None
        served = locate(promoted["run"] if promoted else args.run_dir)
        if promoted:
            _check_promoted(served, promoted)
    except InputError as exc:
        return _fail(str(exc))
    if args.no_system_prompt:
        served.system_prompt = None
    elif args.system_prompt is not None:
        served.system_prompt = args.system_prompt
    cap = args.max_tokens_cap or served.max_new_tokens
    if cap < 1 or args.max_request_bytes < 1:
        return _fail("--max-tokens-cap and --max-request-bytes must be at least 1")
    try:  # bound before the engine starts: a taken port is reported at once
        sock = bind(args.host, args.port)
    except InputError as exc:
        return _fail(str(exc))
    port = sock.getsockname()[1]
    if not served.recorded:
        print(f"warning: {served.model_dir.parent / META_FILE} is missing (exported by an older version): serving "
              "without the run's system prompt", file=sys.stderr)
    import torch

    engine_name = resolve_engine("transformers" if args.engine == "hf" else args.engine, "merged")
    cuda = torch.cuda.is_available()
    engine = EngineProcess(engine_name, served.model_dir, cuda=cuda)
    try:
        engine.start()
    except Exception as exc:  # noqa: BLE001 - a model the engine cannot load: exit 1 with the reason
        from .redact import redact

        print(redact(f"error: cannot serve {served.model_dir}: {exc}"), file=sys.stderr)
        return 1
    engines = [engine]  # the one serving is last; --follow adds one per promotion
    try:
        return _run_front(args, served, engines, sock, port, cap, api_key, cuda, promoted)
    finally:
        for e in engines:
            e.stop()


def _promoted(location: str) -> dict:
    from .promotion import PromotionStore

    record = PromotionStore(location, field="--follow").read()
    if record is None:
        raise InputError(f"nothing promoted at {PromotionStore(location, field='--follow').shown} yet (a run with "
                         "promote.location set promotes its model once it passes)", field="--follow")
    return record


def _check_promoted(served: ServedModel, promoted: dict) -> None:
    from .promotion import model_sha256

    if model_sha256(served.model_dir.parent) != promoted["model_sha256"]:
        raise InputError(f"the export in {promoted['run']} is not the one promoted (its llamaduo.json changed since): "
                         "not serving it", field="--follow")


def _policy(served: ServedModel, engine, cap: int):
    from .serve_policy import ServePolicy

    return ServePolicy(model_id=served.model_id, engine_model=engine.model_name, system_prompt=served.system_prompt,
                       default_max_tokens=min(served.max_new_tokens, cap), max_tokens_cap=cap)


FOLLOW_EVERY_S = float(os.environ.get("LLAMADUO_FOLLOW_EVERY_S", "30"))
DRAIN_TIMEOUT_S = 600.0


def _follow(app, location: str, engines: list, cap: int, cuda: bool, stop) -> None:
    """Poll promoted.json; on a new model: pull and check it, start its engine beside the serving one,
    send new requests to it, and stop the old engine once its requests are answered. A model that
    cannot be served is reported and skipped (the current one keeps serving)."""
    from .promotion import model_sha256
    from .serve_engines import EngineProcess
    from .serve_front import Target

    refused: set[str] = set()
    while not stop.wait(FOLLOW_EVERY_S):
        try:
            promoted = _promoted(location)
        except Exception as exc:  # noqa: BLE001 - the store is briefly unreachable: keep serving
            print(f"--follow: cannot read the promotion ({type(exc).__name__}); still serving the current model",
                  file=sys.stderr, flush=True)
            continue
        sha = promoted["model_sha256"]
        if sha == app.state.target.model_sha256 or sha in refused:
            continue
        try:
            served = locate(promoted["run"])
            _check_promoted(served, promoted)
            engine = EngineProcess(engines[-1].engine, served.model_dir, cuda=cuda).start()
        except Exception as exc:  # noqa: BLE001
            from .redact import safe_message

            refused.add(sha)
            print(f"--follow: not switching to {promoted['run']}: {safe_message(str(exc), 300)}", file=sys.stderr,
                  flush=True)
            continue
        engines.append(engine)
        old = app.state.swap(Target(_policy(served, engine, cap), engine.url, served.model_dir,
                                    model_sha256(served.model_dir.parent)))
        print(f"--follow: now serving {promoted['run']} (promoted {promoted['time']})", file=sys.stderr, flush=True)
        deadline = time.time() + DRAIN_TIMEOUT_S
        while old.in_flight > 0 and time.time() < deadline:
            time.sleep(0.2)
        for e in engines[:-1]:
            e.stop()
            engines.remove(e)


def _run_front(args, served: ServedModel, engines: list, sock, port: int, cap: int, api_key: str | None, cuda: bool,
               promoted: dict | None = None) -> int:
    import threading

    from .promotion import model_sha256
    from .serve_front import create_front, wrap

    engine = engines[-1]
    hardware = hardware_name("cuda" if cuda else "cpu")
    front = create_front(_policy(served, engine, cap), engine.url, engine_name=engine.engine, hardware=hardware,
                         device="cuda" if cuda else "cpu", model_dir=served.model_dir,
                         model_sha256=model_sha256(served.model_dir.parent)
                         if (served.model_dir.parent / META_FILE).is_file() else None)
    app = wrap(front, api_key=api_key, max_request_bytes=args.max_request_bytes)
    stop_following = threading.Event()
    if promoted is not None:
        threading.Thread(target=_follow, args=(front, args.follow, engines, cap, cuda, stop_following),
                         daemon=True, name="follow-promotions").start()
    shown = socket.gethostname() if args.host in ("0.0.0.0", "::", "") else args.host
    base_url, model_line = swap_in_lines(served.model_id, shown, port)
    print(f"serving {served.model_id} ({engine.engine} on {'cuda' if cuda else 'cpu'}: {hardware}) at "
          f"http://{args.host}:{port}/v1{' (key required)' if api_key else ''}"
          f"\nin your application: {base_url}, {model_line}  (Ctrl-C stops)", flush=True)
    if args.ready_file:
        from .store import atomic_write_json

        atomic_write_json(args.ready_file, {"port": port, "model": served.model_id, "backend": engine.engine,
                                            "device": "cuda" if cuda else "cpu", "hardware": hardware})
    serve_until_signal(app, sock)
    stop_following.set()
    print("stopped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llamaduo serve", description="Serve an exported student (OpenAI API).")
    add_arguments(p)
    return serve(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
