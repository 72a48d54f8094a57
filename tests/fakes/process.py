"""A fake bitHuman API server module run as a process, driven over its /_control endpoints."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import urllib.request
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]


class FakeProcess:
    def __init__(self, module: str, log: pathlib.Path, *, api_secret: str, api_token: str, timeout: float = 10.0) -> None:
        self.log = log
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", "--api-secret", api_secret, "--api-token", api_token],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=open(log, "w"),
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fake bitHuman API did not start; see {log}")
        self.urls: dict[str, str] = json.loads(line)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.urls["base_url"] + path, data=data, method=method, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            return json.loads(r.read() or b"null")

    def script(self, entries: list[dict[str, Any]], route: str = "session") -> None:
        self._call("POST", f"/_control/script?route={route}", entries)

    def requests(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_control/requests"))

    def sessions(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_control/sessions"))

    def reset(self) -> None:
        self._call("POST", "/_control/reset", {})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
