"""Cloud sessions stop billing the moment they end, and wait in line at the plan's concurrency limit.

On the real stack (apiserver, livekit-server) with the operator as a process
against its own fake bitHuman API (tests/fakes/bithuman_api.py), which bills
by the second, ends sessions, can be given a plan limit and can be down.
This module's fake and operator are its own (the limit and the outages
would reach other modules' sessions otherwise), on namespaces the suite's
shared operator does not watch.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import pathlib
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import rtc

from tests.conftest import RUN_PREFIX, Stack
from tests.fakes.process import FakeProcess
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.integration.conftest import (
    BITHUMAN_SECRET,
    BITHUMAN_TOKEN,
    apply_crds,
    get_json,
    secret_manifest,
    wait_for,
)

pytestmark = pytest.mark.stack

# Not the suite's RUN_PREFIX glob: only this module's operator acts here.
PREFIX = f"b{RUN_PREFIX}"
END_WITHIN_S = 2.0
CONNECTION = {"maxRetry": 3, "retryInterval": 0.2, "timeout": 2}


class BillingFake(FakeProcess):
    def __init__(self, log: pathlib.Path) -> None:
        super().__init__("tests.fakes.bithuman_api", log, api_secret=BITHUMAN_SECRET, api_token=BITHUMAN_TOKEN)

    def config(self, **config: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/_control/config", config))

    def by_room(self, room: str) -> list[dict[str, Any]]:
        return [s for s in self.sessions() if s["room_name"] == room]


@pytest.fixture(scope="module")
def fake(stack: Stack) -> Iterator[BillingFake]:
    d = stack.dir / "test-artifacts"
    d.mkdir(exist_ok=True)
    f = BillingFake(d / "fake-bithuman-billing.log")
    yield f
    f.stop()


@pytest.fixture(scope="module")
def operator(stack: Stack, fake: BillingFake) -> Iterator[OperatorProcess]:
    apply_crds(stack)
    env = operator_env(
        stack.process_env(), livekit_url=stack.livekit_url, fake_urls=fake.urls, runner_image="registry.invalid/avatar-runner:test",
        extra={"AVATAR_ABSENCE_GRACE": "2", "AVATAR_BITHUMAN_END_ATTEMPTS": "4", "AVATAR_BITHUMAN_END_RETRY_INTERVAL": "1"},
    )
    op = OperatorProcess(env, stack.dir / "test-artifacts" / "operator-billing.log", [f"{PREFIX}*"], stop_grace=20.0)
    op.start()
    yield op
    op.stop()


def _namespace(stack: Stack, bithuman: dict[str, str] | None = None) -> str:
    ns = f"{PREFIX}{uuid.uuid4().hex[:10]}"
    stack.kubectl("create", "namespace", ns)
    lk = {"LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": stack.livekit_api_secret}
    stack.kubectl("apply", "-n", ns, "-f", "-", input=secret_manifest("livekit-credentials", lk))
    bh = {"BITHUMAN_API_SECRET": BITHUMAN_SECRET, **(bithuman or {})}
    stack.kubectl("apply", "-n", ns, "-f", "-", input=secret_manifest("bithuman-credentials", bh))
    return ns


def _delete_namespace(stack: Stack, name: str) -> None:
    # Sessions first: kopf stops watching a terminating namespace, and their bitHuman sessions would bill on.
    stack.kubectl("delete", "avatarsessions", "--all", "-n", name, "--timeout=60s", check=False)
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def ns(stack: Stack, operator: OperatorProcess) -> Iterator[str]:
    name = _namespace(stack)
    yield name
    _delete_namespace(stack, name)


def _create(stack: Stack, ns: str, name: str, **spec: Any) -> None:
    body = {"room": f"{ns}-{name}", "agentIdentity": "agent-1", "avatarId": f"A-{name}", "connection": CONNECTION, **spec}
    obj = {"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "metadata": {"name": name}, "spec": body}
    stack.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))


def _statuses(stack: Stack, ns: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: dict(o.get("status") or {}) for o in get_json(stack, "avatarsessions", "-n", ns)["items"]}


def _cond(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == ctype), {})


def _how_ended(st: dict[str, Any]) -> str | None:
    """A Succeeded session keeps how it ended on Reconciling=False (Ready is dropped: kstatus reads it Current)."""
    return (_cond(st, "Reconciling") or _cond(st, "Ready")).get("reason")


def _accepted(stack: Stack, ns: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = _statuses(stack, ns).get(name) or {}
        return st if _cond(st, "CloudRequestAccepted").get("status") == "True" else None

    return wait_for(f"{name} accepted", check)


def _ended(fake: BillingFake, room: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(f"the fake's session for {room} ended", lambda: next((s for s in fake.by_room(room) if s["ended_at"]), None), timeout, 0.1)


def _epoch(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


def _reasons(stack: Stack, ns: str, name: str) -> list[tuple[str, str, str]]:
    items = get_json(stack, "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    return [(e["type"], e["reason"], e["message"]) for e in items]


def _billing_stopped(fake: BillingFake, room: str) -> None:
    first = fake.by_room(room)[0]["billed_seconds"]
    time.sleep(0.5)
    assert fake.by_room(room)[0]["billed_seconds"] == first


def test_a_deleted_session_ends_its_bithuman_session_within_2s(stack: Stack, fake: BillingFake, ns: str) -> None:
    _create(stack, ns, "del", model="essence")
    st = _accepted(stack, ns, "del")
    sent = st["cloudRequest"]
    [billed] = fake.by_room(f"{ns}-del")
    assert sent["sessionId"] == billed["session_id"] and sent["model"] == "essence" and billed["ended_at"] is None
    t0 = time.time()
    stack.kubectl("delete", "avatarsession", "del", "-n", ns, "--wait=false")
    ended = _ended(fake, f"{ns}-del")
    took = ended["ended_at"] - t0
    print(f"deleted: bitHuman session ended {took:.2f}s after the delete, billed {ended['billed_seconds']:.1f}s")
    assert took < END_WITHIN_S and ended["end_calls"] == 1
    _billing_stopped(fake, f"{ns}-del")
    wait_for("the session gone", lambda: "del" not in _statuses(stack, ns))
    assert ("Normal", "CloudSessionEnded") in {e[:2] for e in _reasons(stack, ns, "del")}


def test_a_timed_out_session_ends_its_bithuman_session_within_2s(stack: Stack, fake: BillingFake, ns: str) -> None:
    _create(stack, ns, "timed", maxDuration=3)
    _accepted(stack, ns, "timed")
    st = wait_for("Succeeded", lambda: (s := _statuses(stack, ns)["timed"]).get("phase") == "Succeeded" and s, 30, 0.1)
    seen = time.time()
    assert _how_ended(st) == "MaxDurationReached"
    ended = _ended(fake, f"{ns}-timed")
    # endTime is whole seconds (metav1.Time), cut down: the end came within [endTime, endTime + 1).
    after_end = ended["ended_at"] - _epoch(st["endTime"])
    print(f"maxDuration: bitHuman session ended {after_end:.2f}s after endTime (whole seconds), {ended['ended_at'] - seen:+.2f}s from the test seeing Succeeded")
    assert after_end < END_WITHIN_S + 1 and ended["ended_at"] < seen + END_WITHIN_S
    _billing_stopped(fake, f"{ns}-timed")
    wait_for("endedTime recorded", lambda: _statuses(stack, ns)["timed"]["cloudRequest"].get("endedTime"))


async def _play_the_avatar(stack: Stack, token: str, until: Any) -> None:
    """bitHuman's cloud worker: joins with the operator's token, publishes video until `until()` holds, leaves."""
    room = rtc.Room()
    await room.connect(stack.livekit_url, token)
    try:
        source = rtc.VideoSource(32, 32)
        track = rtc.LocalVideoTrack.create_video_track("avatar", source)
        await room.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))
        frame = rtc.VideoFrame(32, 32, rtc.VideoBufferType.RGBA, bytes(32 * 32 * 4))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not await asyncio.to_thread(until):
            source.capture_frame(frame)
            await asyncio.sleep(0.2)
    finally:
        await room.disconnect()


def _token(fake: BillingFake, room: str) -> str:
    reqs = [r for r in fake.requests() if r["route"] == "session" and (r.get("json") or {}).get("room_name") == room and r["status"] == 200]
    return str(reqs[-1]["json"]["livekit_token"])


def test_a_session_whose_avatar_left_ends_its_bithuman_session_within_2s(stack: Stack, fake: BillingFake, ns: str) -> None:
    """The avatar leaves with the agent (or the room closing): after the absence grace the session ends, and so does billing."""
    _create(stack, ns, "left")
    _accepted(stack, ns, "left")
    asyncio.run(_play_the_avatar(stack, _token(fake, f"{ns}-left"), lambda: _cond(_statuses(stack, ns)["left"], "Ready").get("status") == "True"))
    st = wait_for("Succeeded", lambda: (s := _statuses(stack, ns)["left"]).get("phase") == "Succeeded" and s, 30, 0.1)
    seen = time.time()
    assert _how_ended(st) == "AvatarLeft"
    ended = _ended(fake, f"{ns}-left")
    print(f"avatar left: bitHuman session ended {ended['ended_at'] - _epoch(st['endTime']):.2f}s after endTime (whole seconds)")
    assert ended["ended_at"] - _epoch(st["endTime"]) < END_WITHIN_S + 1 and ended["ended_at"] < seen + END_WITHIN_S
    _billing_stopped(fake, f"{ns}-left")


def test_ending_survives_the_api_down_for_a_while_and_warns_when_it_stays_down(stack: Stack, fake: BillingFake, ns: str) -> None:
    for name in ("blip", "gone"):
        _create(stack, ns, name)
        _accepted(stack, ns, name)
    try:
        fake.config(down_for=2.0)
        t0 = time.time()
        stack.kubectl("delete", "avatarsession", "blip", "-n", ns, "--wait=false")
        ended = _ended(fake, f"{ns}-blip")
        print(f"API down 2 s: ended {ended['ended_at'] - t0:.2f}s after the delete")
        assert ended["ended_at"] - t0 >= 1.9  # not before the API came back: it was retried
        assert ("Normal", "CloudSessionEnded") in {e[:2] for e in _reasons(stack, ns, "blip")}
        fake.config(down_for=600)
        stack.kubectl("delete", "avatarsession", "gone", "-n", ns, "--wait=false")
        warned = wait_for("the Warning", lambda: [e for e in _reasons(stack, ns, "gone") if e[:2] == ("Warning", "CloudSessionEndFailed")], 60)
        assert "503" in warned[0][2] and BITHUMAN_SECRET not in warned[0][2]
        wait_for("deletion lets go all the same", lambda: "gone" not in _statuses(stack, ns))
        [left] = fake.by_room(f"{ns}-gone")
        assert left["ended_at"] is None
    finally:
        fake.config(down_for=0)
    _end_at_the_fake(fake, left["session_id"])  # as bitHuman does by itself within 2 minutes


def _end_at_the_fake(fake: BillingFake, session_id: str) -> None:
    req = urllib.request.Request(fake.urls["base_url"] + f"/v1/runtime-sessions/{session_id}/end", data=b"", method="POST", headers={"api-secret": BITHUMAN_SECRET})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def _peak(sessions: list[dict[str, Any]]) -> int:
    """The most of these sessions billing at one moment, from the fake's start and end times."""
    edges = sorted([(s["started_at"], 1) for s in sessions] + [(s["ended_at"], -1) for s in sessions if s["ended_at"]], key=lambda e: (e[0], e[1]))
    live = peak = 0
    for _, step in edges:
        live += step
        peak = max(peak, live)
    return peak


