"""`llamaduo serve RUN_DIR`: the exported student behind an OpenAI-compatible endpoint.

An application swaps the service LLM for the student by changing two lines (`base_url`, `model`):
`POST /v1/chat/completions` and `GET /v1/models` answer as OpenAI's API does (non-streaming).

The prompt is built as in training and evaluation: the run's system prompt (recorded at export in
`final_model/llamaduo.json`) is prepended unless the request brings its own system message, the
merged model's chat template is applied, and greedy decoding is the default (`temperature` absent
or 0), with the run's `infer.max_new_tokens` as the default `max_tokens`. The transformers engine
runs the same batch generation as `llamaduo.infer`, so a prompt gets the answer that was evaluated.

Concurrent requests are batched: one generation thread takes every request waiting when it is free
(up to `--max-batch`) and generates them together; requests that arrive meanwhile form the next
batch. vLLM (CUDA, where installed) batches further inside its engine.

FastAPI and uvicorn come with Prefect (its server is built on them): no new dependency.
"""
# No `from __future__ import annotations`: FastAPI reads the request model from the endpoint's
# annotation, and a model defined inside create_app cannot be resolved from a string.

import argparse
import json
import os
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
META_FILE = "llamaduo.json"  # beside the model card in final_model/: what serving needs from the run
DEFAULT_MAX_NEW_TOKENS = 128  # InferConfig's default, for an export without llamaduo.json
DEFAULT_MAX_BATCH = 16  # InferConfig.batch_size's default


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
    max_batch: int
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
    meta_path = export_dir / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else _from_invocation(run_dir)
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable ({exc})", file=str(meta_path)) from None
    name = meta.get("name") or _summary_name(run_dir) or run_dir.name
    return ServedModel(model_dir=export_dir / "merged", model_id=meta.get("model_id") or served_model_id(name),
                       system_prompt=meta.get("system_prompt"),
                       max_new_tokens=int(meta.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
                       max_batch=int(meta.get("batch_size") or DEFAULT_MAX_BATCH), recorded=bool(meta))


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


# -- engines ---------------------------------------------------------------------------------------

@dataclass
class Completion:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (max_tokens reached)


@dataclass
class _Job:
    ids: list[int]
    max_new_tokens: int
    temperature: float  # 0 = greedy
    future: Future = field(default_factory=Future)


class HFEngine:
    """transformers, with `llamaduo.infer`'s batch generation (the evaluated answers' code path)."""
    name = "transformers"

    def __init__(self, model_dir: Path):
        from .models import load_student, load_tokenizer

        self.tok = load_tokenizer(str(model_dir))
        self.tok.padding_side = "left"  # decoder-only batches pad on the left
        self.model = load_student(str(model_dir), None)
        self.device = self.model.device.type
        self.context = getattr(self.model.config, "max_position_embeddings", None)

    def generate(self, jobs: list[_Job]) -> list[Completion]:
        from .infer import _generate_batch

        temperature = jobs[0].temperature  # a batch shares it (the batcher groups by it)
        sampling = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
        gen = _generate_batch(self.model, self.tok, [j.ids for j in jobs], samples=1, sampling=sampling,
                              max_new_tokens=max(j.max_new_tokens for j in jobs))
        eos = self.tok.eos_token_id
        out = []
        for job, row in zip(jobs, gen.tolist()):
            # Greedy tokens do not depend on how long the batch's other rows run: cut at this request's limit.
            row = row[:job.max_new_tokens]
            n = row.index(eos) + 1 if eos in row else len(row)
            out.append(Completion(self.tok.decode(row[:n], skip_special_tokens=True).strip(), n,
                                  "stop" if eos in row else "length"))
        return out


class VLLMEngine:
    """vLLM in this process (CUDA): its engine schedules the batch's requests together."""
    name = "vllm"

    def __init__(self, model_dir: Path):
        from vllm import LLM

        from .models import device, load_tokenizer

        self.tok = load_tokenizer(str(model_dir))
        self.llm = LLM(model=str(model_dir), seed=0,
                       gpu_memory_utilization=float(os.environ.get("LLAMADUO_VLLM_GPU_MEMORY", "0.85")))
        self.device = device()
        self.context = None  # vLLM refuses an over-long prompt itself

    def generate(self, jobs: list[_Job]) -> list[Completion]:
        from vllm import SamplingParams

        params = [SamplingParams(n=1, temperature=j.temperature, max_tokens=j.max_new_tokens,
                                 seed=None if j.temperature == 0 else 0) for j in jobs]
        outs = self.llm.generate([{"prompt_token_ids": j.ids} for j in jobs],
                                 params[0] if all(p == params[0] for p in params) else params, use_tqdm=False)
        done = []
        for job, o in zip(jobs, outs):
            c = o.outputs[0]
            reason = getattr(c, "finish_reason", None)
            done.append(Completion(c.text.strip(), len(c.token_ids), "length" if reason == "length" or (
                reason is None and len(c.token_ids) >= job.max_new_tokens) else "stop"))
        return done


def load_engine(model_dir: Path, backend: str = "auto"):
    from .infer import resolve_backend

    return VLLMEngine(model_dir) if resolve_backend(backend) == "vllm" else HFEngine(model_dir)


class Batcher:
    """One generation thread: it takes every waiting request (up to `max_batch`) as one batch."""

    def __init__(self, engine, max_batch: int):
        import queue

        self.engine, self.max_batch = engine, max(1, max_batch)
        self.queue: "queue.Queue[_Job]" = queue.Queue()
        self.batches, self.largest = 0, 0  # generate calls made, and the most requests one of them took
        threading.Thread(target=self._loop, name="llamaduo-generate", daemon=True).start()

    def submit(self, ids: list[int], max_new_tokens: int, temperature: float) -> Future:
        job = _Job(ids, max_new_tokens, temperature)
        self.queue.put(job)
        return job.future

    def _loop(self) -> None:
        import queue

        while True:
            waiting = [self.queue.get()]
            while len(waiting) < self.max_batch:
                try:
                    waiting.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            groups: dict[float, list[_Job]] = {}
            for job in waiting:  # greedy and sampled requests cannot share one generate call
                groups.setdefault(job.temperature, []).append(job)
            for jobs in groups.values():
                self.batches, self.largest = self.batches + 1, max(self.largest, len(jobs))
                try:
                    for job, c in zip(jobs, self.engine.generate(jobs)):
                        job.future.set_result(c)
                except Exception as exc:  # noqa: BLE001 - each waiting request gets the error
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)


