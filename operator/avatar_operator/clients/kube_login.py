"""Where the API server is and how to authenticate to it: the one way the operator,
the gateway and the viewer log in.

In a pod: the service account (KUBERNETES_SERVICE_HOST/PORT, its token re-read
as the kubelet rotates it, its CA). Elsewhere: a kubeconfig (an explicit path,
else KUBECONFIG, colon-separated and merged as kubectl does, else
~/.kube/config) with a client certificate or a bearer token (`token` or
`tokenFile`). The operator's own client (clients.kube) and kopf's login handler
(controller.login) both build on `load`, so they always agree.

Read here rather than by the kubernetes library's loader: importing that
library costs the operator about 15 MB of model classes it never uses (kopf
imports `kubernetes.client` whenever it can). What it supported and this does
not, each refused with an error naming the field: exec credential plugins,
auth-provider (gcp, oidc, azure), basic auth, tls-server-name and proxy-url.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import pathlib
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

SERVICE_ACCOUNT = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount")
# As the kubernetes library's in-cluster loader (and client-go) do: a rotated
# token is picked up within a minute; the old one stays valid well past that.
TOKEN_REREAD_S = 60.0
# Kubeconfig user fields that need more than a file read; refused by name.
UNSUPPORTED_USER = {
    "exec": "exec credential plugins are not supported",
    "auth-provider": "auth-provider plugins are not supported",
    "username": "basic auth is not supported (the API server dropped it in 1.19)",
    "password": "basic auth is not supported (the API server dropped it in 1.19)",
}
UNSUPPORTED_CLUSTER = {"tls-server-name": "is not supported", "proxy-url": "is not supported (use HTTPS_PROXY)"}
HOW = "use a client certificate, a token or a tokenFile"


class ConfigError(Exception):
    """No usable config; the message names the file and field, and the fix."""


@dataclasses.dataclass(frozen=True)
class Login:
    """One API server and one identity. PEM data is text; paths are absolute."""

    host: str  # https://host:port, no trailing slash
    ca_file: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    cert_file: str | None = None
    cert_data: str | None = None
    key_file: str | None = None
    key_data: str | None = None
    token: str | None = None
    token_file: str | None = None  # re-read while the process runs (rotation)
    namespace: str | None = None  # the context's, or the pod's


def load(kubeconfig: str | None = None) -> Login:
    """An explicit kubeconfig; else the service account in a pod; else KUBECONFIG or ~/.kube/config."""
    if kubeconfig:
        return from_kubeconfig([kubeconfig])
    found = in_cluster(os.environ, SERVICE_ACCOUNT)
    if found is not None:
        return found
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    if not paths:
        default = pathlib.Path("~/.kube/config").expanduser()
        if not default.exists():
            raise ConfigError("no Kubernetes config: not in a pod (KUBERNETES_SERVICE_HOST unset) and no kubeconfig: set KUBECONFIG")
        paths = [str(default)]
    return from_kubeconfig(paths)


def in_cluster(env: Mapping[str, str], account: pathlib.Path) -> Login | None:
    """The pod's service account; None outside a pod (no KUBERNETES_SERVICE_HOST or no token)."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    token = account / "token"
    if not host or not port or not token.exists():
        return None
    ca = account / "ca.crt"
    if not ca.exists():
        raise ConfigError(f"in-cluster config: {ca} is missing: mount the service account's CA (automountServiceAccountToken)")
    namespace = account / "namespace"
    return Login(
        host=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
        ca_file=str(ca),
        token_file=str(token),
        namespace=namespace.read_text().strip() if namespace.exists() else None,
    )


def from_kubeconfig(paths: Sequence[str]) -> Login:
    """The current context of these kubeconfigs, merged as kubectl does: the first to name a thing wins."""
    current: str | None = None
    merged: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {"contexts": {}, "clusters": {}, "users": {}}
    for name in paths:
        doc = _read(name)
        current = current or doc.get("current-context") or None
        for section, entries in merged.items():
            for item in doc.get(section) or []:
                if isinstance(item, dict) and item.get("name") not in entries:
                    entries[str(item.get("name"))] = (name, dict(item.get(section[:-1]) or {}))
    where = paths[0] if len(paths) == 1 else os.pathsep.join(paths)
    if current is None:
        raise ConfigError(f"kubeconfig {where}: current-context is not set: run `kubectl config use-context NAME`")
    if current not in merged["contexts"]:
        raise ConfigError(f"kubeconfig {where}: current-context {current!r} is not among its contexts")
    _, context = merged["contexts"][current]
    cluster_file, cluster = _named(merged, "clusters", context.get("cluster"), where, current)
    user_file, user = _named(merged, "users", context.get("user"), where, current) if context.get("user") else (where, {})
    return _login(cluster_file, cluster, user_file, user, context.get("namespace"))


