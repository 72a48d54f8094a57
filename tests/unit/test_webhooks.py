"""LiveKit webhooks: what wakes whom, the receiver's signature check, and the worker woken at once.

The receiver runs on a real port here, posted to by aiohttp; the worker runs in
simulated time (tests/unit/worker_fakes.py).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from avatar_operator import settings as settings_mod
from avatar_operator.controller import mailbox, webhooks
from google.protobuf import json_format
from livekit import api
from livekit.protocol import models
from livekit.protocol import webhook as webhook_pb

from tests.harness.net import free_port
from tests.unit.worker_fakes import AVATAR, ROOM, UID, Harness, local_spec

KEY, SECRET = "lk-key", "lk-secret-for-the-webhook-tests-0123456789"
FALLBACK = 3.0


def event(kind: str, room: str = ROOM, identity: str = AVATAR) -> webhook_pb.WebhookEvent:
    e = webhook_pb.WebhookEvent(event=kind, room=models.Room(name=room))
    if identity:
        e.participant.CopyFrom(models.ParticipantInfo(identity=identity))
    return e


def signed(body: str, secret: str = SECRET, key: str = KEY) -> str:
    """The Authorization header livekit-server sends: a JWT carrying the body's sha256."""
    digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
    return api.AccessToken(key, secret).with_sha256(digest).to_jwt()


# --- what an event wakes ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["participant_joined", "track_published", "track_unpublished", "participant_left"])
def test_a_participant_event_wakes_the_watchers_of_that_participant(kind: str) -> None:
    assert webhooks.wake_target(event(kind)) == (ROOM, AVATAR)


def test_the_room_finishing_wakes_everyone_in_it() -> None:
    assert webhooks.wake_target(event("room_finished", identity="")) == (ROOM, None)


@pytest.mark.parametrize("e", [event("room_started", identity=""), event("egress_started"), event("track_published", room="")])
def test_an_event_no_session_waits_on_wakes_nobody(e: webhook_pb.WebhookEvent) -> None:
    assert webhooks.wake_target(e) is None


def test_mailboxes_wake_only_the_sessions_watching_that_identity_in_that_room() -> None:
    boxes = mailbox.Mailboxes()
    boxes.watch_room("a", ROOM, AVATAR)
    boxes.watch_room("b", ROOM, "another-avatar")
    boxes.watch_room("c", "room-2", AVATAR)
    assert boxes.room_changed(ROOM, AVATAR) == 1
    assert [boxes.get(u).take_room_changed() for u in "abc"] == [True, False, False]
    assert boxes.get("a").take_room_changed() is False  # taken once
    assert boxes.room_changed(ROOM, None) == 2  # the room's end: both in it
    boxes.forget("a")
    boxes.forget("b")
    assert boxes.room_changed(ROOM, None) == 0
    assert boxes.room_changed(ROOM, AVATAR) == 0


# --- settings -------------------------------------------------------------------------


def test_the_receiver_is_off_by_default() -> None:
    assert not settings_mod.Settings.from_env({}).webhook.enabled


def test_a_receiver_without_a_key_is_refused_at_start_naming_the_variables() -> None:
    with pytest.raises(settings_mod.SettingsError, match="AVATAR_WEBHOOK_API_KEY and AVATAR_WEBHOOK_API_SECRET"):
        settings_mod.Settings.from_env({"AVATAR_WEBHOOK_PORT": "8090"})


def test_the_receiver_takes_the_operator_wide_livekit_key_unless_told_another() -> None:
    wide = settings_mod.Settings.from_env({"AVATAR_WEBHOOK_PORT": "8090", "LIVEKIT_API_KEY": "k1", "LIVEKIT_API_SECRET": "s1"})
    assert (wide.webhook.api_key, wide.webhook.api_secret) == ("k1", "s1")
    own = settings_mod.Settings.from_env(
        {"AVATAR_WEBHOOK_PORT": "8090", "LIVEKIT_API_KEY": "k1", "AVATAR_WEBHOOK_API_KEY": "k2", "AVATAR_WEBHOOK_API_SECRET": "s2"}
    )
    assert (own.webhook.api_key, own.webhook.api_secret) == ("k2", "s2")
    assert "s2" not in repr(own)


# --- the receiver, on a real port -------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, mailbox.Mailboxes]]:
    boxes = mailbox.Mailboxes()
    boxes.watch_room(UID, ROOM, AVATAR)
    port = free_port()
    settings = settings_mod.Settings.from_env(
        {"AVATAR_WEBHOOK_PORT": str(port), "AVATAR_WEBHOOK_BIND": "127.0.0.1", "AVATAR_WEBHOOK_API_KEY": KEY, "AVATAR_WEBHOOK_API_SECRET": SECRET}
    )
    served = await webhooks.serve(settings.webhook, boxes)
    assert served is not None and boxes.webhooks_live
    try:
        yield f"http://127.0.0.1:{port}{webhooks.PATH}", boxes
    finally:
        await served.close()
    assert not boxes.webhooks_live


async def post(url: str, body: str, auth: str | None) -> int:
    headers = {"Content-Type": "application/webhook+json", **({"Authorization": auth} if auth is not None else {})}
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        return resp.status


