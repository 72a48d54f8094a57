"""The AvatarPool API: one case per POOL_RULES rule, valid pools, the defaults,
shape errors, the transition rules and the CRD (scale subresource, columns,
descriptions). tests/integration/test_pool_crd.py holds the apiserver to the
same cases."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from avatar_operator.api import crd, names, pool, rules, spec, validation
from avatar_operator.api.rules import Problem
from avatar_runner import contract

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE_DOCS = [d for d in yaml.safe_load_all((ROOT / "examples" / "pool.yaml").read_text()) if d]
EXAMPLE = next(d for d in EXAMPLE_DOCS if d["kind"] == names.POOL_KIND)
EXAMPLE_SESSION = next(d for d in EXAMPLE_DOCS if d["kind"] == names.KIND)

MIN: dict[str, Any] = {"modelPath": "/models/avatar.imx"}
PVC = {"persistentVolumeClaim": {"claimName": "models"}}


def avatar_pool(spec_: Any) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.POOL_KIND,
        "metadata": {"name": "p", "namespace": "default"},
        "spec": spec_,
    }


# rule id -> pool specs that break that rule and no other.
POOL_RULE_CASES: dict[str, list[dict[str, Any]]] = {
    "pool-model-path": [{}, {"modelPath": ""}, {"replicas": 2, "runner": {"gpus": 1}}],
    "model-path-in-volume": [
        {"modelPath": path, "modelVolume": PVC}
        for path in ("avatar.imx", "/avatar.imx", "/models/", "//models/avatar.imx", "models/avatar.imx")
    ],
    "model-path-not-in-tmp": [{"modelPath": "/tmp/avatar.imx", "modelVolume": PVC}],
    "model-volume-no-host-path": [{**MIN, "modelVolume": {"hostPath": {"path": "/srv/models"}}}],
    "model-volume-one-source": [
        {**MIN, "modelVolume": {}},
        {**MIN, "modelVolume": {**PVC, "image": {"reference": "registry.example.com/models:v1"}}},
    ],
    "runner-gpus": [{**MIN, "runner": {"gpus": -1}}],
    "pool-replicas": [{**MIN, "replicas": n} for n in (-1, 1001)],
    "pool-sessions-per-runner": [{**MIN, "sessionsPerRunner": n} for n in (0, -3, 65)],
    "pool-avatar-ids-non-empty": [{**MIN, "avatarIds": ["A91XMB7113", ""]}],
}

POOL_RULES_BY_ID = {r.id: r for r in rules.POOL_RULES}
POOL_CASES = [(rule_id, s) for rule_id, specs in POOL_RULE_CASES.items() for s in specs]

VALID_POOLS: list[dict[str, Any]] = [
    MIN,
    EXAMPLE["spec"],
    {**MIN, "replicas": 0},  # scaled to zero
    {**MIN, "replicas": rules.POOL_REPLICAS_MAX, "sessionsPerRunner": rules.SESSIONS_PER_RUNNER_MAX},
    {**MIN, "sessionsPerRunner": 1, "scheduling": "Distributed"},
    {"modelPath": "avatar.imx"},  # no volume: any path in the runner image
    {"modelPath": "/tmp/avatar.imx"},
    {**MIN, "modelVolume": {"csi": {"driver": "s3.csi.example.com", "volumeAttributes": {"bucket": "m"}}}},
    {**MIN, "modelVolume": {"image": {"reference": "registry.example.com/models:v1", "pullPolicy": "IfNotPresent"}}},
    {**MIN, "model": "essence-2", "bithuman": {"secretRef": {"name": "bh"}}},
    {**MIN, "runner": {"renderer": "portrait", "gpus": 0, "image": "registry.example.com/runner:dev"}},
    {**MIN, "runner": {"resources": {"limits": {"cpu": "1.5", "memory": "2Gi", "nvidia.com/gpu": 1}}}},
    {**MIN, "runner": {"priorityClassName": "avatars", "tolerations": [{"key": "gpu", "operator": "Exists"}]}},
    {**MIN, "replicas": None, "sessionsPerRunner": None, "runner": {"gpus": None}},  # the apiserver drops nulls
    {**MIN, "replicas": 3.0},  # kubectl sends 3.0 as 3
    {**MIN, "avatarIds": [f"A{i:0255}" for i in range(pool.AVATAR_IDS_MAX)]},
]


@pytest.mark.parametrize(("rule_id", "spec_"), POOL_CASES)
def test_each_pool_rule_refuses_its_case_alone(rule_id: str, spec_: dict[str, Any]) -> None:
    rule = POOL_RULES_BY_ID[rule_id]
    assert validation.validate_pool(avatar_pool(spec_)) == [Problem(rule.field, rule.message)]


@pytest.mark.parametrize(("rule_id", "spec_"), POOL_CASES)
def test_without_the_pool_rule_its_case_passes(rule_id: str, spec_: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "POOL_RULES", tuple(r for r in rules.POOL_RULES if r.id != rule_id))
    assert validation.validate_pool(avatar_pool(spec_)) == []


def test_every_pool_rule_has_a_case() -> None:
    assert len(POOL_RULES_BY_ID) == len(rules.POOL_RULES), "two pool rules share an id"
    assert set(POOL_RULE_CASES) == set(POOL_RULES_BY_ID), "add a case to POOL_RULE_CASES for each new rule"


def test_the_renderer_rules_are_the_sessions() -> None:
    # One rule checks a local session's and a pool's renderer fields alike.
    shared = {r.id for r in rules.RULES} & set(POOL_RULES_BY_ID)
    assert shared == {r.id for r in (*rules.MODEL_RULES, rules.RUNNER_GPUS)}
    session_rules: dict[str, object] = {r.id: r for r in rules.RULES}
    for rule_id in shared:
        assert session_rules[rule_id] is POOL_RULES_BY_ID[rule_id]


@pytest.mark.parametrize("spec_", VALID_POOLS)
def test_valid_pools_pass(spec_: dict[str, Any]) -> None:
    assert validation.validate_pool(avatar_pool(spec_)) == []


def test_the_example_pool_and_its_session_are_valid() -> None:
    assert [d["kind"] for d in EXAMPLE_DOCS] == [names.POOL_KIND, names.KIND]
    pool_doc, session_doc = EXAMPLE, EXAMPLE_SESSION
    assert validation.validate_pool(pool_doc) == []
    assert validation.validate(session_doc) == []
    assert session_doc["spec"]["poolRef"]["name"] == pool_doc["metadata"]["name"]
    # The example shows every field of a pool but none of those the model leaves out.
    assert set(pool_doc["spec"]) == {f.alias or n for n, f in pool.AvatarPoolSpec.model_fields.items()}


# --- defaults ----------------------------------------------------------------


def test_the_defaults() -> None:
    parsed = pool.parse_pool(avatar_pool(MIN))
    assert parsed.replicas == pool.DEFAULT_REPLICAS == 1
    assert parsed.sessions_per_runner == pool.DEFAULT_SESSIONS_PER_RUNNER == contract.DEFAULT_MAX_SESSIONS == 8
    assert parsed.scheduling is pool.Scheduling.PACKED
    assert (parsed.model, parsed.model_volume, parsed.bithuman, parsed.runner) == (None, None, None, None)
    assert parsed.mode is spec.Mode.LOCAL
    # A null field is a missing one: the apiserver fills in its default too.
    assert pool.parse_pool(avatar_pool({**MIN, "replicas": None, "scheduling": None})) == parsed


def test_the_crd_defaults_are_the_models() -> None:
    props = pool_schema()["properties"]["spec"]["properties"]
    assert props["replicas"]["default"] == pool.DEFAULT_REPLICAS
    assert props["sessionsPerRunner"]["default"] == contract.DEFAULT_MAX_SESSIONS
    assert props["scheduling"]["default"] == pool.Scheduling.PACKED.value
    assert props["scheduling"]["enum"] == [s.value for s in pool.Scheduling]
    assert {k for k, v in props.items() if "default" in v} == {"replicas", "sessionsPerRunner", "scheduling"}


# --- shape errors --------------------------------------------------------------

# (spec, the field named, the `kubectl explain` path that lists the fields there)
UNKNOWN_FIELDS: list[tuple[dict[str, Any], str, str]] = [
    ({**MIN, "colour": "blue"}, "spec.colour", "avatarpool.spec"),
    ({**MIN, "colour": None}, "spec.colour", "avatarpool.spec"),  # the apiserver refuses it even when null
    ({**MIN, "model_path": "/m/a.imx"}, "spec.model_path", "avatarpool.spec"),  # camelCase only
    ({**MIN, "poolRef": {"name": "p"}}, "spec.poolRef", "avatarpool.spec"),  # a session's field
    ({**MIN, "room": "lobby"}, "spec.room", "avatarpool.spec"),
    ({**MIN, "runner": {"replicas": 2}}, "spec.runner.replicas", "avatarpool.spec.runner"),
    ({**MIN, "bithuman": {"apiUrl": "https://b.example.com"}}, "spec.bithuman.apiUrl", "avatarpool.spec.bithuman"),
    (
        {**MIN, "modelVolume": {"persistentVolumeClaim": {"claimName": "m", "extra": 1}}},
        "spec.modelVolume.persistentVolumeClaim.extra",
        "avatarpool.spec.modelVolume.persistentVolumeClaim",
    ),
    (
        {**MIN, "runner": {"tolerations": [{"key": "gpu", "colour": "blue"}]}},
        "spec.runner.tolerations[0].colour",
        "avatarpool.spec.runner.tolerations",
    ),
]

# (spec, the field named, a part of the message)
WRONG_TYPES: list[tuple[Any, str, str]] = [
    ({**MIN, "replicas": "3"}, "spec.replicas", "valid integer"),
    ({**MIN, "replicas": 2.5}, "spec.replicas", "valid integer"),
    ({**MIN, "replicas": True}, "spec.replicas", "valid integer"),
    ({**MIN, "replicas": 2**63}, "spec.replicas", "64-bit"),
    ({**MIN, "sessionsPerRunner": "8"}, "spec.sessionsPerRunner", "valid integer"),
    ({**MIN, "scheduling": "packed"}, "spec.scheduling", "'Packed' or 'Distributed'"),
    ({**MIN, "model": "Expression"}, "spec.model", "'expression-2'"),
    ({"modelPath": 5}, "spec.modelPath", "valid string"),
    ({"modelPath": "/m/" + "a" * spec.PATH_MAX}, "spec.modelPath", f"at most {spec.PATH_MAX}"),
    ({**MIN, "runner": {"renderer": "gpu"}}, "spec.runner.renderer", "'portrait' or 'bithuman'"),
    ({**MIN, "runner": {"gpus": 1.5}}, "spec.runner.gpus", "valid integer"),
    ({**MIN, "runner": {"resources": {"limits": {"cpu": "lots"}}}}, "spec.runner.resources.limits.cpu", "'lots'"),
    ({**MIN, "bithuman": {"secretRef": {"name": "Not_A_Name"}}}, "spec.bithuman.secretRef.name", "pattern"),
    ({**MIN, "modelVolume": {"persistentVolumeClaim": {}}}, "spec.modelVolume.persistentVolumeClaim.claimName", "required field is missing"),
    ({**MIN, "runner": "big"}, "spec.runner", "must be an object"),
    ("modelPath: /m/a.imx", "spec", "must be an object"),
    ({**MIN, "avatarIds": [f"A{i}" for i in range(pool.AVATAR_IDS_MAX + 1)]}, "spec.avatarIds", f"at most {pool.AVATAR_IDS_MAX}"),
    ({**MIN, "avatarIds": ["A" * 257]}, "spec.avatarIds[0]", "at most 256"),
    ({**MIN, "avatarIds": "A91XMB7113"}, "spec.avatarIds", "valid list"),
]


@pytest.mark.parametrize(("spec_", "field", "explain"), UNKNOWN_FIELDS)
def test_an_unknown_field_is_named_with_the_kubectl_explain_path(spec_: dict[str, Any], field: str, explain: str) -> None:
    problems = validation.validate_pool(avatar_pool(spec_))
    assert [p.field for p in problems] == [field]
    assert problems[0].message == f"unknown field: remove it (`kubectl explain {explain}` lists the fields)"


@pytest.mark.parametrize(("spec_", "field", "message"), WRONG_TYPES)
def test_a_wrong_type_names_the_field(spec_: Any, field: str, message: str) -> None:
    problems = validation.validate_pool(avatar_pool(spec_))
    assert [p.field for p in problems] == [field]
    assert message in problems[0].message


def test_the_object_itself() -> None:
    no_spec = {k: v for k, v in avatar_pool(MIN).items() if k != "spec"}
    assert validation.validate_pool(no_spec) == [Problem("spec", "required field is missing: an AvatarPool needs a spec")]
    assert validation.validate_pool({**avatar_pool(MIN), "replicas": 2}) == [Problem("replicas", "unknown field: remove it")]
    # A shape problem and a rule's come in one run, as for sessions.
    assert [p.field for p in validation.validate_pool(avatar_pool({"modelPath": "", "colour": 1}))] == ["spec.colour", "spec.modelPath"]


def test_a_session_is_not_a_pool() -> None:
    session_spec = {"room": "lobby", "agentIdentity": "agent", "poolRef": {"name": "p"}}
    assert [p.field for p in validation.validate_pool(avatar_pool(session_spec))] == ["spec.room", "spec.agentIdentity", "spec.poolRef", "spec.modelPath"]


# --- updates: the transition rules ---------------------------------------------

FULL: dict[str, Any] = EXAMPLE["spec"]
POOL_CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "sessionsPerRunner": (FULL, {**FULL, "sessionsPerRunner": 2}),
    "model": (FULL, {**FULL, "model": "essence"}),
    "modelPath": (FULL, {**FULL, "modelPath": "/models/other.imx"}),
    "modelVolume": (FULL, {**FULL, "modelVolume": {"persistentVolumeClaim": {"claimName": "other"}}}),
    "bithuman": (FULL, {k: v for k, v in FULL.items() if k != "bithuman"}),  # removing counts as changing
    "runner": (FULL, {**FULL, "runner": {**FULL["runner"], "gpus": 2}}),
}
POOL_TRANSITIONS_BY_FIELD = {r.field: r for r in rules.POOL_TRANSITION_RULES}


def refusing(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The ids of the pool transition rules that refuse old -> new."""
    old_spec, new_spec = pool.parse_pool(avatar_pool(old)), pool.parse_pool(avatar_pool(new))
    return [r.id for r in rules.POOL_TRANSITION_RULES if not r.check(old_spec, new_spec)]


