"""`avatar-operator run` argument handling."""

from __future__ import annotations

import urllib.parse

import pytest

from avatar_operator import run


def test_liveness_port_zero_picks_a_free_port_and_empty_turns_it_off() -> None:
    picked = urllib.parse.urlsplit(run.liveness_url("http://127.0.0.1:0/healthz") or "")
    assert picked.hostname == "127.0.0.1" and picked.path == "/healthz"
    assert picked.port not in (None, 0, 80)
    assert run.liveness_url("http://0.0.0.0:8080/healthz") == "http://0.0.0.0:8080/healthz"
    assert run.liveness_url("") is None and run.liveness_url(None) is None


def test_the_operator_starts_kopf_with_the_lean_watch_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """`avatar-operator run` wraps kopf's watch before kopf starts (controller.lean_bodies)."""
    import argparse
    import types

    import kopf
    from kopf._cogs.clients import watching

    from avatar_operator import metrics
    from avatar_operator import settings as settings_mod
    from avatar_operator.clients import kube_login
    from avatar_operator.controller import lean_bodies

    monkeypatch.setattr(watching, "infinite_watch", watching.infinite_watch)
    monkeypatch.setattr(settings_mod.Settings, "from_env", classmethod(lambda cls: types.SimpleNamespace(namespaces=["a"])))
    monkeypatch.setattr(kube_login, "load", lambda: None)
    monkeypatch.setattr(metrics, "serve", lambda port: None)
    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    lean_at_start: list[bool] = []
    monkeypatch.setattr(kopf, "run", lambda **_: lean_at_start.append(bool(getattr(watching.infinite_watch, lean_bodies._MARK, False))))
    assert run.main(argparse.Namespace(standalone=True)) == 0
    assert lean_at_start == [True]
