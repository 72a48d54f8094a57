"""The runner Pod and token Secret builders (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from avatar_operator.api import names, spec
from avatar_operator.build import pod as manifests
from avatar_operator.build import secret
from avatar_runner import contract

REF = names.SessionRef(name="lobby", namespace="team-a", uid="1234")
DEFAULTS = manifests.RunnerDefaults(image="runner:1", renderer="bithuman", cpu="2", memory="4Gi")


def session(**fields: Any) -> spec.AvatarSessionSpec:
    body = {"room": "lobby", "agentIdentity": "agent", "modelPath": "/models/a.imx", **fields}
    return spec.parse_spec({"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "metadata": {"name": "x"}, "spec": body})


def pod(s: spec.AvatarSessionSpec, bithuman_secret: str | None = "bh") -> dict[str, Any]:
    return manifests.runner_pod(REF, s, livekit_url="wss://lk", bithuman_secret=bithuman_secret, defaults=DEFAULTS)


@pytest.mark.parametrize(
    ("fields", "gpus"),
    [
        ({"model": "expression"}, 1),
        ({"model": "expression-2"}, 1),
        ({"model": "essence"}, 0),
        ({}, 0),
        ({"model": "essence", "runner": {"gpus": 2}}, 2),
        ({"model": "expression", "runner": {"gpus": 0}}, 0),
    ],
)
def test_gpu_request_follows_the_model_unless_runner_gpus_says(fields: dict[str, Any], gpus: int) -> None:
    s = session(**fields)
    assert manifests.gpu_count(s) == gpus
    limits = pod(s)["spec"]["containers"][0]["resources"].get("limits", {})
    assert limits.get(manifests.GPU_RESOURCE) == (str(gpus) if gpus else None)


def test_pod_passes_restricted_and_carries_no_api_credentials() -> None:
    p = pod(session(model="expression"))
    spec_ = p["spec"]
    assert spec_["automountServiceAccountToken"] is False
    assert spec_["securityContext"]["runAsNonRoot"] is True
    assert spec_["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = spec_["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e for e in c["env"]}
    assert env["LIVEKIT_TOKEN_FILE"]["value"] == "/var/run/secrets/avatar-operator/LIVEKIT_TOKEN"
    assert {"name": "token", "secret": {"secretName": "lobby-token", "defaultMode": 0o440}} in spec_["volumes"]
    assert "LIVEKIT_TOKEN" not in env
    assert env["BITHUMAN_API_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "bh"
    assert not any("LIVEKIT_API" in name for name in env)
    assert all("value" not in e or "secret" not in e["name"].lower() for e in c["env"])


def test_owned_by_the_session_and_labelled() -> None:
    for obj in (pod(session()), secret.token_secret(REF, "jwt")):
        meta = obj["metadata"]
        assert meta["ownerReferences"] == [REF.owner_reference()]
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"][names.SESSION_LABEL] == "lobby"
        assert names.owned_by(obj, "1234") and not names.owned_by(obj, "other")


def test_model_volume_mounted_read_only_at_the_model_directory() -> None:
    p = pod(session(modelVolume={"persistentVolumeClaim": {"claimName": "models"}}))
    vols = {v["name"]: v for v in p["spec"]["volumes"]}
    assert vols["model"]["persistentVolumeClaim"] == {"claimName": "models"}
    mounts = p["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "model", "mountPath": "/models", "readOnly": True} in mounts


def test_runner_knobs_reach_the_pod() -> None:
    p = pod(session(runner={
        "image": "mine:2",
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "avatars",
        "resources": {"requests": {"cpu": "1"}},
    }))
    s = p["spec"]
    assert s["containers"][0]["image"] == "mine:2"
    assert s["nodeSelector"] == {"pool": "gpu"}
    assert s["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert s["priorityClassName"] == "avatars"
    assert s["containers"][0]["resources"] == {"requests": {"cpu": "1"}}


def test_long_session_names_give_valid_names_and_labels() -> None:
    ref = names.SessionRef(name="a" * 250, namespace="n", uid="u")
    obj = secret.token_secret(ref, "jwt")
    assert len(obj["metadata"]["name"]) <= 253
    assert len(obj["metadata"]["labels"][names.SESSION_LABEL]) <= 63
    assert names.child_name("a" * 250, "token") != names.child_name("a" * 251, "token")


def test_pod_carries_no_max_duration_the_operator_enforces_it() -> None:
    # spec.maxDuration may change while the session runs; a deadline copied
    # into the pod would end it early after a lengthening edit.
    for fields in ({}, {"maxDuration": 60}, {"maxDuration": 90.5}):
        env = pod(session(**fields))["spec"]["containers"][0]["env"]
        assert contract.Env.MAX_DURATION.value not in {e["name"] for e in env}


def test_pod_speaks_the_runner_contract() -> None:
    c = pod(session())["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env[contract.Env.HEALTH_PORT] == str(contract.HEALTH_PORT)
    assert env[contract.Env.RENDERER] == DEFAULTS.renderer
    assert env[contract.Env.MODEL_PATH] == "/models/a.imx"
    assert c["name"] == contract.CONTAINER_NAME
    assert c["ports"] == [{"name": contract.HEALTH_PORT_NAME, "containerPort": contract.HEALTH_PORT}]
    assert c["readinessProbe"]["httpGet"]["path"] == contract.READY_PATH
    assert c["livenessProbe"]["httpGet"]["path"] == contract.LIVE_PATH
    # Plain strings, not enum members: the manifest is serialised as YAML too.
    assert all(type(e["name"]) is str for e in c["env"])
