"""The gateway's Prometheus metrics: requests by protocol and outcome, and their latency.

Labels are bounded: two protocols (plus "other" for health and unknown paths)
and an outcome per status class; never a tenant, a room or a session.
"""

from __future__ import annotations

import prometheus_client as prom

PROTOCOLS = ("plugin", "inference", "other")
OUTCOMES = ("ok", "bad_request", "unauthorized", "forbidden", "not_found", "too_large", "unavailable", "upstream_error", "error")
_BY_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large", 503: "unavailable", 502: "upstream_error"}
# A warm pool answers in well under a second; the admission wait bounds a 503 at a few seconds.
BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0)

REQUESTS = prom.Counter("avatar_gateway_requests_total", "Gateway requests, by protocol and outcome", ["protocol", "outcome"])
LATENCY = prom.Histogram("avatar_gateway_request_seconds", "Gateway request latency, by protocol", ["protocol"], buckets=BUCKETS)

for _p in PROTOCOLS[:2]:
    LATENCY.labels(_p)
    for _o in OUTCOMES:
        REQUESTS.labels(_p, _o)


def outcome(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    return _BY_STATUS.get(status, "error" if status >= 500 else "bad_request")


def observe(protocol: str, status: int, seconds: float) -> None:
    REQUESTS.labels(protocol, outcome(status)).inc()
    LATENCY.labels(protocol).observe(seconds)


def render() -> tuple[bytes, str]:
    return prom.generate_latest(prom.REGISTRY), prom.CONTENT_TYPE_LATEST
