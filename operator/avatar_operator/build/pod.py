"""The runner Pod a local-mode session owns (pure).

No cluster access here: the worker passes everything in, and the unit tests
check the manifest without one.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Any, Protocol

from avatar_runner import contract

from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod

GPU_RESOURCE = "nvidia.com/gpu"
# Models that render on a GPU (bitHuman's expression family); essence runs on CPU.
GPU_MODELS = frozenset({"expression", "expression-2"})


class RendererSpec(Protocol):
    """What a runner is built from: a local session's renderer fields, or a pool's."""

    @property
    def model(self) -> spec_mod.Model | None: ...
    @property
    def model_path(self) -> str | None: ...
    @property
    def model_volume(self) -> spec_mod.ModelVolume | None: ...
    @property
    def runner(self) -> spec_mod.RunnerSpec | None: ...


def gpu_count(spec: RendererSpec) -> int:
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


def resources(spec: RendererSpec, defaults: RunnerDefaults) -> dict[str, Any]:
    """runner.resources, else the operator's defaults; plus the GPUs, if any."""
    runner = spec.runner
    resources: dict[str, Any] = (
        runner.resources.model_dump(by_alias=True, exclude_none=True) if runner and runner.resources else {}
    )
    if not resources:
        resources = {
            "requests": {"cpu": defaults.cpu, "memory": defaults.memory},
            "limits": {"memory": defaults.memory},
        }
    gpus = gpu_count(spec)
    if gpus:
        # Extended resources must be set in limits (requests default to them).
        resources.setdefault("limits", {})[GPU_RESOURCE] = str(gpus)
    return resources


def var(name: contract.Env, value: str) -> dict[str, Any]:
    return {"name": name.value, "value": value}


def secret_var(name: contract.Env, secret_name: str) -> dict[str, Any]:
    """`name` from the key of the same name in Secret `secret_name`, if it has it."""
    ref = {"name": secret_name, "key": name.value, "optional": True}
    return {"name": name.value, "valueFrom": {"secretKeyRef": ref}}


def _env(
    spec: spec_mod.AvatarSessionSpec, *, livekit_url: str, bithuman_secret: str | None, renderer: str
) -> list[dict[str, Any]]:
    env = [
        var(contract.Env.LIVEKIT_URL, livekit_url),
        # A file, not an env var: environment variables leak into crash dumps
        # and `kubectl describe`-style tooling more easily than a mounted Secret.
        var(contract.Env.LIVEKIT_TOKEN_FILE, contract.TOKEN_FILE),
        var(contract.Env.AGENT_IDENTITY, spec.agent_identity),
        var(contract.Env.RENDERER, renderer),
        var(contract.Env.HEALTH_PORT, str(contract.HEALTH_PORT)),
    ]
    if spec.model_path:
        env.append(var(contract.Env.MODEL_PATH, spec.model_path))
    # No AVATAR_MAX_DURATION: spec.maxDuration may change while the session
    # runs, and the operator enforces it itself (it stops the runner). A
    # deadline copied into the pod at creation ended sessions early after an
    # edit lengthened it.
    if bithuman_secret:
        env.extend(secret_var(key, bithuman_secret) for key in contract.BITHUMAN_CREDENTIAL_KEYS)
    return env


def _volumes(
    ref: names.SessionRef, spec: spec_mod.AvatarSessionSpec
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes and the container's mounts of them."""
    token_secret = {"secretName": names.token_secret_name(ref.name), "defaultMode": 0o440}
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, {"name": "token", "secret": token_secret}]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": contract.SCRATCH_DIR},
        {"name": "token", "mountPath": contract.TOKEN_DIR, "readOnly": True},
    ]
    model = model_volume(spec)
    if model is not None:
        volumes.append(model[0])
        mounts.append(model[1])
    return volumes, mounts


def model_volume(spec: RendererSpec) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The model's volume and its read-only mount at modelPath's directory, if it has one."""
    if spec.model_volume is None or not spec.model_path:
        return None
    volume = {"name": "model", **spec.model_volume.model_dump(by_alias=True, exclude_none=True)}
    return volume, {"name": "model", "mountPath": posixpath.dirname(spec.model_path) or "/", "readOnly": True}


def _probe(path: str, period_s: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": contract.HEALTH_PORT_NAME}, "periodSeconds": period_s}


def _container(
    image: str, env: list[dict[str, Any]], resources: dict[str, Any], mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "name": contract.CONTAINER_NAME,
        "image": image,
        "args": ["python", "-m", contract.MODULE],
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        "ports": [{"name": contract.HEALTH_PORT_NAME, "containerPort": contract.HEALTH_PORT}],
        "readinessProbe": _probe(contract.READY_PATH, 2),
        "livenessProbe": _probe(contract.LIVE_PATH, 10),
        # The runner writes its one-line exit reason here; the operator shows it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
    }


def runner_pod_spec(
    container: dict[str, Any], volumes: list[dict[str, Any]], runner: spec_mod.RunnerSpec | None
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 15,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": contract.RUN_AS_ID,
            "runAsGroup": contract.RUN_AS_ID,
            "fsGroup": contract.RUN_AS_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if runner is not None:
        if runner.node_selector:
            pod_spec["nodeSelector"] = dict(runner.node_selector)
        if runner.tolerations:
            pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in runner.tolerations]
        if runner.priority_class_name:
            pod_spec["priorityClassName"] = runner.priority_class_name
    return pod_spec


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
    env = _env(spec, livekit_url=livekit_url, bithuman_secret=bithuman_secret, renderer=defaults.renderer)
    volumes, mounts = _volumes(ref, spec)
    image = runner.image if runner and runner.image else defaults.image
    container = _container(image, env, resources(spec, defaults), mounts)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": names.runner_pod_name(ref.name),
            "namespace": ref.namespace,
            "labels": names.labels(ref, "runner"),
            "ownerReferences": [ref.owner_reference()],
        },
        "spec": runner_pod_spec(container, volumes, runner),
    }
