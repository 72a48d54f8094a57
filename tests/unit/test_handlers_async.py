"""Every kopf handler the operator registers is a coroutine function.

kopf runs a sync handler in a thread of its executor, with a shielded task
around it, several calls per event per session (bench/PERFORMANCE.md, round 2:
7 threads down to 2); a pod event posted to a mailbox from such a thread would
also touch asyncio objects off their loop. Nothing else would notice a handler
turning sync again.
"""

from __future__ import annotations

import inspect

import kopf

from avatar_operator.controller import handlers, login


def _registered() -> dict[str, object]:
    registry = kopf.get_default_registry()
    kinds = (registry._activities, registry._indexing, registry._watching, registry._spawning, registry._changing)
    ours = {handlers.__name__, login.__name__}
    return {h.fn.__name__: h.fn for kind in kinds for h in kind.get_all_handlers() if h.fn.__module__ in ours}


def test_every_handler_is_async() -> None:
    found = _registered()
    sync = sorted(name for name, fn in found.items() if not inspect.iscoroutinefunction(fn))
    assert not sync, f"kopf would run these in executor threads: {sync}"


def test_the_check_sees_every_kind_of_handler() -> None:
    """It could pass vacuously if the registry's layout changed and nothing was found."""
    found = _registered()
    for name in ("configure", "avatar_claims", "session_phases", "runner_pod_event", "run_session", "finalize", "login"):
        assert name in found, sorted(found)
