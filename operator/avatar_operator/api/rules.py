"""The AvatarSession validation rules, as data: one table, two evaluators.

Each rule carries a Python check (run by `validate`, offline and by the
operator) and the same rule in CEL (put into the CRD by `crd.py`, so
`kubectl apply` refuses a bad spec at once). Python is the authority; the CEL
is written to agree with it exactly, and the integration tests hold the
apiserver to that.

The rules are `livekit-plugins-bithuman`'s `AvatarSession.__init__` checks,
restated for a resource: the plugin's environment variables have no
counterpart in a spec (credentials come from Secrets, checked by the operator
at reconcile time with `credential_problem`), and a few checks are stricter
on purpose (each is listed, with its reason, in the README's "Stricter than
the plugin").
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

import pydantic

from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.api.pool import AvatarPoolSpec
from avatar_operator.api.spec import AvatarSessionSpec, Mode

# The spec a rule reads: a rule on the renderer fields reads a session and a pool alike.
S = TypeVar("S", contravariant=True)


class RendererFields(Protocol):
    """What a local session and a pool both have: the model and the runner."""

    @property
    def model_path(self) -> str | None: ...
    @property
    def model_volume(self) -> spec_mod.ModelVolume | None: ...
    @property
    def runner(self) -> spec_mod.RunnerSpec | None: ...


@dataclasses.dataclass(frozen=True)
class Problem:
    """One reason a manifest is invalid: the field, and what to do about it."""

    field: str  # e.g. "spec.avatarImage"
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class CelReason(StrEnum):
    """The error type the apiserver reports for a failed CEL rule."""

    INVALID = "FieldValueInvalid"
    REQUIRED = "FieldValueRequired"
    FORBIDDEN = "FieldValueForbidden"


@dataclasses.dataclass(frozen=True)
class Rule(Generic[S]):
    """A rule on one spec. `cel` runs with `self` at the schema node `scope`
    (and only when that node is present, which `check` mirrors)."""

    id: str
    field: str
    message: str
    check: Callable[[S], bool]  # True when the spec passes
    cel: str
    scope: str
    reason: CelReason = CelReason.INVALID


@dataclasses.dataclass(frozen=True)
class TransitionRule(Generic[S]):
    """A rule on an update: `oldSelf` is the stored object at `scope`."""

    id: str
    field: str
    message: str
    check: Callable[[S, S], bool]  # (old, new) -> passes
    cel: str
    scope: str


# --- the avatar image: the plugin's _is_valid_base64, twice ------------------

_BASE64_CHARS = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def is_valid_base64(s: str) -> bool:
    """livekit.plugins.bithuman.avatar._is_valid_base64, step for step."""
    # The plugin strips outer whitespace (str.isspace), then removes space,
    # \n, \r and \t anywhere; other whitespace inside the data is invalid.
    s_clean = s.strip().replace(" ", "").replace("\n", "").replace("\r", "").replace("\t", "")
    if not s_clean:
        return False
    if len(s_clean) % 4 != 0:
        return False
    if not _BASE64_CHARS.match(s_clean):
        return False
    try:
        return len(base64.b64decode(s_clean)) > 0
    except ValueError:  # binascii.Error is one
        return False


def is_url(s: str) -> bool:
    """The plugin's URL test for avatar_image: a prefix, nothing more (case-sensitive)."""
    return s.startswith(("http://", "https://"))


# The plugin hands api_url to aiohttp, whose URL parser reads the scheme in any
# case (HTTPS:// works), so the rule does too: ASCII letters only, spelled out,
# so that Python's re and the apiserver's RE2 read the same language.
HTTP_URL_ANY_CASE = r"^[hH][tT][tT][pP][sS]?://"


def api_url_ok(url: str | None) -> bool:
    """Unset or empty is the default API (the plugin's `api_url or default`); else an http(s) URL."""
    return not url or re.match(HTTP_URL_ANY_CASE, url) is not None


# The same language as is_valid_base64, as one RE2 regex over the raw string
# (CEL has no str.strip() equivalent: its trim() misses \x1c-\x1f). Outer
# whitespace is what str.isspace() accepts: \t-\r, \x1c-\x20, \x85 and the
# Unicode Z category. Inside, only space, \t, \n, \r may follow each base64
# character. The data is quads of [A-Za-z0-9+/], the last one possibly ending
# in "=" or "==": that gives the length rule, and a non-empty match always
# decodes to non-empty bytes.
WHITESPACE_CLASS = r"[\t-\r\x1c- \x85\pZ]"
_SP = r"[\t\n\r ]*"
_CH = r"[A-Za-z0-9+/]" + _SP
BASE64_RE2 = rf"^{WHITESPACE_CLASS}*(?:(?:{_CH}){{4}})*(?:{_CH}){{2}}(?:(?:{_CH}){{2}}|{_CH}=|={_SP}=){WHITESPACE_CLASS}*$"

