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
from avatar_operator.api import names, object_meta, rules, spec, validation
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
    "bithuman-api-url": [
        {**CLOUD, "bithuman": {"apiUrl": url}}
        for url in ("auth.api.bithuman.ai/v1/runtime-tokens/request", " https://b/x", "ftp://b/x", "httpss://b", "\u0127ttps://b")
    ],
    # bitHuman refuses a photo on any model but the first-generation expression one.
    "photo-model": [
        {**IMAGE, image: value, "model": model}
        for image, value in (("avatarImage", URL), ("avatarImageFrom", {"secretKeyRef": {"name": "img", "key": "p.png"}}))
        for model in ("essence", "essence-2", "expression-2")
    ]
    + [{**CLOUD, "avatarImage": PNG_B64, "model": "essence-2"}],
    "livekit-url": [{**CLOUD, "livekit": {"url": "livekit.example.com"}}],
    "avatar-identity-non-empty": [{**CLOUD, "avatarParticipant": {"identity": ""}}],
    "avatar-name-non-empty": [{**CLOUD, "avatarParticipant": {"name": ""}}],
    "connection-max-retry": [{**CLOUD, "connection": {"maxRetry": n}} for n in (0, -1, 101)],
    "connection-retry-interval": [{**CLOUD, "connection": {"retryInterval": r}} for r in (-0.5, 3601.0)],
    "connection-timeout": [{**CLOUD, "connection": {"timeout": t}} for t in (0, -1.0, 601.0, 1e308)],
    "runner-gpus": [{**LOCAL, "runner": {"gpus": -1}}],
    "pool-ref-local": [{**CLOUD, "poolRef": {"name": "warm"}}, {**CLOUD, "avatarImage": URL, "poolRef": {"name": "warm"}}],
    "pool-owns-modelpath": [{**LOCAL, "poolRef": {"name": "warm"}}],
    "pool-owns-modelvolume": [{**IMAGE, "poolRef": {"name": "warm"}, "modelVolume": PVC}],
    "pool-owns-runner": [{**IMAGE, "poolRef": {"name": "warm"}, "runner": {"gpus": 1}}],
    "avatar-attributes-key-length": [{**CLOUD, "avatarParticipant": {"attributes": {k: "v"}}} for k in ("", "k" * 129, "\u00e9" * 129)],
    "avatar-attributes-operator-keys": [
        {**CLOUD, "avatarParticipant": {"attributes": {key: "x"}}}
        for key in ("lk.publish_on_behalf", names.SESSION_ATTRIBUTE)
    ],
    "avatar-attributes-no-credential": [
        {**CLOUD, "avatarParticipant": {"attributes": {"lk.avatar_provider": "bithuman", key: "x"}}}
        for key in ("api_secret", "API-SECRET", "Api_Token", "bithuman_api_secret", "x-api-token-2")
    ],
    "ttl-seconds-after-finished": [{**CLOUD, "ttlSecondsAfterFinished": n} for n in (-1, -(2**62))],
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
    # The plugin's `api_url or default`, and aiohttp reads a scheme in any case.
    {**CLOUD, "bithuman": {"apiUrl": ""}},
    {**CLOUD, "bithuman": {"apiUrl": "HTTPS://auth.api.bithuman.ai/v1/runtime-tokens/request"}},
    {**CLOUD, "bithuman": {"apiUrl": "Http://127.0.0.1:8080/launch"}},
    {**IMAGE, "avatarImage": URL, "model": "expression"},
    {**IMAGE, "avatarImageFrom": {"configMapKeyRef": {"name": "portraits", "key": "ada.png"}}, "model": "expression"},
    {**CLOUD, "model": "essence-2"},  # an agent, not a photo: any model
    {**CLOUD, "livekit": {"url": "wss://lk.example.com", "secretRef": {"name": "lk"}}, "maxDuration": 0.5},
    {**CLOUD, "maxDuration": 604800, "connection": {"maxRetry": 100, "retryInterval": 3600, "timeout": 600}},
    {**CLOUD, "room": "\U0001f600" * 64, "avatarParticipant": {"identity": "\u00e9" * 128}},  # exactly 256 bytes
    {**IMAGE, "poolRef": {"name": "warm"}},  # the pool holds the model path
    {**IMAGE, "poolRef": {"name": "warm"}, "maxDuration": 60, "avatarParticipant": {"identity": "a2"}},
    # A pool session's picture goes to its runner: any model, and no cloud rule.
    {**IMAGE, "poolRef": {"name": "warm"}, "avatarImage": URL},
    {**IMAGE, "poolRef": {"name": "warm"}, "avatarImage": PNG_B64, "model": "essence"},
    {**IMAGE, "poolRef": {"name": "warm"}, "avatarImageFrom": {"secretKeyRef": {"name": "img", "key": "avatar-image"}}},
    {**CLOUD, "avatarParticipant": {"attributes": {"lk.avatar_provider": "bithuman", "lk.agent.state": "x", "secret": ""}}},
    {**CLOUD, "avatarParticipant": {"attributes": {f"k{i:0127}": "v" * 1024 for i in range(16)}}},
    {**CLOUD, "ttlSecondsAfterFinished": 0},
    {**CLOUD, "ttlSecondsAfterFinished": 2**63 - 1},
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
        (session({**CLOUD, "avatarParticipant": {"attributes": {f"k{i}": "v" for i in range(17)}}}), "spec.avatarParticipant.attributes", "at most 16"),
        (session({**CLOUD, "avatarParticipant": {"attributes": {"k": "v" * 1025}}}), "spec.avatarParticipant.attributes.k", "at most 1024"),
        (session({**CLOUD, "avatarParticipant": {"attributes": {"k": 1}}}), "spec.avatarParticipant.attributes.k", "valid string"),
        (session({**CLOUD, "ttlSecondsAfterFinished": 1.5}), "spec.ttlSecondsAfterFinished", "valid integer"),
        (session({**CLOUD, "ttlSecondsAfterFinished": "60"}), "spec.ttlSecondsAfterFinished", "valid integer"),
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
    "model": (FULL, {k: v for k, v in FULL.items() if k != "model"}),  # FULL has a photo: expression only
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


