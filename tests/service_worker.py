"""Child process for the crash-resume test: synthesizes N requests through ServiceClient."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from llamaduo.config import Endpoint, ServiceConfig  # noqa: E402
from llamaduo.parsing import parse_synth_reply  # noqa: E402
from llamaduo.service import Request, ServiceClient  # noqa: E402

if __name__ == "__main__":
    url, cache, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.environ["WORKER_KEY"] = "sk-worker"
    cfg = ServiceConfig(model="openai/fake", api_base=url, api_key_env="WORKER_KEY", max_concurrency=4, rpm=6000)
    reqs = [Request([{"role": "user", "content": f'Seed {i}: generate 2 more pairs as {{"contents": []}}'}])
            for i in range(n)]
    endpoint = Endpoint(model=cfg.model, api_base=url, api_key_env="WORKER_KEY")
    res = ServiceClient(endpoint, cfg, cache, progress=False).run(reqs, parse_synth_reply)
    print("ok", sum(r.ok for r in res))
