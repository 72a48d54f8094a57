"""`avatar-operator run` argument handling."""

from __future__ import annotations

import urllib.parse

from avatar_operator import run


def test_liveness_port_zero_picks_a_free_port_and_empty_turns_it_off() -> None:
    picked = urllib.parse.urlsplit(run.liveness_url("http://127.0.0.1:0/healthz") or "")
    assert picked.hostname == "127.0.0.1" and picked.path == "/healthz"
    assert picked.port not in (None, 0, 80)
    assert run.liveness_url("http://0.0.0.0:8080/healthz") == "http://0.0.0.0:8080/healthz"
    assert run.liveness_url("") is None and run.liveness_url(None) is None
