"""The inference protocol's terminate token: an HMAC only the gateway can make.

HMAC-SHA256 under the gateway's signing key over the provider_session_id and
the session's uid, so it ends that session and no other (nor a later one of the
same name), and a caller that did not start it cannot forge one.
"""

from __future__ import annotations

import hashlib
import hmac


def token(signing_key: bytes, provider_session_id: str, uid: str) -> str:
    return hmac.new(signing_key, f"{provider_session_id}\0{uid}".encode(), hashlib.sha256).hexdigest()


def valid(signing_key: bytes, provider_session_id: str, uid: str, candidate: str) -> bool:
    """Compared in constant time."""
    return hmac.compare_digest(token(signing_key, provider_session_id, uid).encode(), candidate.strip().encode())
