"""Hands the memory a burst leaves free back to the OS, which glibc's malloc otherwise keeps.

A burst of sessions allocates responses, TLS buffers and queued events; once
they are freed, glibc keeps the pages in its heap, between chunks still in
use, and the operator's RSS stays near the burst's peak. `malloc_trim(0)`
returns every whole free page (bench/PERFORMANCE.md, round 3: 1000 idle
sessions, 203 MB without, 147 MB with). A trim took 8-40 ms on a heap of a
few hundred MB (the first after a burst the longest), so every 10 s costs at
most 0.4 % of a core. On a libc other than glibc (musl) there is no such
call, and nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Callable

INTERVAL_S = 10.0
GLIBC = "libc.so.6"  # glibc's soname; musl's differs, and has no malloc_trim


def trimmer() -> Callable[[], int] | None:
    """glibc's malloc_trim(0); None where the C library is not glibc."""
    try:
        trim = ctypes.CDLL(GLIBC).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


async def keep_trimming(interval_s: float = INTERVAL_S) -> None:
    """Trims every `interval_s`, on the loop: a trim holds malloc's lock, so another thread would only wait."""
    trim = trimmer()
    if trim is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        trim()
