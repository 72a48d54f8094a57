"""The inference protocol's terminate token: valid only for the session and uid it was issued for."""

from __future__ import annotations

from avatar_operator.gateway import terminate


def test_terminate_tokens() -> None:
    key = b"k" * 32
    token = terminate.token(key, "team-a/gw-1", "uid-1")
    assert terminate.valid(key, "team-a/gw-1", "uid-1", token)
    assert not terminate.valid(key, "team-a/gw-1", "uid-2", token)  # a later session of that name
    assert not terminate.valid(key, "team-a/gw-2", "uid-1", token)
    assert not terminate.valid(b"x" * 32, "team-a/gw-1", "uid-1", token)
    assert not terminate.valid(key, "team-a/gw-1", "uid-1", token[:-1] + ("0" if token[-1] != "0" else "1"))
