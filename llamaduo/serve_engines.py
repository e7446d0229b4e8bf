"""The maintained engines `llamaduo serve` runs underneath, each an OpenAI-compatible server in a child
process on a loopback port only the front knows:

- `transformers`: `transformers serve MODEL_DIR` (installed with transformers; streaming, stop strings,
  cancellation when the caller hangs up, continuous batching with a bounded paged KV cache);
- `vllm`: `vllm serve MODEL_DIR` (CUDA, where vLLM is installed);
- `llama.cpp`: llama-cpp-python's server for a GGUF file (where `llama_cpp.server` is installed).

The child holds a lifeline (llamaduo/lifeline.py): it ends with the front, however the front ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_S = 600.0
# Continuous batching's paged KV cache, bounded: on a CPU the engine otherwise sizes it from free RAM
# (seen here: 11 GB for a 135M model). 256 blocks of 32 tokens = 8,192 cached tokens.
CB_BLOCKS, CB_BLOCK_SIZE = 256, 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_engine(engine: str, fmt: str) -> str:
    """`auto`: llama.cpp for a GGUF, vLLM where CUDA and vLLM are present, else transformers."""
    if engine != "auto":
        return engine
    if fmt.startswith("gguf"):
        return "llama.cpp"
    from .infer import resolve_backend

    return "vllm" if resolve_backend("auto") == "vllm" else "transformers"


def engine_command(engine: str, model: Path, port: int, *, max_model_len: int | None, cuda: bool,
                   continuous_batching: bool = True) -> list[str]:
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if engine == "transformers":
        cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model), *host,
               "--dtype", "auto" if cuda else "float32",  # CPU: 16-bit kernels crawl on AVX2; same weights
               "--log-level", "warning"]
        if continuous_batching:
            cmd += ["--continuous-batching", "--cb-num-blocks", str(CB_BLOCKS), "--cb-block-size", str(CB_BLOCK_SIZE)]
        return cmd + (["--max-model-len", str(max_model_len)] if max_model_len else [])
    if engine == "vllm":
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), *host,
                "--disable-log-requests"] + (["--max-model-len", str(max_model_len)] if max_model_len else [])
    if engine == "llama.cpp":
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), *host,
                "--n_ctx", str(max_model_len or 4096)]
    raise ValueError(f"unknown engine {engine!r}")


@dataclass
class EngineProcess:
    """An engine child on a free loopback port; `start` returns once it lists its model."""
    engine: str
    model: Path
    max_model_len: int | None = None
    cuda: bool = False
    continuous_batching: bool = True
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    model_name: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> "EngineProcess":
        from .lifeline import set_parent_death_signal

        self.log = tempfile.TemporaryFile()
        cmd = engine_command(self.engine, self.model, self.port, max_model_len=self.max_model_len, cuda=self.cuda,
                             continuous_batching=self.continuous_batching)
        # The engine is not our code: the kernel's parent-death signal ends it with the front (a SIGKILLed
        # front included); its own shutdown then stops the processes it started.
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"},
                                     preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.engine} engine exited with {self.proc.returncode}: {self.tail()}")
            try:
                with opener.open(f"{self.url}/v1/models", timeout=2) as r:
                    models = json.loads(r.read()).get("data") or []
                if models:
                    self.model_name = models[0]["id"]
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the {self.engine} engine did not answer within {timeout:.0f} s: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        from .redact import safe_message

        try:
            self.log.seek(0)
            return safe_message(self.log.read().decode(errors="replace")[-n:], n)
        except (OSError, AttributeError):
            return ""

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (the engine shuts its own workers down), SIGKILL to what is left after `grace_s`."""
        from .lifeline import descendants

        if self.proc is None or self.proc.poll() is not None:
            return
        below = descendants(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in below:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