@pytest.mark.parametrize("field", sorted(POOL_CHANGES))
def test_an_immutable_pool_field_refuses_a_change(field: str) -> None:
    old, new = POOL_CHANGES[field]
    assert validation.validate_pool(avatar_pool(old)) == [] and validation.validate_pool(avatar_pool(new)) == []
    rule = POOL_TRANSITIONS_BY_FIELD[f"spec.{field}"]
    assert refusing(old, new) == [rule.id]
    assert refusing(new, old) == [rule.id]  # setting it again, too
    assert refusing(old, old) == []
    assert rule.message.startswith("cannot change once the pool exists")
    assert rule.message.endswith("(only spec.replicas, spec.scheduling and spec.avatarIds may change)")


def test_every_pool_transition_rule_has_a_case() -> None:
    assert {f"spec.{f}" for f in POOL_CHANGES} == set(POOL_TRANSITIONS_BY_FIELD)


@pytest.mark.parametrize(
    "new",
    [
        {**FULL, "replicas": 0},
        {**FULL, "replicas": 40},
        {**FULL, "scheduling": "Distributed"},
        {k: v for k, v in FULL.items() if k not in ("replicas", "scheduling")},  # back to the defaults
        {**FULL, "replicas": 7, "scheduling": "Distributed"},
        {**FULL, "avatarIds": ["A91XMB7113", "A23WJF0199"]},
        {**FULL, "avatarIds": []},
    ],
)
def test_replicas_and_scheduling_may_change(new: dict[str, Any]) -> None:
    assert refusing(FULL, new) == []


