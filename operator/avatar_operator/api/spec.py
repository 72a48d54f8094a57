"""The AvatarSession spec as pydantic models: the one source of its schema.

`crd.py` turns these models into the CRD's OpenAPI schema, so a field's type,
bounds and `description` (its `kubectl explain` text) are written once, here.
The models hold the *shape* of a spec (types, enums, string lengths, unknown
fields refused); the semantic rules (plugin parity, cross-field checks) live
in `rules.py`. `parse_spec` therefore guarantees the shape only: call
`validation.validate` for the whole verdict.

Python names are snake_case; the wire names are camelCase aliases. Parsing
accepts only the camelCase names, as the apiserver does; Python code may
construct models with either.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

from avatar_operator.api import fields_sets

# The plugin's defaults (livekit.plugins.bithuman.avatar).
DEFAULT_API_URL = "https://auth.api.bithuman.ai/v1/runtime-tokens/request"
DEFAULT_AVATAR_IDENTITY = "bithuman-avatar-agent"
DEFAULT_AVATAR_NAME = "bithuman-avatar-agent"
DEFAULT_MAX_RETRY = 3
DEFAULT_RETRY_INTERVAL = 2.0
DEFAULT_TIMEOUT = 10.0

# Every string has a maxLength: the apiserver estimates a CEL rule's cost from
# it and refuses a CRD whose rules could run unbounded.
NAME_MAX = 253  # a DNS subdomain (Secret, ConfigMap, PVC, PriorityClass names)
IDENTITY_MAX = 256  # LiveKit room names and participant identities
PATH_MAX = 4096  # Linux PATH_MAX
URL_MAX = 2048
TEXT_MAX = 1024  # image references, CSI driver options and other short strings
# avatarImage holds base64 image data inline. A copy of the spec can end up in
# kubectl's last-applied-configuration annotation, and Kubernetes caps all
# annotations of an object at 256 KiB together. 96 KiB keeps the
# base64 CEL rule within the apiserver's runtime limit of 1,000,000 per rule
# (`matches` costs ceil((size+1)/10) * ceil(len(regex)/4): 9,831 * 46 here; at
# 1 MiB it would be ~4.8M and a valid image would be refused for cost). Larger
# images go in a ConfigMap or Secret (spec.avatarImageFrom) or behind a URL.
AVATAR_IMAGE_MAX = 96 * 1024
MAP_MAX = 64  # entries in nodeSelector and CSI volumeAttributes
# The avatar's extra participant attributes: they ride in its room token, a
# JWT every join carries, so they are kept small.
ATTRIBUTES_MAX = 16
ATTRIBUTE_KEY_MAX = 128
ATTRIBUTE_VALUE_MAX = TEXT_MAX
LIST_MAX = 32  # tolerations

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"  # a ConfigMap or Secret data key
# resource.Quantity's pattern, as controller-gen writes it into CRDs.
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY)
_INT64 = 2**63


def _json_int(value: Any) -> Any:
    # JSON has one number type and kubectl sends `3.0` as `3`, which the
    # apiserver takes for an integer: accept integral floats likewise.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _int64(value: int) -> int:
    if not -_INT64 <= value < _INT64:
        raise ValueError("must fit in a 64-bit signed integer")
    return value


def _quantity(value: Any) -> int | str:
    value = _json_int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError('must be an integer or a quantity string such as "1.5", 500m or 2Gi')
    if isinstance(value, str) and not _QUANTITY_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a quantity (examples: 500m, 2Gi, 1)")
    return _int64(value) if isinstance(value, int) else value


# Strict types: the apiserver coerces nothing ("3" is not an integer, 3 is not
# a string), so neither does the parser.
Text = Annotated[str, Strict()]
Int = Annotated[int, BeforeValidator(_json_int), Strict(), AfterValidator(_int64)]
Number = Annotated[float, Strict()]
Flag = Annotated[bool, Strict()]
Name = Annotated[str, Strict(), StringConstraints(max_length=NAME_MAX, pattern=DNS_SUBDOMAIN)]
Quantity = Annotated[
    int | str,
    PlainValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY,
            "x-kubernetes-int-or-string": True,
        }
    ),
]


class Mode(StrEnum):
    """How the avatar is rendered: derived from the spec, never set."""

    LOCAL = "local"  # a runner pod renders it with the bitHuman SDK
    CLOUD = "cloud"  # bitHuman's cloud sends it


class Model(StrEnum):
    """A bitHuman model name, as the plugin's `model` argument spells it."""

    EXPRESSION = "expression"
    ESSENCE = "essence"
    EXPRESSION_2 = "expression-2"
    ESSENCE_2 = "essence-2"