# -- the HTTP app ------------------------------------------------------------------------------------

def chat_token_ids(tok, messages: list[dict], system_prompt: str | None) -> list[int]:
    """The prompt as `llamaduo.infer.prompt_token_ids` builds it: the run's system prompt first unless
    the request has a system message, the chat template with the generation prompt, no extra BOS."""
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status)


def create_app(served: ServedModel, engine, batcher: Batcher, *, hardware: str):
    import asyncio
    from typing import Literal

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from pydantic import BaseModel, ConfigDict, Field

    class TextPart(BaseModel):
        type: Literal["text"]
        text: str

    class Message(BaseModel):
        model_config = ConfigDict(extra="ignore")
        role: Literal["system", "developer", "user", "assistant"]
        content: str | list[TextPart]

    class ChatRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")  # top_p, seed, user, ...: accepted, not used
        model: str
        messages: list[Message] = Field(min_length=1)
        max_tokens: int | None = Field(None, ge=1)
        max_completion_tokens: int | None = Field(None, ge=1)  # newer clients send this name
        temperature: float | None = Field(None, ge=0, le=2)
        n: int = 1
        stream: bool = False

    app = FastAPI(title=f"llamaduo serve: {served.model_id}", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):  # OpenAI's shape, so clients show it
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:])
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request",
                      param=where or None)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": served.model_id, "backend": engine.name, "device": engine.device,
                "hardware": hardware, "system_prompt": served.system_prompt is not None,
                "max_new_tokens": served.max_new_tokens, "max_batch": batcher.max_batch,
                "batches": batcher.batches, "largest_batch": batcher.largest}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": served.model_id, "object": "model", "created": created,
                                            "owned_by": "llamaduo"}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        if req.model != served.model_id:
            return _error(404, f"model {req.model!r} is not served here; this endpoint serves {served.model_id!r}",
                          "not_found_error", "model")
        if req.stream:
            return _error(400, "stream=true is not supported by llamaduo serve; send stream=false", param="stream")
        if req.n != 1:
            return _error(400, "only n=1 is supported", param="n")
        messages = [{"role": "system" if m.role == "developer" else m.role,
                     "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
                    for m in req.messages]
        ids = chat_token_ids(engine.tok, messages, served.system_prompt)
        limit = req.max_completion_tokens or req.max_tokens or served.max_new_tokens
        if engine.context:
            if len(ids) >= engine.context:
                return _error(400, f"the prompt is {len(ids)} tokens; the model's context is {engine.context}",
                              param="messages")
            limit = min(limit, engine.context - len(ids))
        try:
            c: Completion = await asyncio.wrap_future(batcher.submit(ids, limit, req.temperature or 0.0))
        except Exception as exc:  # noqa: BLE001 - reported to the caller in OpenAI's shape
            return _error(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": served.model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason, "logprobs": None}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": c.completion_tokens,
                          "total_tokens": len(ids) + c.completion_tokens}}

    return app


