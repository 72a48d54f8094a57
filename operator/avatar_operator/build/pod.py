"""The runner Pod a local-mode session owns (pure).

No cluster access here: the worker passes everything in, and the unit tests
check the manifest without one.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Any

from avatar_runner import contract

from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod

GPU_RESOURCE = "nvidia.com/gpu"
# Models that render on a GPU (bitHuman's expression family); essence runs on CPU.
GPU_MODELS = frozenset({"expression", "expression-2"})


def gpu_count(spec: spec_mod.AvatarSessionSpec) -> int:
    """runner.gpus when given, else one GPU for the expression models, else none."""
    runner = spec.runner
    if runner is not None and runner.gpus is not None:
        return int(runner.gpus)
    model = spec.model.value if spec.model is not None else None
    return 1 if model in GPU_MODELS else 0


@dataclasses.dataclass(frozen=True)
class RunnerDefaults:
    image: str
    renderer: str
    cpu: str
    memory: str


RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def runner_pod(
    ref: names.SessionRef,
    spec: spec_mod.AvatarSessionSpec,
    *,
    livekit_url: str,
    bithuman_secret: str | None,
    defaults: RunnerDefaults,
) -> dict[str, Any]:
    """The runner Pod: passes the `restricted` Pod Security Standard, no API token,
    the room token from its Secret, the bitHuman credential by reference only."""
    runner = spec.runner
    gpus = gpu_count(spec)
    resources: dict[str, Any] = (
        runner.resources.model_dump(by_alias=True, exclude_none=True) if runner and runner.resources else {}
    )
    if not resources:
        resources = {
            "requests": {"cpu": defaults.cpu, "memory": defaults.memory},
            "limits": {"memory": defaults.memory},
        }
    if gpus:
        # Extended resources must be set in limits (requests default to them).
        resources.setdefault("limits", {})[GPU_RESOURCE] = str(gpus)

    env: list[dict[str, Any]] = [
        {"name": "LIVEKIT_URL", "value": livekit_url},
        # A file, not an env var: environment variables leak into crash dumps
        # and `kubectl describe`-style tooling more easily than a mounted Secret.
        {"name": "LIVEKIT_TOKEN_FILE", "value": contract.TOKEN_FILE},
        {"name": "AGENT_IDENTITY", "value": spec.agent_identity},
        {"name": "AVATAR_RENDERER", "value": defaults.renderer},
        {"name": "HEALTH_PORT", "value": "8080"},
    ]
    if spec.model_path:
        env.append({"name": "BITHUMAN_MODEL_PATH", "value": spec.model_path})
    if spec.max_duration:
        env.append({"name": "AVATAR_MAX_DURATION", "value": str(spec.max_duration)})
    if bithuman_secret:
        for key in ("BITHUMAN_API_SECRET", "BITHUMAN_API_TOKEN"):
            env.append(
                {
                    "name": key,
                    "valueFrom": {"secretKeyRef": {"name": bithuman_secret, "key": key, "optional": True}},
                }
            )

    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "token", "secret": {"secretName": names.token_secret_name(ref.name), "defaultMode": 0o440}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "token", "mountPath": contract.TOKEN_DIR, "readOnly": True},
    ]
    if spec.model_volume is not None and spec.model_path:
        volumes.append({"name": "model", **spec.model_volume.model_dump(by_alias=True, exclude_none=True)})
        mounts.append({"name": "model", "mountPath": posixpath.dirname(spec.model_path) or "/", "readOnly": True})

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 15,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": contract.CONTAINER_NAME,
                "image": (runner.image if runner and runner.image else defaults.image),
                "args": ["python", "-m", "avatar_runner"],
                "env": env,
                "resources": resources,
                "volumeMounts": mounts,
                "ports": [{"name": "health", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 2},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"}, "periodSeconds": 10},
                # The runner writes its one-line exit reason here; the operator shows it.
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": RESTRICTED_CONTAINER_SECURITY,
            }
        ],
        "volumes": volumes,
    }
    if runner is not None:
        if runner.node_selector:
            pod_spec["nodeSelector"] = dict(runner.node_selector)
        if runner.tolerations:
            pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in runner.tolerations]
        if runner.priority_class_name:
            pod_spec["priorityClassName"] = runner.priority_class_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": names.runner_pod_name(ref.name),
            "namespace": ref.namespace,
            "labels": names.labels(ref, "runner"),
            "ownerReferences": [ref.owner_reference()],
        },
        "spec": pod_spec,
    }
