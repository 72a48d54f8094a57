"""`avatar-operator view [-n NAMESPACE] [NAME]`: serve the page, print its URL, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import urllib.parse
import webbrowser

import aiohttp
from aiohttp import web

from avatar_operator import settings as settings_mod
from avatar_operator.clients import kube as kube_mod
from avatar_operator.clients import kube_login
from avatar_operator.viewer import access as access_mod
from avatar_operator.viewer import assets, server


def context_namespace(kubeconfig: str | None) -> str:
    """The current context's namespace, as kubectl picks it."""
    try:
        return kube_login.load(kubeconfig).namespace or "default"
    except kube_login.ConfigError:
        return "default"  # serve() says what is wrong with the config


def page_url(address: str, port: int, name: str | None) -> str:
    host = f"[{address}]" if ":" in address else address
    query = f"?{urllib.parse.urlencode({'session': name})}" if name else ""
    return f"http://{host}:{port}/{query}"


def bind(address: str, port: int) -> socket.socket:
    """The listening socket, bound before the app is built so the Host check knows the port."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    return sock


def announce(args: argparse.Namespace, namespace: str, port: int) -> None:
    url = page_url(args.address, port, args.name)
    what = f"{namespace}/{args.name}" if args.name else f"the sessions of namespace {namespace!r}"
    print(f"Watching {what}: {url}  (Ctrl-C stops)", flush=True)
    if args.open:
        webbrowser.open(url)


async def serve(args: argparse.Namespace) -> int:
    static = assets.check()
    namespace = args.namespace or context_namespace(args.kubeconfig)
    kube = kube_mod.Kube.from_kubeconfig(args.kubeconfig)
    access = access_mod.Access(kube, namespace, settings_mod.Settings.from_env(), args.livekit_url)
    try:
        if args.name:
            await access.session(args.name)  # a wrong name is said here, not only on the page
        sock = bind(args.address, args.port)
        port = int(sock.getsockname()[1])
        runner = web.AppRunner(server.app(access, static, server.allowed_hosts(args.address, port)), access_log=None)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            announce(args, namespace, port)
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
    finally:
        await kube.close()
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0
    except (assets.AssetsMissing, settings_mod.SettingsError) as e:
        print(f"avatar-operator view: {e}", file=sys.stderr)
        return 2
    except access_mod.ViewerError as e:
        print(f"avatar-operator view: {e.message}", file=sys.stderr)
        return 1
    except kube_mod.ApiError as e:
        print(f"avatar-operator view: the API server refused: {e}", file=sys.stderr)
        return 1
    except kube_login.ConfigError as e:
        print(f"avatar-operator view: no usable kubeconfig ({e}): set KUBECONFIG or pass --kubeconfig", file=sys.stderr)
        return 2
    except aiohttp.ClientError as e:
        print(f"avatar-operator view: cannot reach the API server: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"avatar-operator view: cannot serve on {args.address}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
