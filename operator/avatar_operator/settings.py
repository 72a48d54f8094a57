"""The operator's settings: defaults a session may omit, read once from the environment.

The Helm chart sets these variables from its values; `avatar-operator run`
reads them at start. Every name is listed in README.md (Configuration). Each
group is a pydantic-settings model, so a bad value is refused at start with
the variable's name, never later in a session. A blank variable counts as
unset, as Kubernetes renders an optional value as "" as easily as it omits it.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from typing import Annotated, Any

import pydantic
from pydantic import AliasChoices, Field, StringConstraints
from pydantic_settings import BaseSettings, SettingsConfigDict

from avatar_operator.api import spec as spec_mod

DEFAULT_BITHUMAN_MINT_URL = "https://api.bithuman.ai/v1/runtime-tokens/mint"


class Launcher(enum.StrEnum):
    """How a local-mode runner is started."""

    POD = "pod"  # the default: a runner Pod owned by the session
    PROCESS = "process"  # development: a local process (the demo, on kwok's nodes)


class SettingsError(ValueError):
    """A variable holds a value the operator can't use; the message names it."""


Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Credential = Annotated[str, StringConstraints(strip_whitespace=True)]


class _Group(BaseSettings):
    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True, env_ignore_empty=True)


class LiveKitSettings(_Group):
    url: str = Field("", validation_alias=AliasChoices("AVATAR_LIVEKIT_URL", "LIVEKIT_URL"))
    secret_name: str = Field("livekit-credentials", validation_alias="AVATAR_LIVEKIT_SECRET_NAME")
    # Operator-wide credentials (mounted from a Secret by the chart), used
    # when neither the session nor its namespace names a Secret.
    # A trailing newline (a Secret made with `echo ... | base64`) would be signed with.
    api_key: Credential = Field("", repr=False, validation_alias="LIVEKIT_API_KEY")
    api_secret: Credential = Field("", repr=False, validation_alias="LIVEKIT_API_SECRET")


class BithumanSettings(_Group):
    secret_name: str = Field("bithuman-credentials", validation_alias="AVATAR_BITHUMAN_SECRET_NAME")
    api_url: str = Field(spec_mod.DEFAULT_API_URL, validation_alias="AVATAR_BITHUMAN_API_URL")
    mint_url: str = Field(DEFAULT_BITHUMAN_MINT_URL, validation_alias="AVATAR_BITHUMAN_MINT_URL")
    # The concurrent cloud sessions the plan allows per bitHuman credential
    # (Free 1, Creator 3, Pro 10, ...): the operator queues sessions beyond it
    # itself, in creation order. 0: no budget (bitHuman's 403 still queues).
    # A Secret's BITHUMAN_CONCURRENCY key overrides it for its sessions.
    concurrency: int = Field(0, ge=0, validation_alias="AVATAR_BITHUMAN_CONCURRENCY")
    # Ending a session (POST .../runtime-sessions/{id}/end): attempts, the wait
    # between them, and each attempt's connect timeout. Bounded, so a deletion
    # lets go (with a Warning) when bitHuman stays unreachable.
    end_attempts: int = Field(5, ge=1, validation_alias="AVATAR_BITHUMAN_END_ATTEMPTS")
    end_retry_interval_s: NonNegativeSeconds = Field(1.0, validation_alias="AVATAR_BITHUMAN_END_RETRY_INTERVAL")
    end_timeout_s: Seconds = Field(3.0, validation_alias="AVATAR_BITHUMAN_END_TIMEOUT")


class RunnerSettings(_Group):
    image: str = Field("ghcr.io/avatar-operator/runner:0.1.0", validation_alias="AVATAR_RUNNER_IMAGE")
    renderer: str = Field("bithuman", validation_alias="AVATAR_RUNNER_RENDERER")
    cpu: str = Field("2", validation_alias="AVATAR_RUNNER_CPU")
    memory: str = Field("4Gi", validation_alias="AVATAR_RUNNER_MEMORY")
    launcher: Launcher = Field(Launcher.POD, validation_alias="AVATAR_RUNNER_LAUNCHER")


class TimingSettings(_Group):
    # A token is minted for maxDuration plus this margin (time to pull the
    # image and join); without maxDuration, for token_ttl_default_s.
    token_ttl_margin_s: NonNegativeSeconds = Field(300.0, validation_alias="AVATAR_TOKEN_TTL_MARGIN")
    token_ttl_default_s: Seconds = Field(3600.0, validation_alias="AVATAR_TOKEN_TTL_DEFAULT")
    # How long deletion waits for LiveKit before letting go with a Warning.
    cleanup_timeout_s: Seconds = Field(10.0, validation_alias="AVATAR_CLEANUP_TIMEOUT")
    # How long a Ready avatar must be missing from its room before the session
    # ends: LiveKit restarts and client reconnects hide it for seconds.
    absence_grace_s: NonNegativeSeconds = Field(20.0, validation_alias="AVATAR_ABSENCE_GRACE")
    # How long the operator watches a room for a cloud avatar whose request had
    # an outcome it can't know (a timeout; a deletion mid-request), to remove it.
    late_avatar_guard_s: NonNegativeSeconds = Field(60.0, validation_alias="AVATAR_LATE_AVATAR_GUARD")


