"""How the runner ends: an exit code and a one-line reason.

Codes follow sysexits(3), as `python -m bithuman` does for the same refusals
(its `_errors._EXIT`), so a code read from a pod's status means the same as
one read from bitHuman's own tool. The reason goes to stderr (its only line
there: logs go to stdout) and to the Kubernetes termination log, where the
operator reads it into the session's status.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
import sys
from typing import NoReturn

# A JWT: LiveKit quotes a rejected token in full in its error message.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


class ExitCode(enum.IntEnum):
    OK = 0  # the agent left, the room ended, max duration reached or SIGTERM
    INTERNAL = 1  # a bug: an exception nothing classified
    CONFIG_INVALID = 64  # EX_USAGE: an environment variable is missing or invalid
    AVATAR_INVALID = 66  # EX_NOINPUT: model or image missing or not a usable avatar
    RENDERER_UNAVAILABLE = 69  # EX_UNAVAILABLE: cannot run here, or bitHuman unreachable
    RENDERER_FAILED = 70  # EX_SOFTWARE: the renderer failed while running
    HEALTH_PORT_UNAVAILABLE = 71  # EX_OSERR: cannot listen on HEALTH_PORT
    ROOM_UNREACHABLE = 75  # EX_TEMPFAIL: LiveKit unreachable or connection lost; retry may work
    RENDERER_NOT_AUTHORISED = 77  # EX_NOPERM: the bitHuman credential was refused
    TOKEN_REJECTED = 78  # EX_CONFIG: LiveKit refused the room token


def redact_tokens(text: str) -> str:
    return _JWT.sub("<token>", text)


@dataclasses.dataclass(frozen=True)
class Outcome:
    code: ExitCode
    reason: str  # one line, no credentials

    def __post_init__(self) -> None:
        # The reason ends up in the session's status, readable by anyone who
        # can read the resource: one line, and no token, whatever a library
        # put in its message.
        one_line = " ".join(self.reason.split())
        object.__setattr__(self, "reason", redact_tokens(one_line))


class RunnerFailure(Exception):
    """Raised anywhere in the runner to end it with `outcome`."""

    def __init__(self, code: ExitCode, reason: str) -> None:
        super().__init__(reason)
        self.outcome = Outcome(code, reason)


def write_termination_log(path: str, reason: str) -> None:
    """Writes `reason` where Kubernetes looks for it, if that file is there.

    Kubernetes creates the file before the container starts. Elsewhere it is
    absent and must not be created: outside a pod /dev is no place for it.
    """
    if not os.path.isfile(path) or not os.access(path, os.W_OK):
        return
    try:
        with open(path, "w") as log:
            log.write(reason + "\n")
    except OSError:
        pass  # the stderr line still carries the reason


def exit_now(code: int) -> NoReturn:
    """Ends the process with `code`, skipping the interpreter's teardown.

    The native LiveKit client's threads can panic while the interpreter tears
    down (a SIGABRT after the exit reason was printed, seen after a rejected
    token and after a normal leave). The work is done by then: leaving at once
    keeps the exit code and the last stderr line the process's own.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
