"""`avatar-operator run`: start kopf with the operator's handlers and settings."""

from __future__ import annotations

import argparse
import random
import socket
import sys
import urllib.parse

import kopf

from avatar_operator import metrics
from avatar_operator import settings as settings_mod
from avatar_operator.clients import kube_login


def liveness_url(url: str | None) -> str | None:
    """The liveness endpoint; port 0 picks a free port (kopf would take 80), "" turns it off."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.port != 0:
        return url
    with socket.socket() as s:
        s.bind((parts.hostname or "127.0.0.1", 0))
        port = s.getsockname()[1]
    return parts._replace(netloc=f"{parts.hostname}:{port}").geturl()


def main(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.Settings.from_env()
    except settings_mod.SettingsError as e:
        print(f"avatar-operator: {e}", file=sys.stderr)
        return 2
    try:
        kube_login.load()  # a config that cannot work is said here, not in kopf's login retries
    except kube_login.ConfigError as e:
        print(f"avatar-operator: no usable Kubernetes config: {e}", file=sys.stderr)
        return 2
    namespaces = list(getattr(args, "namespace", None) or settings.namespaces)
    clusterwide = bool(getattr(args, "all_namespaces", False)) or not namespaces
    kopf.configure(
        verbose=bool(getattr(args, "verbose", False)),
        log_format=kopf.LogFormat.JSON if getattr(args, "log_format", "plain") == "json" else kopf.LogFormat.FULL,
    )
    metrics.serve(int(getattr(args, "metrics_port", 0) or 0))

    from avatar_operator.controller import (
        handlers,  # noqa: F401 - registers the handlers with kopf
        lean_bodies,
        login,  # noqa: F401 - kopf logs in as our client does
    )

    lean_bodies.install()

    kopf.run(
        clusterwide=clusterwide,
        namespaces=[] if clusterwide else namespaces,
        standalone=bool(getattr(args, "standalone", False)),
        # A named peering is mandatory in kopf (it waits for the peering CRD);
        # unnamed, kopf peers when the CRD exists and runs alone otherwise.
        peering_name=None if getattr(args, "standalone", False) else getattr(args, "peering", None),
        # kopf pauses every replica that sees a live peer of equal priority:
        # distinct priorities let exactly one work and the next take over.
        priority=getattr(args, "priority", None) if getattr(args, "priority", None) is not None else random.randint(1, 1_000_000),
        liveness_endpoint=liveness_url(getattr(args, "liveness", None)),
        memo=kopf.Memo(settings=settings),
    )
    return 0
