"""The validation rules: one case per rule, shape errors, updates, and parity
with livekit-plugins-bithuman's AvatarSession, side by side."""

from __future__ import annotations

import base64
import os
import re
import sys
import unicodedata
from typing import Any

import pytest
from avatar_operator.api import names, rules, spec, validation
from avatar_operator.api.rules import Problem
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.plugins.bithuman import AvatarSession, BitHumanException
from livekit.plugins.bithuman.avatar import _is_valid_base64

CLOUD: dict[str, Any] = {"room": "lobby", "agentIdentity": "agent", "avatarId": "A91XMB7113"}
LOCAL: dict[str, Any] = {"room": "lobby", "agentIdentity": "agent", "modelPath": "/models/avatar.imx"}
IMAGE = {"room": "lobby", "agentIdentity": "agent"}
PVC = {"persistentVolumeClaim": {"claimName": "models"}}
URL = "https://example.com/portrait.jpg"
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n-not-really-a-png").decode()


def session(spec_: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.GROUP}/{names.VERSION}",
        "kind": names.KIND,
        "metadata": {"name": "s", "namespace": "default"},
        "spec": spec_,
    }


# rule id -> specs that break that rule and no other.
RULE_CASES: dict[str, list[dict[str, Any]]] = {
    "room-non-empty": [{**CLOUD, "room": ""}],
    "agent-identity-non-empty": [{**CLOUD, "agentIdentity": ""}],
    "local-model-path": [{"room": "lobby", "agentIdentity": "agent"}, {**LOCAL, "modelPath": ""}],
    "model-path-in-volume": [
        {**LOCAL, "modelPath": path, "modelVolume": PVC}
        for path in ("avatar.imx", "/avatar.imx", "/models/", "//models/avatar.imx", "models/avatar.imx")
    ],
    "model-path-not-in-tmp": [{**LOCAL, "modelPath": "/tmp/avatar.imx", "modelVolume": PVC}],
    "model-volume-no-host-path": [{**LOCAL, "modelVolume": {"hostPath": {"path": "/srv/models"}}}],
    "model-volume-one-source": [
        {**LOCAL, "modelVolume": {}},
        {**LOCAL, "modelVolume": {**PVC, "image": {"reference": "registry.example.com/models:v1"}}},
    ],
    "avatar-id-non-empty": [{**CLOUD, "avatarId": ""}],
    "avatar-image-format": [
        {**IMAGE, "avatarImage": image}
        for image in (
            "",
            "   ",
            "/var/lib/portrait.png",  # a file path: the plugin's, not a resource's
            "ftp://example.com/p.png",
            "HTTPS://example.com/p.png",  # the plugin's prefix test is case-sensitive
            "QUJD=",  # 5 characters
            "QUJ",  # not a multiple of 4
            "Q===",  # three padding characters
            "QU=J",  # padding inside
            "QUJD_A==",  # url-safe alphabet
            "QUJD\vQUJ",  # \v is stripped at the ends only
            "QUJD\u00a0QUI",
            "QUJDÄQ==",
        )
    ],
    "avatar-image-exclusive": [
        {**IMAGE, "avatarImage": URL, "avatarImageFrom": {"secretKeyRef": {"name": "img", "key": "p.png"}}}
    ],
    "avatar-image-from-one-source": [
        {**IMAGE, "avatarImageFrom": {}},
        {
            **IMAGE,
            "avatarImageFrom": {
                "secretKeyRef": {"name": "img", "key": "p.png"},
                "configMapKeyRef": {"name": "img", "key": "p.png"},
            },
        },
    ],
    "bithuman-api-url": [{**CLOUD, "bithuman": {"apiUrl": "auth.api.bithuman.ai/v1/runtime-tokens/request"}}],
    "livekit-url": [{**CLOUD, "livekit": {"url": "livekit.example.com"}}],
    "avatar-identity-non-empty": [{**CLOUD, "avatarParticipant": {"identity": ""}}],
    "avatar-name-non-empty": [{**CLOUD, "avatarParticipant": {"name": ""}}],
    "connection-max-retry": [{**CLOUD, "connection": {"maxRetry": n}} for n in (0, -1, 101)],
    "connection-retry-interval": [{**CLOUD, "connection": {"retryInterval": r}} for r in (-0.5, 3601.0)],
    "connection-timeout": [{**CLOUD, "connection": {"timeout": t}} for t in (0, -1.0, 601.0, 1e308)],
    "runner-gpus": [{**LOCAL, "runner": {"gpus": -1}}],
    "pool-ref-local": [{**CLOUD, "poolRef": {"name": "warm"}}, {**IMAGE, "avatarImage": URL, "poolRef": {"name": "warm"}}],
    "pool-owns-modelpath": [{**LOCAL, "poolRef": {"name": "warm"}}],
    "pool-owns-modelvolume": [{**IMAGE, "poolRef": {"name": "warm"}, "modelVolume": PVC}],
    "pool-owns-runner": [{**IMAGE, "poolRef": {"name": "warm"}, "runner": {"gpus": 1}}],
    # 1e12 overflowed the token's expiry and the deadline: a crash loop minting tokens.
    "max-duration": [{**CLOUD, "maxDuration": d} for d in (0, -5.5, 604801.0, 1e12)],
    # 100 characters the schema takes, 400 bytes LiveKit refuses.
    "room-bytes": [{**CLOUD, "room": "\U0001f600" * 100}],
    "agentidentity-bytes": [{**CLOUD, "agentIdentity": "\U0001f600" * 100}],
    "avatarparticipant-identity-bytes": [{**CLOUD, "avatarParticipant": {"identity": "\U0001f600" * 65}}],
    "avatarparticipant-name-bytes": [{**CLOUD, "avatarParticipant": {"name": "\u00e9" * 129}}],
}

