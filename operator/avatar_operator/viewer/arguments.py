"""The arguments of `avatar-operator view`: argparse only, so the CLI loads them without the viewer's server."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="the AvatarSession to watch (default: pick one on the page)")
    parser.add_argument("--namespace", "-n", help="its namespace (default: the kubeconfig context's, else default)")
    parser.add_argument("--address", default="127.0.0.1", help="address to serve the page on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to serve the page on (default: any free one)")
    parser.add_argument("--open", action="store_true", help="open the page in a browser")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
    parser.add_argument(
        "--livekit-url",
        help="the LiveKit URL the browser dials (default: the session's spec.livekit.url, else $AVATAR_LIVEKIT_URL or $LIVEKIT_URL)",
    )