def body_of(e: webhook_pb.WebhookEvent) -> str:
    return json.dumps(json_format.MessageToDict(e))


async def test_a_signed_webhook_wakes_the_session(receiver: tuple[str, mailbox.Mailboxes]) -> None:
    url, boxes = receiver
    body = body_of(event("track_published"))
    assert await post(url, body, signed(body)) == 200
    assert boxes.get(UID).take_room_changed()


@pytest.mark.parametrize(
    "auth",
    [
        None,  # unsigned
        "",
        "not-a-jwt",
        signed("{}"),  # signed, for another body
        "wrong-secret",
        "wrong-key",
    ],
)
async def test_an_unsigned_or_wrongly_signed_webhook_is_refused_and_changes_nothing(
    receiver: tuple[str, mailbox.Mailboxes], auth: str | None
) -> None:
    url, boxes = receiver
    body = body_of(event("track_published"))
    if auth == "wrong-secret":
        auth = signed(body, secret="another-secret-of-the-same-length-0123456789")
    elif auth == "wrong-key":
        auth = signed(body, key="another-key")
    assert await post(url, body, auth) == 401
    assert not boxes.get(UID).take_room_changed()


async def test_a_port_in_use_leaves_the_workers_polling() -> None:
    boxes = mailbox.Mailboxes()
    port = free_port()
    env = {"AVATAR_WEBHOOK_PORT": str(port), "AVATAR_WEBHOOK_BIND": "127.0.0.1", "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": SECRET}
    first = await webhooks.serve(settings_mod.Settings.from_env(env).webhook, boxes)
    assert first is not None
    try:
        other = mailbox.Mailboxes()
        assert await webhooks.serve(settings_mod.Settings.from_env(env).webhook, other) is None
        assert not other.webhooks_live
    finally:
        await first.close()


# --- the worker, in simulated time ---------------------------------------------------------


def with_webhooks() -> Harness:
    h = Harness.make(local_spec(), env={"AVATAR_WEBHOOK_FALLBACK_POLL": str(FALLBACK)})
    h.boxes.webhooks_live = True  # as a listening receiver sets it
    h.clock.at(1, lambda: h.launcher.scheduled("n1"))
    return h


async def test_a_webhook_makes_the_worker_ask_livekit_at_once() -> None:
    h = with_webhooks()
    h.clock.at(7.3, h.room.publish)
    h.clock.at(7.3, lambda: h.boxes.room_changed(ROOM, AVATAR))
    await h.run(until=12)
    assert h.kube.first("Running").t == 7.3
    # While waiting, LiveKit was asked at the fallback interval, not the quick schedule.
    waiting = [t for t in h.room.observed if t < 7.3]
    assert all(b - a >= FALLBACK - 1e-9 for a, b in itertools.pairwise(waiting)), h.room.observed
    assert len(waiting) <= 1 + 7.3 / FALLBACK


async def test_without_the_webhook_the_fallback_poll_still_finds_the_avatar() -> None:
    h = with_webhooks()
    h.clock.at(7.3, h.room.publish)  # the webhook is lost
    await h.run(until=20)
    assert 7.3 < h.kube.first("Running").t <= 7.3 + FALLBACK


async def test_a_webhook_during_a_question_makes_the_worker_ask_again() -> None:
    h = with_webhooks()
    asked: list[float] = []
    observe = h.room.observe

    async def racing(room: str, identity: str, uid: str) -> object:
        seen = await observe(room, identity, uid)
        if not asked:  # the first answer is out of date already: the avatar published meanwhile
            h.room.publish()
            h.boxes.room_changed(ROOM, AVATAR)
        asked.append(h.clock.t)
        return seen

    h.room.observe = racing  # type: ignore[method-assign]
    await h.run(until=10)
    assert h.kube.first("Running").t == asked[0]


async def test_after_a_webhook_the_worker_asks_quickly_again_until_the_video_comes() -> None:
    h = with_webhooks()

    def joined_without_video() -> None:
        h.room.avatar_present = True
        h.boxes.room_changed(ROOM, AVATAR)

    h.clock.at(7.3, joined_without_video)
    h.clock.at(7.9, h.room.publish)  # the video comes a moment later, and no webhook says so
    await h.run(until=20)
    # The quick schedule (0.5 s, then x1.5), not the 3 s fallback.
    assert 7.9 < h.kube.first("Running").t <= 7.9 + 1.0, h.room.observed


async def test_while_webhooks_come_a_waiting_session_polls_late_and_ever_less_often() -> None:
    h = with_webhooks()  # the watch begins at t=0, with the runner pod created
    await h.run(until=300)
    polls = h.room.observed
    # Not at once: the avatar was only just asked for, and its joining is a webhook.
    assert polls and polls[0] >= FALLBACK - 1e-9, polls
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(gaps)), gaps  # never quicker again
    assert max(gaps) <= settings_mod.WebhookSettings().fallback_max_s + 1e-9 and gaps[-1] == max(gaps), gaps
    assert len(polls) <= 15, polls  # the 3 s fallback alone would have asked ~100 times
