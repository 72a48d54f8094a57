"""`avatar-operator gateway` as a subprocess beside the stack: started, ready (/readyz), stopped.

Its settings come from the environment, as in the chart; the signing key is a
file of its own (a mounted Secret in the chart). Its output is appended to `log`.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

from tests.harness import processes
from tests.harness.net import free_port
from tests.harness.stack import ROOT

GATEWAY = (sys.executable, "-m", "avatar_operator", "gateway")


class GatewayProcess:
    """The gateway on 127.0.0.1 at a free port, watching `namespaces` (at least one) for tenant Secrets.
    `extra` sets more AVATAR_GATEWAY_* variables (ADMISSION_WAIT_S, RETRY_AFTER_S, MAX_BODY_BYTES, ...)."""

    def __init__(
        self,
        env: Mapping[str, str],
        log: pathlib.Path,
        *,
        namespaces: tuple[str, ...] = (),
        extra: Mapping[str, str] | None = None,
        stop_grace: float = 10.0,
    ) -> None:
        self.log = log
        self.port = free_port()
        self.signing_key_file = log.with_suffix(".signing-key")
        self.signing_key = os.urandom(32).hex().encode()
        self.env = {
            **env,
            "AVATAR_GATEWAY_HOST": "127.0.0.1",
            "AVATAR_GATEWAY_PORT": str(self.port),
            "AVATAR_GATEWAY_SIGNING_KEY_FILE": str(self.signing_key_file),
            "AVATAR_GATEWAY_NAMESPACES": ",".join(namespaces),
            **(extra or {}),
        }
        self.stop_grace = stop_grace
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 30.0) -> None:
        self.signing_key_file.write_bytes(self.signing_key)
        self.signing_key_file.chmod(0o600)
        with open(self.log, "ab") as out:
            out.write(f"\n===== start at {time.time():.3f} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                GATEWAY, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        """Until /readyz answers 200 (the tenants are listed); RuntimeError with the log's tail if it exits or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the gateway exited ({self.proc and self.proc.returncode}):\n{self.logs()[-3000:]}")
            with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the gateway was not ready within {timeout} s:\n{self.logs()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM; SIGKILL after `stop_grace` seconds. Nothing if not running."""
        processes.stop_group(self.proc, self.stop_grace)

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""
