"""The generated CRD in a real kube-apiserver: it is accepted, its CEL refuses
what rules.py refuses with the same messages, and the offline validator and
the apiserver agree on generated specs."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, cast

import kubernetes
import pytest
import yaml
from avatar_operator.api import names, spec, validation
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import Stack
from tests.unit.test_rules import (
    CASES,
    CHANGES,
    CLOUD,
    RULES_BY_ID,
    TRANSITIONS_BY_FIELD,
    VALID,
    base64ish,
    session,
)

pytestmark = pytest.mark.stack

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
# Every AvatarSession in the examples (a file may hold a pool too: test_pool_crd checks those).
SESSION_EXAMPLES = [
    pytest.param(doc, id=f"{path.name}:{doc['metadata']['name']}")
    for path in EXAMPLES
    for doc in yaml.safe_load_all(path.read_text())
    if doc and doc.get("kind") == "AvatarSession"
]


def as_kubectl_sends(value: Any) -> Any:
    """kubectl turns YAML into JSON through Go, which writes 3.0 as 3; the
    Python client would send 3.0, which the apiserver reads as a float."""
    if isinstance(value, dict):
        return {k: as_kubectl_sends(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_kubectl_sends(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def placed(obj: dict[str, Any], ns: str, name: str | None = None) -> dict[str, Any]:
    """`obj` in namespace `ns` (and renamed), as kubectl would send it."""
    meta = {**obj.get("metadata", {}), "namespace": ns, **({"name": name} if name else {})}
    return cast(dict[str, Any], as_kubectl_sends({**obj, "metadata": meta}))


def dry_run_create(objects: kubernetes.client.CustomObjectsApi, ns: str, obj: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(the object as the apiserver would store it, "") or (None, its refusal)."""
    try:
        stored = objects.create_namespaced_custom_object(
            names.GROUP, names.VERSION, ns, names.PLURAL, placed(obj, ns), dry_run="All", field_validation="Strict"
        )
        return cast(dict[str, Any], stored), ""
    except kubernetes.client.ApiException as e:
        assert e.status in (400, 422), f"unexpected answer {e.status}: {e.body}"
        return None, str(json.loads(e.body or "{}").get("message"))


def our_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The spec as the operator will read it: defaults filled in, nulls gone."""
    return spec.parse_spec(obj).model_dump(by_alias=True, exclude_none=True, mode="json")


@pytest.mark.parametrize("obj", SESSION_EXAMPLES)
def test_examples_are_accepted_with_our_defaults(
    crd_stack: Stack, ns: str, objects: kubernetes.client.CustomObjectsApi, obj: dict[str, Any]
) -> None:
    stored, refusal = dry_run_create(objects, ns, obj)
    assert stored is not None, refusal
    assert stored["spec"] == our_view(obj)


@pytest.mark.parametrize(("rule_id", "spec_"), CASES)
def test_cel_refuses_each_rule_case_with_its_message(crd_stack: Stack, ns: str, rule_id: str, spec_: dict[str, Any]) -> None:
    rule = RULES_BY_ID[rule_id]
    proc = crd_stack.kubectl("apply", "-n", ns, "--dry-run=server", "-f", "-", input=json.dumps(placed(session(spec_), ns)), check=False)
    assert proc.returncode != 0, f"{rule_id}: accepted"
    assert f"{rule.field}: " in proc.stderr and rule.message in proc.stderr, proc.stderr


@pytest.mark.parametrize("spec_", VALID)
def test_what_validate_accepts_the_apiserver_accepts(ns: str, objects: kubernetes.client.CustomObjectsApi, spec_: dict[str, Any]) -> None:
    # Among them the plugin's apiUrl forms (a scheme in any case, empty for the
    # default) and a photo on the first-generation expression model.
    stored, refusal = dry_run_create(objects, ns, session(spec_))
    assert stored is not None, refusal
    assert stored["spec"] == our_view(session(spec_))


def test_a_plugin_argument_name_never_reaches_the_operator(ns: str, objects: kubernetes.client.CustomObjectsApi) -> None:
    """What the README says of the did-you-mean hint: strict validation (kubectl's
    default) refuses `model_path`; the server's default (Warn) prunes it, so the
    stored spec the operator reads has no trace of it, and the rule it breaks
    is what the operator reports, naming the plugin's argument."""
    obj = placed(session({"room": "lobby", "agentIdentity": "agent", "model_path": "/models/a.imx"}), ns, "plugin-names")
    with pytest.raises(kubernetes.client.ApiException) as refused:
        objects.create_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL, obj, dry_run="All", field_validation="Strict")
    assert 'unknown field "spec.model_path"' in json.loads(refused.value.body)["message"]
    for mode in ("Warn", "Ignore"):
        # CEL runs on the pruned object: modelPath is now missing, and the message names model_path.
        with pytest.raises(kubernetes.client.ApiException) as pruned:
            objects.create_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL, obj, dry_run="All", field_validation=mode)
        message = json.loads(pruned.value.body)["message"]
        assert RULES_BY_ID["local-model-path"].message in message and "`model_path`" in message
    stored = objects.create_namespaced_custom_object(
        names.GROUP, names.VERSION, ns, names.PLURAL, placed(session({**CLOUD, "avatar_participant_identity": "me"}), ns, "pruned"),
        dry_run="All", field_validation="Warn",
    )
    assert "avatar_participant_identity" not in stored["spec"]
    assert stored["spec"]["avatarParticipant"]["identity"] == spec.DEFAULT_AVATAR_IDENTITY
    assert validation.validate(stored) == []


