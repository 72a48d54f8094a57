"""The bitHuman cloud request: plugin parity of its shape (build/cloud_request),
and the retry rules of its sender (clients/bithuman).

Shapes are checked side by side with the installed `livekit-plugins-bithuman`:
the real plugin methods run against the fake API (or, for bitHuman's own
hosts, which a test cannot reach, with the plugin's sender captured), and the
fields they send are compared with what `build_request` + `send` send.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import email.utils
import io
import json
import logging
import socket
import subprocess
import sys
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from avatar_operator.build import cloud_request as cloud
from avatar_operator.build.cloud_request import (
    CloudRequest,
    CloudRequestError,
    InvalidImageError,
    MissingInputError,
    RequestFormat,
    build_request,
)
from avatar_operator.clients import bithuman
from avatar_operator.clients.bithuman import (
    Accepted,
    Rejected,
    RetriesExhausted,
    RetryPolicy,
    send,
)
from livekit.agents import APIConnectOptions
from livekit.plugins.bithuman.avatar import AvatarSession
from PIL import Image

from tests.fakes.bithuman_api import FakeBithumanAPI

ROOT = Path(__file__).resolve().parents[2]
SECRET = "bh-account-secret-0123456789"
TOKEN = "bh-api-token-abcdef"
LK_URL = "wss://livekit.example.com"
LK_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhdmF0YXIifQ.c2lnbmF0dXJl"
ROOM = "room-1"
DEFAULT_URL = "https://auth.api.bithuman.ai/v1/runtime-tokens/request"
POLICY = RetryPolicy(max_retry=3, retry_interval=2.0, timeout=10.0)


def _png(mode: str = "RGB", size: tuple[int, int] = (24, 16)) -> bytes:
    color: Any = {"RGB": (200, 40, 90), "RGBA": (200, 40, 90, 128), "P": 3, "L": 100}[mode]
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG")
    return out.getvalue()


PNG = _png()
BASE64_IMAGE = base64.b64encode(PNG).decode()


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture(autouse=True)
def _no_plugin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The plugin falls back to these; a developer's shell must not change a test.
    for name in ("BITHUMAN_API_URL", "BITHUMAN_API_SECRET", "BITHUMAN_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeBithumanAPI]:
    async with FakeBithumanAPI(api_secret=SECRET, api_token=TOKEN) as api:
        yield api


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _ours(**overrides: Any) -> CloudRequest:
    kwargs: dict[str, Any] = dict(
        api_url=DEFAULT_URL,
        api_secret=SECRET,
        api_token=None,
        livekit_url=LK_URL,
        livekit_token=LK_TOKEN,
        room=ROOM,
        model=None,
        avatar_id="A23WJF0199",
        avatar_image=None,
        avatar_image_bytes=None,
        idempotency_key="ns/name/uid-1",
    )
    kwargs.update(overrides)
    return build_request(**kwargs)


def _plugin(
    *,
    api_url: str,
    api_secret: str | None = SECRET,
    api_token: str | None = None,
    model: str | None = None,
    avatar_id: str | None = "A23WJF0199",
    avatar_image: Image.Image | str | None = None,
) -> AvatarSession:
    # One attempt: the plugin's own retries would sleep for real.
    kwargs: dict[str, Any] = {"api_url": api_url, "conn_options": APIConnectOptions(max_retry=1)}
    for name, value in (
        ("api_secret", api_secret),
        ("api_token", api_token),
        ("model", model),
        ("avatar_id", avatar_id),
        ("avatar_image", avatar_image),
    ):
        if value is not None:
            kwargs[name] = value
    return AvatarSession(**kwargs)


# -- the plugin's URL logic ----------------------------------------------------

URLS = [
    DEFAULT_URL,
    "https://api.bithuman.ai/v1/runtime-tokens/request",
    "https://AUTH.API.BITHUMAN.AI/v1/x",
    "https://auth.api.bithuman.ai.evil.example/v1/x",
    "https://worker.example.com/launch?async=true",
    "https://worker.example.com/launch?async=FALSE",
    "https://worker.example.com/launch?async=maybe",
    "https://worker.example.com/launch?async=",
    "https://worker.example.com/launch?async=true&async=false",
    "http://127.0.0.1:8080/launch",
    "not a url",
    "http://[::1",
    "http://[::1/api.bithuman.ai",
]


@pytest.mark.parametrize("url", URLS)
def test_default_api_detection_matches_the_plugin(url: str) -> None:
    plugin: Any = types.SimpleNamespace(_api_url=url)

    assert cloud.is_default_api_url(url) is AvatarSession._is_default_api_url(plugin)


@pytest.mark.parametrize("url", URLS)
def test_async_flag_matches_the_plugin(url: str) -> None:
    plugin: Any = types.SimpleNamespace(_api_url=url)

    assert cloud.async_flag(url) is AvatarSession._parse_async_parameter_from_url(plugin)


# -- request shapes, side by side with the plugin -------------------------------


def _capture(plugin: AvatarSession) -> dict[str, Any]:
    """Replaces the plugin's sender: bitHuman's own hosts are unreachable here."""
    captured: dict[str, Any] = {}

    async def capture(
        headers: dict[str, str], json_data: dict[str, Any] | None = None, form_data: Any = None
    ) -> None:
        captured.update(headers=headers, json=json_data, form=form_data)

    plugin._send_request_with_retry = capture  # type: ignore[method-assign]
    return captured


@pytest.mark.parametrize("api_url", [DEFAULT_URL, "https://api.bithuman.ai/v1/x"])
@pytest.mark.parametrize(
    ("model", "avatar_id", "image"),
    [
        (None, "A23WJF0199", None),
        ("essence", "A23WJF0199", None),
        ("essence-2", "A23WJF0199", None),
        ("expression", "A23WJF0199", None),
        ("expression-2", "A23WJF0199", None),
        (None, None, "https://cdn.example.com/face.jpg"),
        ("expression", None, BASE64_IMAGE),
        (None, None, "png-bytes"),
    ],
)
async def test_default_api_json_matches_the_plugin(
    api_url: str, model: str | None, avatar_id: str | None, image: str | None
) -> None:
    plugin_image: Image.Image | str | None = image
    image_bytes = None
    if image == "png-bytes":
        plugin_image, image_bytes, image = Image.open(io.BytesIO(PNG)), PNG, None
    plugin = _plugin(api_url=api_url, model=model, avatar_id=avatar_id, avatar_image=plugin_image)
    captured = _capture(plugin)
    await plugin._start_cloud_agent(LK_URL, LK_TOKEN, ROOM)

    ours = _ours(
        api_url=api_url,
        model=model,
        avatar_id=avatar_id,
        avatar_image=image,
        avatar_image_bytes=image_bytes,
    )

    assert captured["form"] is None
    assert ours.format is RequestFormat.JSON
    assert dict(ours.json or {}) == captured["json"]
    assert dict(ours.headers) == {**captured["headers"], "Idempotency-Key": "ns/name/uid-1"}


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    """What a request carried, minus what only the operator adds."""
    headers = record["headers"]
    return {
        "format": record["format"],
        "content_type": record["content_type"],
        "json": record["json"],
        "form": record["form"],
        "files": record["files"],
        "api-secret": headers.get("api-secret"),
        "Authorization": headers.get("Authorization"),
    }


@pytest.mark.parametrize(
    ("path", "model", "avatar_id", "image", "api_token"),
    [
        # A custom endpoint gets JSON unless the model is of the expression family.
        ("", None, "A23WJF0199", None, None),
        ("", "essence-2", "A23WJF0199", None, None),
        ("", None, None, "https://cdn.example.com/face.jpg", None),
        ("", None, None, "png-bytes", None),
        ("?async=true", "expression", "A23WJF0199", None, None),
        ("?async=false", "expression-2", None, "https://cdn.example.com/face.jpg", None),
        ("", "expression", None, BASE64_IMAGE, None),
        ("", "expression", None, "png-bytes", None),
        ("?async=true", "expression-2", "A23WJF0199", None, TOKEN),
    ],
)
async def test_custom_endpoint_matches_the_plugin(
    fake: FakeBithumanAPI,
    http: aiohttp.ClientSession,
    path: str,
    model: str | None,
    avatar_id: str | None,
    image: str | None,
    api_token: str | None,
) -> None:
    url = fake.custom_url + path
    plugin_image: Image.Image | str | None = image
    image_bytes = None
    if image == "png-bytes":
        plugin_image, image_bytes, image = Image.open(io.BytesIO(PNG)), PNG, None
    plugin = _plugin(
        api_url=url,
        api_token=api_token,
        model=model,
        avatar_id=avatar_id,
        avatar_image=plugin_image,
    )
    plugin._http_session = http
    await plugin._start_cloud_agent(LK_URL, LK_TOKEN, ROOM)

    ours = _ours(
        api_url=url,
        api_token=api_token,
        model=model,
        avatar_id=avatar_id,
        avatar_image=image,
        avatar_image_bytes=image_bytes,
        idempotency_key=f"key-{path}",
    )
    result = await send(http, ours, POLICY, sleep=FakeSleep())

    assert isinstance(result.outcome, Accepted)
    theirs, mine = fake.requests
    assert theirs["status"] == mine["status"] == 200
    assert _fields(mine) == _fields(theirs)
    assert mine["idempotency_key"] == f"key-{path}"
    assert theirs["idempotency_key"] is None


@pytest.mark.parametrize(
    ("model", "mode"),
    [
        ("expression", "gpu"),
        ("expression-2", "gpu"),
        (None, "cpu"),
        ("essence", "cpu"),
        ("essence-2", "cpu"),
    ],
)
def test_expression_models_select_gpu_mode(model: str | None, mode: str) -> None:
    assert (_ours(model=model).json or {})["mode"] == mode


@pytest.mark.parametrize(
    ("default_api", "expected"),
    [(None, RequestFormat.FORM), (False, RequestFormat.FORM), (True, RequestFormat.JSON)],
)
def test_the_caller_may_declare_a_url_the_default_api(
    default_api: bool | None, expected: RequestFormat
) -> None:
    # The operator's configured default API URL (staging, the test fake) is
    # bitHuman's API whatever its hostname.
    req = _ours(api_url="http://127.0.0.1:8080/v1/x", model="expression", default_api=default_api)

    assert req.format is expected


def test_default_api_false_makes_bithumans_host_custom() -> None:
    req = _ours(model="expression", default_api=False)

    assert req.format is RequestFormat.FORM


def test_model_is_sent_only_when_set() -> None:
    assert "model" not in (_ours(model=None).json or {})
    assert (_ours(model="essence-2").json or {})["model"] == "essence-2"
    multipart = _ours(api_url="https://w.example.com/x", model="expression-2")
    assert (multipart.form or {})["model"] == "expression-2"


# -- request building: what it refuses -------------------------------------------


def test_default_api_without_secret_names_it() -> None:
    with pytest.raises(MissingInputError) as err:
        _ours(api_secret=None, api_token=TOKEN)

    assert err.value.what == "BITHUMAN_API_SECRET"


def test_custom_multipart_without_any_credential_names_both() -> None:
    with pytest.raises(MissingInputError) as err:
        _ours(api_url="https://w.example.com/x", model="expression", api_secret=None)

    assert err.value.what == "BITHUMAN_API_TOKEN or BITHUMAN_API_SECRET"


def test_custom_multipart_prefers_the_token() -> None:
    req = _ours(api_url="https://w.example.com/x", model="expression", api_token=TOKEN)

    assert req.headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("bad", ["ftp://x.example.com/a", "https:///nohost", "nonsense"])
def test_refuses_a_non_http_api_url(bad: str) -> None:
    with pytest.raises(CloudRequestError, match="apiUrl"):
        _ours(api_url=bad)


@pytest.mark.parametrize(
    ("field", "what"),
    [
        ("livekit_url", "livekit.url"),
        ("livekit_token", "LiveKit token"),
        ("room", "room"),
        ("idempotency_key", "idempotency key"),
    ],
)
def test_refuses_empty_session_fields(field: str, what: str) -> None:
    with pytest.raises(MissingInputError, match=what):
        _ours(**{field: ""})


@pytest.mark.parametrize("bad", ["data:image/png;base64,AAAA", "abc", "====", "YWJj!==="])
def test_refuses_an_image_string_that_is_neither_url_nor_base64(bad: str) -> None:
    with pytest.raises(InvalidImageError) as err:
        _ours(avatar_id=None, avatar_image=bad)

    assert bad not in str(err.value)


def test_refuses_bytes_that_are_not_an_image() -> None:
    with pytest.raises(InvalidImageError, match="avatarImageFrom"):
        _ours(avatar_id=None, avatar_image_bytes=b"not an image at all")


def test_refuses_both_image_forms() -> None:
    with pytest.raises(CloudRequestError, match="at most one"):
        _ours(avatar_image="https://cdn.example.com/a.jpg", avatar_image_bytes=PNG)


@pytest.mark.parametrize("mode", ["RGBA", "P", "L"])
def test_images_the_plugin_cannot_encode_are_flattened_to_jpeg(mode: str) -> None:
    req = _ours(avatar_id=None, avatar_image_bytes=_png(mode))

    image = Image.open(io.BytesIO(base64.b64decode((req.json or {})["image"])))
    assert image.format == "JPEG"
    assert image.size == (24, 16)
    assert image.mode in ("RGB", "L")


def test_repr_shows_no_credentials() -> None:
    for req in (
        _ours(),
        _ours(api_url="https://w.example.com/x", model="expression", api_token=TOKEN),
    ):
        text = repr(req)
        assert SECRET not in text and TOKEN not in text and LK_TOKEN not in text
        assert req.url in text


# -- sending: retries and refusals -----------------------------------------------


async def _send(
    http: aiohttp.ClientSession,
    req: CloudRequest,
    policy: RetryPolicy = POLICY,
) -> tuple[bithuman.CloudResult, FakeSleep, list[int]]:
    sleep = FakeSleep()
    attempts: list[int] = []

    async def on_attempt(n: int) -> None:
        attempts.append(n)

    result = await send(http, req, policy, sleep=sleep, on_attempt=on_attempt)
    return result, sleep, attempts


async def test_503_then_success_takes_two_attempts(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 503}, {}])

    result, sleep, attempts = await _send(http, _ours(api_url=fake.url))

    assert isinstance(result.outcome, Accepted)
    assert (result.attempts, result.status, result.outcome.status) == (2, 200, 200)
    assert attempts == [1, 2]
    assert sleep.delays == [2.0]
    assert len(fake.sessions) == 1


async def test_5xx_every_time_exhausts_the_attempts(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 500}, {"status": 502}, {"status": 504, "body": "gateway timeout"}])

    result, sleep, attempts = await _send(http, _ours(api_url=fake.url))

    assert isinstance(result.outcome, RetriesExhausted)
    assert result.outcome.message == "HTTP 504: gateway timeout"
    assert (result.attempts, result.status) == (3, 504)
    assert attempts == [1, 2, 3]
    assert sleep.delays == [2.0, 2.0]  # none after the last attempt
    assert fake.sessions == []


async def test_401_fails_at_once_with_the_servers_message(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    result, sleep, attempts = await _send(http, _ours(api_url=fake.url, api_secret="wrong"))

    assert result.outcome == Rejected(
        401, '{"error": {"code": "UNAUTHORIZED", "message": "invalid credential"}}'
    )
    assert (result.attempts, result.status) == (1, 401)
    assert attempts == [1]
    assert sleep.delays == []


@pytest.mark.parametrize("status", [400, 402, 403, 404, 409, 422])
async def test_other_4xx_fail_at_once(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession, status: int
) -> None:
    fake.script([{"status": status, "body": f"refused with {status}"}])

    result, sleep, _ = await _send(http, _ours(api_url=fake.url))

    assert result.outcome == Rejected(status, f"refused with {status}")
    assert result.attempts == 1
    assert sleep.delays == []
    assert len(fake.requests) == 1


async def test_a_redirect_is_not_followed(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    # Following it would hand the api-secret header to wherever it points.
    fake.script([{"status": 307, "body": "", "headers": {"Location": fake.mint_url}}])

    result, _, _ = await _send(http, _ours(api_url=fake.url))

    assert isinstance(result.outcome, Rejected)
    assert result.outcome.status == 307
    assert [r["path"] for r in fake.requests] == ["/v1/runtime-tokens/request"]


def _http_date(seconds_from_now: float) -> str:
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(
        seconds=seconds_from_now
    )
    return email.utils.format_datetime(when, usegmt=True)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("7", 7.0),  # honoured when longer than the interval
        ("0.5", 2.0),  # never shorter than the interval
        ("100000", bithuman.RETRY_AFTER_CAP_S),  # capped
        ("soon", 2.0),  # unusable: the interval
        (None, 2.0),
    ],
)
async def test_429_is_retried_honouring_retry_after(
    fake: FakeBithumanAPI,
    http: aiohttp.ClientSession,
    retry_after: str | None,
    expected: float,
) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    fake.script([{"status": 429, "headers": headers}, {}])

    result, sleep, _ = await _send(http, _ours(api_url=fake.url))

    assert isinstance(result.outcome, Accepted)
    assert result.attempts == 2
    assert sleep.delays == [expected]


async def test_429_retry_after_as_an_http_date(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 429, "headers": {"Retry-After": _http_date(30)}}, {}])

    result, sleep, _ = await _send(http, _ours(api_url=fake.url))

    assert isinstance(result.outcome, Accepted)
    assert len(sleep.delays) == 1 and 25 <= sleep.delays[0] <= 30


async def test_a_hung_server_times_out_and_is_retried(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"delay": 30}, {}])
    policy = RetryPolicy(max_retry=2, retry_interval=0.0, timeout=0.1)

    result, _, attempts = await asyncio.wait_for(
        _send(http, _ours(api_url=fake.url), policy), timeout=5
    )

    assert isinstance(result.outcome, Accepted)
    assert attempts == [1, 2]


async def test_timeouts_every_time_exhaust_the_attempts(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"delay": 30}, {"delay": 30}])
    policy = RetryPolicy(max_retry=2, retry_interval=0.0, timeout=0.1)

    result, _, _ = await asyncio.wait_for(
        _send(http, _ours(api_url=fake.url), policy), timeout=5
    )

    assert isinstance(result.outcome, RetriesExhausted)
    assert "no answer in time" in result.outcome.message
    assert (result.attempts, result.status) == (2, None)


async def test_a_dropped_connection_is_retried(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"drop": True}, {}])

    result, sleep, _ = await _send(http, _ours(api_url=fake.url))

    assert isinstance(result.outcome, Accepted)
    assert result.attempts == 2
    assert sleep.delays == [2.0]


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    yield port


async def test_connection_refused_exhausts_the_attempts(
    http: aiohttp.ClientSession, closed_port: int
) -> None:
    req = _ours(api_url=f"http://127.0.0.1:{closed_port}/v1/runtime-tokens/request")

    result, sleep, attempts = await _send(http, req)

    assert isinstance(result.outcome, RetriesExhausted)
    assert "ClientConnectorError" in result.outcome.message
    assert (result.attempts, result.status) == (3, None)
    assert attempts == [1, 2, 3]
    assert sleep.delays == [2.0, 2.0]


async def test_a_multipart_request_survives_a_retry(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 503}, {}])
    req = _ours(api_url=fake.custom_url, model="expression", avatar_image_bytes=PNG)

    result, _, _ = await _send(http, req)

    assert isinstance(result.outcome, Accepted)
    first, second = fake.requests
    assert first["form"] == second["form"] and first["files"] == second["files"]
    assert second["files"]["avatar_image"]["size"] > 0


async def test_a_repeated_idempotency_key_is_one_session(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    req = _ours(api_url=fake.url)

    first, _, _ = await _send(http, req)
    again, _, _ = await _send(http, req)

    assert isinstance(first.outcome, Accepted) and isinstance(again.outcome, Accepted)
    assert first.outcome.body == again.outcome.body
    (session,) = fake.sessions
    assert session["replays"] == 1


@pytest.mark.parametrize(
    ("credential", "overrides"),
    [
        (SECRET, {}),  # JSON: the api-secret header
        (TOKEN, {"model": "expression", "api_token": TOKEN}),  # form: the Bearer token
    ],
)
async def test_messages_never_carry_credentials(
    fake: FakeBithumanAPI,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    credential: str,
    overrides: dict[str, Any],
) -> None:
    # A server that echoes what it was sent must not get it into status or logs.
    echo = f"token={LK_TOKEN} credential={credential}"
    fake.script([{"status": 503, "body": echo}, {"status": 400, "body": echo}])
    caplog.set_level(logging.DEBUG)

    result, _, _ = await _send(http, _ours(api_url=fake.custom_url, **overrides))

    assert isinstance(result.outcome, Rejected)
    assert result.attempts == 2
    for text in (result.outcome.message, caplog.text):
        assert text.count("[redacted]") >= 2
        assert LK_TOKEN not in text and credential not in text


async def test_a_long_refusal_is_truncated(
    fake: FakeBithumanAPI, http: aiohttp.ClientSession
) -> None:
    fake.script([{"status": 400, "body": "x" * 5000}])

    result, _, _ = await _send(http, _ours(api_url=fake.url))

    assert isinstance(result.outcome, Rejected)
    assert result.outcome.message == "x" * bithuman.MESSAGE_LIMIT


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_retry=0, retry_interval=1.0, timeout=1.0),
        dict(max_retry=1, retry_interval=-1.0, timeout=1.0),
        dict(max_retry=1, retry_interval=1.0, timeout=0.0),
    ],
)
def test_retry_policy_refuses_out_of_bounds(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# -- the fake as a separate process ------------------------------------------------


async def test_fake_runs_as_a_process(http: aiohttp.ClientSession) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.bithuman_api", "--port", "0", "--api-secret", SECRET],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=20)
        urls = json.loads(line)
        async with http.post(
            urls["base_url"] + "/_control/script", json=[{"status": 503}, {}]
        ) as resp:
            assert resp.status == 200

        result, _, _ = await _send(http, _ours(api_url=urls["url"]))

        async with http.get(urls["base_url"] + "/_control/requests") as resp:
            recorded = await resp.json()
        async with http.get(urls["base_url"] + "/_control/sessions") as resp:
            sessions = await resp.json()
        assert isinstance(result.outcome, Accepted) and result.attempts == 2
        assert [r["status"] for r in recorded] == [503, 200]
        assert recorded[1]["json"]["agent_id"] == "A23WJF0199"
        assert [s["idempotency_key"] for s in sessions] == ["ns/name/uid-1"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
