"""LiveKit's webhooks: a signed note that a room changed wakes the sessions watching it.

livekit-server POSTs an event (participant_joined, track_published,
participant_left, room_finished, ...) signed with one of its API keys. The
receiver verifies the signature and the body's hash (livekit-api's
`WebhookReceiver`), and leaves a note in the mailbox of each session waiting
for that participant in that room; its worker then asks LiveKit (RoomService)
at once. A webhook only says when to look, never what is true: a lost, late,
repeated or reordered one changes how soon Ready is seen, not whether, since
the worker keeps a slow poll besides.
"""

from __future__ import annotations

import logging

from aiohttp import web
from livekit import api
from livekit.protocol import webhook as webhook_pb

from avatar_operator import metrics
from avatar_operator import settings as settings_mod
from avatar_operator.controller import mailbox

PATH = "/webhook"
# livekit-server's events about a participant and its tracks name the participant; these name only the room.
ROOM_EVENTS = frozenset({"room_finished"})
PARTICIPANT_EVENTS = frozenset(
    {"participant_joined", "participant_left", "participant_connection_aborted", "track_published", "track_unpublished"}
)
# A webhook is a few hundred bytes; anything much larger is not from LiveKit.
MAX_BODY = 64 * 1024

log = logging.getLogger(__name__)


def wake_target(event: webhook_pb.WebhookEvent) -> tuple[str, str | None] | None:
    """(room, participant identity) whose watchers an event wakes; identity None: everyone in the room.
    None: an event no session waits on (room_started, egress, ingress)."""
    room = event.room.name
    if not room:
        return None
    if event.event in ROOM_EVENTS:
        return room, None
    if event.event in PARTICIPANT_EVENTS and event.participant.identity:
        return room, event.participant.identity
    return None


def bearer(header: str) -> str:
    """livekit-server sends the bare JWT in Authorization; a `Bearer ` prefix is accepted too."""
    return header.removeprefix("Bearer ")


class Receiver:
    """The HTTP endpoint livekit-server posts to, on its own port (not the metrics or liveness one)."""

    def __init__(self, webhook: settings_mod.WebhookSettings, boxes: mailbox.Mailboxes) -> None:
        self._settings = webhook
        self._boxes = boxes
        self._verify = api.WebhookReceiver(api.TokenVerifier(webhook.api_key, webhook.api_secret))
        self._runner: web.AppRunner | None = None

    async def start(self) -> bool:
        """Listens; False (logged) when the port is taken: the workers then poll as without webhooks."""
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post(PATH, self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._settings.bind, self._settings.port).start()
        except OSError as e:
            await runner.cleanup()
            log.warning("no webhook receiver on %s:%s (%s): LiveKit is polled instead", self._settings.bind, self._settings.port, e)
            return False
        self._runner = runner
        self._boxes.webhooks_live = True
        log.info("webhook receiver on http://%s:%s%s", self._settings.bind, self._settings.port, PATH)
        return True

    async def close(self) -> None:
        self._boxes.webhooks_live = False
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        try:
            event = self._verify.receive(body, bearer(request.headers.get("Authorization", "")))
        except Exception:  # noqa: BLE001 - a bad signature, hash or body: refused, and nothing changes
            metrics.webhook_received("refused")
            return web.Response(status=401, text="webhook refused: not signed with the operator's LiveKit key\n")
        target = wake_target(event)
        woken = self._boxes.room_changed(*target) if target is not None else 0
        metrics.webhook_received("woke" if woken else "ignored")
        return web.Response(text="ok\n")


async def serve(webhook: settings_mod.WebhookSettings, boxes: mailbox.Mailboxes) -> Receiver | None:
    """The started receiver, or None when it is off (port 0) or could not listen."""
    if not webhook.enabled:
        return None
    receiver = Receiver(webhook, boxes)
    return receiver if await receiver.start() else None
