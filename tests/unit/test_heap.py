"""The heap trimmer: glibc's malloc_trim where it exists, nothing elsewhere."""

from __future__ import annotations

import asyncio

import pytest

from avatar_operator import heap


def test_glibc_trims_and_says_whether_it_returned_memory() -> None:
    trim = heap.trimmer()
    assert trim is not None, "this machine's Python runs on glibc"
    junk = [bytearray(200_000) for _ in range(50)]  # above malloc's small-chunk sizes
    del junk
    assert trim() in (0, 1)


def test_without_glibc_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "GLIBC", "libc.musl-x86_64.so.1")
    assert heap.trimmer() is None

    async def run() -> None:
        await asyncio.wait_for(heap.keep_trimming(0.01), 1)  # returns at once, not every 10 ms forever

    asyncio.run(run())


async def test_it_trims_at_each_interval_until_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(heap, "trimmer", lambda: lambda: calls.append(1) or 0)
    task = asyncio.create_task(heap.keep_trimming(0.01))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 3 <= len(calls) <= 20