class Mutability(enum.Enum):
    """Whether a spec field may change under a running session. Every top-level
    field carries one (a unit test fails when one doesn't); the CEL transition
    rules in the CRD are generated from them (`rules.TRANSITION_RULES`)."""

    IMMUTABLE = "immutable"  # fixed once the session exists: delete and create again
    MUTABLE = "mutable"  # may change; the worker reads the live spec


IMMUTABLE = Mutability.IMMUTABLE
MUTABLE = Mutability.MUTABLE


def mutability(field: FieldInfo) -> Mutability | None:
    """The marker in a field's Annotated metadata."""
    return next((m for m in field.metadata if isinstance(m, Mutability)), None)


class KubeModel(BaseModel):
    """Base of the resource's models: camelCase on the wire, unknown fields
    refused (as `kubectl apply` refuses them), immutable once parsed."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    # Equal fields sets shared (`fields_sets`): every validated model, and every copy.
    def model_post_init(self, context: Any, /) -> None:
        fields_sets.share(self)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        fields_sets.share(copied)
        return copied


class LocalObjectReference(KubeModel):
    """A reference to an object in the session's namespace."""

    name: Name = Field(description="Name of the object, in the namespace of the resource that names it.")


class KeySelector(KubeModel):
    """One key of a ConfigMap or Secret in the session's namespace."""

    name: Name = Field(description="Name of the ConfigMap or Secret, in the AvatarSession's namespace.")
    key: Annotated[str, Strict(), StringConstraints(max_length=NAME_MAX, pattern=CONFIG_KEY)] = Field(
        description="The key whose value is the image file (binaryData or data of a ConfigMap, data of a Secret)."
    )


class ImageSource(KubeModel):
    """An avatar image stored in the cluster: the Kubernetes form of the plugin's
    file path or PIL image argument. Set exactly one of the two."""

    config_map_key_ref: KeySelector | None = Field(
        default=None, description="A ConfigMap key holding the image file (use binaryData for binary image files)."
    )
    secret_key_ref: KeySelector | None = Field(default=None, description="A Secret key holding the image file.")


class PersistentVolumeClaimSource(KubeModel):
    """A PersistentVolumeClaim in the session's namespace."""

    claim_name: Name = Field(description="Name of the PersistentVolumeClaim holding the model file.")
    read_only: Flag | None = Field(default=None, description="Mount the claim read-only (the runner only reads the model).")


class CSISource(KubeModel):
    """An inline CSI volume (for instance a bucket mounted through a CSI driver)."""

    driver: Annotated[str, Strict(), StringConstraints(max_length=NAME_MAX)] = Field(
        description="Name of the CSI driver, as registered in the cluster."
    )
    read_only: Flag | None = Field(default=None, description="Mount the volume read-only.")
    fs_type: Annotated[str, Strict(), StringConstraints(max_length=64)] | None = Field(
        default=None, description="Filesystem type to mount, passed to the driver (e.g. ext4)."
    )
    volume_attributes: Annotated[
        dict[Text, Annotated[str, Strict(), StringConstraints(max_length=TEXT_MAX)]],
        Field(max_length=MAP_MAX),
    ] | None = Field(default=None, description="Driver-specific options.")
    node_publish_secret_ref: LocalObjectReference | None = Field(
        default=None, description="A Secret with the driver's credentials for mounting the volume."
    )


class PullPolicy(StrEnum):
    """When the kubelet pulls an image."""

    ALWAYS = "Always"
    NEVER = "Never"
    IF_NOT_PRESENT = "IfNotPresent"


class ImageVolumeSource(KubeModel):
    """An OCI image or artifact mounted read-only (needs the ImageVolume feature)."""

    reference: Annotated[str, Strict(), StringConstraints(max_length=TEXT_MAX)] = Field(
        description="The image or artifact reference holding the model file, e.g. registry.example.com/models/avatar:v1."
    )
    pull_policy: PullPolicy | None = Field(default=None, description="Always, Never or IfNotPresent.")