# An absolute path in a directory other than "/" (any character but "/" in names).
_MODEL_PATH = r"/[^/].*/[^/]+"


# The runner pod mounts its scratch emptyDir at /tmp (manifests.py).
_IN_TMP = re.compile(r"/tmp/+[^/]+", re.DOTALL)


def _model_path_ok(path: str) -> bool:
    return re.fullmatch(_MODEL_PATH, path, re.DOTALL) is not None


# --- the rules -----------------------------------------------------------------

_CLOUD_CEL = "has(self.avatarId) || has(self.avatarImage) || has(self.avatarImageFrom)"
_VOLUME_SOURCES = ("persistentVolumeClaim", "csi", "image", "hostPath")

# Upper bounds no real session needs to pass: past them a timedelta or the
# token's expiry overflows (maxDuration 1e12 crashed the worker in a loop).
MAX_RETRY_MAX = 100
RETRY_INTERVAL_MAX_S = 3600.0
TIMEOUT_MAX_S = 600.0
MAX_DURATION_MAX_S = 7 * 24 * 3600.0
# LiveKit bounds room names and identities in bytes; the schema's maxLength counts characters.
LIVEKIT_NAME_MAX_BYTES = 256


def _utf8_fits(value: str) -> bool:
    return len(value.encode()) <= LIVEKIT_NAME_MAX_BYTES


# --- the avatar's extra attributes ----------------------------------------------

# Set by the operator in every avatar token; a spec may not set them.
ATTRIBUTE_PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
OPERATOR_ATTRIBUTES = (ATTRIBUTE_PUBLISH_ON_BEHALF, names.SESSION_ATTRIBUTE)
# Attributes are readable by the whole room: no key may even look like a
# bitHuman credential (the plugin leaks its secret there as `api_secret`).
CREDENTIAL_WORDS = ("api_secret", "api_token")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def names_a_credential(key: str) -> bool:
    """True when a key spells api_secret or api_token, in any case, with - or _ (CEL's lowerAscii: ASCII only)."""
    folded = key.translate(_ASCII_LOWER).replace("-", "_")
    return any(word in folded for word in CREDENTIAL_WORDS)


def _attributes(s: AvatarSessionSpec) -> dict[str, str]:
    return s.avatar_participant.attributes or {}


_CREDENTIAL_CEL = " || ".join(f"k.lowerAscii().replace('-', '_').contains('{w}')" for w in CREDENTIAL_WORDS)


# The renderer's rules: a local session's and a pool's fields alike.
MODEL_RULES: tuple[Rule[RendererFields], ...] = (
    Rule(
        id="model-path-in-volume",
        field="spec.modelPath",
        message="must be an absolute path in a directory, e.g. /models/avatar.imx, when spec.modelVolume is "
        "set: the volume is mounted at that directory",
        check=lambda s: s.model_volume is None or s.model_path is None or _model_path_ok(s.model_path),
        cel=f"!has(self.modelVolume) || !has(self.modelPath) || self.modelPath.matches(r'(?s)^{_MODEL_PATH}$')",
        scope="spec",
    ),
    Rule(
        id="model-path-not-in-tmp",
        field="spec.modelPath",
        message="must not be directly in /tmp when spec.modelVolume is set: the runner's writable scratch "
        "volume is mounted at /tmp; use another directory, e.g. /models/avatar.imx",
        check=lambda s: s.model_volume is None or s.model_path is None or not _IN_TMP.fullmatch(s.model_path),
        cel=f"!has(self.modelVolume) || !has(self.modelPath) || !self.modelPath.matches(r'(?s)^{_IN_TMP.pattern}$')",
        scope="spec",
    ),
    Rule(
        id="model-volume-no-host-path",
        field="spec.modelVolume.hostPath",
        message="not allowed: the runner pod must pass the restricted Pod Security Standard, which forbids "
        "hostPath volumes. Copy the model to a PersistentVolumeClaim, or use csi or image",
        check=lambda s: s.model_volume is None or s.model_volume.host_path is None,
        cel="!has(self.hostPath)",
        scope="spec.modelVolume",
        reason=CelReason.FORBIDDEN,
    ),
    Rule(
        id="model-volume-one-source",
        field="spec.modelVolume",
        message="must set exactly one volume source: persistentVolumeClaim, csi or image",
        check=lambda s: s.model_volume is None
        or sum(
            v is not None
            for v in (
                s.model_volume.persistent_volume_claim,
                s.model_volume.csi,
                s.model_volume.image,
                s.model_volume.host_path,
            )
        )
        == 1,
        cel=" + ".join(f"(has(self.{f}) ? 1 : 0)" for f in _VOLUME_SOURCES) + " == 1",
        scope="spec.modelVolume",
    ),
)
RUNNER_GPUS: Rule[RendererFields] = Rule(
    id="runner-gpus",
    field="spec.runner.gpus",
    message="must be 0 or more",
    check=lambda s: s.runner is None or s.runner.gpus is None or s.runner.gpus >= 0,
    cel="self >= 0",
    scope="spec.runner.gpus",
)
# A pool holds these for its sessions.
POOL_OWNED = (("modelPath", "model_path"), ("modelVolume", "model_volume"), ("runner", "runner"))


