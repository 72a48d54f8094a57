"""A pool's runner Pod and its Bearer-token Secret (pure).

The runner is `python -m avatar_runner serve`: the renderer loaded once,
bitHuman's launch API on SERVE_PORT. It gets no room token (each launch
brings one) and no API token; the pool's Bearer token comes from a Secret
volume, the bitHuman credential by reference, as for a session's runner.
"""

from __future__ import annotations

import secrets
from typing import Any

from avatar_runner import contract

from avatar_operator.api import names
from avatar_operator.api import pool as pool_mod
from avatar_operator.build import pod as pod_mod


def _env(spec: pool_mod.AvatarPoolSpec, bithuman_secret: str | None, renderer: str) -> list[dict[str, Any]]:
    env = [
        pod_mod.var(contract.Env.RENDERER, renderer),
        pod_mod.var(contract.Env.SERVE_PORT, str(contract.SERVE_PORT)),
        pod_mod.var(contract.Env.MAX_SESSIONS, str(spec.sessions_per_runner)),
        pod_mod.var(contract.Env.POOL_TOKEN_FILE, contract.POOL_TOKEN_FILE),
    ]
    if spec.model_path:
        env.append(pod_mod.var(contract.Env.MODEL_PATH, spec.model_path))
    if bithuman_secret:
        env.extend(pod_mod.secret_var(key, bithuman_secret) for key in contract.BITHUMAN_CREDENTIAL_KEYS)
    return env


def _volumes(ref: names.PoolRef, spec: pool_mod.AvatarPoolSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    token = {"secretName": names.pool_token_secret_name(ref.name), "defaultMode": 0o440}
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}, {"name": "pool-token", "secret": token}]
    mounts: list[dict[str, Any]] = [
        {"name": "tmp", "mountPath": contract.SCRATCH_DIR},
        {"name": "pool-token", "mountPath": contract.POOL_TOKEN_DIR, "readOnly": True},
    ]
    model = pod_mod.model_volume(spec)
    if model is not None:
        volumes.append(model[0])
        mounts.append(model[1])
    return volumes, mounts


SERVE_ARGS = ["python", "-m", contract.MODULE, contract.SERVE_COMMAND]


def _container(
    image: str, args: list[str], env: list[dict[str, Any]], resources: dict[str, Any], mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    probe = {"httpGet": {"path": contract.HEALTH_PATH, "port": contract.SERVE_PORT_NAME}}
    return {
        "name": contract.CONTAINER_NAME,
        "image": image,
        **({"args": args} if args else {}),  # none: the image's own entrypoint (bitHuman's image)
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        "ports": [{"name": contract.SERVE_PORT_NAME, "containerPort": contract.SERVE_PORT}],
        # /health answers once the server listens; the model loads after it
        # (the operator reads /ready for that): a slow load is not a dead runner.
        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 60},
        "livenessProbe": {**probe, "periodSeconds": 10},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": pod_mod.RESTRICTED_CONTAINER_SECURITY,
    }


def runner_pod(
    ref: names.PoolRef,
    spec: pool_mod.AvatarPoolSpec,
    name: str,
    *,
    bithuman_secret: str | None,
    defaults: pod_mod.RunnerDefaults,
) -> dict[str, Any]:
    """One runner of the pool: `restricted`, owned by the pool, labelled with its selector."""
    runner = spec.runner
    renderer = runner.renderer.value if runner and runner.renderer else defaults.renderer
    image = runner.image if runner and runner.image else defaults.image
    volumes, mounts = _volumes(ref, spec)
    args = list(runner.args) if runner and runner.args is not None else SERVE_ARGS
    container = _container(image, args, _env(spec, bithuman_secret, renderer), pod_mod.resources(spec, defaults), mounts)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ref.namespace,
            "labels": names.pool_labels(ref, name),
            "ownerReferences": [ref.owner_reference()],
        },
        "spec": pod_mod.runner_pod_spec(container, volumes, runner),
    }


def new_token() -> str:
    """A fresh Bearer token for a pool (256 bits)."""
    return secrets.token_urlsafe(32)


def token_secret(ref: names.PoolRef, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.pool_token_secret_name(ref.name),
            "namespace": ref.namespace,
            "labels": {names.POOL_LABEL: names.shorten(ref.name, names.LABEL_VALUE_MAX), names.MANAGED_BY_LABEL: names.MANAGER},
            "ownerReferences": [ref.owner_reference()],
        },
        "stringData": {contract.POOL_TOKEN_KEY: token},
    }