def test_an_update_reports_its_own_problems_and_the_changes_together() -> None:
    assert validation.validate_update(session(FULL), session({**FULL, "room": ""})) == [
        Problem("spec.room", RULES_BY_ID["room-non-empty"].message),
        Problem("spec.room", TRANSITIONS_BY_FIELD["spec.room"].message),
    ]
    # A change to a field that is malformed itself: the shape problem, not a guess at the change.
    (problem,) = validation.validate_update(session(FULL), session({**FULL, "room": 5}))
    assert problem.field == "spec.room" and "valid string" in problem.message


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
    for spec_, field in (
        ({**base, "bogus": None}, "spec.bogus"),
        ({**base, "avatarParticipant": {"extra": None}}, "spec.avatarParticipant.extra"),
    ):
        problems = validation.validate({"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "spec": spec_})
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
    assert set(rules.MUTABLE_FIELDS) == {"spec.connection", "spec.maxDuration", "spec.ttlSecondsAfterFinished"}
    assert immutable.isdisjoint(rules.MUTABLE_FIELDS)


# --- the plugin's apiUrl forms -----------------------------------------------------


@given(scheme=st.sampled_from(["http", "https"]).flatmap(lambda s: st.tuples(*(st.sampled_from([c, c.upper()]) for c in s))))
@settings(max_examples=60)
def test_an_api_url_scheme_in_any_case_is_accepted_and_works(scheme: tuple[str, ...]) -> None:
    import yarl
    from avatar_operator.build import cloud_request

    for host in ("auth.api.bithuman.ai", "127.0.0.1:8089"):
        url = f"{''.join(scheme)}://{host}/v1/runtime-tokens/request"
        assert ours_accepts(avatarId="A1", bithuman={"apiUrl": url})
        # The plugin takes it, and picks the same request format for it as for the lower-case URL ...
        with pytest.MonkeyPatch.context() as env:
            env.delenv("BITHUMAN_API_URL", raising=False)
            plugin = AvatarSession(api_url=url, api_secret="s", avatar_id="A1", model="expression")
        assert plugin._is_default_api_url() == cloud_request.is_default_api_url(url) == cloud_request.is_default_api_url(url.lower())
        # ... and the operator's request to it is built and goes to an http(s) URL, as aiohttp reads it.
        request = cloud_request.build_request(
            api_url=url, api_secret="s", api_token=None, livekit_url="wss://lk", livekit_token="t", room="r",
            model="expression", avatar_id="A1", avatar_image=None, avatar_image_bytes=None, idempotency_key="k",
        )
        assert yarl.URL(request.url).scheme == "".join(scheme).lower()


def test_an_empty_api_url_is_the_default_as_in_the_plugin() -> None:
    from avatar_operator import settings as settings_mod
    from avatar_operator.controller import credentials

    with pytest.MonkeyPatch.context() as env:
        env.delenv("BITHUMAN_API_URL", raising=False)
        assert AvatarSession(api_url="", api_secret="s", avatar_id="A1")._api_url == spec.DEFAULT_API_URL
    assert ours_accepts(avatarId="A1", bithuman={"apiUrl": ""})
    settings = settings_mod.Settings.from_env({"AVATAR_LIVEKIT_URL": "wss://lk"})
    parsed = spec.parse_spec(session({**CLOUD, "bithuman": {"apiUrl": "", "secretRef": {"name": "bh"}}}))
    resolved = credentials.bithuman(parsed, settings, {"bh": {"BITHUMAN_API_SECRET": "s"}}.get)
    assert resolved.api_url == settings.bithuman.api_url == spec.DEFAULT_API_URL
    # Whitespace is no URL to the plugin either: it would post to "  ".
    assert not ours_accepts(avatarId="A1", bithuman={"apiUrl": "  "})


def test_a_photo_runs_on_the_first_generation_expression_model_only() -> None:
    # What the plugin's own docs say of avatar_image ("Expression 1 only"), and the
    # API's 400: the rule names the fix, pointing at an agent made from the photo.
    assert "Expression 1 only" in (AvatarSession.__init__.__doc__ or "")
    problems = validation.validate(session({**IMAGE, "avatarImage": URL, "model": "expression-2"}))
    assert [p.field for p in problems] == ["spec.model"]
    assert "set spec.model to expression or remove it" in problems[0].message and "spec.avatarId" in problems[0].message
    for model in (None, "expression"):
        assert ours_accepts(avatarImage=URL, **({"model": model} if model else {}))


# --- every problem in one run ------------------------------------------------------

# A malformed value for a field, and its shape problem's field.
MALFORMED: dict[str, tuple[Any, str]] = {
    "room": (5, "spec.room"),
    "agentIdentity": (["agent"], "spec.agentIdentity"),
    "model": ("Essence", "spec.model"),
    "maxDuration": ("10", "spec.maxDuration"),
    "connection": ({"maxRetry": "3"}, "spec.connection.maxRetry"),
    "livekit": ({"url": 7}, "spec.livekit.url"),
    "runner": ({"tolerations": [{"operator": "Maybe"}]}, "spec.runner.tolerations[0].operator"),
    "bithuman": ({"secretRef": {"name": "Not_A_Name"}}, "spec.bithuman.secretRef.name"),
    "avatarParticipant": ({"identity": 5}, "spec.avatarParticipant.identity"),
}


def rule_reads(rule_id: str) -> set[str]:
    rule = RULES_BY_ID[rule_id]
    return {str(path[0]) for path in validation.reads(rule.cel, rule.scope) if path}


@given(case=st.sampled_from(CASES), field=st.sampled_from(sorted(MALFORMED)))
@settings(max_examples=300)
def test_a_shape_problem_and_a_rule_problem_are_reported_together(case: tuple[str, dict[str, Any]], field: str) -> None:
    rule_id, spec_ = case
    if field in rule_reads(rule_id) or field in spec_:
        return  # the rule reads that field: with it malformed the rule has nothing sound to read
    value, shape_field = MALFORMED[field]
    rule = RULES_BY_ID[rule_id]
    problems = validation.validate(session({**spec_, field: value}))
    assert problems[0].field == shape_field and Problem(rule.field, rule.message) in problems[1:], problems


def test_a_multi_problem_manifest_names_each_problem_once() -> None:
    problems = validation.validate(
        session({
            "room": "",
            "agentIdentity": 5,  # a type error
            "avatarImage": "not an image",
            "model": "essence-2",
            "connection": {"maxRetry": 0, "timeout": "soon"},  # a rule and a type error side by side
            "bithuman": {"apiUrl": "b/x", "secretRef": {}},  # a rule, and a missing field
            "colour": "blue",
        })
    )
    assert [p.field for p in problems] == [
        "spec.agentIdentity", "spec.bithuman.secretRef.name", "spec.connection.timeout", "spec.colour",
        "spec.room", "spec.avatarImage", "spec.bithuman.apiUrl", "spec.model", "spec.connection.maxRetry",
    ]


def test_a_rule_on_a_malformed_field_is_not_guessed() -> None:
    # avatarId decides the mode: malformed, neither mode's rules are applied to a guess.
    problems = validation.validate(session({"room": "r", "agentIdentity": "a", "avatarId": 5}))
    assert [p.field for p in problems] == ["spec.avatarId"]
    # A missing key inside modelVolume: the presence of modelVolume is still known.
    problems = validation.validate(session({**LOCAL, "modelPath": "avatar.imx", "modelVolume": {"persistentVolumeClaim": {}}}))
    assert [p.field for p in problems] == ["spec.modelVolume.persistentVolumeClaim.claimName", "spec.modelPath"]


def test_what_a_rule_reads_comes_from_its_cel() -> None:
    assert validation.reads("!has(self.modelVolume) || self.modelPath.matches('x')", "spec") == {
        ("modelVolume",): True,
        ("modelPath",): False,
    }
    assert validation.reads("bytes(self).size() <= 256", "spec.avatarParticipant.name") == {("avatarParticipant", "name"): False}
    assert validation.reads("!has(self.hostPath)", "spec.modelVolume") == {("modelVolume",): True, ("modelVolume", "hostPath"): True}
    # Every rule reads something, and every field it reads is a spec field.
    session_fields = {f.alias or n for n, f in spec.AvatarSessionSpec.model_fields.items()}
    for rule in rules.RULES:
        read = rule_reads(rule.id)
        assert read and read <= session_fields, rule.id


# --- plugin names where spec fields belong -----------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "hint"),
    [
        ({"model_path": "/m/a.imx"}, "spec.model_path", "did you mean `modelPath`?"),
        ({"avatar_id": "A1"}, "spec.avatar_id", "did you mean `avatarId`?"),
        ({"avatar_image": URL}, "spec.avatar_image", "did you mean `avatarImage`?"),
        ({"api_url": "https://x"}, "spec.api_url", "did you mean `bithuman.apiUrl`?"),
        ({"conn_options": {"max_retry": 3}}, "spec.conn_options", "did you mean `connection`?"),
        ({"avatar_participant_identity": "me"}, "spec.avatar_participant_identity", "did you mean `avatarParticipant.identity`?"),
        ({"avatar_participant_name": "me"}, "spec.avatar_participant_name", "did you mean `avatarParticipant.name`?"),
        ({"api_secret": "sk-1"}, "spec.api_secret", "did you mean `bithuman.secretRef`?"),
        ({"livekit_url": "wss://x"}, "spec.livekit_url", "did you mean `livekit.url`?"),
        ({"runtime": None}, "spec.runtime", "has no spec field"),
        ({"connection": {"max_retry": 3}}, "spec.connection.max_retry", "did you mean `maxRetry`?"),
        ({"connection": {"Timeout": 3}}, "spec.connection.Timeout", "did you mean `timeout`?"),
        ({"agent_identity": "a"}, "spec.agent_identity", "did you mean `agentIdentity`?"),
        ({"bithuman": {"api_url": "https://x"}}, "spec.bithuman.api_url", "did you mean `apiUrl`?"),
        ({"runner": {"tolerations": [{"toleration_seconds": 5}]}}, "spec.runner.tolerations[0].toleration_seconds", "`tolerationSeconds`"),
    ],
)
def test_a_plugin_argument_name_gets_the_spec_name(fields: dict[str, Any], field: str, hint: str) -> None:
    problems = validation.validate(session({**CLOUD, **fields}))
    (problem,) = [p for p in problems if p.field == field]
    assert problem.message.startswith("unknown field") and hint in problem.message, problem
    assert "sk-1" not in str(problems)  # a value is never echoed, a secret one least of all


def test_every_plugin_argument_has_a_hint() -> None:
    import inspect

    from avatar_operator.api import plugin_args

    kwargs = {
        name
        for fn in (AvatarSession.__init__, AvatarSession.start)
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }
    assert kwargs <= set(plugin_args.PLUGIN_ARGS), kwargs - set(plugin_args.PLUGIN_ARGS)
    session_fields = {f.alias or n for n, f in spec.AvatarSessionSpec.model_fields.items()}
    for name, hint in plugin_args.PLUGIN_ARGS.items():
        assert hint.field is None or hint.field.split(".")[0] in session_fields, name


# --- metadata.name as the API server checks it -------------------------------------


def named(name: str, **meta: str) -> dict[str, Any]:
    return {**session(CLOUD), "metadata": {"name": name, **meta}}


@pytest.mark.parametrize("name", ["a", "lobby-avatar", "a.b-c", "0abc", "x" * 246])
def test_valid_names_pass(name: str) -> None:
    assert validation.validate(named(name)) == []


@pytest.mark.parametrize("name", ["Lobby", "lobby_avatar", "-a", "a-", "a..b", "a.-b", "ü", "x" * 254, "a b", "a\n"])
def test_the_api_servers_name_rule(name: str) -> None:
    (problem,) = validation.validate(named(name))
    assert problem.field == "metadata.name" and "253 characters" in problem.message


@given(st.text(alphabet="ab-.A_1", min_size=1, max_size=12))
def test_the_name_rule_is_dns_1123_subdomain(name: str) -> None:
    labels = name.split(".")
    valid = all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", label) for label in labels)
    assert object_meta.is_subdomain(name) == valid


def test_names_the_operator_derives_must_be_valid_too() -> None:
    # 253 characters is a valid name, and names.shorten cuts "<name>-runner" to fit;
    # a cut that ends on a "." drops the dot rather than leave ".-" (no valid pod name).
    ok = "x" * 253
    assert validation.validate(named(ok)) == []
    cut_at_a_dot = "x" * 243 + "." + "y" * 9
    assert object_meta.is_subdomain(cut_at_a_dot)
    assert validation.validate(named(cut_at_a_dot)) == []
    runner = names.runner_pod_name(cut_at_a_dot)
    assert object_meta.is_subdomain(runner) and len(runner) <= names.NAME_MAX and ".-" not in runner


def test_generate_name_and_namespace() -> None:
    obj = session(CLOUD)
    assert validation.validate({**obj, "metadata": {"generateName": "lobby-", "namespace": "team-a"}}) == []
    problems = validation.validate({**obj, "metadata": {"generateName": "Lobby-", "namespace": "Team_A"}})
    assert [p.field for p in problems] == ["metadata.generateName", "metadata.namespace"]
