"""The CLI's temporary Prefect server: a copy of the migrated empty database, a real Prefect API,
gone when stopped and gone when the process that started it is SIGKILLed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows.tempserver import TemporaryServer, healthy, make_template, template_path
from llamaduo.lifeline import descendants

ROOT = Path(__file__).resolve().parents[1]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_server_starts_on_a_copy_of_the_template_and_answers_the_api(tmp_path):
    make_template()  # `make install` made it; a no-op then
    server = TemporaryServer(tmp_path / "run" / ".prefect" / "prefect.db").start()
    try:
        server.wait_healthy()
        assert server.copied and (tmp_path / "run" / ".prefect" / "prefect.db").exists()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        code = ("from prefect.client.orchestration import get_client\n"
                "with get_client(sync_client=True) as c:\n"
                "    print(len(c.read_block_types()))\n")
        out = subprocess.run([sys.executable, "-c", code], env={**env, "PREFECT_API_URL": server.api_url},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert int(out.stdout.strip().splitlines()[-1]) > 5, "block types came with the template"
        pid = server.child.proc.pid
    finally:
        server.stop()
    assert _gone(pid) and not healthy(server.api_url)
    assert template_path().exists()


def test_server_ends_when_the_process_that_started_it_is_killed(tmp_path):
    make_template()
    starter = subprocess.Popen([sys.executable, "-c", (
        "import json, sys, time\n"
        "from flows.tempserver import TemporaryServer\n"
        f"s = TemporaryServer({str(tmp_path / 'prefect.db')!r}).start()\n"
        "s.wait_healthy()\n"
        "print(json.dumps({'pid': s.child.proc.pid, 'url': s.api_url}), flush=True)\n"
        "time.sleep(600)\n")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(starter.stdout.readline())
        assert healthy(info["url"])
        below = descendants(info["pid"])
        os.kill(starter.pid, signal.SIGKILL)  # no chance to stop it: the lifeline must
        starter.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(_gone(p) for p in [info["pid"], *below]):
            time.sleep(0.2)
        assert all(_gone(p) for p in [info["pid"], *below]), "the server outlived the CLI process"
    finally:
        if starter.poll() is None:
            starter.kill()