RULES_BY_ID = {r.id: r for r in rules.RULES}
CASES = [(rule_id, s) for rule_id, specs in RULE_CASES.items() for s in specs]

VALID: list[dict[str, Any]] = [
    CLOUD,
    LOCAL,
    {**LOCAL, "modelVolume": PVC},
    {**LOCAL, "modelVolume": {"csi": {"driver": "s3.csi.example.com", "volumeAttributes": {"bucket": "m"}}}},
    {**LOCAL, "modelVolume": {"image": {"reference": "registry.example.com/models:v1", "pullPolicy": "IfNotPresent"}}},
    {**LOCAL, "runner": {"gpus": 0, "resources": {"limits": {"cpu": "1.5", "memory": "2Gi", "nvidia.com/gpu": 1}}}},
    {**IMAGE, "avatarImage": URL},
    {**IMAGE, "avatarImage": "http://x"},
    {**IMAGE, "avatarImage": PNG_B64},
    {**IMAGE, "avatarImage": "\n  QUJD\n QUI=\r\n\t"},  # YAML block scalars add line breaks
    {**IMAGE, "avatarImage": "\x1c\u3000QUJD\x85"},  # str.strip() takes all Unicode whitespace at the ends
    {**IMAGE, "avatarImage": "QU JD Q U = ="},
    {**IMAGE, "avatarImageFrom": {"configMapKeyRef": {"name": "portraits", "key": "ada.png"}}},
    {**CLOUD, "modelPath": ""},  # the plugin ignores model_path in cloud mode
    {**CLOUD, "model": "essence-2", "connection": {"maxRetry": 1, "retryInterval": 0, "timeout": 0.001}},
    {**CLOUD, "bithuman": {"apiUrl": "http://127.0.0.1:8080/launch?async=true", "secretRef": {"name": "bh"}}},
    {**CLOUD, "livekit": {"url": "wss://lk.example.com", "secretRef": {"name": "lk"}}, "maxDuration": 0.5},
    {**CLOUD, "maxDuration": 604800, "connection": {"maxRetry": 100, "retryInterval": 3600, "timeout": 600}},
    {**CLOUD, "room": "\U0001f600" * 64, "avatarParticipant": {"identity": "\u00e9" * 128}},  # exactly 256 bytes
    {**IMAGE, "poolRef": {"name": "warm"}},  # the pool holds the model path
    {**IMAGE, "poolRef": {"name": "warm"}, "maxDuration": 60, "avatarParticipant": {"identity": "a2"}},
]