def _phases(stack: Stack, ns: str) -> dict[str, tuple[str | None, str | None]]:
    return {n: (st.get("phase"), _cond(st, "CloudRequestAccepted").get("reason")) for n, st in _statuses(stack, ns).items()}


def _burst(stack: Stack, fake: BillingFake, ns: str) -> list[str]:
    """Six sessions at once; three get a slot and three wait ConcurrencyLimited."""
    wait_for("no other session billing at the fake", lambda: fake.config()["live"] == 0, 60)
    names = [f"s{i}" for i in range(6)]
    for name in names:
        _create(stack, ns, name)

    def split() -> dict[str, tuple[str | None, str | None]] | None:
        p = _phases(stack, ns)
        ok = sorted(r or "" for _, r in p.values()) == ["ConcurrencyLimited"] * 3 + ["RequestAccepted"] * 3
        return p if ok and len(p) == 6 else None

    phases = wait_for("three accepted, three ConcurrencyLimited", split, 60, 0.5)
    assert phases is not None
    # Waiting is not failing: the three wait Pending, the three accepted are Starting.
    assert sorted(ph or "" for ph, _ in phases.values()) == ["Pending"] * 3 + ["Starting"] * 3, phases
    return names


def _drain(stack: Stack, fake: BillingFake, ns: str, names: list[str], restart: OperatorProcess | None = None) -> None:
    """Ends the accepted ones; the waiting ones then get their slots and go Ready, none failed or sent twice at once."""
    first = [n for n, (_, r) in _phases(stack, ns).items() if r == "RequestAccepted"]
    rest = [n for n in names if n not in first]
    if restart is not None:  # the line survives an operator restart: nothing doubled, nothing lost
        restart.kill()
        restart.start()
    for name in first:
        stack.kubectl("delete", "avatarsession", name, "-n", ns, "--wait=false")
    for name in rest:
        _accepted(stack, ns, name)
        asyncio.run(_play_the_avatar(stack, _token(fake, f"{ns}-{name}"), lambda name=name: _cond(_statuses(stack, ns)[name], "Ready").get("status") == "True"))
    phases = _phases(stack, ns)
    assert not [n for n, (ph, _) in phases.items() if ph == "Failed"], phases
    mine = [s for s in fake.sessions() if s["room_name"].startswith(f"{ns}-")]
    per_room = {n: len([s for s in mine if s["room_name"] == f"{ns}-{n}"]) for n in names}
    assert per_room == dict.fromkeys(names, 1), per_room
    print(f"burst of 6: peak billing at once {_peak(mine)}")
    assert _peak(mine) <= 3


