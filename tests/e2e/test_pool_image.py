"""Pool sessions with a picture, on the real stack: the operator passes spec.avatarImage (a URL,
or base64 data as the file) and spec.avatarImageFrom (a Secret key, as the file) to the pool
runner's /launch form, and the runner (portrait renderer) animates it.

The URL is served here and the runner's fetch is seen; the base64 picture is rendered (Ready);
bytes that are no image, sent as a file from a Secret, fail the session with the runner's own
words: the file reached the runner, which read it.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import json
import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from tests.conftest import Stack
from tests.e2e.test_pool import POOL, Room, apply, condition, kget, operator, until
from tests.harness.operator_process import OperatorProcess

__all__ = ["operator"]  # the fixture, shared with test_pool


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 120), colour).save(out, format="PNG")
    return out.getvalue()


class Pictures(http.server.ThreadingHTTPServer):
    """Serves one PNG at /face.png and records the paths asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.body = png((200, 120, 90))
        pictures = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pictures.asked.append(self.path)
                self.send_response(200 if self.path == "/face.png" else 404)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(pictures.body)))
                self.end_headers()
                self.wfile.write(pictures.body)

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/face.png"


@pytest.fixture
def pictures() -> Iterator[Pictures]:
    server = Pictures()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def session(name: str, ns: str, room: str, **image: Any) -> dict[str, Any]:
    spec = {"room": room, "agentIdentity": "agent", "poolRef": {"name": POOL}, "maxDuration": 600, **image}
    return {"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "metadata": {"name": name, "namespace": ns}, "spec": spec}


async def test_a_pool_session_reaches_its_runner_with_its_picture(
    stack: Stack, namespace: str, operator: tuple[OperatorProcess, pathlib.Path], pictures: Pictures
) -> None:
    ns = namespace
    secret = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "not-a-picture", "namespace": ns},
        "data": {"avatar-image": base64.b64encode(b"these bytes are no image").decode()},
    }
    apply(stack, secret)
    rooms = {n: Room(stack, f"{ns}-{n}") for n in ("by-url", "by-data")}
    await asyncio.gather(*(r.join() for r in rooms.values()))
    try:
        pool = {
            "apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarPool", "metadata": {"name": POOL, "namespace": ns},
            "spec": {"replicas": 1, "sessionsPerRunner": 3, "modelPath": "/models/demo.imx", "avatarIds": ["A-portrait"]},
        }
        apply(stack, pool)
        await until("the pool Ready", lambda: condition(kget(stack, ns, "avp", POOL), "Ready").get("status") == "True", 90)
        t0 = time.monotonic()
        apply(stack, session("by-url", ns, rooms["by-url"].name, avatarImage=pictures.url))
        apply(stack, session("by-data", ns, rooms["by-data"].name, avatarImage=base64.b64encode(png((40, 90, 160))).decode()))
        from_secret = {"secretKeyRef": {"name": "not-a-picture", "key": "avatar-image"}}
        apply(stack, session("by-secret", ns, f"{ns}-by-secret", avatarImageFrom=from_secret))

        for name in ("by-url", "by-data"):
            await until(f"{name} Ready", lambda n=name: condition(kget(stack, ns, "avs", n), "Ready").get("status") == "True", 60)
        print(f"two pool sessions with a picture Ready {time.monotonic() - t0:.1f} s after their create")
        assert pictures.asked == ["/face.png"]  # the runner fetched the session's URL, once
        for name in ("by-url", "by-data"):
            st = kget(stack, ns, "avs", name)["status"]
            assert st["mode"] == "local" and st["runner"]["pool"] == POOL, st

        failed = await until(
            "by-secret Failed", lambda: (o := kget(stack, ns, "avs", "by-secret"))["status"].get("phase") == "Failed" and o, 60
        )
        message = condition(failed, "Ready")["message"]
        # The runner's reason (serve_renderers.portrait_of_bytes): it read the file it was sent.
        assert "the avatar image is not a readable image" in message, json.dumps(failed["status"])
    finally:
        await asyncio.gather(*(r.leave() for r in rooms.values()))