@pytest.mark.parametrize(("rule_id", "spec_"), CASES)
def test_each_rule_refuses_its_case_alone(rule_id: str, spec_: dict[str, Any]) -> None:
    rule = RULES_BY_ID[rule_id]
    assert validation.validate(session(spec_)) == [Problem(rule.field, rule.message)]


@pytest.mark.parametrize(("rule_id", "spec_"), CASES)
def test_without_the_rule_its_case_passes(
    rule_id: str, spec_: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rules, "RULES", tuple(r for r in rules.RULES if r.id != rule_id))
    assert validation.validate(session(spec_)) == []


def test_every_rule_has_a_case() -> None:
    assert set(RULE_CASES) == set(RULES_BY_ID)


@pytest.mark.parametrize("fields", RULE_CASES["avatar-image-format"])
def test_the_plugin_refuses_the_image_cases_too(fields: dict[str, Any]) -> None:
    image = fields["avatarImage"]
    assert os.path.exists(image) or not plugin_accepts(avatar_image=image)


@pytest.mark.parametrize("spec_", VALID)
def test_valid_specs_pass(spec_: dict[str, Any]) -> None:
    assert validation.validate(session(spec_)) == []


@pytest.mark.parametrize(
    ("obj", "field", "message"),
    [
        (session({**CLOUD, "colour": "blue"}), "spec.colour", "unknown field"),
        (session({**CLOUD, "agent_identity": "agent"}), "spec.agent_identity", "unknown field"),  # camelCase only
        (session({**CLOUD, "connection": {"retries": 3}}), "spec.connection.retries", "avatarsession.spec.connection"),
        (session({"agentIdentity": "agent", "avatarId": "A"}), "spec.room", "required field is missing"),
        (session({**CLOUD, "room": 5}), "spec.room", "valid string"),
        (session({**CLOUD, "connection": {"maxRetry": "3"}}), "spec.connection.maxRetry", "valid integer"),
        (session({**CLOUD, "connection": {"maxRetry": True}}), "spec.connection.maxRetry", "valid integer"),
        (session({**CLOUD, "connection": {"maxRetry": 2.5}}), "spec.connection.maxRetry", "valid integer"),
        (session({**CLOUD, "connection": {"maxRetry": 2**63}}), "spec.connection.maxRetry", "64-bit"),
        (session({**CLOUD, "connection": {"timeout": "10"}}), "spec.connection.timeout", "valid number"),
        (session({**CLOUD, "model": "Expression"}), "spec.model", "'expression-2'"),
        (session({**LOCAL, "runner": {"gpus": 1.5}}), "spec.runner.gpus", "valid integer"),
        (session({**LOCAL, "runner": {"resources": {"limits": {"cpu": 1.5}}}}), "spec.runner.resources.limits.cpu", '"1.5"'),
        (session({**LOCAL, "runner": {"resources": {"limits": {"cpu": "lots"}}}}), "spec.runner.resources.limits.cpu", "'lots'"),
        (session({**LOCAL, "runner": {"tolerations": [None]}}), "spec.runner.tolerations[0]", "must be an object"),
        (session({**LOCAL, "runner": {"tolerations": [{"operator": "Maybe"}]}}), "spec.runner.tolerations[0].operator", "'Exists'"),
        (session({**CLOUD, "bithuman": {"secretRef": {"name": "Not_A_Name"}}}), "spec.bithuman.secretRef.name", "pattern"),
        (session({**IMAGE, "avatarImage": "A" * (spec.AVATAR_IMAGE_MAX + 4)}), "spec.avatarImage", "at most 98304"),
        (session("room: lobby"), "spec", "must be an object"),
        ({**session(CLOUD), "extra": 1}, "extra", "unknown field"),
        ({k: v for k, v in session(CLOUD).items() if k != "spec"}, "spec", "required field is missing"),
    ],
)
def test_shape_problems_name_the_field(obj: dict[str, Any], field: str, message: str) -> None:
    problems = validation.validate(obj)
    assert [p.field for p in problems] == [field]
    assert message in problems[0].message