class HostPathSource(KubeModel):
    """Declared only so that it can be refused with a reason: see rules.py."""

    path: Annotated[str, Strict(), StringConstraints(max_length=PATH_MAX)] = Field(
        description="Not allowed: the runner must pass the restricted Pod Security Standard."
    )
    type: Annotated[str, Strict(), StringConstraints(max_length=64)] | None = Field(
        default=None, description="Not allowed: the runner must pass the restricted Pod Security Standard."
    )


class ModelVolume(KubeModel):
    """Where the .imx model file lives: a Kubernetes volume source, mounted
    read-only in the runner pod at the directory of spec.modelPath. Set exactly
    one source. Only sources the restricted Pod Security Standard allows are
    offered; ConfigMaps and Secrets are not, as their 1 MiB cap is far below a
    model's size."""

    persistent_volume_claim: PersistentVolumeClaimSource | None = Field(
        default=None, description="A PersistentVolumeClaim holding the model file."
    )
    csi: CSISource | None = Field(default=None, description="An inline CSI volume holding the model file.")
    image: ImageVolumeSource | None = Field(default=None, description="An OCI image or artifact holding the model file.")
    host_path: HostPathSource | None = Field(
        default=None,
        description="Refused: hostPath volumes break the restricted Pod Security Standard the runner pod "
        "must pass. Copy the model to a PersistentVolumeClaim, or use csi or image.",
    )


class BithumanSpec(KubeModel):
    """The bitHuman account the session uses."""

    api_url: Annotated[str, Strict(), StringConstraints(max_length=URL_MAX)] | None = Field(
        default=None,
        description="The plugin's api_url: where a cloud session is requested, an http:// or https:// URL (the "
        f"scheme in any case). Unset or empty: the operator's setting, else {DEFAULT_API_URL}. The default API "
        "gets JSON; any other endpoint gets a multipart form and honours an `async` query parameter, as in the plugin.",
    )
    secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="A Secret with the keys BITHUMAN_API_SECRET and/or BITHUMAN_API_TOKEN. Local mode needs "
        "either; cloud mode needs BITHUMAN_API_SECRET. Default: the operator's bitHuman Secret.",
    )


class LiveKitSpec(KubeModel):
    """The LiveKit server the room lives on."""

    url: Annotated[str, Strict(), StringConstraints(max_length=URL_MAX)] | None = Field(
        default=None, description="LiveKit server URL (ws://, wss://, http:// or https://). Default: the operator's setting."
    )
    secret_ref: LocalObjectReference | None = Field(
        default=None,
        description="A Secret with the keys LIVEKIT_API_KEY and LIVEKIT_API_SECRET, used to mint the avatar's "
        "room token. Default: the operator's LiveKit Secret.",
    )


class AvatarParticipantSpec(KubeModel):
    """The avatar's participant in the room."""

    identity: Annotated[str, Strict(), StringConstraints(max_length=IDENTITY_MAX)] = Field(
        default=DEFAULT_AVATAR_IDENTITY,
        description="The plugin's avatar_participant_identity: the avatar's identity in the room.",
    )
    name: Annotated[str, Strict(), StringConstraints(max_length=IDENTITY_MAX)] = Field(
        default=DEFAULT_AVATAR_NAME, description="The plugin's avatar_participant_name: the avatar's display name."
    )
    # A structural schema cannot bound a map's keys (no propertyNames): their
    # length is a rule in rules.py, with its CEL.
    attributes: Annotated[
        dict[Text, Annotated[str, Strict(), StringConstraints(max_length=ATTRIBUTE_VALUE_MAX)]],
        Field(max_length=ATTRIBUTES_MAX),
    ] | None = Field(
        default=None,
        description=f"Extra participant attributes of the avatar, put into the room token the operator mints "
        f"(at most {ATTRIBUTES_MAX}; keys up to {ATTRIBUTE_KEY_MAX} characters, values up to "
        f"{ATTRIBUTE_VALUE_MAX}), e.g. lk.avatar_provider: bithuman. Every participant in the room reads them, so "
        "lk.publish_on_behalf (the operator sets it from agentIdentity) and keys naming a credential (api_secret, "
        "api_token) are refused.",
    )


class ConnectionSpec(KubeModel):
    """The plugin's conn_options: how the cloud session request is retried."""

    max_retry: Int = Field(
        default=DEFAULT_MAX_RETRY, description="How many times the cloud session request is attempted (at least 1)."
    )
    retry_interval: Number = Field(
        default=DEFAULT_RETRY_INTERVAL, description="Seconds to wait between two attempts (0 or more)."
    )
    timeout: Number = Field(default=DEFAULT_TIMEOUT, description="Seconds allowed to connect to the API, per attempt (more than 0).")


