"""One way to wait: poll a check until it holds, or fail after a time bound."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

MESSAGE_MAX = 3000


def wait_until(
    what: str,
    check: Callable[[], T],
    timeout: float = 60.0,
    interval: float = 0.3,
    *,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """check()'s first truthy value, polled every `interval` seconds.

    After `timeout` seconds (check() runs at least once, and once more at the
    deadline) it raises AssertionError naming `what` and check()'s last value.
    An exception of a `retry_on` type counts as a falsy answer (say, while
    the API server restarts); any other one propagates at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = check()
        except retry_on as e:
            last = e
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}"[:MESSAGE_MAX])
        time.sleep(interval)
