"""The AvatarPool CRD in a real kube-apiserver: accepted; its CEL refuses each
POOL_RULES case with the rule's field, message and reason, as validate_pool
does; valid pools are stored as the operator reads them; the transition rules
hold; kubectl explain, kubectl scale and the /scale subresource work; the
session's poolRef rules hold; and the offline validator and the apiserver
agree on generated pools."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import kubernetes
import pytest
from avatar_operator.api import crd, names, pool, rules, spec, validation
from avatar_operator.api.rules import Problem
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import Stack
from tests.integration.test_crd_apiserver import FIELDS as SESSION_FIELDS
from tests.integration.test_crd_apiserver import as_kubectl_sends, numbers_as_floats
from tests.unit.test_pool_api import (
    EXAMPLE_SESSION,
    MIN,
    POOL_CASES,
    POOL_CHANGES,
    POOL_RULES_BY_ID,
    POOL_TRANSITIONS_BY_FIELD,
    UNKNOWN_FIELDS,
    VALID_POOLS,
    WRONG_TYPES,
    avatar_pool,
    refusing,
)
from tests.unit.test_rules import RULE_CASES, RULES_BY_ID, session

pytestmark = pytest.mark.stack

Cause = dict[str, str]


def placed(obj: dict[str, Any], ns: str, name: str | None = None) -> dict[str, Any]:
    meta = {**obj.get("metadata", {}), "namespace": ns, **({"name": name} if name else {})}
    return cast(dict[str, Any], as_kubectl_sends({**obj, "metadata": meta}))


def dry_run_create(
    objects: kubernetes.client.CustomObjectsApi, ns: str, obj: dict[str, Any], plural: str = names.POOL_PLURAL
) -> tuple[dict[str, Any] | None, str, list[Cause]]:
    """(the object as the apiserver would store it, "", []) or (None, its refusal, its causes)."""
    try:
        stored = objects.create_namespaced_custom_object(
            names.GROUP, names.VERSION, ns, plural, placed(obj, ns), dry_run="All", field_validation="Strict"
        )
        return cast(dict[str, Any], stored), "", []
    except kubernetes.client.ApiException as e:
        assert e.status in (400, 422), f"unexpected answer {e.status}: {e.body}"
        body = json.loads(e.body or "{}")
        return None, str(body.get("message")), list(body.get("details", {}).get("causes", []))


def pool_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The pool's spec as the operator will read it: defaults filled in, nulls gone."""
    return pool.parse_pool(obj).model_dump(by_alias=True, exclude_none=True, mode="json")


def session_view(obj: dict[str, Any]) -> dict[str, Any]:
    return spec.parse_spec(obj).model_dump(by_alias=True, exclude_none=True, mode="json")


def assert_refused_by(rule: rules.Rule[Any], causes: list[Cause], refusal: str) -> None:
    """The refusal is the rule's: its field, message and reason, and nothing else but the
    apiserver's own check of a negative specReplicasPath (the scale subresource's)."""
    mine = [c for c in causes if c.get("field") == rule.field and rule.message in c.get("message", "")]
    assert len(mine) == 1, f"{rule.id}: not refused by the rule: {refusal}"
    assert mine[0]["reason"] == rule.reason.value, mine[0]
    others = [c for c in causes if c is not mine[0]]
    for c in others:
        assert rule.id == "pool-replicas" and c["field"] == ".spec.replicas" and "non-negative" in c["message"], refusal


# --- the CRD ---------------------------------------------------------------------


def test_the_pool_crd_is_accepted(crd_stack: Stack, ns: str) -> None:
    got = json.loads(crd_stack.kubectl("get", "crd", crd.POOL_CRD_NAME, "-o", "json").stdout)
    conditions = {c["type"]: c["status"] for c in got["status"]["conditions"]}
    assert conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True", conditions
    assert "NonStructuralSchema" not in conditions, got["status"]["conditions"]
    assert got["status"]["acceptedNames"]["shortNames"] == [names.POOL_SHORT_NAME] == ["avp"]
    (version,) = got["spec"]["versions"]
    ours = crd.build_crd(crd.POOL)["spec"]["versions"][0]
    assert version["subresources"] == ours["subresources"]
    assert version["schema"] == ours["schema"]  # stored as generated: nothing pruned or rewritten
    # Reachable by its short name and category.
    assert crd_stack.kubectl("get", "avp", "-n", ns).returncode == 0
    assert "avatarpools" in crd_stack.kubectl("api-resources", "--api-group", names.GROUP, "-o", "name").stdout


