"""clients.kube_login: the kubeconfig and service-account config the operator's client
and kopf's login share; TLS with a client certificate against a real local HTTPS server."""

from __future__ import annotations

import base64
import json
import pathlib
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from avatar_operator.clients import kube, kube_login
from avatar_operator.controller import login as kopf_login


def kubeconfig(cluster: dict[str, Any], user: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"cluster": "c", "user": "u", **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": context}],
    }


def write(path: pathlib.Path, doc: dict[str, Any]) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_kubeconfig_paths_are_relative_to_the_file_and_the_first_file_wins(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a").mkdir()
    first = write(tmp_path / "a" / "config", kubeconfig(
        {"server": "https://first:6443/", "certificate-authority": "pki/ca.crt"},
        {"client-certificate": "pki/me.crt", "client-key": "/abs/me.key"}, namespace="team",
    ))
    second = kubeconfig({"server": "https://second:6443"}, {"token": "t"})
    second["current-context"] = "other"
    login = kube_login.from_kubeconfig([first, write(tmp_path / "b", second)])
    assert login.host == "https://first:6443"
    assert login.ca_file == str(tmp_path / "a" / "pki" / "ca.crt")
    assert (login.cert_file, login.key_file) == (str(tmp_path / "a" / "pki" / "me.crt"), "/abs/me.key")
    assert login.namespace == "team" and login.token is None


@pytest.mark.parametrize(
    ("user", "field"),
    [({"exec": {"command": "aws"}}, "user.exec"), ({"auth-provider": {"name": "oidc"}}, "user.auth-provider"),
     ({"username": "a", "password": "b"}, "user.username")],
)
def test_a_credential_plugin_is_refused_naming_the_field(tmp_path: pathlib.Path, user: dict[str, Any], field: str) -> None:
    path = write(tmp_path / "config", kubeconfig({"server": "https://k:6443"}, user))
    with pytest.raises(kube_login.ConfigError) as e:
        kube_login.from_kubeconfig([path])
    assert path in str(e.value) and field in str(e.value) and "client certificate, a token or a tokenFile" in str(e.value)


def test_a_context_naming_a_missing_cluster_or_bad_data_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    doc = kubeconfig({"server": "https://k:6443"}, {"token": "t"})
    doc["contexts"][0]["context"]["cluster"] = "gone"
    with pytest.raises(kube_login.ConfigError, match=r"contexts\[ctx\]\.context\.cluster: no cluster named 'gone'"):
        kube_login.from_kubeconfig([write(tmp_path / "c1", doc)])
    bad = kubeconfig({"server": "https://k:6443", "certificate-authority-data": "not base64!"}, {"token": "t"})
    with pytest.raises(kube_login.ConfigError, match="cluster.certificate-authority-data is not base64"):
        kube_login.from_kubeconfig([write(tmp_path / "c2", bad)])


def test_a_kubeconfig_that_does_not_parse_is_named_without_quoting_its_lines(tmp_path: pathlib.Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text("users:\n- name: u\n  user:\n    token: sEcReT-token-123 :\n")
    with pytest.raises(kube_login.ConfigError, match=r"not valid YAML at line 4, column \d+: mapping values are not allowed here") as e:
        kube_login.from_kubeconfig([str(broken)])
    assert "sEcReT" not in str(e.value)  # PyYAML's own message quotes the line


def test_in_cluster_reads_the_service_account_and_rereads_a_rotated_token(tmp_path: pathlib.Path) -> None:
    (tmp_path / "token").write_text("one\n")
    (tmp_path / "ca.crt").write_text("")
    (tmp_path / "namespace").write_text("ops")
    assert kube_login.in_cluster({}, tmp_path) is None  # not in a pod
    login = kube_login.in_cluster({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}, tmp_path)
    assert login is not None
    assert (login.host, login.ca_file, login.namespace) == ("https://[fd00::1]:443", str(tmp_path / "ca.crt"), "ops")
    now = [0.0]
    header = kube_login.bearer(login, clock=lambda: now[0])
    assert header() == "Bearer one"
    (tmp_path / "token").write_text("two")  # the kubelet rotates it
    now[0] = kube_login.TOKEN_REREAD_S - 1
    assert header() == "Bearer one"
    now[0] = kube_login.TOKEN_REREAD_S
    assert header() == "Bearer two"
    assert kube_login.token(login) == "two" and kopf_login.connection_info(login).token == "two"


# --- TLS with a client certificate, inline data, against a real HTTPS server -------------


def openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (apt-get install openssl): the stack needs it too")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=test-ca", cwd=d)
    for name, extra in (("server", ["-addext", "subjectAltName=IP:127.0.0.1"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", *extra, cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "1", "-copy_extensions", "copy", cwd=d)
    return d


@pytest.fixture
async def server(pki: pathlib.Path) -> AsyncIterator[str]:
    """An HTTPS server that requires a client certificate from the CA and answers with its CN."""

    async def whoami(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        cn = dict(x[0] for x in (peer or {}).get("subject", ()))["commonName"]
        return web.json_response({"cn": cn, "authorization": request.headers.get("Authorization")})

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    tls.load_cert_chain(str(pki / "server.crt"), str(pki / "server.key"))
    tls.verify_mode = ssl.CERT_REQUIRED
    app = web.Application()
    app.router.add_get("/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock, ssl_context=tls).start()
    try:
        yield f"https://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


def b64(path: pathlib.Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


async def test_inline_client_certificate_works_for_our_client_and_for_kopfs(pki: pathlib.Path, server: str, tmp_path: pathlib.Path) -> None:
    path = write(tmp_path / "config", kubeconfig(
        {"server": server, "certificate-authority-data": b64(pki / "ca.crt")},
        {"client-certificate-data": b64(pki / "client.crt"), "client-key-data": b64(pki / "client.key")},
    ))
    client = kube.Kube.from_kubeconfig(path)
    try:
        assert await client.request("GET", "/whoami") == (200, {"cn": "client", "authorization": None})
    finally:
        await client.close()
    # kopf's own connection, built from the same Login, reaches the same server as the same user.
    info = kopf_login.connection_info(kube_login.load(path))
    async with aiohttp.ClientSession() as http, http.get(server + "/whoami", ssl=info.as_ssl_context(), headers=info.as_http_headers()) as r:
        assert (await r.json())["cn"] == "client"
    assert not list(pathlib.Path(tempfile.gettempdir()).glob("kube-login-*"))  # the key's temporary copy is gone


async def test_a_token_file_is_sent_as_a_bearer_token(pki: pathlib.Path, server: str, tmp_path: pathlib.Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    path = write(tmp_path / "config", kubeconfig(
        {"server": server, "certificate-authority": str(pki / "ca.crt")},
        {"tokenFile": "token", "client-certificate": str(pki / "client.crt"), "client-key": str(pki / "client.key")},
    ))
    client = kube.Kube.from_kubeconfig(path)
    try:
        assert await client.request("GET", "/whoami") == (200, {"cn": "client", "authorization": "Bearer s3cret"})
    finally:
        await client.close()
    assert kopf_login.connection_info(kube_login.load(path)).as_http_headers() == {"Authorization": "Bearer s3cret"}


def test_a_missing_client_certificate_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    login = kube_login.Login(host="https://127.0.0.1:1", cert_file=str(tmp_path / "missing.crt"))
    with pytest.raises(kube_login.ConfigError, match="missing.crt"):
        kube_login.ssl_context(login)


def test_the_operators_process_never_loads_the_kubernetes_library() -> None:
    # What `avatar-operator run` imports before kopf.run, in a fresh interpreter with the library installed.
    code = (
        "import sys\n"
        "from avatar_operator import cli\n"
        "cli.hide_kubernetes_library()\n"
        "from avatar_operator import run\n"
        "from avatar_operator.controller import handlers, login\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes' and sys.modules[m] is not None))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_hiding_the_library_leaves_a_process_that_has_it_alone() -> None:
    import kubernetes  # noqa: F401 - a test process that uses it (the integration tests' client)
    from avatar_operator import cli

    cli.hide_kubernetes_library()
    assert sys.modules["kubernetes"] is not None