class WebhookSettings(_Group):
    """LiveKit's webhooks: a receiver that wakes a session's worker when its room changes.

    Off by default (port 0): the worker then polls LiveKit quickly while the
    avatar comes. On, it polls only as the fallback when a webhook is lost:
    first after `fallback_poll_s`, then x1.5 per poll up to `fallback_max_s`
    while waiting. livekit-server signs each webhook with one of its keys; the
    receiver verifies with that key's secret."""

    port: int = Field(0, ge=0, le=65535, validation_alias="AVATAR_WEBHOOK_PORT")
    bind: str = Field("0.0.0.0", validation_alias="AVATAR_WEBHOOK_BIND")  # a pod: every address it has
    # The key livekit-server signs with (its `webhook.api_key`); the operator-wide LiveKit key by default.
    api_key: Credential = Field("", repr=False, validation_alias=AliasChoices("AVATAR_WEBHOOK_API_KEY", "LIVEKIT_API_KEY"))
    api_secret: Credential = Field("", repr=False, validation_alias=AliasChoices("AVATAR_WEBHOOK_API_SECRET", "LIVEKIT_API_SECRET"))
    fallback_poll_s: Seconds = Field(3.0, validation_alias="AVATAR_WEBHOOK_FALLBACK_POLL")
    fallback_max_s: Seconds = Field(30.0, validation_alias="AVATAR_WEBHOOK_FALLBACK_POLL_MAX")

    @property
    def enabled(self) -> bool:
        return self.port != 0


def webhook_problems(webhook: WebhookSettings) -> list[str]:
    """A receiver that could verify nothing would refuse every webhook: said at start instead."""
    if webhook.enabled and not (webhook.api_key and webhook.api_secret):
        return [
            (
                f"AVATAR_WEBHOOK_PORT={webhook.port}: the webhook receiver needs the key livekit-server signs with: "
                "set AVATAR_WEBHOOK_API_KEY and AVATAR_WEBHOOK_API_SECRET (or LIVEKIT_API_KEY and LIVEKIT_API_SECRET), "
                "or AVATAR_WEBHOOK_PORT=0 to poll only"
            )
        ]
    return []


class NamespaceSettings(_Group):
    # Space- or comma-separated; empty: every namespace.
    namespaces: str = Field("", validation_alias="AVATAR_NAMESPACES")


_GROUPS: dict[str, type[_Group]] = {
    "livekit": LiveKitSettings,
    "bithuman": BithumanSettings,
    "runner": RunnerSettings,
    "timing": TimingSettings,
    "webhook": WebhookSettings,
}


class Settings(pydantic.BaseModel):
    """Every setting, by group. `Settings()` is the defaults."""

    model_config = pydantic.ConfigDict(frozen=True)

    livekit: LiveKitSettings = Field(default_factory=lambda: LiveKitSettings.model_validate({}))
    bithuman: BithumanSettings = Field(default_factory=lambda: BithumanSettings.model_validate({}))
    runner: RunnerSettings = Field(default_factory=lambda: RunnerSettings.model_validate({}))
    timing: TimingSettings = Field(default_factory=lambda: TimingSettings.model_validate({}))
    webhook: WebhookSettings = Field(default_factory=lambda: WebhookSettings.model_validate({}))
    namespaces: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings from `env` (default: the process environment); SettingsError names each bad variable."""
        values = {k: v for k, v in (os.environ if env is None else env).items() if v != ""}
        groups: dict[str, Any] = {}
        problems: list[str] = []
        for name, group in _GROUPS.items():
            try:
                groups[name] = group.model_validate(values)
            except pydantic.ValidationError as e:
                problems += [_describe(err) for err in e.errors()]
        if "webhook" in groups:
            problems += webhook_problems(groups["webhook"])
        if problems:
            raise SettingsError("invalid operator settings: " + "; ".join(problems))
        ns = NamespaceSettings.model_validate(values).namespaces
        return cls(**groups, namespaces=tuple(ns.replace(",", " ").split()))


def _describe(err: Any) -> str:
    variable = ".".join(str(part) for part in err["loc"])
    return f"{variable}={err.get('input')!r}: {err['msg']}"
