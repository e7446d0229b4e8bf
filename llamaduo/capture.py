"""`llamaduo capture CONFIG --store LOCATION`: put the migration's coverage where the traffic is.

The application points its OpenAI client at this endpoint instead of the service LLM (two lines:
`base_url`, and an `api_key` when a key is required); it gets the service's answers as before, and
every answered exchange lands in LOCATION (llamaduo.capture_store) with e-mail addresses, phone
numbers, the config's `capture.redact_patterns` and every known key removed. A run whose `data.path`
names LOCATION migrates what the application really asks (llamaduo.capture_coverage).
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import InputError
from .http_server import bind, callers_key, serve_until_signal
from .pii import PiiRedactor

DEFAULT_PORT = 8100


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="the run config: its service section is the LLM passed through to")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--store", required=True, metavar="LOCATION",
                   help="capture location: a folder or a URL (s3://bucket/prefix); a run's data.path names it")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                   "needs --api-key-env)")
    p.add_argument("--api-key-env", dest="api_key_env", default=None, metavar="VAR",
                   help="environment variable holding the key the application must send (Authorization: Bearer)")
    p.add_argument("--max-request-bytes", dest="max_request_bytes", type=int, default=4_000_000,
                   help="largest request body (default 4000000)")
    p.add_argument("--shadow", metavar="RUN_DIR", default=None,
                   help="the run's exported student answers each captured request on the side (the application "
                        "still gets the service's answer); a sample is judged against the service's answer and the "
                        "agreement per category goes into RUN_DIR's decision page")
    p.add_argument("--shadow-sample", dest="shadow_sample", type=float, default=0.2,
                   help="share of shadow answers judged (default 0.2)")
    p.add_argument("--shadow-max-usd", dest="shadow_max_usd", type=float, default=1.0,
                   help="the shadow judge's own budget in USD (default 1.0; 0 for an unpriced self-hosted judge)")
    p.add_argument("--shadow-max-calls", dest="shadow_max_calls", type=int, default=1000,
                   help="the shadow judge's own call cap (default 1000)")
    p.add_argument("--event-every", dest="event_every", type=int, default=100, metavar="N",
                   help="with a Prefect server configured (PREFECT_API_URL): a llamaduo.capture.rows event each time "
                        "N more exchanges are recorded (deployments/prefect.yaml's keep-current trigger); 0 = none")
    p.add_argument("--ready-file", dest="ready_file", default=None, help=argparse.SUPPRESS)


def _fail(message: str) -> int:
    from .redact import redact

    print(redact(f"error: {message}"), file=sys.stderr)
    return 2


def rows_reporter(every: int, announce):
    """on_commit for the capture: `announce(total)` each time the recorded count crosses a multiple of
    `every` (one event per N rows, whatever the shard sizes)."""
    if not every or announce is None:
        return None

    def on_commit(total: int, new: int) -> None:
        if (total - new) // every != total // every:
            announce(total)

    return on_commit


def capture(args: argparse.Namespace, announce=None) -> int:
    """Exit 2 on a bad config, store, port or key setting; otherwise serve until SIGTERM/SIGINT (then 0).
    `announce(store, total)` (the CLI's Prefect events) is told every `--event-every` recorded rows."""
    from .capture_store import CaptureStore
    from .config import load_config

    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.service_endpoint().is_standin:
            raise InputError("the offline stand-in answers from a pool: there is no service to capture in front of "
                             "(name the service LLM your application calls)", field="service.model")
        store = CaptureStore(args.store)
        store.create(cfg.service.model)
    except InputError as exc:
        return _fail(str(exc))
    try:
        proxy_key = callers_key(args.api_key_env, args.host)
    except InputError as exc:
        return _fail(str(exc))
    service_key = None
    if cfg.service.api_key_env:
        service_key = os.environ.get(cfg.service.api_key_env, "").strip() or None
        if service_key is None:
            return _fail(f"service.api_key_env: {cfg.service.api_key_env} is not set")
    if not 0 <= args.shadow_sample <= 1 or args.shadow_max_usd < 0 or args.shadow_max_calls < 0 \
            or args.event_every < 0:
        return _fail("--shadow-sample must be in 0..1; --shadow-max-usd, --shadow-max-calls and --event-every at "
                     "least 0")
    shadow = engine = None
    if args.shadow:
        try:
            shadow, engine = _start_shadow(args, cfg, store)
        except InputError as exc:
            return _fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - an engine that cannot load the model: say why, no traceback
            return _fail(f"--shadow {args.shadow}: the student could not be started ({type(exc).__name__}: {exc})")
    try:
        on_commit = rows_reporter(args.event_every, (lambda total: announce(store, total)) if announce else None)
        return _serve(args, cfg, store, proxy_key, service_key, shadow, on_commit)
    finally:
        if engine is not None:
            engine.stop()


def _start_shadow(args, cfg, store):
    """The run's exported student on a maintained engine, and the shadow's judge on its own budget."""
    import torch

    from .promotion import model_sha256
    from .serve import locate
    from .serve_engines import EngineProcess, resolve_engine
    from .shadow import Shadow

    served = locate(args.shadow)  # pulled and checked against the sha256 recorded at export
    engine = EngineProcess(resolve_engine("auto", "merged"), served.model_dir, cuda=torch.cuda.is_available()).start()
    try:
        shadow = Shadow(engine_url=engine.url, engine_model=engine.model_name, max_tokens=served.max_new_tokens,
                        model_sha256=model_sha256(served.model_dir.parent), cfg=cfg, store=store,
                        sample=args.shadow_sample, max_usd=args.shadow_max_usd, max_calls=args.shadow_max_calls,
                        redactor=PiiRedactor(cfg.capture.redact, cfg.capture.redact_patterns))
    except BaseException:
        engine.stop()
        raise
    return shadow, engine


def _serve(args, cfg, store, proxy_key, service_key, shadow, on_commit) -> int:
    try:
        sock = bind(args.host, args.port)
    except InputError as exc:
        return _fail(str(exc))
    port = sock.getsockname()[1]

    from .capture_proxy import create_capture_app
    from .serve_front import wrap

    bare = cfg.service.model.split("/", 1)[-1]
    names = {cfg.service.model, bare}
    proxy = create_capture_app(service=cfg.service_endpoint(), api_key=service_key, model_names=names,
                             redactor=PiiRedactor(cfg.capture.redact, cfg.capture.redact_patterns), store=store,
                             category_header=cfg.capture.category_header, timeout_s=cfg.service.timeout_s,
                             shadow=shadow, on_commit=on_commit)
    app = wrap(proxy, api_key=proxy_key, max_request_bytes=args.max_request_bytes)
    print(f"capturing {cfg.service.model} exchanges into {store.shown} at http://{args.host}:{port}/v1"
          f"{' (key required)' if proxy_key else ''}\nin your application: base_url=\"http://{args.host}:{port}/v1\""
          f", model=\"{bare}\" (tag a category with the {cfg.capture.category_header} header; Ctrl-C stops)",
          flush=True)
    if args.ready_file:
        from .store import atomic_write_json

        atomic_write_json(args.ready_file, {"port": port})

    serve_until_signal(app, sock)  # requests in flight are finished: their exchanges are committed first
    c = proxy.state.committer
    print(f"stopped: {c.recorded} exchange(s) recorded in {c.shards} shard(s)"
          + (f", {c.unrecorded} NOT recorded (last error: {c.last_error})" if c.unrecorded else ""), file=sys.stderr)
    if shadow is not None:
        _report_shadow(args, cfg, store, shadow)
    return 0


def _report_shadow(args, cfg, store, shadow) -> None:
    """The agreement on everything this model answered in shadow (this and earlier sessions) into the run."""
    from .calibration import pass_score_for
    from .shadow import SHADOW, agreement, write_to_run

    if shadow.queue is not None and shadow.queue.qsize():
        shadow.counts["not answered (capture stopped first)"] += shadow.queue.qsize()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(shadow.counts.items())) or "nothing"
    report = agreement(store.read_all(SHADOW), shadow.model_sha256, pass_score_for(cfg.gate))
    report["this_session"] = dict(shadow.counts)
    where = write_to_run(args.shadow, report)
    print(f"shadow: {counts}; agreement on real traffic: {where} (and the run's decision page)", file=sys.stderr)
