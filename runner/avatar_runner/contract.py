"""What the operator and the runner agree on: environment names, ports, paths.

The runner reads these variables (`avatar_runner.config`); the operator
writes them into a runner pod (`avatar_operator.build.pod`) or a local
process's environment (`avatar_operator.launchers.process`). Both import
this module, so a name can't be spelt two ways. Standard library only: the
operator image imports it without the runner's media stack.
"""

from __future__ import annotations

import enum


class Env(enum.StrEnum):
    """The runner's environment variables (see `avatar_runner.config`)."""

    LIVEKIT_URL = "LIVEKIT_URL"
    LIVEKIT_TOKEN = "LIVEKIT_TOKEN"
    LIVEKIT_TOKEN_FILE = "LIVEKIT_TOKEN_FILE"
    AGENT_IDENTITY = "AGENT_IDENTITY"
    RENDERER = "AVATAR_RENDERER"
    MODEL_PATH = "BITHUMAN_MODEL_PATH"
    BITHUMAN_API_SECRET = "BITHUMAN_API_SECRET"
    BITHUMAN_API_TOKEN = "BITHUMAN_API_TOKEN"
    IMAGE_FILE = "AVATAR_IMAGE_FILE"
    FPS = "AVATAR_FPS"
    MAX_DURATION = "AVATAR_MAX_DURATION"
    HEALTH_PORT = "HEALTH_PORT"
    TERMINATION_LOG_PATH = "TERMINATION_LOG_PATH"
    # `python -m avatar_runner serve`, a pool runner (see `avatar_runner.serve`)
    SERVE_PORT = "SERVE_PORT"
    MAX_SESSIONS = "MAX_SESSIONS"
    POOL_TOKEN = "POOL_TOKEN"
    POOL_TOKEN_FILE = "POOL_TOKEN_FILE"


class Renderer(enum.StrEnum):
    """What draws the avatar's frames."""

    PORTRAIT = "portrait"  # the built-in CPU portrait renderer (not bitHuman)
    BITHUMAN = "bithuman"  # the bitHuman SDK with a local .imx model


# The bitHuman credential keys, in a Secret and in the runner's environment alike.
BITHUMAN_CREDENTIAL_KEYS = (Env.BITHUMAN_API_SECRET, Env.BITHUMAN_API_TOKEN)

# The room token: a key of the session's token Secret, mounted as a file here.
TOKEN_KEY = Env.LIVEKIT_TOKEN.value
TOKEN_DIR = "/var/run/secrets/avatar-operator"
TOKEN_FILE = f"{TOKEN_DIR}/{TOKEN_KEY}"

HEALTH_PORT = 8080  # /healthz, /readyz, /metrics
HEALTH_PORT_NAME = "health"
READY_PATH = "/readyz"
LIVE_PATH = "/healthz"

# `python -m avatar_runner serve`: the launch API of bitHuman's self-hosted
# avatar container, on its port, so a pool may run either image.
SERVE_COMMAND = "serve"
SERVE_PORT = 8089  # /launch, /health, /ready, /tasks/{id}, /tasks/{id}/stop, /metrics
SERVE_PORT_NAME = "serve"
DEFAULT_MAX_SESSIONS = 8  # bitHuman's container's default too
# A pool's Bearer token: a key of the pool's token Secret, mounted as a file here.
POOL_TOKEN_KEY = Env.POOL_TOKEN.value
POOL_TOKEN_DIR = "/var/run/secrets/avatar-operator-pool"
POOL_TOKEN_FILE = f"{POOL_TOKEN_DIR}/{POOL_TOKEN_KEY}"
# The launch API's paths (bitHuman's self-hosted container's), for the operator's client.
LAUNCH_PATH = "/launch"
HEALTH_PATH = "/health"
POOL_READY_PATH = "/ready"
TASKS_PATH = "/tasks"

CONTAINER_NAME = "runner"  # the runner pod's one container
# The one writable directory: the runner pod's root filesystem is read-only.
SCRATCH_DIR = "/tmp"
MODULE = "avatar_runner"  # `python -m avatar_runner`
RUN_AS_ID = 10001  # the image's USER, uid and gid (Dockerfile)
# Where Kubernetes collects a container's last words (terminationMessagePath).
TERMINATION_LOG = "/dev/termination-log"