class ResourceRequirements(KubeModel):
    """Compute resources of the runner container (the Kubernetes ResourceRequirements shape)."""

    requests: Annotated[dict[Text, Quantity], Field(max_length=16)] | None = Field(
        default=None, description="Minimum resources the runner is scheduled with, e.g. {cpu: 500m, memory: 1Gi}."
    )
    limits: Annotated[dict[Text, Quantity], Field(max_length=16)] | None = Field(
        default=None, description="Maximum resources the runner may use."
    )


class TolerationOperator(StrEnum):
    """How a toleration matches a taint's value."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """The taint effect a toleration matches."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(KubeModel):
    """A toleration of the runner pod (the Kubernetes Toleration shape)."""

    key: Annotated[str, Strict(), StringConstraints(max_length=NAME_MAX + 64)] | None = Field(
        default=None, description="The taint key it matches; empty with operator Exists matches every taint."
    )
    operator: TolerationOperator | None = Field(default=None, description="Exists or Equal (the default).")
    value: Annotated[str, Strict(), StringConstraints(max_length=63)] | None = Field(
        default=None, description="The taint value it matches (operator Equal)."
    )
    effect: TaintEffect | None = Field(default=None, description="The taint effect it matches; unset matches every effect.")
    toleration_seconds: Int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class RunnerSpec(KubeModel):
    """Knobs of the runner pod (local mode). Unset fields take the operator's defaults."""

    image: Annotated[str, Strict(), StringConstraints(max_length=TEXT_MAX)] | None = Field(
        default=None, description="The runner container image. Default: the operator's runner image."
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Compute resources of the runner container. Default: the operator's."
    )
    gpus: Int | None = Field(
        default=None,
        description="How many nvidia.com/gpu the runner asks for (0 or more). Default: 1 for the expression "
        "models, else 0.",
    )
    node_selector: Annotated[
        dict[Text, Annotated[str, Strict(), StringConstraints(max_length=63)]],
        Field(max_length=MAP_MAX),
    ] | None = Field(default=None, description="Node labels the runner pod must be scheduled on.")
    tolerations: Annotated[list[Toleration], Field(max_length=LIST_MAX)] | None = Field(
        default=None, description="Tolerations of the runner pod, e.g. for tainted GPU nodes."
    )
    priority_class_name: Name | None = Field(default=None, description="The runner pod's PriorityClass.")


