"""Runs avatar runners as local processes, for development.

The local counterpart of a runner pod, as JupyterHub's LocalProcessSpawner is
of KubeSpawner: `start` launches `python -m avatar_runner` with the
environment a pod would get, `stop` sends SIGTERM then SIGKILL as the kubelet
does, and the outcome reads like a pod's: the exit code, and the reason from
the termination log (the runner's last stderr line when it wrote none).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

DEFAULT_GRACE_S = 5.0  # the runner stops in a few seconds on SIGTERM
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_INHERITED = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "SSL_CERT_FILE"})


@dataclasses.dataclass(frozen=True)
class ProcessStatus:
    pid: int
    running: bool
    exit_code: int | None  # None while running; negative: killed by that signal
    reason: str | None  # the termination message, once it exited


class RunnerLauncher:
    """Starts, watches and stops one runner process per session key.

    Each session gets files under `work_dir`: `<key>.stdout` (the runner's
    log), `<key>.stderr` and `<key>.termination-log`.
    """

    def __init__(self, work_dir: pathlib.Path, python: str = sys.executable) -> None:
        self._work_dir = work_dir
        self._python = python
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, session_key: str, env: Mapping[str, str], args: Sequence[str] = ()) -> int:
        """Launches the runner for `session_key` with `env` added to ours (and `args`, e.g. serve); returns its pid."""
        current = self._processes.get(session_key)
        if current is not None and current.poll() is None:
            raise RuntimeError(f"a runner for {session_key!r} is already running (pid {current.pid})")
        self._work_dir.mkdir(parents=True, exist_ok=True)
        termination_log = self._path(session_key, "termination-log")
        termination_log.write_text("")  # present and empty, as Kubernetes leaves it
        # Only what a Python process needs from ours: never the operator's own
        # credentials (a pod gets only its token and its renderer's needs).
        inherited = {k: v for k, v in os.environ.items() if k in _INHERITED}
        process_env = {**inherited, **env, "TERMINATION_LOG_PATH": str(termination_log)}
        with open(self._path(session_key, "stdout"), "wb") as out, open(self._path(session_key, "stderr"), "wb") as err:
            process = subprocess.Popen(
                [self._python, "-m", "avatar_runner", *args],
                env=process_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                # Its own session: a Ctrl-C meant for the operator must not
                # reach the runners, which are stopped through stop().
                start_new_session=True,
            )
        self._processes[session_key] = process
        return process.pid

    def is_running(self, session_key: str) -> bool:
        process = self._processes.get(session_key)
        return process is not None and process.poll() is None

    def status(self, session_key: str) -> ProcessStatus | None:
        """None for a key never started here."""
        process = self._processes.get(session_key)
        if process is None:
            return None
        code = process.poll()
        return ProcessStatus(
            pid=process.pid,
            running=code is None,
            exit_code=code,
            reason=None if code is None else self._reason(session_key),
        )

    def stop(self, session_key: str, grace_s: float = DEFAULT_GRACE_S) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; returns the exit code (None if never started)."""
        process = self._processes.get(session_key)
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def forget(self, session_key: str) -> None:
        """Drops an exited session and its files."""
        if self.is_running(session_key):
            raise RuntimeError(f"the runner for {session_key!r} is still running")
        self._processes.pop(session_key, None)
        for suffix in ("stdout", "stderr", "termination-log"):
            self._path(session_key, suffix).unlink(missing_ok=True)

    def last_stderr_line(self, session_key: str) -> str | None:
        try:
            lines = self._path(session_key, "stderr").read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return None
        return lines[-1] if lines else None

    def _reason(self, session_key: str) -> str | None:
        try:
            message = self._path(session_key, "termination-log").read_text().strip()
        except FileNotFoundError:
            message = ""
        return message or self.last_stderr_line(session_key)

    def _path(self, session_key: str, suffix: str) -> pathlib.Path:
        # Keys like "namespace/name" become one safe file name.
        return self._work_dir / f"{_UNSAFE.sub('_', session_key)}.{suffix}"
