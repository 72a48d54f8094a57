"""The late cloud avatar's watch (controller/late_avatar.py), in simulated time on the worker's fakes."""

from __future__ import annotations

import asyncio

from avatar_operator.controller import late_avatar

from tests.unit.worker_fakes import FakeClock, FakeRoom


class _Never:
    def is_set(self) -> bool:
        return False

    async def wait(self, timeout: float) -> bool:
        return False


def _watch(clock: FakeClock, room: FakeRoom, for_s: float = 45.0) -> bool:
    coro = late_avatar.remove_when_it_comes(room, clock, _Never(), room_name="r", identity="a", uid="u", for_s=for_s)
    return asyncio.run(coro)


def _join(room: FakeRoom, video: bool) -> None:
    room.avatar_present, room.avatar_publishing_video = True, video


def test_a_connecting_avatar_is_removed_on_the_second_look_and_again_when_it_reconnects() -> None:
    clock = FakeClock()
    room = FakeRoom(clock)
    clock.at(3.5, lambda: _join(room, video=False))  # joined, not yet publishing
    clock.at(6.2, lambda: _join(room, video=False))  # the SDK reconnects after the removal
    assert _watch(clock, room)
    assert len(room.removed) == 2  # removed, came back, removed again
    assert not room.avatar_present
    # Seen at 4 s, removed at the look of 5 s; back at 6.2 s, removed at 8 s; done SETTLE_S after the first removal.
    assert clock.t <= 5.0 + late_avatar.SETTLE_S + late_avatar.POLL_S


def test_a_publishing_avatar_goes_at_the_first_look() -> None:
    clock = FakeClock()
    room = FakeRoom(clock)
    clock.at(2.5, lambda: _join(room, video=True))
    assert _watch(clock, room)
    assert len(room.removed) == 1 and not room.avatar_present


def test_no_avatar_no_removal_until_the_time_is_up() -> None:
    clock = FakeClock()
    room = FakeRoom(clock)
    assert not _watch(clock, room, for_s=10.0)
    assert room.removed == [] and 9.0 <= clock.t <= 10.0
