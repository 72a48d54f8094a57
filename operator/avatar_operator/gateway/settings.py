"""The gateway's settings, from AVATAR_GATEWAY_* variables (pydantic-settings; a bad value names its variable)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Annotated, Any

import pydantic
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from avatar_operator import settings as operator_settings

PREFIX = "AVATAR_GATEWAY_"
DEFAULT_PORT = 8090
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024

Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore", env_ignore_empty=True)

    host: str = "0.0.0.0"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    # The HMAC key of terminate tokens: a file (a mounted Secret), never a variable's value.
    signing_key_file: pathlib.Path
    tls_cert_file: pathlib.Path | None = None
    tls_key_file: pathlib.Path | None = None
    # Comma- or space-separated, at least one: the gateway lists and watches every Secret of
    # these namespaces (RBAC cannot select by label), so never every namespace (design.md §3).
    namespaces: str
    # How long a request waits for its session to hold a runner before the gateway
    # deletes it and answers 503: both clients retry, so a short wait frees the slot
    # queue for whoever comes back first.
    admission_wait_s: Seconds = 5.0
    retry_after_s: int = Field(2, ge=1)
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024)

    @pydantic.field_validator("namespaces")
    @classmethod
    def _some_namespace(cls, value: str) -> str:
        if not value.replace(",", " ").split():
            raise ValueError("name the namespaces whose tenant Secrets the gateway serves (comma-separated)")
        return value

    @pydantic.model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(f"set both {PREFIX}TLS_CERT_FILE and {PREFIX}TLS_KEY_FILE, or neither")
        return self

    def namespace_list(self) -> tuple[str, ...]:
        return tuple(self.namespaces.replace(",", " ").split())

    def signing_key(self) -> bytes:
        """The key file's bytes, a trailing newline dropped (a Secret made with `echo`)."""
        try:
            key = self.signing_key_file.read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise operator_settings.SettingsError(
                f"{PREFIX}SIGNING_KEY_FILE={str(self.signing_key_file)!r}: cannot read it ({e.strerror})"
            ) from e
        if len(key) < 16:
            raise operator_settings.SettingsError(f"{PREFIX}SIGNING_KEY_FILE: the key must hold at least 16 bytes")
        return key


def from_env(env: Mapping[str, str] | None = None) -> GatewaySettings:
    """The settings from `env` (default: the process environment); SettingsError names each bad variable."""
    values = {k[len(PREFIX) :].lower(): v for k, v in (os.environ if env is None else env).items() if k.startswith(PREFIX) and v}
    try:
        return GatewaySettings.model_validate(values)
    except pydantic.ValidationError as e:
        raise operator_settings.SettingsError("invalid gateway settings: " + "; ".join(_describe(err) for err in e.errors())) from None


def _describe(err: Any) -> str:
    where = "".join(str(part) for part in err["loc"]).upper()
    name = f"{PREFIX}{where}" if where else "settings"
    return f"{name}: {err['msg']}"
