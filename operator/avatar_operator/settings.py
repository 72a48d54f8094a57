"""The operator's settings: defaults a session may omit, read once from the environment.

The Helm chart sets these variables from its values; `avatar-operator run`
reads them at start. Every name is listed in README.md (Configuration).
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping

DEFAULT_BITHUMAN_API_URL = "https://auth.api.bithuman.ai/v1/runtime-tokens/request"
DEFAULT_BITHUMAN_MINT_URL = "https://api.bithuman.ai/v1/runtime-tokens/mint"


class Launcher(str, enum.Enum):
    """How a local-mode runner is started."""

    POD = "pod"  # the default: a runner Pod owned by the session
    PROCESS = "process"  # development: a local process (the demo, on kwok's nodes)


@dataclasses.dataclass(frozen=True)
class Settings:
    livekit_url: str = ""
    livekit_secret_name: str = "livekit-credentials"
    # Operator-wide LiveKit credentials (mounted from a Secret by the chart);
    # used when neither the session nor its namespace names a Secret.
    livekit_api_key: str = dataclasses.field(default="", repr=False)
    livekit_api_secret: str = dataclasses.field(default="", repr=False)
    bithuman_secret_name: str = "bithuman-credentials"
    bithuman_api_url: str = DEFAULT_BITHUMAN_API_URL
    bithuman_mint_url: str = DEFAULT_BITHUMAN_MINT_URL
    runner_image: str = "ghcr.io/avatar-operator/runner:0.1.0"
    runner_renderer: str = "bithuman"
    runner_cpu: str = "2"
    runner_memory: str = "4Gi"
    launcher: Launcher = Launcher.POD
    namespaces: tuple[str, ...] = ()
    # A token is minted for maxDuration plus this margin (time to pull the
    # image and join); without maxDuration, for token_ttl_default_s.
    token_ttl_margin_s: float = 300.0
    token_ttl_default_s: float = 3600.0
    # How long deletion waits for LiveKit before letting go with a Warning.
    cleanup_timeout_s: float = 10.0
    # How often a session not yet Ready asks LiveKit whether the avatar joined.
    room_poll_s: float = 1.0
    # How long a Ready avatar must be missing from its room before the session
    # ends: LiveKit restarts and client reconnects hide it for seconds.
    absence_grace_s: float = 20.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        d = cls()

        def get(name: str, default: str) -> str:
            return e.get(name, "") or default

        return cls(
            livekit_url=get("AVATAR_LIVEKIT_URL", e.get("LIVEKIT_URL", d.livekit_url)),
            livekit_secret_name=get("AVATAR_LIVEKIT_SECRET_NAME", d.livekit_secret_name),
            livekit_api_key=get("LIVEKIT_API_KEY", ""),
            livekit_api_secret=get("LIVEKIT_API_SECRET", ""),
            bithuman_secret_name=get("AVATAR_BITHUMAN_SECRET_NAME", d.bithuman_secret_name),
            bithuman_api_url=get("AVATAR_BITHUMAN_API_URL", d.bithuman_api_url),
            bithuman_mint_url=get("AVATAR_BITHUMAN_MINT_URL", d.bithuman_mint_url),
            runner_image=get("AVATAR_RUNNER_IMAGE", d.runner_image),
            runner_renderer=get("AVATAR_RUNNER_RENDERER", d.runner_renderer),
            runner_cpu=get("AVATAR_RUNNER_CPU", d.runner_cpu),
            runner_memory=get("AVATAR_RUNNER_MEMORY", d.runner_memory),
            launcher=Launcher(get("AVATAR_RUNNER_LAUNCHER", d.launcher.value)),
            namespaces=tuple(n for n in get("AVATAR_NAMESPACES", "").replace(",", " ").split() if n),
            token_ttl_margin_s=float(get("AVATAR_TOKEN_TTL_MARGIN", str(d.token_ttl_margin_s))),
            token_ttl_default_s=float(get("AVATAR_TOKEN_TTL_DEFAULT", str(d.token_ttl_default_s))),
            cleanup_timeout_s=float(get("AVATAR_CLEANUP_TIMEOUT", str(d.cleanup_timeout_s))),
            room_poll_s=float(get("AVATAR_ROOM_POLL", str(d.room_poll_s))),
            absence_grace_s=float(get("AVATAR_ABSENCE_GRACE", str(d.absence_grace_s))),
        )