@pytest.mark.parametrize(("rule_id", "spec_"), POOL_CASES)
def test_each_pool_rule_case_is_refused_by_both(
    ns: str, objects: kubernetes.client.CustomObjectsApi, rule_id: str, spec_: dict[str, Any]
) -> None:
    rule = POOL_RULES_BY_ID[rule_id]
    obj = avatar_pool(spec_)
    assert validation.validate_pool(obj) == [Problem(rule.field, rule.message)]
    stored, refusal, causes = dry_run_create(objects, ns, obj)
    assert stored is None, f"{rule_id}: the apiserver accepted {spec_}"
    assert_refused_by(rule, causes, refusal)


@pytest.mark.parametrize("spec_", VALID_POOLS)
def test_valid_pools_are_accepted_by_both_with_our_defaults(
    ns: str, objects: kubernetes.client.CustomObjectsApi, spec_: dict[str, Any]
) -> None:
    obj = avatar_pool(spec_)
    assert validation.validate_pool(obj) == []
    stored, refusal, _ = dry_run_create(objects, ns, obj)
    assert stored is not None, refusal
    assert numbers_as_floats(stored["spec"]) == numbers_as_floats(pool_view(obj))


def test_the_apiserver_fills_in_the_defaults(ns: str, objects: kubernetes.client.CustomObjectsApi) -> None:
    stored, refusal, _ = dry_run_create(objects, ns, avatar_pool(MIN))
    assert stored is not None, refusal
    assert stored["spec"] == {**MIN, "replicas": 1, "sessionsPerRunner": 8, "scheduling": "Packed"}


@pytest.mark.parametrize(("spec_", "field", "explain"), UNKNOWN_FIELDS)
def test_an_unknown_field_is_refused_by_both_and_the_hint_explains(
    crd_stack: Stack, ns: str, objects: kubernetes.client.CustomObjectsApi, spec_: dict[str, Any], field: str, explain: str
) -> None:
    assert [p.field for p in validation.validate_pool(avatar_pool(spec_))] == [field]
    stored, refusal, _ = dry_run_create(objects, ns, avatar_pool(spec_))
    assert stored is None and f'unknown field "{field}"' in refusal, refusal
    # The `kubectl explain` path in validate_pool's message is one kubectl knows.
    text = explain_text(crd_stack, explain)
    assert "FIELDS:" in text


@pytest.mark.parametrize(("spec_", "field", "message"), WRONG_TYPES)
def test_a_wrong_type_is_refused_by_both(ns: str, objects: kubernetes.client.CustomObjectsApi, spec_: Any, field: str, message: str) -> None:
    assert [p.field for p in validation.validate_pool(avatar_pool(spec_))] == [field]
    stored, refusal, causes = dry_run_create(objects, ns, avatar_pool(spec_))
    assert stored is None, f"the apiserver accepted {spec_}"
    assert field in {c.get("field") for c in causes}, refusal


# --- updates ---------------------------------------------------------------------


def replace_dry_run(objects: kubernetes.client.CustomObjectsApi, ns: str, name: str, spec_: dict[str, Any]) -> str:
    """The refusal of an update of pool `name` to `spec_`, or "" (retried on a conflict)."""
    for _ in range(10):
        stored = cast(dict[str, Any], objects.get_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.POOL_PLURAL, name))
        body = {**stored, "spec": as_kubectl_sends(spec_)}
        try:
            objects.replace_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.POOL_PLURAL, name, body, dry_run="All")
        except kubernetes.client.ApiException as e:
            if e.status == 409:
                continue
            return str(json.loads(e.body or "{}").get("message"))
        return ""
    raise AssertionError(f"{name} kept changing under the test")


@pytest.mark.parametrize("field", sorted(POOL_CHANGES))
def test_an_immutable_pool_field_refuses_a_change(ns: str, objects: kubernetes.client.CustomObjectsApi, field: str) -> None:
    old, new = POOL_CHANGES[field]
    rule = POOL_TRANSITIONS_BY_FIELD[f"spec.{field}"]
    assert refusing(old, new) == [rule.id]
    name = f"immutable-{field.lower()}"
    objects.create_namespaced_custom_object(names.GROUP, names.VERSION, ns, names.POOL_PLURAL, placed(avatar_pool(old), ns, name))
    refusal = replace_dry_run(objects, ns, name, new)
    assert f"{rule.field}: Invalid value" in refusal and rule.message in refusal, refusal
    # Only that rule refuses it.
    others = [r for r in rules.POOL_TRANSITION_RULES if r is not rule and r.message in refusal.replace(rule.message, "")]
    assert not others
    # replicas and scheduling may change.
    assert replace_dry_run(objects, ns, name, {**old, "replicas": 5, "scheduling": "Distributed"}) == ""
    assert replace_dry_run(objects, ns, name, {k: v for k, v in old.items() if k not in ("replicas", "scheduling")}) == ""


