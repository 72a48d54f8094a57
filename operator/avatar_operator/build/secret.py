"""The token Secret a local-mode session owns: the runner's room token (pure)."""

from __future__ import annotations

from typing import Any

from avatar_runner import contract

from avatar_operator.api import names


def token_secret(ref: names.SessionRef, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.token_secret_name(ref.name),
            "namespace": ref.namespace,
            "labels": names.labels(ref, "token"),
            "ownerReferences": [ref.owner_reference()],
        },
        "stringData": {contract.TOKEN_KEY: token},
    }