def test_the_largest_image_is_within_the_cel_cost_budget(ns: str, objects: kubernetes.client.CustomObjectsApi) -> None:
    largest = "QUJD" * (spec.AVATAR_IMAGE_MAX // 4)
    stored, refusal = dry_run_create(objects, ns, session({**CLOUD, "avatarImage": largest}))
    assert stored is not None, refusal
    # The regex scans all of an invalid one too: refused by the rule, not by a cost limit.
    _, refusal = dry_run_create(objects, ns, session({**CLOUD, "avatarImage": largest[:-1] + "_"}))
    assert RULES_BY_ID["avatar-image-format"].message in refusal and "cost" not in refusal


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_immutable_fields_refuse_a_change(ns: str, objects: kubernetes.client.CustomObjectsApi, field: str) -> None:
    old, new = CHANGES[field]
    name = f"immutable-{field.lower()}"
    objects.create_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL, placed(session(old), ns, name))

    def replace(spec_: dict[str, Any]) -> str:
        """The refusal of an update to `spec_`, or "". An operator running on the
        stack may update the object meanwhile: a conflict means try again."""
        for _ in range(10):
            stored = cast(dict[str, Any], objects.get_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL, name))
            body = {**stored, "spec": as_kubectl_sends(spec_)}
            try:
                objects.replace_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.PLURAL, name, body, dry_run="All")
            except kubernetes.client.ApiException as e:
                if e.status == 409:
                    continue
                return str(json.loads(e.body or "{}").get("message"))
            return ""
        raise AssertionError(f"{name} kept changing under the test")

    rule = TRANSITIONS_BY_FIELD[f"spec.{field}"]
    refusal = replace(new)
    assert f"{rule.field}: Invalid value" in refusal and rule.message in refusal
    assert replace({**old, "maxDuration": 120.5, "connection": {"maxRetry": 7}}) == ""


def test_kubectl_explain_prints_the_descriptions(crd_stack: Stack) -> None:
    deadline = time.monotonic() + 30  # the apiserver publishes the CRD's OpenAPI a moment after Established
    while (proc := crd_stack.kubectl("explain", "avatarsession.spec.connection", check=False)).returncode != 0:
        assert time.monotonic() < deadline, proc.stderr
        time.sleep(0.5)
    text = " ".join(proc.stdout.split())
    for field in spec.ConnectionSpec.model_fields.values():
        assert field.description is not None and field.description in text


def test_short_name_and_printer_columns(crd_stack: Stack, ns: str) -> None:
    crd_stack.kubectl("apply", "-n", ns, "-f", str(EXAMPLES[0]))
    header = crd_stack.kubectl("get", "avs", "-n", ns).stdout.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "MODE", "MODEL", "ROOM", "READY", "AGE"]


# --- the offline validator and the apiserver agree ------------------------------

