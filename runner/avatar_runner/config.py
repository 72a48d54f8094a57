"""The runner's configuration, read from its environment.

The operator sets these variables on the runner pod (the development launcher
on a local process). Blank counts as unset.

    LIVEKIT_URL            required; ws://, wss://, http:// or https://
    LIVEKIT_TOKEN          the avatar's room token, or
    LIVEKIT_TOKEN_FILE     a file holding it (a mounted Secret); exactly one
    AGENT_IDENTITY         required; whose speech to render (the sender of
                           `lk.audio_stream`, the only caller of `lk.clear_buffer`)
    AVATAR_RENDERER        required; `portrait` (built-in, not bitHuman) or `bithuman`
    BITHUMAN_MODEL_PATH    bithuman: required, the .imx file
    BITHUMAN_API_SECRET    bithuman: this or BITHUMAN_API_TOKEN (plugin parity;
    BITHUMAN_API_TOKEN       the SDK itself now needs the secret)
    AVATAR_IMAGE_FILE      portrait: the picture to animate (default: a drawn face)
    AVATAR_FPS             portrait: frames per second, 1-60 (default 25);
                           bithuman renders at its model's own rate
    AVATAR_MAX_DURATION    seconds from the runner's start; unset: no limit (the
                           operator leaves it unset: it enforces spec.maxDuration
                           itself, as that may change while the session runs)
    HEALTH_PORT            /healthz, /readyz, /metrics (default 8080; 0: off)
    TERMINATION_LOG_PATH   where to write the exit reason (default
                           /dev/termination-log, written only if it exists)

`python -m avatar_runner serve` (a pool runner, `parse_serve_config`) reads
AVATAR_RENDERER, the BITHUMAN_ variables, AVATAR_IMAGE_FILE, AVATAR_FPS,
AVATAR_MAX_DURATION (per session, from its launch) and TERMINATION_LOG_PATH
as above, none of the room's (each launch brings its own), and:

    SERVE_PORT             the launch API (default 8089; 0: a free port, logged)
    MAX_SESSIONS           sessions at once, 1-256 (default 8)
    POOL_TOKEN             the Bearer token /launch and /tasks require, or
    POOL_TOKEN_FILE        a file holding it (a mounted Secret); exactly one:
                           it never serves unauthenticated

The names and defaults are `avatar_runner.contract`'s, which the operator
writes from.

Parsing is a pure function of the environment and a file reader, so every
rule is unit-tested without a process; a bad value fails before anything
heavy is imported or any connection is made, with a message that names the
variable.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Mapping

from .contract import DEFAULT_MAX_SESSIONS, HEALTH_PORT, SERVE_PORT, TERMINATION_LOG, Env, Renderer

DEFAULT_FPS = 25.0
MAX_FPS = 60.0
MAX_SESSIONS_LIMIT = 256

class ConfigError(ValueError):
    """A variable is missing or invalid; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class BithumanSettings:
    model_path: str
    api_secret: str | None
    api_token: str | None

    def __repr__(self) -> str:
        # Credentials never reach a log line, even through a debug repr.
        return f"BithumanSettings(model_path={self.model_path!r}, api_secret=***, api_token=***)"


@dataclasses.dataclass(frozen=True)
class RunnerConfig:
    livekit_url: str
    livekit_token: str
    agent_identity: str
    renderer: Renderer
    bithuman: BithumanSettings | None  # set exactly when renderer is BITHUMAN
    image_file: str | None
    fps: float
    max_duration_s: float | None
    health_port: int  # 0: no health server
    termination_log: str

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={'***' if f.name == 'livekit_token' else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )
        return f"RunnerConfig({fields})"


def _read_text(path: str) -> str:
    return pathlib.Path(path).read_text()


def _get(env: Mapping[str, str], name: Env) -> str | None:
    """The stripped value, or None when unset or blank (Kubernetes renders
    an optional value as an empty string as easily as it omits it)."""
    value = env.get(name, "").strip()
    return value or None


def _require(env: Mapping[str, str], name: Env, what: str) -> str:
    value = _get(env, name)
    if value is None:
        raise ConfigError(f"{name} is required: {what}")
    return value


