"""The operator's Prometheus metrics (served by `avatar-operator run --metrics-port`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import prometheus_client as prom

from avatar_operator.api import status as status_mod

WORKERS = prom.Gauge("avatar_operator_session_workers", "Sessions with a running worker (not yet ended)")
ENDED = prom.Counter("avatar_operator_sessions_ended_total", "Sessions that reached a terminal phase", ["phase"])


class _HasStatus(Protocol):
    @property
    def status(self) -> status_mod.AvatarSessionStatus: ...


@contextlib.contextmanager
def track(worker: _HasStatus) -> Iterator[None]:
    WORKERS.inc()
    try:
        yield
    finally:
        WORKERS.dec()
        phase = worker.status.phase
        if phase in (status_mod.Phase.SUCCEEDED, status_mod.Phase.FAILED):
            ENDED.labels(phase=phase.value).inc()


def serve(port: int) -> None:
    if port:
        prom.start_http_server(port)