# --- kubectl -----------------------------------------------------------------------


def explain_text(stack: Stack, path: str) -> str:
    """`kubectl explain PATH`, whitespace folded; waits for the CRD's OpenAPI to be published."""
    deadline = time.monotonic() + 30  # the apiserver publishes a CRD's OpenAPI a moment after Established
    while (proc := stack.kubectl("explain", path, check=False)).returncode != 0:
        assert time.monotonic() < deadline, proc.stderr
        time.sleep(0.5)
    return " ".join(proc.stdout.split())


def test_kubectl_explain_prints_the_descriptions(crd_stack: Stack) -> None:
    text = explain_text(crd_stack, "avatarpool.spec.sessionsPerRunner")
    description = pool.AvatarPoolSpec.model_fields["sessions_per_runner"].description
    assert description is not None and description in text
    assert "FIELD: sessionsPerRunner <integer>" in text
    listing = explain_text(crd_stack, "avatarpool.spec")
    for field in pool.AvatarPoolSpec.model_fields.values():
        assert field.description is not None and field.description in listing, field.alias


def get_pool(stack: Stack, ns: str, name: str) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(stack.kubectl("get", "avatarpool", name, "-n", ns, "-o", "json").stdout))


def get_scale(stack: Stack, ns: str, name: str) -> dict[str, Any]:
    path = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{ns}/{names.POOL_PLURAL}/{name}/scale"
    return cast(dict[str, Any], json.loads(stack.kubectl("get", "--raw", path).stdout))


def test_kubectl_scale_sets_spec_replicas(crd_stack: Stack, ns: str) -> None:
    name = "scaled"
    crd_stack.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({**avatar_pool(MIN), "metadata": {"name": name}}))
    assert get_pool(crd_stack, ns, name)["spec"]["replicas"] == 1

    crd_stack.kubectl("scale", "avatarpool", name, "-n", ns, "--replicas=3")
    assert get_pool(crd_stack, ns, name)["spec"]["replicas"] == 3
    scale = get_scale(crd_stack, ns, name)
    assert (scale["apiVersion"], scale["kind"]) == ("autoscaling/v1", "Scale")
    assert scale["spec"] == {"replicas": 3}
    assert scale["status"] == {"replicas": 0}  # no runner reported yet

    # What the operator will write: its runners and their selector, read back through /scale.
    status = {"replicas": 2, "readyReplicas": 1, "selector": names.pool_selector(name), "slots": {"total": 8, "busy": 3, "free": 5}}
    crd_stack.kubectl("patch", "avatarpool", name, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))
    assert get_scale(crd_stack, ns, name)["status"] == {"replicas": 2, "selector": names.pool_selector(name)}
    header, row = crd_stack.kubectl("get", "avp", name, "-n", ns).stdout.splitlines()
    assert header.split() == ["NAME", "REPLICAS", "READY", "BUSY", "FREE", "AGE"]
    assert row.split()[:5] == [name, "3", "1", "3", "5"]

    # The scale subresource goes through the pool's rules too.
    proc = crd_stack.kubectl("scale", "avatarpool", name, "-n", ns, f"--replicas={rules.POOL_REPLICAS_MAX + 1}", check=False)
    assert proc.returncode != 0 and POOL_RULES_BY_ID["pool-replicas"].message in proc.stderr, proc.stderr
    assert get_pool(crd_stack, ns, name)["spec"]["replicas"] == 3
    crd_stack.kubectl("scale", "avp", name, "-n", ns, "--replicas=0")
    assert get_scale(crd_stack, ns, name)["spec"] == {}  # autoscaling/v1 omits a zero replicas
    # Scaling changed nothing else.
    assert get_pool(crd_stack, ns, name)["spec"] == {**MIN, "replicas": 0, "sessionsPerRunner": 8, "scheduling": "Packed"}


# --- the session's poolRef rules ----------------------------------------------------

POOL_REF = {"name": "lobby"}
SESSION_REF_CASES: list[tuple[str, dict[str, Any]]] = [
    ("pool-ref-local", {"room": "lobby", "agentIdentity": "agent", "avatarId": "A1", "poolRef": POOL_REF}),
    ("pool-owns-modelpath", {"room": "lobby", "agentIdentity": "agent", "modelPath": "/models/a.imx", "poolRef": POOL_REF}),
    *((rule_id, s) for rule_id in ("pool-ref-local", "pool-owns-modelpath", "pool-owns-modelvolume", "pool-owns-runner") for s in RULE_CASES[rule_id]),
]


