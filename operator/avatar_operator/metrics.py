"""The operator's Prometheus metrics (served by `avatar-operator run --metrics-port`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import prometheus_client as prom

WORKERS = prom.Gauge("avatar_operator_session_workers", "Sessions with a running worker (not yet ended)")
ENDED = prom.Counter("avatar_operator_sessions_ended_total", "Sessions that reached a terminal phase", ["phase"])


class _HasStatus(Protocol):
    status: dict[str, object]


@contextlib.contextmanager
def track(worker: _HasStatus) -> Iterator[None]:
    WORKERS.inc()
    try:
        yield
    finally:
        WORKERS.dec()
        phase = worker.status.get("phase")
        if phase in ("Succeeded", "Failed"):
            ENDED.labels(phase=str(phase)).inc()


def serve(port: int) -> None:
    if port:
        prom.start_http_server(port)