# -- command line ------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """`llamaduo serve`'s options (flows/cli.py adds them to its subcommand)."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (a folder or a URL) holding final_model/")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT}; 0: any free)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this "
                   "machine only; 0.0.0.0 serves the network, without authentication)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="concurrent requests generated together (default: the run's infer.batch_size)")
    p.add_argument("--backend", choices=["auto", "hf", "vllm"], default="auto",
                   help="auto: vLLM where it is installed and CUDA is present, else transformers")
    # For llamaduo.latency's child: no help (not for people).
    p.add_argument("--system-prompt", dest="system_prompt", default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-system-prompt", dest="no_system_prompt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ready-file", dest="ready_file", default=None, help=argparse.SUPPRESS)


def serve(args: argparse.Namespace) -> int:
    """Exit 2 when RUN_DIR holds no exported model or the port is taken; otherwise serve until stopped."""
    from .childproc import hold_lifeline
    from .redact import redact

    hold_lifeline()  # started by a measuring parent (llamaduo.latency): do not outlive it
    try:
        served = locate(args.run_dir)
    except InputError as exc:
        print(redact(f"error: {exc}"), file=sys.stderr)
        return 2
    if args.no_system_prompt:
        served.system_prompt = None
    elif args.system_prompt is not None:
        served.system_prompt = args.system_prompt
    if args.max_batch is not None:
        served.max_batch = args.max_batch
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:  # bound before the model loads: a taken port is reported at once
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port} ({exc.strerror}); choose another --port",
              file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    if not served.recorded:
        print(f"warning: {served.model_dir.parent / META_FILE} is missing (exported by an older version): serving "
              "without the run's system prompt", file=sys.stderr)
    try:
        engine = load_engine(served.model_dir, args.backend)
    except Exception as exc:  # noqa: BLE001 - a model that does not load: exit 1 with the reason
        print(redact(f"error: cannot load {served.model_dir}: {type(exc).__name__}: {exc}"), file=sys.stderr)
        return 1
    hardware = hardware_name(engine.device)
    app = create_app(served, engine, Batcher(engine, served.max_batch), hardware=hardware)
    # 0.0.0.0 / :: listen everywhere; an application elsewhere reaches this machine by its name.
    shown = socket.gethostname() if args.host in ("0.0.0.0", "::", "") else args.host
    base_url, model_line = swap_in_lines(served.model_id, shown, port)
    print(f"serving {served.model_id} ({engine.name} on {engine.device}: {hardware}) at http://{args.host}:{port}/v1"
          f"\nin your application: {base_url}, {model_line}  (Ctrl-C stops)", flush=True)
    if args.ready_file:
        from .store import atomic_write_json

        atomic_write_json(args.ready_file, {"port": port, "model": served.model_id, "backend": engine.name,
                                            "device": engine.device, "hardware": hardware})
    import uvicorn

    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
                       ).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again for the default handler
        print("stopped", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llamaduo serve", description="Serve an exported student (OpenAI API).")
    add_arguments(p)
    return serve(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