@pytest.mark.parametrize(("rule_id", "spec_"), SESSION_REF_CASES)
def test_a_session_pool_ref_rule_is_refused_by_both(
    ns: str, objects: kubernetes.client.CustomObjectsApi, rule_id: str, spec_: dict[str, Any]
) -> None:
    rule = RULES_BY_ID[rule_id]
    assert validation.validate(session(spec_)) == [Problem(rule.field, rule.message)]
    stored, refusal, causes = dry_run_create(objects, ns, session(spec_), plural=names.PLURAL)
    assert stored is None, f"{rule_id}: the apiserver accepted {spec_}"
    assert_refused_by(rule, causes, refusal)


@pytest.mark.parametrize(
    "spec_",
    [
        {"room": "lobby", "agentIdentity": "agent", "poolRef": POOL_REF},
        {"room": "lobby", "agentIdentity": "agent", "poolRef": POOL_REF, "maxDuration": 1800, "avatarParticipant": {"identity": "a2"}},
        EXAMPLE_SESSION["spec"],
    ],
)
def test_a_session_with_only_a_pool_ref_is_accepted_by_both(ns: str, objects: kubernetes.client.CustomObjectsApi, spec_: dict[str, Any]) -> None:
    obj = session(spec_)
    assert validation.validate(obj) == []
    stored, refusal, _ = dry_run_create(objects, ns, obj, plural=names.PLURAL)
    assert stored is not None, refusal
    assert numbers_as_floats(stored["spec"]) == numbers_as_floats(session_view(obj))


# --- the offline validator and the apiserver agree ------------------------------------

POOL_FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "replicas": (
        st.one_of(st.integers(0, rules.POOL_REPLICAS_MAX), st.none(), st.just(3.0)),
        st.sampled_from([-1, rules.POOL_REPLICAS_MAX + 1, "3", 2.5, True, 2**31]),
    ),
    "sessionsPerRunner": (
        st.one_of(st.integers(1, rules.SESSIONS_PER_RUNNER_MAX), st.none()),
        st.sampled_from([0, -1, rules.SESSIONS_PER_RUNNER_MAX + 1, "8", 1.5]),
    ),
    "scheduling": (st.sampled_from([s.value for s in pool.Scheduling] + [None]), st.sampled_from(["packed", "", 1])),
    "model": SESSION_FIELDS["model"],
    "modelPath": (
        st.sampled_from(["/models/a.imx", "/m/n/a.imx"]),
        st.sampled_from(["", "a.imx", "/a.imx", "/m\n/a.imx", "/models/", "/tmp/a.imx", 5]),
    ),
    "modelVolume": SESSION_FIELDS["modelVolume"],
    "bithuman": (
        st.fixed_dictionaries({}, optional={"secretRef": st.sampled_from([{"name": "bh"}, {"name": "a.b-c"}])}),
        st.sampled_from([{"secretRef": {"name": ""}}, {"secretRef": {"name": "Bad_Name"}}, {"apiUrl": "https://b"}]),
    ),
    "runner": (
        st.fixed_dictionaries(
            {},
            optional={
                "renderer": st.sampled_from(["bithuman", "portrait"]),
                "gpus": st.integers(0, 2),
                "image": st.just("registry.example.com/runner:1"),
                "resources": st.just({"limits": {"cpu": "1.5", "memory": "1Gi", "nvidia.com/gpu": 1}}),
            },
        ),
        st.sampled_from([{"gpus": -1}, {"gpus": "1"}, {"renderer": "gpu"}, {"resources": {"limits": {"cpu": "lots"}}}, {"replicas": 1}]),
    ),
    "colour": (st.nothing(), st.just("blue")),  # an unknown field
}


@st.composite
def pool_manifests(draw: st.DrawFn) -> dict[str, Any]:
    """Pools near the rules' edges: a few fields each, each valid seven times in eight;
    modelPath in most."""
    chosen = draw(st.sets(st.sampled_from(sorted(POOL_FIELDS)), max_size=5))
    if draw(st.integers(0, 7)):
        chosen |= {"modelPath"}
    spec_ = {}
    for field in sorted(chosen):
        good, bad = POOL_FIELDS[field]
        spec_[field] = draw(bad if field == "colour" or draw(st.integers(0, 7)) == 0 else good)
    return avatar_pool(spec_)


@given(obj=pool_manifests())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_offline_validator_and_apiserver_agree_on_pools(ns: str, objects: kubernetes.client.CustomObjectsApi, obj: dict[str, Any]) -> None:
    problems = validation.validate_pool(obj)
    stored, refusal, _ = dry_run_create(objects, ns, obj)
    event("accepted" if stored is not None else "refused")
    assert (stored is not None) == (not problems), f"apiserver: {refusal or 'accepted'}; validate_pool: {problems}"
    if stored is not None:
        assert numbers_as_floats(stored["spec"]) == numbers_as_floats(pool_view(obj))