def _unset_with_pool(attr: str) -> Callable[[AvatarSessionSpec], bool]:
    return lambda s: s.pool_ref is None or getattr(s, attr) is None


RULES: tuple[Rule[AvatarSessionSpec], ...] = (
    Rule(
        id="room-non-empty",
        field="spec.room",
        message="must not be empty: set it to the LiveKit room the avatar joins",
        check=lambda s: s.room != "",
        cel="size(self) > 0",
        scope="spec.room",
        reason=CelReason.REQUIRED,
    ),
    Rule(
        id="agent-identity-non-empty",
        field="spec.agentIdentity",
        message="must not be empty: set it to the identity of the agent participant the avatar speaks for",
        check=lambda s: s.agent_identity != "",
        cel="size(self) > 0",
        scope="spec.agentIdentity",
        reason=CelReason.REQUIRED,
    ),
    Rule(
        id="local-model-path",
        field="spec.modelPath",
        message="must be set for local mode, as the plugin's `model_path`: set it to the .imx model file's "
        "path in the runner, name a pool in spec.poolRef, or set spec.avatarId, spec.avatarImage or "
        "spec.avatarImageFrom for a cloud session",
        check=lambda s: s.mode is Mode.CLOUD or s.pool_ref is not None or bool(s.model_path),
        cel=f"{_CLOUD_CEL} || has(self.poolRef) || (has(self.modelPath) && size(self.modelPath) > 0)",
        scope="spec",
        reason=CelReason.REQUIRED,
    ),
    Rule(
        id="pool-ref-local",
        field="spec.avatarId",
        message="must not be set with spec.poolRef: a pool renders its own model, not a bitHuman agent (a "
        "gateway picks the pool for an avatar id through AvatarPool.spec.avatarIds); remove spec.avatarId, or "
        "remove spec.poolRef for a cloud session",
        check=lambda s: s.pool_ref is None or s.avatar_id is None,
        cel="!has(self.poolRef) || !has(self.avatarId)",
        scope="spec",
        reason=CelReason.FORBIDDEN,
    ),
    *(
        Rule(
            id=f"pool-owns-{wire.lower()}",
            field=f"spec.{wire}",
            message=f"must not be set with spec.poolRef: the pool's runners hold the renderer; set {wire} on "
            "the AvatarPool, or remove spec.poolRef",
            check=_unset_with_pool(attr),
            cel=f"!has(self.poolRef) || !has(self.{wire})",
            scope="spec",
            reason=CelReason.FORBIDDEN,
        )
        for wire, attr in POOL_OWNED
    ),
    *MODEL_RULES,
    Rule(
        id="avatar-id-non-empty",
        field="spec.avatarId",
        message="must not be empty: set it to the code of a bitHuman agent, or remove it for local mode",
        check=lambda s: s.avatar_id != "",
        cel="size(self) > 0",
        scope="spec.avatarId",
    ),
    Rule(
        id="avatar-image-format",
        field="spec.avatarImage",
        message="must be an http:// or https:// URL or base64 image data (A-Z, a-z, 0-9, "
        "+ and / in groups of four, the last group possibly ending in = or ==; spaces and line breaks are "
        "ignored). A file path is not accepted here: put the image in a ConfigMap or Secret and use "
        "spec.avatarImageFrom",
        check=lambda s: s.avatar_image is None or is_url(s.avatar_image) or is_valid_base64(s.avatar_image),
        cel=f"self.startsWith('http://') || self.startsWith('https://') || self.matches(r'{BASE64_RE2}')",
        scope="spec.avatarImage",
    ),
    Rule(
        id="avatar-image-exclusive",
        field="spec.avatarImageFrom",
        message="must not be set together with spec.avatarImage: remove one of the two",
        check=lambda s: s.avatar_image is None or s.avatar_image_from is None,
        cel="!has(self.avatarImage) || !has(self.avatarImageFrom)",
        scope="spec",
        reason=CelReason.FORBIDDEN,
    ),
    Rule(
        id="avatar-image-from-one-source",
        field="spec.avatarImageFrom",
        message="must set exactly one of configMapKeyRef and secretKeyRef",
        check=lambda s: s.avatar_image_from is None
        or (s.avatar_image_from.config_map_key_ref is None) != (s.avatar_image_from.secret_key_ref is None),
        cel="has(self.configMapKeyRef) != has(self.secretKeyRef)",
        scope="spec.avatarImageFrom",
    ),
    Rule(
        id="bithuman-api-url",
        field="spec.bithuman.apiUrl",
        message="must be an http:// or https:// URL (the scheme in any case), or empty or unset for the "
        "default API",
        check=lambda s: s.bithuman is None or api_url_ok(s.bithuman.api_url),
        cel=f"size(self) == 0 || self.matches(r'{HTTP_URL_ANY_CASE}')",
        scope="spec.bithuman.apiUrl",
    ),
    Rule(
        id="livekit-url",
        field="spec.livekit.url",
        message="must be a ws://, wss://, http:// or https:// URL; remove it for the operator's default",
        check=lambda s: s.livekit is None
        or s.livekit.url is None
        or s.livekit.url.startswith(("ws://", "wss://", "http://", "https://")),
        cel="self.startsWith('ws://') || self.startsWith('wss://') || self.startsWith('http://') "
        "|| self.startsWith('https://')",
        scope="spec.livekit.url",
    ),
    Rule(
        id="photo-model",
        field="spec.model",
        message="a photo session (spec.avatarImage or spec.avatarImageFrom) runs only on the first-generation "
        "expression model, and bitHuman refuses any other: set spec.model to expression or remove it, or "
        "create a bitHuman agent from the photo and set spec.avatarId instead of the image",
        # A pool session's picture goes to the pool's runner, not to bitHuman's cloud.
        check=lambda s: (s.avatar_image is None and s.avatar_image_from is None)
        or s.pool_ref is not None
        or s.model is None
        or s.model is spec_mod.Model.EXPRESSION,
        cel="!(has(self.avatarImage) || has(self.avatarImageFrom)) || has(self.poolRef) || !has(self.model) "
        f"|| self.model == '{spec_mod.Model.EXPRESSION.value}'",
        scope="spec",
    ),
    Rule(
        id="avatar-identity-non-empty",
        field="spec.avatarParticipant.identity",
        message=f"must not be empty: remove it for the default, {spec_mod.DEFAULT_AVATAR_IDENTITY} (the "
        "plugin reads an empty one as its default; here the API server writes the default into the object "
        "when the field is absent, and an empty one would leave the spec naming another identity than the "
        "avatar's)",
        check=lambda s: s.avatar_participant.identity != "",
        cel="size(self) > 0",
        scope="spec.avatarParticipant.identity",
    ),
    Rule(
        id="avatar-name-non-empty",
        field="spec.avatarParticipant.name",
        message=f"must not be empty: remove it for the default, {spec_mod.DEFAULT_AVATAR_NAME} (the plugin reads "
        "an empty one as its default; here the API server writes the default into the object when the field "
        "is absent, and an empty one would leave the spec naming another name than the avatar's)",
        check=lambda s: s.avatar_participant.name != "",
        cel="size(self) > 0",
        scope="spec.avatarParticipant.name",
    ),
    Rule(
        id="connection-max-retry",
        field="spec.connection.maxRetry",
        message=f"must be 1 to {MAX_RETRY_MAX}: it counts attempts, the first one included",
        check=lambda s: 1 <= s.connection.max_retry <= MAX_RETRY_MAX,
        cel=f"self >= 1 && self <= {MAX_RETRY_MAX}",
        scope="spec.connection.maxRetry",
    ),
    Rule(
        id="connection-retry-interval",
        field="spec.connection.retryInterval",
        message=f"must be 0 to {RETRY_INTERVAL_MAX_S:g} seconds",
        check=lambda s: 0 <= s.connection.retry_interval <= RETRY_INTERVAL_MAX_S,
        cel=f"self >= 0.0 && self <= {RETRY_INTERVAL_MAX_S:.1f}",
        scope="spec.connection.retryInterval",
    ),
    Rule(
        id="connection-timeout",
        field="spec.connection.timeout",
        message=f"must be more than 0 and at most {TIMEOUT_MAX_S:g} seconds",
        check=lambda s: 0 < s.connection.timeout <= TIMEOUT_MAX_S,
        cel=f"self > 0.0 && self <= {TIMEOUT_MAX_S:.1f}",
        scope="spec.connection.timeout",
    ),
    Rule(
        id="avatar-attributes-key-length",
        field="spec.avatarParticipant.attributes",
        message=f"keys must be 1 to {spec_mod.ATTRIBUTE_KEY_MAX} characters",
        check=lambda s: all(0 < len(k) <= spec_mod.ATTRIBUTE_KEY_MAX for k in _attributes(s)),
        cel=f"self.all(k, size(k) > 0 && size(k) <= {spec_mod.ATTRIBUTE_KEY_MAX})",
        scope="spec.avatarParticipant.attributes",
    ),
    Rule(
        id="avatar-attributes-operator-keys",
        field="spec.avatarParticipant.attributes",
        message=f"must not set {' or '.join(OPERATOR_ATTRIBUTES)}: the operator sets them in the avatar's token "
        f"({ATTRIBUTE_PUBLISH_ON_BEHALF} from spec.agentIdentity); remove the key",
        check=lambda s: not any(k in OPERATOR_ATTRIBUTES for k in _attributes(s)),
        cel=" && ".join(f"!('{k}' in self)" for k in OPERATOR_ATTRIBUTES),
        scope="spec.avatarParticipant.attributes",
        reason=CelReason.FORBIDDEN,
    ),
    Rule(
        id="avatar-attributes-no-credential",
        field="spec.avatarParticipant.attributes",
        message="must not have a key naming a credential (api_secret or api_token, in any case, with - or _): "
        "every participant in the room reads the avatar's attributes; remove the key, and keep credentials in "
        "Secrets (spec.bithuman.secretRef)",
        check=lambda s: not any(names_a_credential(k) for k in _attributes(s)),
        cel=f"!self.exists(k, {_CREDENTIAL_CEL})",
        scope="spec.avatarParticipant.attributes",
        reason=CelReason.FORBIDDEN,
    ),
    RUNNER_GPUS,
    Rule(
        id="ttl-seconds-after-finished",
        field="spec.ttlSecondsAfterFinished",
        message="must be 0 or more: the seconds after the session ends before it is deleted (0: at once); remove "
        "it to keep the session",
        check=lambda s: s.ttl_seconds_after_finished is None or s.ttl_seconds_after_finished >= 0,
        cel="self >= 0",
        scope="spec.ttlSecondsAfterFinished",
    ),
    Rule(
        id="max-duration",
        field="spec.maxDuration",
        message=f"must be more than 0 and at most {MAX_DURATION_MAX_S:g} seconds (7 days); remove it for no limit",
        check=lambda s: s.max_duration is None or 0 < s.max_duration <= MAX_DURATION_MAX_S,
        cel=f"self > 0.0 && self <= {MAX_DURATION_MAX_S:.1f}",
        scope="spec.maxDuration",
    ),
    *(
        Rule(
            id=f"{wire.replace('.', '-').lower()}-bytes",
            field=f"spec.{wire}",
            message=f"must be at most {LIVEKIT_NAME_MAX_BYTES} bytes in UTF-8, as LiveKit counts (not characters)",
            check=check,
            cel=f"bytes(self).size() <= {LIVEKIT_NAME_MAX_BYTES}",
            scope=f"spec.{wire}",
        )
        for wire, check in (
            ("room", lambda s: _utf8_fits(s.room)),
            ("agentIdentity", lambda s: _utf8_fits(s.agent_identity)),
            ("avatarParticipant.identity", lambda s: _utf8_fits(s.avatar_participant.identity)),
            ("avatarParticipant.name", lambda s: _utf8_fits(s.avatar_participant.name)),
        )
    ),
)