@pytest.mark.parametrize(
    "spec_",
    [
        {**CLOUD, "maxDuration": None, "connection": {"maxRetry": None}},  # the apiserver drops nulls
        {**CLOUD, "connection": {"maxRetry": 3.0}},  # kubectl sends 3.0 as 3
        {**LOCAL, "runner": {"resources": {"requests": {"cpu": 2.0}}}},
    ],
)
def test_what_kubectl_sends_alike_passes(spec_: dict[str, Any]) -> None:
    assert validation.validate(session(spec_)) == []


def test_parse_spec_applies_the_defaults_and_derives_the_mode() -> None:
    parsed = spec.parse_spec(session({**LOCAL, "connection": {"maxRetry": None}}))
    assert parsed.mode is spec.Mode.LOCAL
    assert parsed.connection == spec.ConnectionSpec(max_retry=3, retry_interval=2.0, timeout=10.0)
    assert parsed.avatar_participant.identity == spec.DEFAULT_AVATAR_IDENTITY == "bithuman-avatar-agent"
    assert parsed.avatar_participant.name == spec.DEFAULT_AVATAR_NAME
    for cloud in (CLOUD, {**IMAGE, "avatarImage": URL}, {**IMAGE, "avatarImageFrom": {"secretKeyRef": {"name": "i", "key": "k"}}}):
        assert spec.parse_spec(session(cloud)).mode is spec.Mode.CLOUD


# --- updates --------------------------------------------------------------------