class AvatarSessionSpec(KubeModel):
    """A talking avatar in a LiveKit room. Pool mode when poolRef is set (a warm runner of the pool renders it,
    with avatarImage or avatarImageFrom as its picture if given); else cloud mode (bitHuman's cloud sends the
    avatar) when avatarId, avatarImage or avatarImageFrom is set, else local mode (a runner pod renders the
    model at modelPath)."""

    room: Annotated[str, Strict(), StringConstraints(max_length=IDENTITY_MAX), IMMUTABLE] = Field(
        description="The LiveKit room the avatar joins. Immutable."
    )
    agent_identity: Annotated[str, Strict(), StringConstraints(max_length=IDENTITY_MAX), IMMUTABLE] = Field(
        description="Identity of the agent participant the avatar speaks for: it receives the agent's audio "
        "and publishes on its behalf (lk.publish_on_behalf). Immutable."
    )
    model: Annotated[Model | None, IMMUTABLE] = Field(
        default=None,
        description="The plugin's model: expression, essence, expression-2 or essence-2. Pins a cloud session to "
        "that model; unset sends nothing and bitHuman picks the model the avatar is prepared for. In local "
        "mode the .imx file determines the model. Immutable.",
    )
    model_path: Annotated[Annotated[str, Strict(), StringConstraints(max_length=PATH_MAX)] | None, IMMUTABLE] = Field(
        default=None,
        description="The plugin's model_path: the .imx model file as the runner sees it. Required in local "
        "mode. With modelVolume, an absolute path whose directory is where the volume is mounted, e.g. "
        "/models/avatar.imx. Immutable.",
    )
    model_volume: Annotated[ModelVolume | None, IMMUTABLE] = Field(
        default=None,
        description="The volume holding the model file (local mode), mounted read-only at the directory of "
        "modelPath. Unset: the file is in the runner image. Immutable.",
    )
    avatar_id: Annotated[Annotated[str, Strict(), StringConstraints(max_length=IDENTITY_MAX)] | None, IMMUTABLE] = Field(
        default=None, description="The plugin's avatar_id: the code of a bitHuman agent to render (cloud mode). Immutable."
    )
    avatar_image: Annotated[Annotated[str, Strict(), StringConstraints(max_length=AVATAR_IMAGE_MAX)] | None, IMMUTABLE] = Field(
        default=None,
        description="The plugin's avatar_image as a string (cloud mode, or the picture a pool's runner animates "
        f"with poolRef): an http:// or https:// URL, or base64 image data (at most {AVATAR_IMAGE_MAX} characters). "
        "For a file, use avatarImageFrom. Immutable.",
    )
    avatar_image_from: Annotated[ImageSource | None, IMMUTABLE] = Field(
        default=None,
        description="An image stored in a ConfigMap or Secret (cloud mode, or the picture a pool's runner animates "
        "with poolRef): the Kubernetes form of the plugin's file path or PIL image. At most one of avatarImage and "
        "avatarImageFrom. Immutable.",
    )
    bithuman: Annotated[BithumanSpec | None, IMMUTABLE] = Field(default=None, description="The bitHuman API and credentials. Immutable.")
    livekit: Annotated[LiveKitSpec | None, IMMUTABLE] = Field(default=None, description="The LiveKit server and credentials. Immutable.")
    avatar_participant: Annotated[AvatarParticipantSpec, IMMUTABLE] = Field(
        default_factory=lambda: AvatarParticipantSpec(),
        description="The avatar's identity, name and extra attributes in the room. Immutable.",
        json_schema_extra={"default": {}},  # so the apiserver fills in the nested defaults
    )
    connection: Annotated[ConnectionSpec, MUTABLE] = Field(
        default_factory=lambda: ConnectionSpec(),
        description="Retries of the cloud session request (the plugin's conn_options). May change.",
        json_schema_extra={"default": {}},
    )
    runner: Annotated[RunnerSpec | None, IMMUTABLE] = Field(default=None, description="The runner pod (local mode). Immutable.")
    max_duration: Annotated[Number | None, MUTABLE] = Field(
        default=None, description="Seconds after which the session ends and the avatar leaves (more than 0). May change."
    )
    pool_ref: Annotated[LocalObjectReference | None, IMMUTABLE] = Field(
        default=None,
        description="An AvatarPool in the session's namespace (local mode): the session takes a slot in one of "
        "its warm runners instead of starting a runner of its own. The pool holds the renderer, so modelPath, "
        "modelVolume, runner and avatarId are not set here; avatarImage or avatarImageFrom go to the runner as the "
        "picture to animate. Immutable.",
    )
    ttl_seconds_after_finished: Annotated[Int | None, MUTABLE] = Field(
        default=None,
        description="Seconds after the session ends (Succeeded or Failed, status.endTime) when the operator deletes "
        "it, with what it owns (0: at once), as a Job's ttlSecondsAfterFinished. Unset: kept until deleted. May "
        "change.",
    )

    @property
    def mode(self) -> Mode:
        """The plugin's rule (cloud when avatar_image or avatar_id is given), with
        avatarImageFrom standing for the plugin's file/PIL image; a pool session is
        local whatever its image: the pool's runner animates the picture."""
        if self.pool_ref is not None:
            return Mode.LOCAL
        cloud = self.avatar_id is not None or self.avatar_image is not None or self.avatar_image_from is not None
        return Mode.CLOUD if cloud else Mode.LOCAL


def plain(value: Any) -> Any:
    """The JSON view of a manifest: plain dicts and lists, null fields dropped.

    The apiserver drops a null field (or fills in its default) before it
    validates, so a null field means the same as a missing one.
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def parse_spec(obj: Mapping[str, Any]) -> AvatarSessionSpec:
    """The spec of an AvatarSession object (a manifest or a kopf body).

    Raises pydantic.ValidationError when the spec's shape is wrong; the
    semantic rules are `validation.validate`'s.
    """
    spec = plain(obj.get("spec"))
    # by_name=False: only camelCase names are fields on the wire.
    return AvatarSessionSpec.model_validate(spec if spec is not None else {}, by_alias=True, by_name=False)