def _read(name: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(pathlib.Path(name).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"kubeconfig {name}: cannot read: {e.strerror}: set KUBECONFIG to a readable file") from e
    except yaml.YAMLError as e:
        # Not str(e): PyYAML quotes the offending line, and that may be a token's.
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"kubeconfig {name}: not valid YAML{where}: {getattr(e, 'problem', None) or 'it does not parse'}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {name}: not a kubeconfig (a mapping with clusters, users and contexts)")
    return doc


def _named(
    merged: Mapping[str, Mapping[str, tuple[str, dict[str, Any]]]], section: str, name: Any, where: str, context: str
) -> tuple[str, dict[str, Any]]:
    if name not in merged[section]:
        raise ConfigError(f"kubeconfig {where}: contexts[{context}].context.{section[:-1]}: no {section[:-1]} named {name!r}")
    return merged[section][name]


def _login(cluster_file: str, cluster: Mapping[str, Any], user_file: str, user: Mapping[str, Any], namespace: Any) -> Login:
    for key, why in UNSUPPORTED_CLUSTER.items():
        if cluster.get(key):
            raise ConfigError(f"kubeconfig {cluster_file}: cluster.{key} {why}")
    for key, why in UNSUPPORTED_USER.items():
        if user.get(key):
            raise ConfigError(f"kubeconfig {user_file}: user.{key}: {why}: {HOW}")
    server = str(cluster.get("server") or "").rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise ConfigError(f"kubeconfig {cluster_file}: cluster.server {server!r} is not an https:// (or http://) URL")
    return Login(
        host=server,
        ca_file=_path(cluster_file, cluster.get("certificate-authority")),
        ca_data=_pem(cluster_file, "cluster.certificate-authority-data", cluster.get("certificate-authority-data")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_file=_path(user_file, user.get("client-certificate")),
        cert_data=_pem(user_file, "user.client-certificate-data", user.get("client-certificate-data")),
        key_file=_path(user_file, user.get("client-key")),
        key_data=_pem(user_file, "user.client-key-data", user.get("client-key-data")),
        token=str(user["token"]) if user.get("token") else None,
        token_file=_path(user_file, user.get("tokenFile")),
        namespace=str(namespace) if namespace else None,
    )


def _path(kubeconfig: str, value: Any) -> str | None:
    """A path as kubectl reads it: relative to the kubeconfig's own directory."""
    if not value:
        return None
    return str(pathlib.Path(kubeconfig).expanduser().parent / pathlib.Path(str(value)).expanduser())


def _pem(kubeconfig: str, field: str, value: Any) -> str | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise ConfigError(f"kubeconfig {kubeconfig}: {field} is not base64 of a PEM file") from e


def ssl_context(login: Login) -> ssl.SSLContext | bool:
    """TLS for aiohttp: verified against the CA (or the system's), with the client certificate; False for http://."""
    if login.host.startswith("http://"):
        return False
    context = ssl.create_default_context(cafile=login.ca_file, cadata=login.ca_data)
    if login.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if login.cert_file or login.cert_data:
        _load_cert_chain(context, login)
    return context


def _load_cert_chain(context: ssl.SSLContext, login: Login) -> None:
    # The ssl module reads a certificate and key only from files: inline data
    # goes through a private temporary file (mode 0600), gone once read.
    with tempfile.TemporaryDirectory(prefix="kube-login-") as tmp:
        cert = login.cert_file or _write(tmp, "cert.pem", login.cert_data or "")
        key = login.key_file or (_write(tmp, "key.pem", login.key_data) if login.key_data else None)
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"the client certificate {login.cert_file or '(inline data)'} or its key cannot be loaded: {e}") from e


def _write(directory: str, name: str, text: str) -> str:
    path = pathlib.Path(directory) / name
    path.touch(mode=0o600)
    path.write_text(text, encoding="ascii")
    return str(path)


def bearer(login: Login, *, clock: Callable[[], float] = time.monotonic) -> Callable[[], str | None]:
    """The Authorization header's value, asked for on each request: a token file is
    re-read every TOKEN_REREAD_S, so a rotated service-account token is picked up."""
    if login.token_file is None:
        header = f"Bearer {login.token}" if login.token else None
        return lambda: header
    return TokenFile(login.token_file, clock).header


class TokenFile:
    """A token file, re-read every TOKEN_REREAD_S; the last good token when a read fails mid-rotation."""

    def __init__(self, path: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = pathlib.Path(path)
        self._clock = clock
        self._token = self._read()
        self._read_at = clock()

    def _read(self) -> str:
        try:
            return self._path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"token file {self._path}: cannot read: {e.strerror}") from e

    def current(self) -> str:
        now = self._clock()
        if now - self._read_at >= TOKEN_REREAD_S:
            self._read_at = now
            try:
                self._token = self._read() or self._token
            except ConfigError:
                pass  # the kubelet swaps the file atomically; a failed read keeps the last token
        return self._token

    def header(self) -> str | None:
        token = self.current()
        return f"Bearer {token}" if token else None


def token(login: Login) -> str | None:
    """The token now, a token file read afresh: for kopf's login, which is asked again after a 401."""
    if login.token_file is not None:
        return TokenFile(login.token_file).current() or None
    return login.token
