"""The request that asks bitHuman's cloud for an avatar: pure, no I/O.

`build_request` shapes the request exactly as `livekit-plugins-bithuman`
1.8.10 does (`_start_cloud_agent`, `_send_json_request`,
`_send_formdata_request`), so a session started by the operator looks to
bitHuman like one started by the plugin. Where the operator differs, it is on
purpose:

- every request carries an `Idempotency-Key`, so a retry after a lost answer
  cannot start a second avatar;
- an image from a ConfigMap/Secret (the plugin's PIL path) is flattened to RGB
  before the JPEG re-encode, where the plugin raises on RGBA or palette images.

`avatar_operator.clients.bithuman.send` sends what this builds.
Nothing here logs or returns request headers or bodies: they hold the bitHuman
credential and the avatar's LiveKit token.
"""

from __future__ import annotations

import base64
import enum
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlparse

from avatar_operator.build import image
from avatar_operator.build.image import CloudRequestError as CloudRequestError
from avatar_operator.build.image import InvalidImageError as InvalidImageError

# The plugin's `_is_default_api_url` list: these hosts are bitHuman's own API.
DEFAULT_API_HOSTS = ("auth.api.bithuman.ai", "api.bithuman.ai")
# The form field a FormFile travels in (the plugin's and the GPU worker's name).
FORM_FILE_FIELD = "avatar_image"

# Headers and fields whose values are credentials, kept out of every message.
_SECRET_HEADERS = ("api-secret", "Authorization")
_SECRET_FIELDS = ("livekit_token",)


class RequestFormat(enum.StrEnum):
    JSON = "json"
    # The plugin's "multipart" request is an aiohttp FormData, which goes out as
    # multipart/form-data when it carries a file and urlencoded otherwise.
    FORM = "form"


class MissingInputError(CloudRequestError):
    """A required input is empty; `what` names it."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what} is required: {why}")
        self.what = what


@dataclass(frozen=True)
class FormFile:
    data: bytes = field(repr=False)
    filename: str
    content_type: str


@dataclass(frozen=True)
class CloudRequest:
    """One POST to bitHuman. Credentials stay out of repr()."""

    url: str
    format: RequestFormat
    headers: Mapping[str, str] = field(repr=False)
    json: Mapping[str, str] | None = field(default=None, repr=False)
    form: Mapping[str, str] | None = field(default=None, repr=False)
    file: FormFile | None = field(default=None, repr=False)

    def sensitive_values(self) -> tuple[str, ...]:
        """The credential values this request carries, to redact from any text."""
        values = [v for k, v in self.headers.items() if k in _SECRET_HEADERS]
        for fields in (self.json, self.form):
            values += [v for k, v in (fields or {}).items() if k in _SECRET_FIELDS]
        bearer = "Bearer "
        # The bare token of a Bearer header is as secret as the whole header.
        values += [v[len(bearer) :] for v in values if v.startswith(bearer)]
        # Longest first, so a value containing another is replaced whole.
        return tuple(sorted({v for v in values if v}, key=len, reverse=True))


def is_default_api_url(url: str) -> bool:
    """The plugin's `_is_default_api_url`: bitHuman's own API, by hostname."""
    try:
        hostname = urlparse(url).hostname
    except ValueError:
        # The plugin falls back to substring matching when parsing fails.
        return any(host in url for host in DEFAULT_API_HOSTS)
    return hostname is not None and hostname in DEFAULT_API_HOSTS


def is_default_api(api_url: str, configured_url: str) -> bool:
    """bitHuman's API: by the plugin's hostnames, or the operator's configured API URL (a proxy, a test double)."""
    return is_default_api_url(api_url) or api_url == configured_url


def async_flag(url: str) -> bool | None:
    """The plugin's `_parse_async_parameter_from_url`: `async=true|false`, else None."""
    try:
        values = parse_qs(urlparse(url).query).get("async")
    except ValueError:
        return None
    if not values:
        return None
    return {"true": True, "false": False}.get(values[0].lower())


def is_expression_model(model: str | None) -> bool:
    """The plugin's `_is_expression_model`: `expression` and `expression-2` alike."""
    return model is not None and model.startswith("expression")


def request_format(
    api_url: str, model: str | None, *, default_api: bool | None = None
) -> RequestFormat:
    """The plugin's `_start_cloud_agent` choice.

    A custom endpoint gets a form only for the expression family (the
    self-hosted GPU worker's format); every other request is JSON, to bitHuman's
    API or a custom one alike. Earlier plugin versions sent every custom
    endpoint a form; 1.8.10 narrowed it, and the operator follows the plugin.

    `default_api` None decides by hostname, as the plugin does. The operator
    passes True for its configured default API URL, which may point at a
    bitHuman staging host or a test double and is still bitHuman's API.
    """
    if default_api is None:
        default_api = is_default_api_url(api_url)
    if not default_api and is_expression_model(model):
        return RequestFormat.FORM
    return RequestFormat.JSON


