"""kubeconform's JSON schemas, made locally: from a live API server's OpenAPI v3 and from CRD files.

kubeconform normally downloads per-kind schemas (yannh/kubernetes-json-schema);
there is no internet here, and the API server the chart will meet is the better
source anyway. Output layout is kubeconform's: one file per kind,
`{kind}{-group's first label}-{version}.json`, lowercased, e.g.
`deployment-apps-v1.json`, `service-v1.json`, `kopfpeering-kopf-v1.json`;
point kubeconform at it with
`-schema-location '<dir>/{{ .ResourceKind }}{{ .KindSuffix }}.json'`.

Each file is self-contained: the OpenAPI `#/components/schemas/...` references
become `#/$defs/...` inside the file (the API types are recursive, so they are
kept as references rather than inlined), with only the definitions the kind
reaches. For `kubeconform -strict`, every object schema that lists its
properties and says nothing about others gets `additionalProperties: false`,
as the "-strict" schemas kubeconform downloads do; free-form objects (no
properties, or x-kubernetes-preserve-unknown-fields) stay open.
"""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

JSONSchema = dict[str, Any]

_COMPONENTS = "#/components/schemas/"
_DEFS = "#/$defs/"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def file_name(kind: str, api_version: str) -> str:
    """kubeconform's name for a kind's schema file (pkg/registry: ResourceKind + KindSuffix)."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0].lower()}-{version.lower()}" if group else f"-{version.lower()}"
    return f"{kind.lower()}{suffix}.json"


def _strict(node: Any) -> Any:
    """A copy of an OpenAPI/structural schema as JSON Schema for strict validation."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: JSONSchema = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith(_COMPONENTS):
            out[key] = _DEFS + value[len(_COMPONENTS):]
        elif key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
            # Names here are property names, not keywords: convert each value only.
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key.startswith("x-kubernetes-") or key in ("nullable", "default", "example"):
            continue  # not JSON Schema; handled below where they change the meaning
        else:
            out[key] = _strict(value)
    if node.get("x-kubernetes-int-or-string") and "type" not in node and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    open_ended = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not open_ended:
        out["additionalProperties"] = False
    return out


def _references(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFS):
            yield ref[len(_DEFS):]
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _standalone(root: JSONSchema, definitions: Mapping[str, JSONSchema]) -> JSONSchema:
    """`root` with the converted definitions it reaches, transitively, under $defs."""
    reached: dict[str, JSONSchema] = {}
    pending = list(_references(root))
    while pending:
        name = pending.pop()
        if name in reached:
            continue
        if name not in definitions:
            raise KeyError(f"unresolved schema reference {name!r}")
        reached[name] = definitions[name]
        pending.extend(_references(reached[name]))
    schema: JSONSchema = {"$schema": DIALECT, **root}
    if reached:
        schema["$defs"] = dict(sorted(reached.items()))
    return schema


def from_openapi_v3(documents: Iterable[Mapping[str, Any]]) -> dict[str, JSONSchema]:
    """File name -> schema for every kind the OpenAPI v3 documents (one per group-version) declare."""
    definitions: dict[str, JSONSchema] = {}
    kinds: list[tuple[str, str, str]] = []  # (definition, kind, apiVersion)
    for doc in documents:
        for name, raw in (doc.get("components", {}).get("schemas") or {}).items():
            definitions[name] = _strict(raw)
            for gvk in raw.get("x-kubernetes-group-version-kind") or []:
                api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
                kinds.append((name, gvk["kind"], api_version))
    out: dict[str, JSONSchema] = {}
    for name, kind, api_version in kinds:
        # Option and list kinds (DeleteOptions, WatchEvent...) claim many
        # group-versions; the first claim is as good as any for them.
        out.setdefault(file_name(kind, api_version), _standalone({"$ref": _DEFS + name}, definitions))
    return out


def from_crd(crd: Mapping[str, Any], definitions: Mapping[str, JSONSchema]) -> dict[str, JSONSchema]:
    """File name -> schema for each served version of a CustomResourceDefinition.

    `definitions` are converted API definitions (from_openapi_v3's $defs), for
    ObjectMeta: the API server validates a custom resource's metadata as
    ObjectMeta whatever the CRD says about it."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    out: dict[str, JSONSchema] = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        raw = copy.deepcopy((version.get("schema") or {}).get("openAPIV3Schema") or {"type": "object"})
        props = raw.setdefault("properties", {})
        props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        props["kind"] = {"type": "string", "enum": [kind]}
        props.pop("metadata", None)
        root = _strict(raw)
        root["properties"]["metadata"] = {"$ref": _DEFS + OBJECT_META}
        root["required"] = sorted(set(root.get("required", [])) | {"apiVersion", "kind", "metadata"})
        out[file_name(kind, f"{group}/{version['name']}")] = _standalone(root, definitions)
    return out


def service_monitor(definitions: Mapping[str, JSONSchema]) -> dict[str, JSONSchema]:
    """A strict SUBSET of monitoring.coreos.com/v1 ServiceMonitor, written by hand.

    The Prometheus Operator's CRD is not on this cluster and cannot be
    downloaded. These are the fields of its API reference
    (prometheus-operator.dev, "API reference", ServiceMonitorSpec and Endpoint)
    that a chart is likely to set, with their documented types; a field
    outside the subset fails strict validation, so a misspelt field fails too,
    and a real new field has to be added here from that reference."""
    duration = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
    endpoint = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "port": {"type": "string"},
            "targetPort": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "path": {"type": "string"},
            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
            "interval": duration,
            "scrapeTimeout": duration,
            "honorLabels": {"type": "boolean"},
        },
    }
    root: JSONSchema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"enum": ["monitoring.coreos.com/v1"]},
            "kind": {"enum": ["ServiceMonitor"]},
            "metadata": {"$ref": _DEFS + OBJECT_META},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector"],
                "properties": {
                    "selector": {"$ref": _DEFS + "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"},
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                    },
                    "endpoints": {"type": "array", "items": endpoint},
                    "jobLabel": {"type": "string"},
                },
            },
        },
    }
    return {file_name("ServiceMonitor", "monitoring.coreos.com/v1"): _standalone(root, definitions)}


def definitions_of(schemas: Mapping[str, JSONSchema]) -> dict[str, JSONSchema]:
    """All $defs across generated files (each file carries the ones it reaches)."""
    merged: dict[str, JSONSchema] = {}
    for schema in schemas.values():
        merged.update(schema.get("$defs", {}))
    return merged


def write(directory: pathlib.Path, schemas: Mapping[str, JSONSchema]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        (directory / name).write_text(json.dumps(schema, separators=(",", ":")))


def fetch_openapi_v3(get_raw: Callable[[str], str]) -> list[dict[str, Any]]:
    """Every group-version's OpenAPI v3 document from the API server.

    `get_raw(path)` returns the body of GET path (e.g. `kubectl get --raw`)."""
    index = json.loads(get_raw("/openapi/v3"))
    docs = []
    for path, ref in sorted(index["paths"].items()):
        # Group-versions only: "api/v1", "apis/apps/v1" (not "apis/apps" or "version").
        parts = path.split("/")
        if (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) == 3):
            docs.append(json.loads(get_raw(ref["serverRelativeURL"])))
    return docs
