"""The request that ends a started cloud session at once: pure, no I/O.

bitHuman bills a cloud avatar until it ends, and keeps its plan's
concurrency slot for up to two minutes after the avatar leaves the room.
The documented end calls stop both at once:

- bitHuman's API: `POST /v1/runtime-sessions/{session_id}/end`, header
  `api-secret`, no body, for the `session_id` the start answered. The path
  sits beside the start's `/v1/runtime-tokens/request` on the same host
  (the operator's configured API URL, a proxy or the tests' fake, counts).
- a custom endpoint (bitHuman's self-hosted container) that answered a
  `task_id`: `POST /tasks/{task_id}/stop` beside its `/launch`, with the
  same Bearer credential the launch carried.

Anything else (a custom endpoint that gave no task id) has no end call:
removing the avatar from the room is all there is.
"""

from __future__ import annotations

import types
from urllib.parse import quote, urljoin, urlparse, urlunparse

from avatar_operator.build import cloud_request

START_PATH_PART = "/runtime-tokens/"
DEFAULT_VERSION_PREFIX = "/v1"


def runtime_session_end_url(api_url: str, session_id: str) -> str:
    """`.../v1/runtime-sessions/{id}/end` on the start URL's host, under the start's version prefix."""
    parsed = urlparse(api_url)
    cut = parsed.path.find(START_PATH_PART)
    prefix = parsed.path[:cut] if cut >= 0 else DEFAULT_VERSION_PREFIX
    # The id is quoted whole: it can't climb out of its path segment.
    path = f"{prefix}/runtime-sessions/{quote(session_id, safe='')}/end"
    return urlunparse((parsed.scheme, parsed.netloc, path, "", "", ""))


def task_stop_url(api_url: str, task_id: str) -> str:
    """`tasks/{id}/stop` beside the custom endpoint's launch path (its query dropped)."""
    parsed = urlparse(api_url)
    base = urlunparse((parsed.scheme, parsed.netloc, parsed.path, "", "", ""))
    return urljoin(base, f"tasks/{quote(task_id, safe='')}/stop")


def end_request(
    *,
    api_url: str,
    default_api: bool,
    api_secret: str | None,
    api_token: str | None,
    session_id: str | None,
    task_id: str | None,
) -> cloud_request.CloudRequest | None:
    """The end call for what the start answered; None when there is none to make.

    Raises MissingInputError when the call is due but the credential it needs is absent."""
    if default_api and session_id:
        if not api_secret:
            raise cloud_request.MissingInputError(
                "BITHUMAN_API_SECRET", "bitHuman's runtime-sessions end call authenticates with the api-secret header"
            )
        return cloud_request.CloudRequest(
            url=runtime_session_end_url(api_url, session_id),
            format=cloud_request.RequestFormat.JSON,
            headers=types.MappingProxyType({"api-secret": api_secret}),
        )
    if not default_api and task_id:
        credential = api_token or api_secret
        if not credential:
            raise cloud_request.MissingInputError(
                "BITHUMAN_API_TOKEN or BITHUMAN_API_SECRET", "a custom endpoint's task stop authenticates with a Bearer credential"
            )
        return cloud_request.CloudRequest(
            url=task_stop_url(api_url, task_id),
            format=cloud_request.RequestFormat.FORM,
            headers=types.MappingProxyType({"Authorization": f"Bearer {credential}"}),
        )
    return None