def build_request(
    *,
    api_url: str,
    api_secret: str | None,
    api_token: str | None,
    livekit_url: str,
    livekit_token: str,
    room: str,
    model: str | None,
    avatar_id: str | None,
    avatar_image: str | None,
    avatar_image_bytes: bytes | None,
    idempotency_key: str,
    default_api: bool | None = None,
) -> CloudRequest:
    """The session request, shaped as the plugin shapes it.

    `avatar_image` is the spec's string (an http(s) URL or base64 data);
    `avatar_image_bytes` is an image read from a ConfigMap or Secret, sent as
    the plugin sends a PIL image: re-encoded as JPEG. `api_secret` is whatever
    bitHuman should authenticate, a minted runtime token for the default API.
    `default_api` is as in `request_format`.
    """
    _check_inputs(
        api_url=api_url,
        livekit_url=livekit_url,
        livekit_token=livekit_token,
        room=room,
        idempotency_key=idempotency_key,
        avatar_image=avatar_image,
        avatar_image_bytes=avatar_image_bytes,
    )
    # Decoded (and so checked) before the credentials, whichever the format.
    image_data = image.image_data(avatar_image) if avatar_image is not None else None
    room_fields = {"livekit_url": livekit_url, "livekit_token": livekit_token, "room_name": room}
    if request_format(api_url, model, default_api=default_api) is RequestFormat.FORM:
        return _form_request(
            api_url=api_url,
            credential=api_token or api_secret,
            room_fields=room_fields,
            model=model,
            avatar_id=avatar_id,
            avatar_image=avatar_image,
            avatar_image_bytes=avatar_image_bytes,
            image_data=image_data,
            idempotency_key=idempotency_key,
        )
    return _json_request(
        api_url=api_url,
        api_secret=api_secret,
        room_fields=room_fields,
        model=model,
        avatar_id=avatar_id,
        avatar_image=avatar_image,
        avatar_image_bytes=avatar_image_bytes,
        idempotency_key=idempotency_key,
    )


def _check_inputs(
    *,
    api_url: str,
    livekit_url: str,
    livekit_token: str,
    room: str,
    idempotency_key: str,
    avatar_image: str | None,
    avatar_image_bytes: bytes | None,
) -> None:
    """What every request needs, whatever its format."""
    parsed = urlparse(api_url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CloudRequestError("bithuman.apiUrl must be an http:// or https:// URL")
    joining = "the cloud worker cannot join the room without it"
    for what, value, why in (
        ("livekit.url", livekit_url, joining),
        ("the avatar's LiveKit token", livekit_token, joining),
        ("room", room, joining),
        ("idempotency key", idempotency_key, "a retry could start a second avatar"),
    ):
        if not value:
            raise MissingInputError(what, why)
    if avatar_image is not None and avatar_image_bytes is not None:
        raise CloudRequestError("set at most one of avatarImage and avatarImageFrom")


def _form_request(
    *,
    api_url: str,
    credential: str | None,
    room_fields: Mapping[str, str],
    model: str | None,
    avatar_id: str | None,
    avatar_image: str | None,
    avatar_image_bytes: bytes | None,
    image_data: bytes | None,
    idempotency_key: str,
) -> CloudRequest:
    """The plugin's `_send_formdata_request`: a custom expression-family endpoint."""
    if not credential:
        raise MissingInputError(
            "BITHUMAN_API_TOKEN or BITHUMAN_API_SECRET",
            "a custom endpoint authenticates with a Bearer credential",
        )
    form = dict(room_fields)
    if model:
        form["model"] = model
    flag = async_flag(api_url)
    if flag is not None:
        form["async_mode"] = "true" if flag else "false"
    upload: bytes | None = None
    if avatar_image_bytes is not None:
        upload = image.jpeg(avatar_image_bytes)
    elif avatar_image is not None and image_data is None:
        form["avatar_image_url"] = avatar_image
    else:
        # Base64 is uploaded decoded and labelled JPEG whatever it holds, as the plugin does.
        upload = image_data
    if avatar_id:
        form["avatar_id"] = avatar_id
    return CloudRequest(
        url=api_url,
        format=RequestFormat.FORM,
        headers=types.MappingProxyType(
            {"Authorization": f"Bearer {credential}", "Idempotency-Key": idempotency_key}
        ),
        form=types.MappingProxyType(form),
        file=None if upload is None else FormFile(upload, "avatar.jpg", "image/jpeg"),
    )


def _json_request(
    *,
    api_url: str,
    api_secret: str | None,
    room_fields: Mapping[str, str],
    model: str | None,
    avatar_id: str | None,
    avatar_image: str | None,
    avatar_image_bytes: bytes | None,
    idempotency_key: str,
) -> CloudRequest:
    """The plugin's `_send_json_request`: bitHuman's API, and custom non-expression endpoints."""
    if not api_secret:
        raise MissingInputError(
            "BITHUMAN_API_SECRET", "bitHuman's session API authenticates with the api-secret header"
        )
    has_image = avatar_image is not None or avatar_image_bytes is not None
    body = {
        **room_fields,
        # The legacy engine selector, still sent for servers that predate `model`.
        "mode": "gpu" if has_image or is_expression_model(model) else "cpu",
    }
    # Unset means bitHuman picks the model the avatar was prepared for.
    if model:
        body["model"] = model
    if avatar_image is not None:
        body["image"] = avatar_image
    elif avatar_image_bytes is not None:
        body["image"] = base64.b64encode(image.jpeg(avatar_image_bytes)).decode("ascii")
    if avatar_id:
        body["agent_id"] = avatar_id
    return CloudRequest(
        url=api_url,
        format=RequestFormat.JSON,
        headers=types.MappingProxyType(
            {
                "Content-Type": "application/json",
                "api-secret": api_secret,
                "Idempotency-Key": idempotency_key,
            }
        ),
        json=types.MappingProxyType(body),
    )
