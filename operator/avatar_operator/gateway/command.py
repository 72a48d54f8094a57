"""`avatar-operator gateway`: serve the plugin and inference protocols until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys

from aiohttp import web

from avatar_operator import settings as operator_settings
from avatar_operator.clients import kube as kube_mod
from avatar_operator.clients import kube_login
from avatar_operator.gateway import admission as admission_mod
from avatar_operator.gateway import context as context_mod
from avatar_operator.gateway import kube_calls, server, tenant_watch
from avatar_operator.gateway import settings as settings_mod
from avatar_operator.gateway import tenants as tenants_mod

log = logging.getLogger("avatar_operator.gateway")


def _tls(settings: settings_mod.GatewaySettings) -> ssl.SSLContext | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


async def _until_stopped() -> None:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()


async def serve(settings: settings_mod.GatewaySettings) -> int:
    signing_key = settings.signing_key()
    kube = kube_calls.GatewayKube(*kube_mod.load_config())
    tenants = tenants_mod.Tenants()
    watch = tenant_watch.TenantWatch(kube, tenants, settings.namespace_list())
    admission = admission_mod.Admission(kube, settings.admission_wait_s, settings.retry_after_s)
    gateway = context_mod.Gateway(tenants=tenants, kube=kube, admission=admission, signing_key=signing_key, ready=lambda: watch.ready)
    runner = web.AppRunner(server.app(gateway, settings.max_body_bytes), access_log=None)
    watch.start()
    await runner.setup()
    try:
        tls = _tls(settings)
        await web.TCPSite(runner, settings.host, settings.port, ssl_context=tls).start()
        scheme = "https" if tls else "http"
        log.info("gateway serving on %s://%s:%d", scheme, settings.host, settings.port)
        await _until_stopped()
    finally:
        await runner.cleanup()
        await watch.stop()
        await kube.close()
    return 0


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiohttp's access log says nothing a gateway operator needs at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        settings = settings_mod.from_env()
    except operator_settings.SettingsError as e:
        print(f"avatar-operator gateway: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(settings))
    except KeyboardInterrupt:
        return 0
    except operator_settings.SettingsError as e:
        print(f"avatar-operator gateway: {e}", file=sys.stderr)
        return 2
    except kube_login.ConfigError as e:
        print(f"avatar-operator gateway: no usable Kubernetes config ({e}): run in a pod or set KUBECONFIG", file=sys.stderr)
        return 2
    except (OSError, ssl.SSLError) as e:
        print(f"avatar-operator gateway: cannot serve on {settings.host}:{settings.port}: {e}", file=sys.stderr)
        return 1
