"""A session's mailbox: what was posted wakes its worker once, a timeout says nothing came, and nothing is held after."""

from __future__ import annotations

import asyncio

import pytest

from avatar_operator.controller import mailbox


async def test_a_post_before_the_wait_is_taken_at_once_and_cleared() -> None:
    box = mailbox.Mailbox()
    box.post_pod({"metadata": {"name": "p"}})
    assert box.is_set()
    assert await box.wait(10.0) is True
    assert not box.is_set()
    assert await box.wait(0.01) is False  # taken: the next wait waits


async def test_a_post_during_the_wait_wakes_it() -> None:
    box = mailbox.Mailbox()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, box.post_room_changed)
    started = loop.time()
    assert await box.wait(10.0) is True
    assert loop.time() - started < 5.0
    assert box.take_room_changed() and not box.take_room_changed()


async def test_a_timeout_says_nothing_came_and_leaves_no_waiter() -> None:
    box = mailbox.Mailbox()
    assert await box.wait(0.01) is False
    assert box._waiter is None
    box.poke()  # after the wait: kept for the next one
    assert await box.wait(0.0) is True


async def test_posts_on_a_woken_box_wake_it_once() -> None:
    box = mailbox.Mailbox()
    waiting = asyncio.create_task(box.wait(10.0))
    await asyncio.sleep(0)
    box.poke()
    box.post_pod(None)  # a second post before the worker runs: one wake-up, the newest state
    assert await waiting is True
    assert box.pod_deleted and not box.is_set()


async def test_a_cancelled_wait_leaves_no_waiter() -> None:
    box = mailbox.Mailbox()
    waiting = asyncio.create_task(box.wait(10.0))
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert box._waiter is None
    box.poke()
    assert box.is_set()


async def test_a_second_waiter_is_refused_rather_than_left_unwoken() -> None:
    box = mailbox.Mailbox()
    first = asyncio.create_task(box.wait(10.0))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one waiter"):
        await box.wait(10.0)
    box.poke()
    assert await first is True