def test_every_pool_field_says_whether_it_may_change() -> None:
    unmarked = [n for n, f in pool.AvatarPoolSpec.model_fields.items() if spec.mutability(f) is None]
    assert not unmarked, f"mark these fields IMMUTABLE or MUTABLE in api/pool.py: {unmarked}"


def test_the_pool_transition_rules_are_the_immutable_fields_exactly() -> None:
    fields = pool.AvatarPoolSpec.model_fields
    immutable = {f"spec.{f.alias or n}" for n, f in fields.items() if spec.mutability(f) is spec.IMMUTABLE}
    mutable = {f"spec.{f.alias or n}" for n, f in fields.items() if spec.mutability(f) is spec.MUTABLE}
    assert set(POOL_TRANSITIONS_BY_FIELD) == immutable
    assert len(POOL_TRANSITIONS_BY_FIELD) == len(rules.POOL_TRANSITION_RULES)
    assert mutable == {"spec.replicas", "spec.scheduling", "spec.avatarIds"}


# --- the CRD -------------------------------------------------------------------


def pool_crd() -> dict[str, Any]:
    return crd.build_crd(crd.POOL)


def pool_schema() -> dict[str, Any]:
    root: dict[str, Any] = pool_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path; properties as .name, items as [], map values as .*"""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from nodes(node["items"], f"{path}[]")


def at(root: dict[str, Any], json_path: str) -> dict[str, Any]:
    """The schema node of a simple JSONPath such as .status.slots.busy."""
    node = root
    for name in json_path.removeprefix(".").split("."):
        node = node["properties"][name]
    return node


def test_pool_crd_names() -> None:
    c = pool_crd()
    assert c["metadata"]["name"] == crd.POOL_CRD_NAME == "avatarpools.avatar-operator.dev"
    assert c["spec"]["scope"] == "Namespaced"
    assert c["spec"]["names"] == {
        "kind": "AvatarPool",
        "listKind": "AvatarPoolList",
        "plural": "avatarpools",
        "singular": "avatarpool",
        "shortNames": ["avp"],
        "categories": ["avatar-operator"],
    }
    version = c["spec"]["versions"][0]
    assert version["name"] == names.VERSION and version["served"] and version["storage"]
    assert crd.KINDS[crd.POOL_CRD_PATH] is crd.POOL


def test_the_scale_subresource() -> None:
    version = pool_crd()["spec"]["versions"][0]
    assert version["subresources"] == {
        "status": {},
        "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector"},
    }
    root = pool_schema()
    # The paths name fields the schema has, of the types autoscaling/v1 Scale reads.
    assert at(root, ".spec.replicas")["type"] == "integer"
    assert at(root, ".status.replicas")["type"] == "integer"
    assert at(root, ".status.selector")["type"] == "string"
    # The selector the operator will write is the one its runners carry.
    ref = names.PoolRef(name="lobby", namespace="default", uid="u")
    key, _, value = names.pool_selector("lobby").partition("=")
    assert names.pool_labels(ref, "lobby-runner-x")[key] == value


def test_the_printer_columns() -> None:
    columns = pool_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"]) for c in columns] == [
        ("Replicas", ".spec.replicas"),
        ("Ready", ".status.readyReplicas"),
        ("Busy", ".status.slots.busy"),
        ("Free", ".status.slots.free"),
        ("Age", ".metadata.creationTimestamp"),
    ]
    root = pool_schema()
    for column in columns[:-1]:
        assert column["type"] == "integer" == at(root, column["jsonPath"])["type"], column
    assert columns[-1]["type"] == "date"


def test_every_spec_field_has_a_description() -> None:
    spec_nodes = list(nodes(pool_schema()["properties"]["spec"], ".spec"))
    assert len(spec_nodes) > 20
    for path, node in spec_nodes:
        if not path.endswith(("[]", ".*")):
            assert node.get("description"), f"{path} has no description (kubectl explain shows it): add one in pool.py or spec.py"
    # Every top-level field says whether it may change.
    for name, node in pool_schema()["properties"]["spec"]["properties"].items():
        assert node["description"].endswith(("Immutable.", "May change.")), name


def test_every_pool_rule_is_in_the_schema_at_its_scope() -> None:
    root = pool_schema()
    every: list[rules.Rule[Any] | rules.TransitionRule[Any]] = [*rules.POOL_RULES, *rules.POOL_TRANSITION_RULES]
    for rule in every:
        entries = [v for v in at(root, f".{rule.scope}")["x-kubernetes-validations"] if v["rule"] == rule.cel]
        assert len(entries) == 1, rule.id
        assert entries[0]["message"] == rule.message
        assert entries[0].get("fieldPath") == (None if rule.field == rule.scope else rule.field.removeprefix(rule.scope))
    # And nothing else: the session's rules stay in the session's CRD.
    assert sorted(v["rule"] for _, node in nodes(root) for v in node.get("x-kubernetes-validations", [])) == sorted(r.cel for r in every)


def test_validate_pool_update_refuses_a_renderer_change_and_takes_a_scale() -> None:
    old = avatar_pool(FULL)
    assert validation.validate_pool_update(old, avatar_pool({**FULL, "replicas": 5})) == []
    problems = validation.validate_pool_update(old, avatar_pool({**FULL, "sessionsPerRunner": 2}))
    assert [p.field for p in problems] == ["spec.sessionsPerRunner"]
    assert "create another AvatarPool" in problems[0].message
    assert [p.field for p in validation.validate_pool_update(old, avatar_pool({**FULL, "replicas": -1}))] == ["spec.replicas"]
