"""The generated CRD: in sync with the committed file, and a structural schema."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from avatar_operator.api import crd, names, rules, spec
from pydantic import Field

FIX = "run `make crd` (python -m avatar_operator.api.crd --write) and commit crds/"


def schema(kind: crd.Kind = crd.SESSION) -> dict[str, Any]:
    root: dict[str, Any] = crd.build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


# Every generated CRD: its file in crds/ and its kind.
KINDS = pytest.mark.parametrize(("path", "kind"), list(crd.KINDS.items()), ids=[k.kind for k in crd.KINDS.values()])
EACH_KIND = pytest.mark.parametrize("kind", list(crd.KINDS.values()), ids=[k.kind for k in crd.KINDS.values()])


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path; properties as .name, items as [], map values as .*"""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from nodes(node["items"], f"{path}[]")


@KINDS
def test_committed_crd_is_up_to_date(path: pathlib.Path, kind: crd.Kind) -> None:
    assert path.exists(), f"{path} is missing: {FIX}"
    assert path.read_text() == crd.render_crd_yaml(kind), f"{path} is stale: {FIX}"


def test_crds_holds_every_kind_and_nothing_else() -> None:
    assert sorted(crd.CRD_DIR.glob("*.yaml")) == sorted(crd.KINDS), f"crds/ and crd.KINDS differ: {FIX}"
    assert {crd.CRD_PATH, crd.POOL_CRD_PATH} <= set(crd.KINDS)
    for path, kind in crd.KINDS.items():
        assert path.name == f"{kind.plural}.{names.GROUP}.yaml" == f"{crd.build_crd(kind)['metadata']['name']}.yaml"


def test_render_all_is_every_kind() -> None:
    docs = list(yaml.safe_load_all(crd.render_all()))
    assert docs == [crd.build_crd(kind) for kind in crd.KINDS.values()]


@EACH_KIND
def test_rendering_is_deterministic_and_round_trips(kind: crd.Kind) -> None:
    text = crd.render_crd_yaml(kind)
    assert text == crd.render_crd_yaml(kind)
    assert yaml.safe_load(text) == crd.build_crd(kind)  # no CEL rule or regex is mangled by quoting


def test_names_and_scope() -> None:
    c = crd.build_crd()
    assert c["metadata"]["name"] == "avatarsessions.avatar-operator.dev"
    assert c["spec"]["scope"] == "Namespaced"
    assert c["spec"]["names"]["shortNames"] == ["avs"]
    assert c["spec"]["names"]["kind"] == "AvatarSession"
    version = c["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert [col["name"] for col in version["additionalPrinterColumns"]] == ["Phase", "Mode", "Model", "Room", "Ready", "Age"]


@EACH_KIND
def test_schema_is_structural(kind: crd.Kind) -> None:
    for path, node in nodes(schema(kind)):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert "$ref" not in node and "title" not in node, path
        assert node.get("additionalProperties", {}) is not False, path
        assert "default" not in node or node["default"] is not None, path
        if "anyOf" in node:  # only the int-or-string form, which is structural
            assert node.get("x-kubernetes-int-or-string") and node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path


@EACH_KIND
def test_every_field_is_documented(kind: crd.Kind) -> None:
    for path, node in nodes(schema(kind)):
        name = path.rsplit(".", 1)[-1]
        if path and path != ".metadata" and not path.endswith(("[]", ".*")):
            assert node.get("description"), f"{path} has no description (kubectl explain shows it): add one in spec.py or status.py"
            assert name != "*"


@EACH_KIND
def test_every_string_is_bounded(kind: crd.Kind) -> None:
    # The apiserver estimates CEL cost from maxLength; an unbounded string in
    # a rule can get the CRD refused.
    for path, node in nodes(schema(kind)):
        if node.get("type") == "string" and not path.startswith((".apiVersion", ".kind", ".status")):
            assert "maxLength" in node or "enum" in node or "pattern" in node, f"{path}: no maxLength"


@EACH_KIND
def test_every_rule_is_in_the_schema_at_its_scope(kind: crd.Kind) -> None:
    root = schema(kind)
    every: list[rules.Rule[Any] | rules.TransitionRule[Any]] = [*kind.rule_table, *kind.transition_table]
    for rule in every:
        node = root
        for name in rule.scope.split("."):
            node = node["properties"][name]
        entries = [v for v in node["x-kubernetes-validations"] if v["rule"] == rule.cel]
        assert len(entries) == 1, rule.id
        assert entries[0]["message"] == rule.message
        expected_path = None if rule.field == rule.scope else rule.field.removeprefix(rule.scope)
        assert entries[0].get("fieldPath") == expected_path


def test_defaults_are_the_models() -> None:
    props = schema()["properties"]["spec"]["properties"]
    connection = props["connection"]["properties"]
    assert props["connection"]["default"] == {} and props["avatarParticipant"]["default"] == {}
    assert (connection["maxRetry"]["default"], connection["retryInterval"]["default"], connection["timeout"]["default"]) == (3, 2.0, 10.0)
    assert props["avatarParticipant"]["properties"]["identity"]["default"] == spec.DEFAULT_AVATAR_IDENTITY
    # The operator's setting is the apiUrl default, as BITHUMAN_API_URL is the plugin's.
    assert "default" not in props["bithuman"]["properties"]["apiUrl"]


@EACH_KIND
def test_status_conditions_are_a_map_keyed_by_type(kind: crd.Kind) -> None:
    conditions = schema(kind)["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_an_undocumented_field_stops_generation() -> None:
    class Bare(spec.KubeModel):
        documented: str = Field(description="yes")
        undocumented: str

    raw = Bare.model_json_schema(by_alias=True)
    with pytest.raises(ValueError, match=r"\.undocumented: no description"):
        crd.structural(raw)
