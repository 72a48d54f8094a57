"""The arguments of `avatar-operator gateway` (its settings are AVATAR_GATEWAY_* variables): argparse only."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
