"""A fake Hugging Face Hub on loopback (the few endpoints `HfApi.create_repo` and `upload_folder` call),
for tests through `HF_ENDPOINT`: it checks the bearer token and keeps what was committed."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self, token: str):
        self.token, self.repos, self.commits, self.cards = token, {}, [], []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["api", "validate-yaml"]:  # the model card's metadata must parse as a mapping
                    import yaml

                    content = json.loads(raw)["content"]
                    try:
                        meta = yaml.safe_load(content.split("---\n")[1]) if content.startswith("---\n") else {}
                    except yaml.YAMLError as exc:
                        return self._reply(400, {"error": str(exc)})
                    hub.cards.append(meta)
                    return self._reply(200 if isinstance(meta, dict) else 400, {"errors": [], "warnings": []})
                if parts[:2] == ["api", "repos"] and parts[2] == "create":
                    body = json.loads(raw)
                    repo = f"{body.get('organization') or 'user'}/{body['name']}"
                    visibility = body.get("visibility") or ("private" if body.get("private") else "public")
                    hub.repos[repo] = {"private": visibility == "private", "files": {}}
                    return self._reply(200, {"url": f"{hub.url}/{repo}"})
                if parts[:2] == ["api", "models"] and parts[4] == "preupload":
                    files = json.loads(raw)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if parts[:2] == ["api", "models"] and parts[4] == "commit":
                    repo = f"{parts[2]}/{parts[3]}"
                    for line in raw.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.repos[repo]["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    hub.commits.append(repo)
                    return self._reply(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'0' * 40}",
                                             "commitOid": "0" * 40, "pullRequestUrl": None})
                return self._reply(404, {"error": f"no route {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