def test_a_burst_over_the_plan_limit_waits_in_line_and_every_session_comes(stack: Stack, fake: BillingFake, ns: str) -> None:
    fake.config(plan_limit=3, retry_after=1)
    try:
        names = _burst(stack, fake, ns)
        limited = _cond(_statuses(stack, ns)[next(n for n, (_, r) in _phases(stack, ns).items() if r == "ConcurrencyLimited")], "CloudRequestAccepted")
        assert "CONCURRENCY_LIMIT_REACHED" in limited["message"]
        _drain(stack, fake, ns, names)
    finally:
        fake.config(plan_limit=None, retry_after=None)


def test_the_operators_budget_keeps_bithuman_from_seeing_a_fourth_start(stack: Stack, fake: BillingFake, operator: OperatorProcess) -> None:
    ns = _namespace(stack, {"BITHUMAN_CONCURRENCY": "3"})
    try:
        before = fake.config()["concurrency_refusals"]
        fake.config(plan_limit=3)  # a fourth start would be refused, and counted
        names = _burst(stack, fake, ns)
        st = _statuses(stack, ns)
        lines = sorted(_cond(st[n], "CloudRequestAccepted")["message"] for n in names if _cond(st[n], "CloudRequestAccepted")["reason"] == "ConcurrencyLimited")
        assert [("number 1 in line" in m, "number 2 in line" in m, "number 3 in line" in m) for m in lines] == [(True, False, False), (False, True, False), (False, False, True)], lines
        assert {n for n in names if _cond(st[n], "CloudRequestAccepted")["reason"] == "RequestAccepted"} == {"s0", "s1", "s2"}  # creation order
        _drain(stack, fake, ns, names, restart=operator)
        assert fake.config()["concurrency_refusals"] == before, "bitHuman was asked for a fourth concurrent session"
        assert len([r for r in fake.requests() if r["route"] == "session" and (r.get("json") or {}).get("room_name", "").startswith(ns)]) == 6
    finally:
        fake.config(plan_limit=None)
        _delete_namespace(stack, ns)
