"""The cloud requests in flight, so that deletion knows one may still start an avatar."""

from __future__ import annotations

import asyncio
import dataclasses


@dataclasses.dataclass
class Flight:
    """A cloud request in flight: the finalizer waits for it before it watches the room."""

    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    may_have_started: bool = True


class Flights:
    """The cloud requests this operator sent, in flight or settled, by session uid (one per operator, in kopf's memo)."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        # Sessions whose start this operator took up: their status is this operator's own record
        # (a first request's record rides on its answer's write, so the status of one taken up
        # elsewhere may not show a request that was in flight when that operator died).
        self._taken: set[str] = set()

    def take_up(self, uid: str) -> None:
        self._taken.add(uid)

    def took_up(self, uid: str) -> bool:
        return uid in self._taken

    def forget(self, uid: str) -> None:
        self._taken.discard(uid)
        self._flights.pop(uid, None)

    def start(self, uid: str) -> Flight:
        flight = self._flights[uid] = Flight()
        return flight

    def settle(self, uid: str, *, may_have_started: bool) -> None:
        # Kept until the session is forgotten: a worker cancelled mid-flight (kopf cancels it when
        # the session is deleted) never writes the request's record, and deletion asks here.
        flight = self._flights.get(uid)
        if flight is not None:
            flight.may_have_started = may_have_started
            flight.done.set()

    def get(self, uid: str) -> Flight | None:
        return self._flights.get(uid)
