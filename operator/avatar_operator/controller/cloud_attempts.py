"""How a cloud request's attempts reach status: each before it is sent, but a first one only if it is slow.

A session's first request needs no write before it: its idempotency key is
the session's uid, which a restarted operator derives again, and bitHuman
answers a repeat as it did the first time. So a quick answer's one write
(Starting, or Failed) says it all. An answer slower than SENT_WRITE_DELAY_S
gets the attempt written while it waits, so status is never blank for long.
Retries, and a request that holds a slot of a budget (`cloud_queue`), are
written before they go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from avatar_operator import metrics
from avatar_operator.api import status as status_mod
from avatar_operator.clients import bithuman
from avatar_operator.controller import context

Phase = status_mod.Phase
Cond = status_mod.ConditionType
Reason = status_mod.Reason
Change = context.Change

# Not shorter: under a burst the loop itself runs late, and every early write would be one more.
SENT_WRITE_DELAY_S = 3.0


class Attempts:
    """One round of sends: `bithuman.send`'s on_attempt, and its answer awaited."""

    def __init__(self, ctx: context.SessionContext, *, before: int, write_first: bool, max_retry: Callable[[], int]) -> None:
        self._ctx = ctx
        self._before = before  # a round after a concurrency refusal counts on
        self._write_first = write_first
        self._max_retry = max_retry

    async def on_attempt(self, n: int) -> None:
        if n > 1:
            metrics.CLOUD_REQUESTS.labels(outcome="retried").inc()
        quiet = n == 1 and not self._write_first
        await self._ctx.record(
            phase=Phase.PENDING,
            changes=(Change(Cond.CLOUD_REQUEST_ACCEPTED, False, Reason.REQUEST_SENT, f"attempt {n} of {self._max_retry()} sent to the bitHuman API"),),
            attempts=self._before + n,
            flush=not quiet,
        )

    async def answer(self, sending: Awaitable[bithuman.CloudResult]) -> bithuman.CloudResult:
        """The round's result; a quiet first attempt still unanswered after SENT_WRITE_DELAY_S
        (real time: the request's own latency) is written while the round goes on."""
        task = asyncio.ensure_future(sending)
        try:
            if not self._write_first:
                done, _ = await asyncio.wait({task}, timeout=SENT_WRITE_DELAY_S)
                if not done:
                    await self._ctx.flush()
            return await task
        finally:
            task.cancel()  # nothing when it is done; else the worker is leaving
