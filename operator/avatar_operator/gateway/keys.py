"""Matching a caller's key against the keys tenants registered, in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Iterable


def parse_keys(text: str) -> tuple[str, ...]:
    """GATEWAY_API_KEYS: one key a line, blank lines ignored (rotation adds a line, then removes the old one)."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def matches(candidate: str, keys: Iterable[str]) -> bool:
    """Whether `candidate` is one of `keys`. Every key is compared, each with compare_digest,
    so the time taken says nothing about which key (or how much of one) matched."""
    given = candidate.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None
