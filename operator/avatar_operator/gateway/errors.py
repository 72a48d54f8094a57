"""The gateway's refusals: an HTTP status, a code, the field at fault and what to do about it.

Rendered as `{"error": {"code", "field", "message"}}`. A message never holds a key or a token.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Refusal(Exception):
    status: int
    code: str
    message: str
    field: str | None = None
    retry_after_s: int | None = None

    def body(self) -> dict[str, dict[str, str]]:
        error = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}


def bad_request(field: str, message: str, code: str = "invalid_field") -> Refusal:
    return Refusal(400, code, message, field)


def unauthorized(message: str, field: str | None = None) -> Refusal:
    return Refusal(401, "unauthorized", message, field)


def forbidden(message: str, code: str = "forbidden", field: str | None = None) -> Refusal:
    return Refusal(403, code, message, field)


def unavailable(message: str, retry_after_s: int) -> Refusal:
    return Refusal(503, "no_capacity", message, None, retry_after_s)
