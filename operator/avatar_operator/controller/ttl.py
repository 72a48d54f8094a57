"""spec.ttlSecondsAfterFinished: an ended session is deleted that long after its status.endTime.

One kopf daemon per session that has ended with a TTL set (the `when` filter:
sessions still running, or without a TTL, cost nothing). It sleeps until the
due time and deletes the session; what the session owns (token Secret, an
image Secret the gateway made) follows by the garbage collector. A daemon
rather than a timer: a timer wakes every interval for each such session for
the whole TTL (a gateway keeps thousands for 300 s), the daemon wakes once
per RECHECK_S at most. The due time is derived from status.endTime and the
live spec at each wake, never kept in memory: a restarted operator (kopf
starts the daemons again for every session that matches) and an edited TTL
both count.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import Any

from avatar_operator import metrics
from avatar_operator.api import status as status_mod
from avatar_operator.controller import context, decisions, ports

# A TTL edited on a waiting session counts within this.
RECHECK_S = 10.0
_TERMINAL = frozenset(p.value for p in context.TERMINAL)


def applies(spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any) -> bool:
    """kopf's filter: the session has ended and has a TTL."""
    return spec.get("ttlSecondsAfterFinished") is not None and status.get("phase") in _TERMINAL and bool(status.get("endTime"))


def due(spec: Mapping[str, Any], status: Mapping[str, Any]) -> datetime.datetime | None:
    """The deletion's due time from the object as it is now (None: no TTL, not ended, or not readable)."""
    ttl_s = spec.get("ttlSecondsAfterFinished")
    if not isinstance(ttl_s, int) or isinstance(ttl_s, bool) or status.get("phase") not in _TERMINAL:
        return None
    try:
        end = status_mod.from_wire(status).end_time
    except Exception:  # noqa: BLE001 - a status this operator did not write: nothing to count from
        return None
    return decisions.deletion_due(end, ttl_s)


async def run(clients: ports.Clients, body: Mapping[str, Any], stopped: ports.Flag, logger: logging.Logger | Any) -> None:
    """Waits for the due time (re-read from the live body), then deletes the session."""
    meta = body["metadata"]
    while not stopped.is_set():
        when = due(body.get("spec") or {}, body.get("status") or {})
        left = decisions.seconds_until(when, clients.clock.now())
        if left is None or left > 0:
            if await clients.clock.wait(stopped, RECHECK_S if left is None else min(left, RECHECK_S)):
                return
            continue
        if await clients.kube.delete_session_by_uid(str(meta["namespace"]), str(meta["name"]), str(meta["uid"])):
            metrics.TTL_DELETIONS.inc()
            logger.info("deleted %g s after it ended (spec.ttlSecondsAfterFinished)", body["spec"]["ttlSecondsAfterFinished"])
        return