FULL: dict[str, Any] = {
    **LOCAL,
    "model": "expression",
    "modelVolume": PVC,
    "avatarId": "A1",
    "avatarImage": URL,
    "bithuman": {"secretRef": {"name": "bh"}},
    "livekit": {"url": "wss://lk.example.com"},
    "avatarParticipant": {"identity": "avatar"},
    "runner": {"gpus": 1},
    "connection": {"maxRetry": 3},
    "maxDuration": 60,
}
CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "room": (FULL, {**FULL, "room": "other"}),
    "agentIdentity": (FULL, {**FULL, "agentIdentity": "other"}),
    "model": (FULL, {**FULL, "model": "essence"}),
    "modelPath": (FULL, {**FULL, "modelPath": "/models/other.imx"}),
    "modelVolume": (FULL, {**FULL, "modelVolume": {"persistentVolumeClaim": {"claimName": "other"}}}),
    "avatarId": (FULL, {k: v for k, v in FULL.items() if k != "avatarId"}),  # removing counts as changing
    "avatarImage": (FULL, {**FULL, "avatarImage": "http://example.com/other.png"}),
    "avatarImageFrom": (
        {**CLOUD, "avatarImageFrom": {"secretKeyRef": {"name": "img", "key": "a.png"}}},
        {**CLOUD, "avatarImageFrom": {"secretKeyRef": {"name": "img", "key": "b.png"}}},
    ),
    "bithuman": (FULL, {**FULL, "bithuman": {"secretRef": {"name": "other"}}}),
    "livekit": (FULL, {**FULL, "livekit": {"url": "wss://other.example.com"}}),
    "avatarParticipant": (FULL, {**FULL, "avatarParticipant": {"identity": "other"}}),
    "runner": (FULL, {**FULL, "runner": {"gpus": 2}}),
    "poolRef": ({**IMAGE, "poolRef": {"name": "warm"}}, {**IMAGE, "poolRef": {"name": "other"}}),
}
TRANSITIONS_BY_FIELD = {r.field: r for r in rules.TRANSITION_RULES}


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_immutable_fields_refuse_a_change(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = CHANGES[field]
    rule = TRANSITIONS_BY_FIELD[f"spec.{field}"]
    assert validation.validate_update(session(old), session(new)) == [Problem(rule.field, rule.message)]
    monkeypatch.setattr(rules, "TRANSITION_RULES", tuple(r for r in rules.TRANSITION_RULES if r is not rule))
    assert validation.validate_update(session(old), session(new)) == []


def test_every_transition_rule_has_a_case() -> None:
    assert {f"spec.{f}" for f in CHANGES} == set(TRANSITIONS_BY_FIELD)


def test_connection_and_max_duration_may_change() -> None:
    new = {**FULL, "connection": {"maxRetry": 9, "timeout": 1.0}, "maxDuration": 600.5}
    assert validation.validate_update(session(FULL), session(new)) == []
    assert validation.validate_update(session(FULL), session({k: v for k, v in new.items() if k != "maxDuration"})) == []


def test_an_update_is_validated_itself_first() -> None:
    assert validation.validate_update(session(FULL), session({**FULL, "room": ""})) == [
        Problem("spec.room", RULES_BY_ID["room-non-empty"].message)
    ]


# --- parity with livekit-plugins-bithuman ----------------------------------------

WHITESPACE = "".join(chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace())
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@st.composite
def base64ish(draw: st.DrawFn) -> str:
    """Strings near the base64 boundary: real encodings with whitespace and
    damage mixed in, and short strings over the interesting characters."""
    if draw(st.booleans()):
        chars: list[str] = list(base64.b64encode(draw(st.binary(max_size=12))).decode())
        for _ in range(draw(st.integers(0, 4))):
            at = draw(st.integers(0, len(chars)))
            chars.insert(at, draw(st.sampled_from(WHITESPACE + "=_-é\x00")))
        damaged: bool = draw(st.booleans())
        if chars and damaged:
            del chars[draw(st.integers(0, len(chars) - 1))]
        return "".join(chars)
    return draw(st.text(alphabet=st.sampled_from(B64_ALPHABET[:3] + "+/=" + WHITESPACE + "_é"), max_size=12))


@given(base64ish())
@settings(max_examples=2000)
def test_base64_check_is_the_plugins(s: str) -> None:
    assert rules.is_valid_base64(s) == _is_valid_base64(s)


# The RE2 regex in the CRD, read by Python's re: \pZ spelled out, and \Z for
# RE2's $ (Python's $ also matches before a final newline).
Z_CHARS = "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("Z"))
RE2_AS_PYTHON = re.compile(rules.BASE64_RE2.replace(r"\pZ", re.escape(Z_CHARS)).removesuffix("$") + r"\Z")


@given(base64ish())
@settings(max_examples=2000)
def test_cel_base64_regex_is_the_plugins_rule(s: str) -> None:
    assert (RE2_AS_PYTHON.match(s) is not None) == _is_valid_base64(s)


def test_cel_whitespace_class_is_str_isspace() -> None:
    assert Z_CHARS.strip() == ""
    outer = re.compile(rules.WHITESPACE_CLASS.replace(r"\pZ", re.escape(Z_CHARS)))
    assert {c for c in map(chr, range(sys.maxunicode + 1)) if outer.fullmatch(c)} == set(WHITESPACE)


def plugin_problem(**kwargs: Any) -> str | None:
    """The plugin constructor's refusal, or None; its environment variables
    unset, as a spec has no counterpart of them."""
    with pytest.MonkeyPatch.context() as env:
        for name in ("BITHUMAN_API_SECRET", "BITHUMAN_API_TOKEN", "BITHUMAN_MODEL_PATH", "BITHUMAN_API_URL"):
            env.delenv(name, raising=False)
        try:
            AvatarSession(**kwargs)
        except BitHumanException as e:
            return str(e)
    return None


def plugin_accepts(**kwargs: Any) -> bool:
    # With a secret given, only the non-credential rules can refuse.
    return plugin_problem(api_secret="secret", **kwargs) is None


def ours_accepts(**fields: Any) -> bool:
    return validation.validate(session({"room": "lobby", "agentIdentity": "agent", **fields})) == []


@given(image=st.one_of(base64ish(), st.sampled_from(["http://a", "https://a/b.png", "http:/a", "data:image/png;base64,QUJD"])))
@settings(max_examples=500)
def test_avatar_image_parity_with_the_plugin(image: str) -> None:
    # An existing file path is the plugin's third form; a resource uses avatarImageFrom.
    if image.strip() and os.path.exists(image):
        return
    assert ours_accepts(avatarImage=image) == plugin_accepts(avatar_image=image)


@pytest.mark.parametrize(
    ("plugin_args", "fields"),
    [
        ({}, {}),
        ({"model_path": ""}, {"modelPath": ""}),
        ({"model_path": "/models/a.imx"}, {"modelPath": "/models/a.imx"}),
        ({"avatar_id": "A1"}, {"avatarId": "A1"}),
        ({"avatar_id": "A1", "model_path": ""}, {"avatarId": "A1", "modelPath": ""}),
        ({"avatar_id": "A1", "avatar_image": URL}, {"avatarId": "A1", "avatarImage": URL}),
        ({"avatar_image": "not an image"}, {"avatarImage": "not an image"}),
        ({"avatar_id": "A1", "model": "expression-2"}, {"avatarId": "A1", "model": "expression-2"}),
        ({"avatar_id": "A1", "avatar_participant_identity": "me"}, {"avatarId": "A1", "avatarParticipant": {"identity": "me"}}),
    ],
)
def test_constructor_parity_with_the_plugin(plugin_args: dict[str, Any], fields: dict[str, Any]) -> None:
    assert ours_accepts(**fields) == plugin_accepts(**plugin_args)


def test_deliberate_differences_from_the_plugin(tmp_path: Any) -> None:
    # An empty avatar_id makes the plugin send `agent_id: ""`, which bitHuman
    # refuses only once the session starts; the resource refuses it at once.
    assert plugin_accepts(avatar_id="") and not ours_accepts(avatarId="")
    # A file path names a file on the agent's machine; in a cluster the image
    # comes from a ConfigMap or Secret (avatarImageFrom), and the message says so.
    portrait = tmp_path / "portrait.png"
    from PIL import Image

    Image.new("RGB", (2, 2)).save(portrait)
    assert plugin_accepts(avatar_image=str(portrait))
    (problem,) = validation.validate(session({**IMAGE, "avatarImage": str(portrait)}))
    assert "spec.avatarImageFrom" in problem.message


@pytest.mark.parametrize("mode", list(spec.Mode))
@pytest.mark.parametrize("has_secret", [False, True])
@pytest.mark.parametrize("has_token", [False, True])
def test_credential_problem_is_the_plugins(mode: spec.Mode, has_secret: bool, has_token: bool) -> None:
    kwargs: dict[str, Any] = {"avatar_id": "A1"} if mode is spec.Mode.CLOUD else {"model_path": "/m/a.imx"}
    if has_secret:
        kwargs["api_secret"] = "secret"
    if has_token:
        kwargs["api_token"] = "token"
    assert rules.credential_problem(mode, has_secret=has_secret, has_token=has_token) == plugin_problem(**kwargs)


def test_an_unknown_field_is_refused_even_when_null_as_the_apiserver_refuses_it() -> None:
    base = {"room": "r", "agentIdentity": "a", "avatarId": "A1"}
    for spec, field in (
        ({**base, "bogus": None}, "spec.bogus"),
        ({**base, "avatarParticipant": {"extra": None}}, "spec.avatarParticipant.extra"),
    ):
        problems = validation.validate({"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "spec": spec})
        assert [p.field for p in problems] == [field] and "unknown field" in problems[0].message
    # A null known field is a missing one, as the apiserver treats it.
    assert validation.validate({"spec": {**base, "avatarParticipant": {"identity": None}, "maxDuration": None}}) == []


def test_every_spec_field_says_whether_it_may_change() -> None:
    from avatar_operator.api import spec as spec_mod

    unmarked = [n for n, f in spec_mod.AvatarSessionSpec.model_fields.items() if spec_mod.mutability(f) is None]
    assert not unmarked, f"mark these fields IMMUTABLE or MUTABLE in api/spec.py: {unmarked}"


def test_the_transition_rules_are_the_immutable_fields_exactly() -> None:
    from avatar_operator.api import spec as spec_mod

    immutable = {
        f"spec.{f.alias or n}"
        for n, f in spec_mod.AvatarSessionSpec.model_fields.items()
        if spec_mod.mutability(f) is spec_mod.Mutability.IMMUTABLE
    }
    assert {r.field for r in rules.TRANSITION_RULES} == immutable
    assert set(rules.MUTABLE_FIELDS) == {"spec.connection", "spec.maxDuration"}
    assert immutable.isdisjoint(rules.MUTABLE_FIELDS)
