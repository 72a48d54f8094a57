"""The runner process: configuration, signals, health server, exit status.

`python -m avatar_runner` runs one session; `python -m avatar_runner serve`
is a pool runner (`avatar_runner.serve`): the same configuration errors,
exit codes and stderr line.

Logs go to stdout. stderr carries one line, and only on failure: the reason,
which is also written to the Kubernetes termination log. A launcher reading
the last stderr line and a pod's `terminationMessage` see the same words.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from .config import ConfigError, RunnerConfig, parse_config, parse_serve_config, termination_log_path
from .contract import SERVE_COMMAND
from .exits import ExitCode, Outcome, RunnerFailure, redact_tokens, write_termination_log

log = logging.getLogger("avatar_runner")


class _RedactTokens(logging.Filter):
    """LiveKit logs a rejected room token in full; the pod's log must not hold it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_tokens(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_RedactTokens())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    log.setLevel(logging.INFO)


async def _run(config: RunnerConfig, started_at: float) -> Outcome:
    # Imported here, not at the top: a configuration error is reported
    # before seconds of media-stack imports.
    from .health import HealthServer, RunnerMetrics
    from .session import StopRequest, run_session

    stop = StopRequest()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.request, f"stopped by {signum.name}")
    metrics = RunnerMetrics()
    health = HealthServer(metrics, config.health_port) if config.health_port else None
    try:
        if health is not None:
            await health.start()
        return await run_session(config, metrics, started_at=started_at, stop=stop)
    except RunnerFailure as failure:
        return failure.outcome
    except Exception as err:
        log.exception("runner failed")
        return Outcome(ExitCode.INTERNAL, f"unexpected error: {type(err).__name__}: {err}")
    finally:
        if health is not None:
            await health.stop()


def _finish(outcome: Outcome, termination_log: str) -> int:
    write_termination_log(termination_log, outcome.reason)
    if outcome.code is ExitCode.OK:
        log.info("done: %s", outcome.reason)
    else:
        log.error("failed (exit %d): %s", outcome.code, outcome.reason)
        sys.stdout.flush()
        print(outcome.reason, file=sys.stderr, flush=True)
    return int(outcome.code)


def _serve() -> int:
    try:
        config = parse_serve_config(os.environ)
    except ConfigError as err:
        return _finish(Outcome(ExitCode.CONFIG_INVALID, str(err)), termination_log_path(os.environ))
    log.info("serving: %r", config)
    from .serve import serve

    return _finish(asyncio.run(serve(config)), config.termination_log)


def main(argv: Sequence[str] | None = None) -> int:
    started_at = time.monotonic()
    _configure_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    if args == [SERVE_COMMAND]:
        return _serve()
    if args:
        usage = f"usage: python -m avatar_runner [{SERVE_COMMAND}] (got {' '.join(args)!r})"
        return _finish(Outcome(ExitCode.CONFIG_INVALID, usage), termination_log_path(os.environ))
    try:
        config = parse_config(os.environ)
    except ConfigError as err:
        return _finish(Outcome(ExitCode.CONFIG_INVALID, str(err)), termination_log_path(os.environ))
    log.info("starting: %r", config)
    return _finish(asyncio.run(_run(config, started_at)), config.termination_log)
