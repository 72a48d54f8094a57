"""The operator's Kubernetes client (avatar_operator.clients.kube.Kube) against the real kube-apiserver."""

from __future__ import annotations

import base64
import json
import pathlib
from collections.abc import AsyncIterator

import pytest
from avatar_operator.clients import kube

from tests.conftest import Stack
from tests.integration.conftest import secret_manifest

pytestmark = pytest.mark.stack


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[kube.Kube]:
    """The client as the stack's admin (its kubeconfig's client certificate)."""
    client = kube.Kube.from_kubeconfig(stack.kubeconfig)
    yield client
    await client.close()


async def test_create_read_delete_answer_as_documented(stack: Stack, namespace: str, admin: kube.Kube) -> None:
    ns = namespace
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": ns}, "data": {"k": base64.b64encode(b"v\n\x00").decode()}}
    assert await admin.create(secret) is True
    assert await admin.create(secret) is False  # 409: already there
    assert await admin.read_secret(ns, "s") == {"k": "v\n\x00"}
    assert await admin.read_secret_key(ns, "s", "k") == b"v\n\x00"
    assert await admin.read_secret_key(ns, "s", "other") is None
    assert await admin.read_secret(ns, "absent") is None
    stack.kubectl("create", "configmap", "cm", "-n", ns, "--from-literal=text=hello")
    assert await admin.read_config_map_key(ns, "cm", "text") == b"hello"
    assert await admin.read_config_map_key(ns, "cm", "nope") is None
    assert await admin.read_config_map_key(ns, "absent", "text") is None
    assert await admin.read_pod(ns, "absent") is None
    await admin.delete("Secret", ns, "s")
    await admin.delete("Secret", ns, "s")  # gone already is fine
    assert await admin.patch_status(ns, "no-such-session", {"phase": "Pending"}) is False
    with pytest.raises(kube.ApiError) as e:
        await admin.create({**secret, "metadata": {"name": "s", "namespace": f"{ns}-absent"}})
    assert e.value.status == 404 and f"/namespaces/{ns}-absent/secrets" in str(e.value)


async def test_a_secret_read_within_the_ttl_is_shared(stack: Stack, namespace: str, admin: kube.Kube) -> None:
    ns = namespace
    stack.kubectl("apply", "-n", ns, "-f", "-", input=secret_manifest("shared", {"K": "one"}))
    assert await admin.read_secret(ns, "shared") == {"K": "one"}
    stack.kubectl("apply", "-n", ns, "-f", "-", input=secret_manifest("shared", {"K": "two"}))
    assert await admin.read_secret(ns, "shared") == {"K": "one"}  # within SECRET_READ_TTL_S
    admin._secret_reads.clear()  # as when the TTL has passed
    assert await admin.read_secret(ns, "shared") == {"K": "two"}


async def test_a_service_account_token_authenticates_and_rbac_applies(stack: Stack, namespace: str, tmp_path: pathlib.Path) -> None:
    """The in-cluster path: a bearer token rather than the admin's client certificate."""
    ns = namespace
    stack.kubectl("create", "serviceaccount", "reader", "-n", ns)
    stack.kubectl("create", "role", "read-secrets", "-n", ns, "--verb=get", "--resource=secrets")
    stack.kubectl("create", "rolebinding", "reader", "-n", ns, "--role=read-secrets", f"--serviceaccount={ns}:reader")
    stack.kubectl("apply", "-n", ns, "-f", "-", input=secret_manifest("creds", {"K": "v"}))
    token = stack.kubectl("create", "token", "reader", "-n", ns).stdout.strip()
    admin_cfg = json.loads(stack.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    cluster = admin_cfg["clusters"][0]
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [cluster],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": "sa"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    reader = kube.Kube.from_kubeconfig(str(path))
    try:
        assert await reader.read_secret(ns, "creds") == {"K": "v"}
        with pytest.raises(kube.ApiError) as e:
            await reader.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": ns}})
        assert e.value.status == 403
    finally:
        await reader.close()