def numbers_as_floats(value: Any) -> Any:
    # Go prints a float64 in its shortest form (2**63 as 9223372036854776000),
    # which Python reads back as a different int: compare numbers as floats.
    if isinstance(value, dict):
        return {k: numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers_as_floats(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


text = st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
name = st.sampled_from(["img", "models", "a.b-c"])


def number(low: float, high: float) -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(int(low), int(high)), st.floats(low, high, allow_nan=False, allow_infinity=False))


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


# field -> (mostly valid values, values some rule or the schema refuses)
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "room": (st.sampled_from(["lobby", "room-1", "ünïcode ☃"]), st.one_of(text, st.just("r" * 257), st.just(5))),
    "agentIdentity": (st.just("agent"), st.one_of(text, st.just(["agent"]))),
    "model": (st.sampled_from(list(spec.Model) + [None]).map(lambda m: m and m.value), st.sampled_from(["Essence", ""])),
    "modelPath": (st.sampled_from(["/models/a.imx", "/m/n/a.imx"]), st.sampled_from(["", "a.imx", "/a.imx", "/m\n/a.imx", "/models/"])),
    "modelVolume": (
        st.sampled_from([{"persistentVolumeClaim": {"claimName": "models", "readOnly": True}}, {"image": {"reference": "r:1"}}]),
        st.sampled_from([{}, {"hostPath": {"path": "/srv"}}, {"csi": {"driver": "d"}, "image": {"reference": "r"}}, {"image": {"reference": "r", "pullPolicy": "Sometimes"}}]),
    ),
    "avatarId": (st.just("A1"), st.one_of(text, st.just(5))),
    "avatarImage": (st.sampled_from(["https://x/p.png", "QUJD"]), st.one_of(base64ish(), st.sampled_from(["http:/x", "/tmp/p.png"]))),
    "avatarImageFrom": (
        name.map(lambda n: {"secretKeyRef": {"name": n, "key": "a.png"}}),
        st.sampled_from([{}, {"secretKeyRef": {"name": "Bad_Name", "key": "k"}}, {"configMapKeyRef": {"name": "a", "key": "k"}, "secretKeyRef": {"name": "a", "key": "k"}}]),
    ),
    "bithuman": (
        optional(apiUrl=st.sampled_from(["https://b/x?async=true", "HTTPS://b/x", "hTtP://b", ""]), secretRef=name.map(lambda n: {"name": n})),
        optional(apiUrl=st.sampled_from(["b/x", " https://b", "ftp://b"]), secretRef=st.just({"name": ""})),
    ),
    "livekit": (optional(url=st.sampled_from(["wss://lk", "ws://lk:7880"])), optional(url=st.sampled_from(["lk:7880", ""]))),
    "avatarParticipant": (optional(identity=st.just("avatar"), name=text.filter(bool)), optional(identity=st.just(""), name=st.just(""))),
    "connection": (
        optional(maxRetry=st.one_of(st.none(), st.integers(1, 5), st.just(3.0)), retryInterval=number(0, 3), timeout=number(0.5, 3)),
        optional(maxRetry=st.sampled_from([0, -1, 2.5, "3", True, 2**63]), retryInterval=number(-2, -0.1), timeout=st.sampled_from([0, -1, "1"])),
    ),
    "runner": (
        optional(
            gpus=st.integers(0, 2),
            resources=st.just({"limits": {"cpu": "1.5", "memory": "1Gi", "nvidia.com/gpu": 1}}),
            tolerations=st.sampled_from([[], [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]]),
            nodeSelector=st.sampled_from([{"a": "b"}, {"a": None}]),
        ),
        optional(
            gpus=st.sampled_from([-1, 1.5, "1"]),
            resources=st.sampled_from([{"limits": {"cpu": 1.5}}, {"limits": {"cpu": "lots"}}]),
            tolerations=st.sampled_from([[None], [{"effect": "Never"}]]),
            nodeSelector=st.just({"a": 1}),
        ),
    ),
    "maxDuration": (st.one_of(st.none(), number(1, 1e5)), st.one_of(number(-5, 0), st.sampled_from(["10", 2**63 + 1]))),
    "colour": (st.nothing(), st.just("blue")),  # an unknown field
}


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    """Specs near the rules' edges: a few fields each, each valid seven times in eight,
    and one of the fields that pick the mode."""
    mode_field = draw(st.sampled_from(["avatarId", "avatarImage", "avatarImageFrom", "modelPath"]))
    chosen = draw(st.sets(st.sampled_from(sorted(FIELDS)), max_size=5)) | {"room", "agentIdentity", mode_field}
    spec_ = {}
    for field in sorted(chosen):
        good, bad = FIELDS[field]
        spec_[field] = draw(bad if field == "colour" or draw(st.integers(0, 7)) == 0 else good)
    return session(spec_)


@given(obj=manifests())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_offline_validator_and_apiserver_agree(ns: str, objects: kubernetes.client.CustomObjectsApi, obj: dict[str, Any]) -> None:
    problems = validation.validate(obj)
    stored, refusal = dry_run_create(objects, ns, obj)
    event("accepted" if stored is not None else "refused")
    assert (stored is not None) == (not problems), f"apiserver: {refusal or 'accepted'}; validate: {problems}"
    if stored is not None:
        assert numbers_as_floats(stored["spec"]) == numbers_as_floats(our_view(obj))
