"""A pod-launched pool on kwok nodes: the runner pods, their token Secret, replacement and scaling.

kwok runs no containers, so these runners never answer: what is checked is
the cluster's side (the right pods, `restricted` in a namespace that
enforces it, owned by the pool, a deleted one replaced, scaling both ways).
"""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Stack
from tests.integration.conftest import Operator, get_json, wait_for

POOL = "warm"


def runner_pods(stack: Stack, ns: str) -> list[dict[str, Any]]:
    pods = get_json(stack, "pods", "-n", ns, "-l", f"avatar-operator.dev/pool={POOL}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def test_a_pool_keeps_its_runner_pods(stack: Stack, operator: Operator, credentials: str) -> None:
    ns = credentials
    pool = {
        "apiVersion": "avatar-operator.dev/v1alpha1",
        "kind": "AvatarPool",
        "metadata": {"name": POOL},
        "spec": {
            "replicas": 2,
            "sessionsPerRunner": 4,
            "model": "expression",
            "modelPath": "/models/kiosk.imx",
            "runner": {"renderer": "bithuman", "nodeSelector": {"nvidia.com/gpu.present": "true"}},
        },
    }
    stack.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pool))
    uid = get_json(stack, "avp", POOL, "-n", ns)["metadata"]["uid"]
    pods = wait_for("2 runner pods", lambda: len(p := runner_pods(stack, ns)) == 2 and p)
    token_secret = get_json(stack, "secret", f"{POOL}-pool-token", "-n", ns)
    assert token_secret["metadata"]["ownerReferences"][0]["uid"] == uid
    for pod in pods:
        owner = pod["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("AvatarPool", POOL, uid, True)
        spec = pod["spec"]
        container = spec["containers"][0]
        assert container["args"][-1] == "serve"
        env = {e["name"]: e for e in container["env"]}
        assert env["MAX_SESSIONS"]["value"] == "4" and env["AVATAR_RENDERER"]["value"] == "bithuman"
        assert env["POOL_TOKEN_FILE"]["value"].startswith("/var/run/secrets/")
        assert "POOL_TOKEN" not in env and "LIVEKIT_API_SECRET" not in env
        assert env["BITHUMAN_API_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "bithuman-credentials"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"  # expression: one GPU by default
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert spec["automountServiceAccountToken"] is False
        assert any(v.get("secret", {}).get("secretName") == f"{POOL}-pool-token" for v in spec["volumes"])
    # The namespace enforces `restricted`: the apiserver admitted these pods, so they pass it.
    labels = get_json(stack, "namespace", ns)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

    status = wait_for("the pool's status", lambda: (s := get_json(stack, "avp", POOL, "-n", ns).get("status")) and s.get("replicas") == 2 and s)
    assert status["selector"] == f"avatar-operator.dev/pool={POOL}"
    assert status["readyReplicas"] == 0  # nothing answers on kwok
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "RunnersStarting"
    # The scale subresource reads what an HPA reads.
    scale = json.loads(stack.kubectl("get", "--raw", f"/apis/avatar-operator.dev/v1alpha1/namespaces/{ns}/avatarpools/{POOL}/scale").stdout)
    assert scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == f"avatar-operator.dev/pool={POOL}"

    # -- a deleted runner pod is replaced -------------------------------------
    gone = pods[0]["metadata"]["name"]
    stack.kubectl("delete", "pod", gone, "-n", ns, "--wait=false")
    wait_for(
        "a replacement pod",
        lambda: len(p := runner_pods(stack, ns)) == 2 and gone not in {x["metadata"]["name"] for x in p},
        timeout=30,
    )

    # -- scaling: kubectl scale, up and down (idle runners go) ----------------
    stack.kubectl("scale", "avp", POOL, "-n", ns, "--replicas=3")
    wait_for("3 runner pods", lambda: len(runner_pods(stack, ns)) == 3, timeout=30)
    stack.kubectl("scale", "avp", POOL, "-n", ns, "--replicas=1")
    wait_for("1 runner pod", lambda: len(runner_pods(stack, ns)) == 1, timeout=30)
    wait_for("status.replicas 1", lambda: get_json(stack, "avp", POOL, "-n", ns)["status"]["replicas"] == 1, timeout=30)

    # -- deleting the pool takes its runners ----------------------------------
    stack.kubectl("delete", "avp", POOL, "-n", ns, "--timeout=60s")
    wait_for("no runner pod", lambda: not runner_pods(stack, ns), timeout=60)