def _fields(model: type[pydantic.BaseModel], marker: spec_mod.Mutability) -> tuple[tuple[str, str], ...]:
    """(wire name, attribute) of each top-level field with this marker (spec.Mutability)."""
    return tuple(
        (field.alias or name, name) for name, field in model.model_fields.items() if spec_mod.mutability(field) is marker
    )


def _unchanged(attr: str) -> Callable[[object, object], bool]:
    return lambda old, new: bool(getattr(old, attr) == getattr(new, attr))


def _transition_rules(model: type[pydantic.BaseModel], what: str) -> tuple[TransitionRule[object], ...]:
    *others, last = (f"spec.{wire}" for wire, _ in _fields(model, spec_mod.MUTABLE))
    mutable = f"{', '.join(others)} and {last}" if others else last
    return tuple(
        TransitionRule(
            id=f"immutable-{wire}",
            field=f"spec.{wire}",
            message=f"cannot change once the {what} (only {mutable} may change)",
            check=_unchanged(attr),
            # An optional field may also not appear or disappear.
            cel=f"has(self.{wire}) == has(oldSelf.{wire}) && (!has(self.{wire}) || self.{wire} == oldSelf.{wire})",
            scope="spec",
        )
        for wire, attr in _fields(model, spec_mod.IMMUTABLE)
    )


