"""The AvatarPool: warm runners, each serving several sessions (spec and status models).

A pool keeps `replicas` runners of `python -m avatar_runner serve` (or
bitHuman's own container), each with its renderer loaded once and
`sessionsPerRunner` slots. A session names the pool (`spec.poolRef`) and
takes a slot instead of starting a runner of its own. The renderer fields
are the local session's (`spec.py`), so one rule in `rules.py` checks both.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any

from avatar_runner import contract
from pydantic import Field, Strict, StringConstraints

from avatar_operator.api import spec as spec_mod
from avatar_operator.api import status as status_mod
from avatar_operator.api.spec import IMMUTABLE, MUTABLE, Int, KubeModel, Text

DEFAULT_REPLICAS = 1
DEFAULT_SESSIONS_PER_RUNNER = contract.DEFAULT_MAX_SESSIONS
AVATAR_IDS_MAX = 64  # the gateway scans every pool's list for a request's avatar id


class Scheduling(StrEnum):
    """How sessions are spread over a pool's runners."""

    PACKED = "Packed"  # fill the busiest runner first: idle runners can be scaled away
    DISTRIBUTED = "Distributed"  # the least busy runner first: a runner's loss touches fewer sessions


class PoolBithumanSpec(KubeModel):
    """The bitHuman account the pool's runners render with."""

    secret_ref: spec_mod.LocalObjectReference | None = Field(
        default=None,
        description="A Secret with BITHUMAN_API_SECRET and/or BITHUMAN_API_TOKEN (the bithuman renderer needs "
        "either). Default: the operator's bitHuman Secret.",
    )


class PoolRunnerSpec(spec_mod.RunnerSpec):
    """The pool's runner pods: a local session's runner fields, and the renderer."""

    renderer: contract.Renderer | None = Field(
        default=None,
        description="What draws the frames: bithuman (the bitHuman SDK and the .imx model) or portrait (a "
        "built-in CPU portrait, for development). Default: the operator's runner renderer.",
    )
    args: Annotated[list[Annotated[str, Strict(), StringConstraints(max_length=spec_mod.TEXT_MAX)]], Field(max_length=16)] | None = Field(
        default=None,
        description="The container's arguments. Default: python -m avatar_runner serve (this project's runner "
        "image). For bitHuman's own self-hosted avatar image, set [] to run that image's entrypoint: it serves "
        "the same launch API on the same port.",
    )


class AvatarPoolSpec(KubeModel):
    """Warm avatar runners, each serving sessionsPerRunner sessions with its renderer loaded once. Sessions
    name the pool in spec.poolRef."""

    replicas: Annotated[Int, MUTABLE] = Field(
        default=DEFAULT_REPLICAS,
        description="How many runners to keep (0 or more; the scale subresource's field, so kubectl scale, an "
        "HPA or KEDA can set it). Scaling down removes idle runners only. May change.",
    )
    sessions_per_runner: Annotated[Int, IMMUTABLE] = Field(
        default=DEFAULT_SESSIONS_PER_RUNNER,
        description="Sessions one runner serves at once (its MAX_SESSIONS; at least 1). Immutable.",
    )
    scheduling: Annotated[Scheduling, MUTABLE] = Field(
        default=Scheduling.PACKED,
        description="Packed (the default: fill the busiest runner first, so idle runners can be scaled away) "
        "or Distributed (the least busy runner first). May change.",
    )
    model: Annotated[spec_mod.Model | None, IMMUTABLE] = Field(
        default=None, description="The bitHuman model the runners render: sets the GPU default as for a session. Immutable."
    )
    model_path: Annotated[Annotated[str, Strict(), StringConstraints(max_length=spec_mod.PATH_MAX)] | None, IMMUTABLE] = Field(
        default=None,
        description="The .imx model file as the runners see it (a local session's modelPath). Required. "
        "Immutable.",
    )
    model_volume: Annotated[spec_mod.ModelVolume | None, IMMUTABLE] = Field(
        default=None,
        description="The volume holding the model file, mounted read-only at the directory of modelPath (a "
        "local session's modelVolume). Unset: the file is in the runner image. Immutable.",
    )
    bithuman: Annotated[PoolBithumanSpec | None, IMMUTABLE] = Field(
        default=None, description="The bitHuman credentials the runners render with. Immutable."
    )
    runner: Annotated[PoolRunnerSpec | None, IMMUTABLE] = Field(
        default=None, description="The runner pods: image, renderer, resources, GPUs, placement. Immutable."
    )
    avatar_ids: Annotated[
        Annotated[
            list[Annotated[str, Strict(), StringConstraints(max_length=spec_mod.IDENTITY_MAX)]],
            Field(max_length=AVATAR_IDS_MAX),
        ]
        | None,
        MUTABLE,
    ] = Field(
        default=None,
        description=f"The bitHuman avatar codes (agent ids) this pool serves, at most {AVATAR_IDS_MAX}: the "
        "gateway (avatar-operator gateway) sends a request for one of them to this pool. Unset or empty: none, "
        "the pool serves only sessions that name it. The operator itself does not read it. May change.",
    )

    @property
    def mode(self) -> spec_mod.Mode:
        """A pool renders locally: the local-mode rules apply to its renderer fields."""
        return spec_mod.Mode.LOCAL


class Slots(KubeModel):
    """The pool's session slots: runners times sessionsPerRunner, over the ready runners."""

    total: Int = Field(description="Slots on ready runners.")
    busy: Int = Field(description="Slots held by sessions.")
    free: Int = Field(description="Slots a new session can take now.")


class PoolRunnerStatus(KubeModel):
    """One runner, as the operator last saw it."""

    name: Annotated[Text, StringConstraints(max_length=253)] = Field(description="The runner's pod (or process) name.")
    ready: bool = Field(description="Its renderer is loaded and it answers its launch API.")
    sessions: Int = Field(description="Sessions placed on it.")
    draining: bool | None = Field(
        default=None, description="Being scaled away: takes no new session, and goes once its sessions end."
    )


class AvatarPoolStatus(KubeModel):
    """What the operator observed of the pool. Written by the operator only."""

    replicas: Int | None = Field(default=None, description="Runners that exist (the scale subresource's status).")
    ready_replicas: Int | None = Field(default=None, description="Runners whose renderer is loaded and that answer.")
    selector: Annotated[Text, StringConstraints(max_length=320)] | None = Field(
        default=None, description="The label selector of the pool's runner pods (for the scale subresource)."
    )
    slots: Slots | None = Field(default=None, description="Session slots: total, busy and free.")
    runners: Annotated[tuple[PoolRunnerStatus, ...], Field(max_length=1000)] | None = Field(
        default=None, description="Each runner: ready, and how many sessions it holds."
    )
    observed_generation: Int | None = Field(default=None, description="The spec's metadata.generation last acted on.")
    conditions: Annotated[tuple[status_mod.Condition, ...], Field(max_length=8)] | None = Field(
        default=None,
        description="Ready: every runner the spec asks for is ready; kstatus's Reconciling (True while runners "
        "start) and Stalled (True while a runner fails before it is ready, or the spec is invalid).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


def parse_pool(obj: Mapping[str, Any]) -> AvatarPoolSpec:
    """The spec of an AvatarPool object; pydantic.ValidationError when its shape is wrong."""
    spec = spec_mod.plain(obj.get("spec"))
    return AvatarPoolSpec.model_validate(spec if spec is not None else {}, by_alias=True, by_name=False)


def to_wire(status: AvatarPoolStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)
