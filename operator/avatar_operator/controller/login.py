"""kopf's login: the same API server and identity as the operator's own client.

Registered instead of kopf's fallbacks (which would piggyback on the kubernetes
library when it is importable, or read a kubeconfig their own way): both come
from clients.kube_login, so kopf's watches and our requests never disagree.
kopf asks again after a 401, and the service-account token is then read afresh.
"""

from __future__ import annotations

from typing import Any

import kopf

from avatar_operator.clients import kube_login


def connection_info(login: kube_login.Login) -> kopf.ConnectionInfo:
    """kopf's form of a Login; the token as it is now."""
    return kopf.ConnectionInfo(
        server=login.host,
        ca_path=login.ca_file,
        ca_data=login.ca_data,
        insecure=login.insecure or None,
        certificate_path=login.cert_file,
        certificate_data=login.cert_data,
        private_key_path=login.key_file,
        private_key_data=login.key_data,
        token=kube_login.token(login),
        default_namespace=login.namespace,
    )


@kopf.on.login()
async def login(**_: Any) -> kopf.ConnectionInfo:
    # Async like every handler here (tests/unit/test_handlers_async.py); it reads a few small files, once
    # at start and after a 401.
    try:
        return connection_info(kube_login.load())
    except kube_login.ConfigError as e:
        raise kopf.LoginError(str(e)) from e