def _positive_float(env: Mapping[str, str], name: Env) -> float | None:
    raw = _get(env, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be > 0, got {raw!r}")
    return value


def _secret(env: Mapping[str, str], inline_name: Env, file_name: Env, what: str, read_text: Callable[[str], str]) -> str:
    """A secret given by value or as a file (a mounted Secret): exactly one of the two."""
    inline = _get(env, inline_name)
    path = _get(env, file_name)
    if inline is not None and path is not None:
        raise ConfigError(f"set only one of {inline_name} and {file_name}")
    if inline is not None:
        return inline
    if path is None:
        raise ConfigError(f"{inline_name} or {file_name} is required: {what}")
    try:
        value = read_text(path).strip()
    except OSError as err:
        raise ConfigError(f"{file_name} {path!r} cannot be read: {err.strerror}") from None
    if not value:
        raise ConfigError(f"{file_name} {path!r} is empty")
    return value


def _token(env: Mapping[str, str], read_text: Callable[[str], str]) -> str:
    return _secret(env, Env.LIVEKIT_TOKEN, Env.LIVEKIT_TOKEN_FILE, "the avatar's room token", read_text)


def _renderer(env: Mapping[str, str]) -> Renderer:
    choices = ", ".join(k.value for k in Renderer)
    raw = _require(env, Env.RENDERER, f"one of {choices}")
    try:
        return Renderer(raw.lower())
    except ValueError:
        raise ConfigError(f"{Env.RENDERER} must be one of {choices}, got {raw!r}") from None


def _bithuman(env: Mapping[str, str]) -> BithumanSettings:
    for_bithuman = f"{Env.RENDERER}={Renderer.BITHUMAN}"
    model_path = _require(env, Env.MODEL_PATH, f"the .imx model file for {for_bithuman}")
    secret = _get(env, Env.BITHUMAN_API_SECRET)
    token = _get(env, Env.BITHUMAN_API_TOKEN)
    # Same rule as livekit-plugins-bithuman's local mode.
    if secret is None and token is None:
        raise ConfigError(
            f"{Env.BITHUMAN_API_SECRET} or {Env.BITHUMAN_API_TOKEN} is required for {for_bithuman}"
        )
    return BithumanSettings(model_path=model_path, api_secret=secret, api_token=token)


def _fps(env: Mapping[str, str]) -> float:
    raw = _get(env, Env.FPS)
    if raw is None:
        return DEFAULT_FPS
    try:
        fps = float(raw)
    except ValueError:
        raise ConfigError(f"{Env.FPS} must be a number, got {raw!r}") from None
    if not math.isfinite(fps) or not 1 <= fps <= MAX_FPS:
        raise ConfigError(f"{Env.FPS} must be between 1 and {MAX_FPS:g}, got {raw!r}")
    return fps


def _health_port(env: Mapping[str, str]) -> int:
    raw = _get(env, Env.HEALTH_PORT)
    if raw is None:
        return HEALTH_PORT
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{Env.HEALTH_PORT} must be an integer, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{Env.HEALTH_PORT} must be 0 (disabled) or a port 1-65535, got {raw!r}")
    return port


def parse_config(
    env: Mapping[str, str], read_text: Callable[[str], str] = _read_text
) -> RunnerConfig:
    """The runner's configuration from `env`; raises ConfigError on the first problem."""
    url = _require(env, Env.LIVEKIT_URL, "the LiveKit server URL (ws://, wss://, http:// or https://)")
    if not url.startswith(("ws://", "wss://", "http://", "https://")):
        raise ConfigError(f"{Env.LIVEKIT_URL} must start with ws://, wss://, http:// or https://, got {url!r}")
    renderer = _renderer(env)
    return RunnerConfig(
        livekit_url=url,
        livekit_token=_token(env, read_text),
        agent_identity=_require(
            env, Env.AGENT_IDENTITY, "the identity of the agent whose audio the avatar renders"
        ),
        renderer=renderer,
        bithuman=_bithuman(env) if renderer is Renderer.BITHUMAN else None,
        image_file=_get(env, Env.IMAGE_FILE),
        fps=_fps(env),
        max_duration_s=_positive_float(env, Env.MAX_DURATION),
        health_port=_health_port(env),
        termination_log=termination_log_path(env),
    )


def termination_log_path(env: Mapping[str, str]) -> str:
    """Where to write the exit reason; also used when the rest of `env` is invalid."""
    return _get(env, Env.TERMINATION_LOG_PATH) or TERMINATION_LOG


# --- `python -m avatar_runner serve` -------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """A pool runner's configuration: the renderer it loads once, and its launch API."""

    renderer: Renderer
    bithuman: BithumanSettings | None  # set exactly when renderer is BITHUMAN
    image_file: str | None
    fps: float
    max_duration_s: float | None  # per session, from its launch
    serve_port: int  # 0: any free port
    max_sessions: int
    pool_token: str
    termination_log: str

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={'***' if f.name == 'pool_token' else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )
        return f"ServeConfig({fields})"


def _bounded_int(env: Mapping[str, str], name: Env, default: int, low: int, high: int, what: str) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be {what}, got {raw!r}")
    return value


def _pool_token(env: Mapping[str, str], read_text: Callable[[str], str]) -> str:
    what = "the Bearer token launches must carry (the runner never serves unauthenticated)"
    return _secret(env, Env.POOL_TOKEN, Env.POOL_TOKEN_FILE, what, read_text)


def parse_serve_config(
    env: Mapping[str, str], read_text: Callable[[str], str] = _read_text
) -> ServeConfig:
    """A pool runner's configuration from `env`; raises ConfigError on the first problem."""
    renderer = _renderer(env)
    return ServeConfig(
        renderer=renderer,
        bithuman=_bithuman(env) if renderer is Renderer.BITHUMAN else None,
        image_file=_get(env, Env.IMAGE_FILE),
        fps=_fps(env),
        max_duration_s=_positive_float(env, Env.MAX_DURATION),
        serve_port=_bounded_int(env, Env.SERVE_PORT, SERVE_PORT, 0, 65535, "0 (any free port) or a port 1-65535"),
        max_sessions=_bounded_int(
            env, Env.MAX_SESSIONS, DEFAULT_MAX_SESSIONS, 1, MAX_SESSIONS_LIMIT, f"between 1 and {MAX_SESSIONS_LIMIT}"
        ),
        pool_token=_pool_token(env, read_text),
        termination_log=termination_log_path(env),
    )
