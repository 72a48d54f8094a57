"""The fake bitHuman API (tests/fakes/bithuman_api.py) with arrival times.

The reliability suite measures the spacing of the operator's retries where
they land: at the server. This subclass stamps every recorded request with
`t`, the wall-clock time (time.time()) its handler started, and is run as a
process exactly like the fake:

    python -m tests.reliability.timed_fake --port 0 --api-secret S
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

from aiohttp import web

from tests.fakes import bithuman_api


class TimedFake(bithuman_api.FakeBithumanAPI):
    async def _record(self, request: web.Request, route: bithuman_api.Route) -> tuple[dict[str, Any], dict[str, Any]]:
        t = time.time()
        record, fields = await super()._record(request, route)
        record["t"] = t
        return record, fields


async def _serve(args: argparse.Namespace) -> None:
    fake = TimedFake(api_secret=args.api_secret, api_token=args.api_token, host="127.0.0.1", port=args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with fake:
        print(json.dumps({"base_url": fake.base_url, "url": fake.url, "custom_url": fake.custom_url, "mint_url": fake.mint_url}), flush=True)
        await stop.wait()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-secret", default=None)
    parser.add_argument("--api-token", default=None)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