# What a running session is made of: every field marked IMMUTABLE in the
# spec's model. Only the MUTABLE ones may change (spec.connection, counted
# from the next attempt, spec.maxDuration and spec.ttlSecondsAfterFinished).
IMMUTABLE = _fields(AvatarSessionSpec, spec_mod.IMMUTABLE)
MUTABLE_FIELDS = tuple(f"spec.{wire}" for wire, _ in _fields(AvatarSessionSpec, spec_mod.MUTABLE))
TRANSITION_RULES = _transition_rules(AvatarSessionSpec, "session exists: delete the AvatarSession and create it again")

# --- the pool ------------------------------------------------------------------

POOL_REPLICAS_MAX = 1000
SESSIONS_PER_RUNNER_MAX = 64

POOL_RULES: tuple[Rule[AvatarPoolSpec], ...] = (
    Rule(
        id="pool-model-path",
        field="spec.modelPath",
        message="must be set: the .imx model file's path in the runners (a local session's modelPath)",
        check=lambda s: bool(s.model_path),
        cel="has(self.modelPath) && size(self.modelPath) > 0",
        scope="spec",
        reason=CelReason.REQUIRED,
    ),
    *MODEL_RULES,
    RUNNER_GPUS,
    Rule(
        id="pool-replicas",
        field="spec.replicas",
        message=f"must be 0 to {POOL_REPLICAS_MAX}",
        check=lambda s: 0 <= s.replicas <= POOL_REPLICAS_MAX,
        cel=f"self >= 0 && self <= {POOL_REPLICAS_MAX}",
        scope="spec.replicas",
    ),
    Rule(
        id="pool-avatar-ids-non-empty",
        field="spec.avatarIds",
        message="must not hold an empty avatar id: list the bitHuman avatar codes the pool serves",
        check=lambda s: all(s.avatar_ids or ()),
        cel="self.all(i, size(i) > 0)",
        scope="spec.avatarIds",
    ),
    Rule(
        id="pool-sessions-per-runner",
        field="spec.sessionsPerRunner",
        message=f"must be 1 to {SESSIONS_PER_RUNNER_MAX}: the sessions one runner serves at once",
        check=lambda s: 1 <= s.sessions_per_runner <= SESSIONS_PER_RUNNER_MAX,
        cel=f"self >= 1 && self <= {SESSIONS_PER_RUNNER_MAX}",
        scope="spec.sessionsPerRunner",
    ),
)
POOL_TRANSITION_RULES = _transition_rules(
    AvatarPoolSpec, "pool exists: its runners are loaded with it; create another AvatarPool for new sessions"
)


def credential_problem(mode: Mode, *, has_secret: bool, has_token: bool) -> str | None:
    """The plugin's credential rule, for the operator once it has read the Secret.

    Not part of `validate`: credentials may come from the operator's defaults,
    which a manifest alone cannot show. The wording is the plugin's.
    """
    if mode is Mode.LOCAL and not (has_secret or has_token):
        return "BITHUMAN_API_SECRET or BITHUMAN_API_TOKEN are required for local mode"
    if mode is Mode.CLOUD and not has_secret:
        return "BITHUMAN_API_SECRET are required for cloud mode"
    return None
