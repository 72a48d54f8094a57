"""Pure pieces of the reconcile loop: pod state, room view, settings."""

from __future__ import annotations

import pytest
from avatar_operator import settings
from avatar_operator.api import names, spec
from avatar_operator.clients import livekit as room
from avatar_operator.controller import podstate
from livekit.protocol import models


def test_unschedulable_pod_carries_the_schedulers_message() -> None:
    pod = {
        "spec": {},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}
            ],
        },
    }
    st = podstate.read(pod)
    assert st.phase == "Pending" and st.node is None
    assert st.unschedulable == "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."


def test_scheduled_pod_names_its_node() -> None:
    st = podstate.read({"spec": {"nodeName": "kwok-gpu-0"}, "status": {"phase": "Running"}})
    assert st == podstate.PodState(phase="Running", node="kwok-gpu-0", unschedulable=None, exit_reason=None)


def test_failed_runner_shows_its_termination_message() -> None:
    pod = {
        "spec": {"nodeName": "n"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": "runner", "state": {"terminated": {"reason": "Error", "exitCode": 3, "message": "renderer refused: NotAuthorised: bad key\n"}}}
            ],
        },
    }
    assert podstate.read(pod).exit_reason == "Error (exit code 3): renderer refused: NotAuthorised: bad key"


def test_room_view_ready_only_with_a_published_video_track() -> None:
    video = models.TrackInfo(type=models.TrackType.VIDEO)
    audio = models.TrackInfo(type=models.TrackType.AUDIO)
    avatar = models.ParticipantInfo(identity="bithuman-avatar-agent", tracks=[audio])
    agent = models.ParticipantInfo(identity="agent")
    v = room.view([avatar, agent], "bithuman-avatar-agent", "uid-1")
    assert v.avatar_present and not v.avatar_publishing_video
    avatar.tracks.append(video)
    assert room.view([avatar], "bithuman-avatar-agent", "uid-1").avatar_publishing_video
    muted = models.ParticipantInfo(identity="a", tracks=[models.TrackInfo(type=models.TrackType.VIDEO, muted=True)])
    assert not room.view([muted], "a", "uid-1").avatar_publishing_video


def test_room_service_url_from_signalling_url() -> None:
    assert room.http_url("wss://lk.example.com") == "https://lk.example.com"
    assert room.http_url("ws://127.0.0.1:7880") == "http://127.0.0.1:7880"


def test_settings_from_env() -> None:
    s = settings.Settings.from_env(
        {"AVATAR_NAMESPACES": "a, b c", "AVATAR_RUNNER_LAUNCHER": "process", "LIVEKIT_API_SECRET": "hidden", "AVATAR_TOKEN_TTL_MARGIN": "60"}
    )
    assert s.namespaces == ("a", "b", "c")
    assert s.runner.launcher is settings.Launcher.PROCESS
    assert s.timing.token_ttl_margin_s == 60.0
    assert "hidden" not in repr(s)  # credentials stay out of logs that print settings
    assert settings.Settings.from_env({}).bithuman.api_url == spec.DEFAULT_API_URL
    assert settings.Settings.from_env({}) == settings.Settings()


def test_settings_take_the_legacy_livekit_url_and_blank_means_unset() -> None:
    assert settings.Settings.from_env({"LIVEKIT_URL": "ws://a"}).livekit.url == "ws://a"
    assert settings.Settings.from_env({"LIVEKIT_URL": "ws://a", "AVATAR_LIVEKIT_URL": "ws://b"}).livekit.url == "ws://b"
    assert settings.Settings.from_env({"AVATAR_CLEANUP_TIMEOUT": ""}).timing.cleanup_timeout_s == 10.0


@pytest.mark.parametrize(
    "variable, value",
    [
        ("AVATAR_CLEANUP_TIMEOUT", "soon"),
        ("AVATAR_CLEANUP_TIMEOUT", "0"),
        ("AVATAR_ABSENCE_GRACE", "-1"),
        ("AVATAR_TOKEN_TTL_DEFAULT", "inf"),
        ("AVATAR_RUNNER_LAUNCHER", "docker"),
    ],
)
def test_a_bad_setting_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(settings.SettingsError, match=variable):
        settings.Settings.from_env({variable: value})


def test_every_bad_setting_is_named_at_once() -> None:
    with pytest.raises(settings.SettingsError) as e:
        settings.Settings.from_env({"AVATAR_CLEANUP_TIMEOUT": "x", "AVATAR_RUNNER_LAUNCHER": "y"})
    assert "AVATAR_CLEANUP_TIMEOUT" in str(e.value) and "AVATAR_RUNNER_LAUNCHER" in str(e.value)


async def test_room_client_signs_one_room_admin_token_per_room_and_reuses_it() -> None:
    import aiohttp
    from livekit import api

    async with aiohttp.ClientSession() as http:
        client = room.Client("ws://127.0.0.1:7880", "key", "secret-that-is-long-enough-for-hs256", http)
        first = client._token("room-a")
        assert client._token("room-a") is first  # no new JWT per poll
        other = client._token("room-b")
        assert other != first
        for token, name in ((first, "room-a"), (other, "room-b")):
            grants = api.TokenVerifier("key", "secret-that-is-long-enough-for-hs256").verify(token).video
            # Admin of its own room only: not room_list, not room_create, no other room.
            assert grants.room_admin and grants.room == name
            assert not grants.room_list and not grants.room_create and not grants.room_join


def test_room_view_does_not_take_another_sessions_avatar_of_the_same_identity_for_its_own() -> None:
    video = models.TrackInfo(type=models.TrackType.VIDEO)
    theirs = models.ParticipantInfo(identity="bithuman-avatar-agent", tracks=[video], attributes={names.SESSION_ATTRIBUTE: "uid-2"})
    assert not room.view([theirs], "bithuman-avatar-agent", "uid-1").avatar_present
    ours = models.ParticipantInfo(identity="bithuman-avatar-agent", tracks=[video], attributes={names.SESSION_ATTRIBUTE: "uid-1"})
    assert room.view([ours], "bithuman-avatar-agent", "uid-1").avatar_publishing_video
    legacy = models.ParticipantInfo(identity="bithuman-avatar-agent", tracks=[video])  # a token from before the attribute
    assert room.view([legacy], "bithuman-avatar-agent", "uid-1").avatar_publishing_video


def test_livekit_refusing_the_key_is_told_from_livekit_down() -> None:
    from livekit import api

    assert room.is_credentials_refused(api.TwirpError("unauthenticated", "invalid token", status=401))
    assert not room.is_credentials_refused(api.TwirpError("unavailable", "down", status=503))
    assert not room.is_credentials_refused(ConnectionError("refused"))
