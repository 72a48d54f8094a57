"""The gateway's AVATAR_GATEWAY_* settings, and its metrics' outcome labels."""

from __future__ import annotations

from typing import Any

import pytest
from avatar_operator.gateway import metrics as gateway_metrics
from avatar_operator.gateway import settings


def test_settings(tmp_path: Any) -> None:
    key = tmp_path / "key"
    key.write_bytes(b"0123456789abcdef0123\n")
    s = settings.from_env({"AVATAR_GATEWAY_SIGNING_KEY_FILE": str(key), "AVATAR_GATEWAY_NAMESPACES": "a, b"})
    assert (s.port, s.admission_wait_s, s.retry_after_s, s.max_body_bytes) == (8090, 5.0, 2, 8388608)
    assert s.namespace_list() == ("a", "b") and s.signing_key() == b"0123456789abcdef0123"
    with pytest.raises(ValueError, match="AVATAR_GATEWAY_SIGNING_KEY_FILE"):
        settings.from_env({})
    # Never every namespace: it would list every Secret of the cluster.
    with pytest.raises(ValueError, match="AVATAR_GATEWAY_NAMESPACES"):
        settings.from_env({"AVATAR_GATEWAY_SIGNING_KEY_FILE": str(key)})
    with pytest.raises(ValueError, match="AVATAR_GATEWAY_NAMESPACES: .*name the namespaces"):
        settings.from_env({"AVATAR_GATEWAY_SIGNING_KEY_FILE": str(key), "AVATAR_GATEWAY_NAMESPACES": " , "})
    with pytest.raises(ValueError, match="AVATAR_GATEWAY_ADMISSION_WAIT_S"):
        settings.from_env({"AVATAR_GATEWAY_SIGNING_KEY_FILE": str(key), "AVATAR_GATEWAY_NAMESPACES": "a", "AVATAR_GATEWAY_ADMISSION_WAIT_S": "soon"})
    with pytest.raises(ValueError, match="TLS_KEY_FILE"):
        settings.from_env({"AVATAR_GATEWAY_SIGNING_KEY_FILE": str(key), "AVATAR_GATEWAY_NAMESPACES": "a", "AVATAR_GATEWAY_TLS_CERT_FILE": "/c"})
    short = tmp_path / "short"
    short.write_bytes(b"tiny")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        settings.from_env({"AVATAR_GATEWAY_SIGNING_KEY_FILE": str(short), "AVATAR_GATEWAY_NAMESPACES": "a"}).signing_key()


def test_metric_outcomes() -> None:
    assert [gateway_metrics.outcome(s) for s in (200, 400, 401, 403, 413, 503, 500, 422)] == [
        "ok",
        "bad_request",
        "unauthorized",
        "forbidden",
        "too_large",
        "unavailable",
        "error",
        "bad_request",
    ]
