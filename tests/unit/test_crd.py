"""The generated CRD: in sync with the committed file, and a structural schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from avatar_operator.api import crd, rules, spec
from pydantic import Field

FIX = "run `make crd` (python -m avatar_operator.api.crd --write) and commit crds/"


def schema() -> dict[str, Any]:
    root: dict[str, Any] = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
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


def test_committed_crd_is_up_to_date() -> None:
    assert crd.CRD_PATH.exists(), f"{crd.CRD_PATH} is missing: {FIX}"
    assert crd.CRD_PATH.read_text() == crd.render_crd_yaml(), f"{crd.CRD_PATH} is stale: {FIX}"


def test_rendering_is_deterministic_and_round_trips() -> None:
    text = crd.render_crd_yaml()
    assert text == crd.render_crd_yaml()
    assert yaml.safe_load(text) == crd.build_crd()  # no CEL rule or regex is mangled by quoting


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


def test_schema_is_structural() -> None:
    for path, node in nodes(schema()):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert "$ref" not in node and "title" not in node, path
        assert node.get("additionalProperties", {}) is not False, path
        assert "default" not in node or node["default"] is not None, path
        if "anyOf" in node:  # only the int-or-string form, which is structural
            assert node.get("x-kubernetes-int-or-string") and node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path


def test_every_field_is_documented() -> None:
    for path, node in nodes(schema()):
        name = path.rsplit(".", 1)[-1]
        if path and path != ".metadata" and not path.endswith(("[]", ".*")):
            assert node.get("description"), f"{path} has no description (kubectl explain shows it): add one in spec.py or status.py"
            assert name != "*"


def test_every_string_is_bounded() -> None:
    # The apiserver estimates CEL cost from maxLength; an unbounded string in
    # a rule can get the CRD refused.
    for path, node in nodes(schema()):
        if node.get("type") == "string" and not path.startswith((".apiVersion", ".kind", ".status")):
            assert "maxLength" in node or "enum" in node or "pattern" in node, f"{path}: no maxLength"


def test_every_rule_is_in_the_schema_at_its_scope() -> None:
    root = schema()
    every: list[rules.Rule | rules.TransitionRule] = [*rules.RULES, *rules.TRANSITION_RULES]
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


def test_status_conditions_are_a_map_keyed_by_type() -> None:
    conditions = schema()["properties"]["status"]["properties"]["conditions"]
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
