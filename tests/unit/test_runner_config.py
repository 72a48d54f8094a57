"""The runner's environment contract and how it reports its end."""

from __future__ import annotations

import inspect
import pathlib

import bithuman
import pytest
from avatar_runner import config as config_module
from avatar_runner.config import ConfigError, parse_config, termination_log_path
from avatar_runner.contract import TERMINATION_LOG, Env, Renderer
from avatar_runner.exits import ExitCode, Outcome, write_termination_log
from avatar_runner.renderers.bithuman import refusal
from avatar_runner.session import connect_failure, disconnect_outcome
from livekit import rtc

BASE = {
    "LIVEKIT_URL": "ws://livekit:7880",
    "LIVEKIT_TOKEN": "room-token",
    "AGENT_IDENTITY": "agent-1",
    "AVATAR_RENDERER": "portrait",
}
BITHUMAN = {**BASE, "AVATAR_RENDERER": "bithuman", "BITHUMAN_MODEL_PATH": "/models/a.imx"}


def no_files(path: str) -> str:
    raise AssertionError(f"unexpected read of {path}")


def test_portrait_defaults() -> None:
    config = parse_config(BASE, no_files)
    assert config.livekit_url == "ws://livekit:7880"
    assert config.livekit_token == "room-token"
    assert config.agent_identity == "agent-1"
    assert config.renderer is Renderer.PORTRAIT
    assert config.bithuman is None
    assert config.image_file is None
    assert config.fps == 25.0
    assert config.max_duration_s is None
    assert config.health_port == 8080
    assert config.termination_log == TERMINATION_LOG == "/dev/termination-log"


def test_all_optional_values() -> None:
    config = parse_config(
        {
            **BASE,
            "AVATAR_RENDERER": "PORTRAIT",
            "AVATAR_IMAGE_FILE": "/img/face.png",
            "AVATAR_FPS": "30",
            "AVATAR_MAX_DURATION": "90.5",
            "HEALTH_PORT": "0",
            "TERMINATION_LOG_PATH": "/tmp/t.log",
        },
        no_files,
    )
    assert config.renderer is Renderer.PORTRAIT
    assert config.image_file == "/img/face.png"
    assert config.fps == 30.0
    assert config.max_duration_s == 90.5
    assert config.health_port == 0
    assert config.termination_log == "/tmp/t.log"


def test_token_from_file(tmp_path: pathlib.Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  file-token\n")
    env = {**BASE, "LIVEKIT_TOKEN": "", "LIVEKIT_TOKEN_FILE": str(token_file)}
    assert parse_config(env).livekit_token == "file-token"


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"LIVEKIT_URL": ""}, ["LIVEKIT_URL"]),
        ({"LIVEKIT_URL": "livekit:7880"}, ["LIVEKIT_URL", "ws://"]),
        ({"LIVEKIT_TOKEN": "  "}, ["LIVEKIT_TOKEN", "LIVEKIT_TOKEN_FILE"]),
        ({"LIVEKIT_TOKEN_FILE": "/run/token"}, ["only one", "LIVEKIT_TOKEN_FILE"]),
        ({"AGENT_IDENTITY": ""}, ["AGENT_IDENTITY"]),
        ({"AVATAR_RENDERER": ""}, ["AVATAR_RENDERER", "portrait", "bithuman"]),
        ({"AVATAR_RENDERER": "unreal"}, ["AVATAR_RENDERER", "'unreal'"]),
        ({"AVATAR_FPS": "fast"}, ["AVATAR_FPS"]),
        ({"AVATAR_FPS": "0"}, ["AVATAR_FPS", "between 1 and 60"]),
        ({"AVATAR_FPS": "61"}, ["AVATAR_FPS"]),
        ({"AVATAR_FPS": "nan"}, ["AVATAR_FPS"]),
        ({"AVATAR_MAX_DURATION": "0"}, ["AVATAR_MAX_DURATION", "> 0"]),
        ({"AVATAR_MAX_DURATION": "1h"}, ["AVATAR_MAX_DURATION", "seconds"]),
        ({"AVATAR_MAX_DURATION": "inf"}, ["AVATAR_MAX_DURATION"]),
        ({"HEALTH_PORT": "http"}, ["HEALTH_PORT"]),
        ({"HEALTH_PORT": "65536"}, ["HEALTH_PORT", "0 (disabled)"]),
    ],
)
def test_invalid_values_name_the_variable(change: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, **change}, no_files)
    for name in names:
        assert name in str(err.value)


def test_unreadable_token_file_is_named(tmp_path: pathlib.Path) -> None:
    env = {**BASE, "LIVEKIT_TOKEN": "", "LIVEKIT_TOKEN_FILE": str(tmp_path / "missing")}
    with pytest.raises(ConfigError, match="LIVEKIT_TOKEN_FILE .*missing.* cannot be read"):
        parse_config(env)


def test_empty_token_file_is_refused(tmp_path: pathlib.Path) -> None:
    (tmp_path / "token").write_text("\n")
    env = {**BASE, "LIVEKIT_TOKEN": "", "LIVEKIT_TOKEN_FILE": str(tmp_path / "token")}
    with pytest.raises(ConfigError, match="is empty"):
        parse_config(env)


@pytest.mark.parametrize(
    ("credentials", "secret", "token"),
    [
        ({"BITHUMAN_API_SECRET": "s3cret"}, "s3cret", None),
        ({"BITHUMAN_API_TOKEN": "t0ken"}, None, "t0ken"),
        ({"BITHUMAN_API_SECRET": "s3cret", "BITHUMAN_API_TOKEN": "t0ken"}, "s3cret", "t0ken"),
    ],
)
def test_bithuman_takes_a_secret_or_a_token(
    credentials: dict[str, str], secret: str | None, token: str | None
) -> None:
    config = parse_config({**BITHUMAN, **credentials}, no_files)
    assert config.renderer is Renderer.BITHUMAN
    assert config.bithuman is not None
    assert config.bithuman.model_path == "/models/a.imx"
    assert (config.bithuman.api_secret, config.bithuman.api_token) == (secret, token)


def test_bithuman_needs_a_credential() -> None:
    with pytest.raises(ConfigError, match="BITHUMAN_API_SECRET or BITHUMAN_API_TOKEN"):
        parse_config(BITHUMAN, no_files)


def test_bithuman_needs_a_model() -> None:
    env = {**BITHUMAN, "BITHUMAN_MODEL_PATH": "", "BITHUMAN_API_SECRET": "s"}
    with pytest.raises(ConfigError, match="BITHUMAN_MODEL_PATH"):
        parse_config(env, no_files)


def test_portrait_ignores_bithuman_variables() -> None:
    config = parse_config({**BASE, "BITHUMAN_MODEL_PATH": "/m.imx", "BITHUMAN_API_SECRET": "s"}, no_files)
    assert config.bithuman is None


def test_repr_hides_credentials() -> None:
    config = parse_config({**BITHUMAN, "BITHUMAN_API_SECRET": "s3cret-value", "BITHUMAN_API_TOKEN": "t0ken-value"})
    shown = repr(config)
    assert "/models/a.imx" in shown
    for secret in ("room-token", "s3cret-value", "t0ken-value"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("env", "path"),
    [({}, TERMINATION_LOG), ({"TERMINATION_LOG_PATH": "  "}, TERMINATION_LOG), ({"TERMINATION_LOG_PATH": "/t"}, "/t")],
)
def test_termination_log_path_even_when_the_rest_is_invalid(env: dict[str, str], path: str) -> None:
    assert termination_log_path(env) == path


def test_every_contract_variable_is_documented_and_read() -> None:
    doc = config_module.__doc__ or ""
    source = inspect.getsource(config_module)
    for name in Env:
        assert f"\n    {name.value} " in doc, name
        assert f"Env.{name.name}" in source, name
    assert {r.value for r in Renderer} == {"portrait", "bithuman"}


def test_outcome_reason_is_one_line() -> None:
    outcome = Outcome(ExitCode.RENDERER_FAILED, "first line\n  second\tline ")
    assert outcome.reason == "first line second line"


def test_termination_log_written_only_where_kubernetes_created_it(tmp_path: pathlib.Path) -> None:
    created = tmp_path / "termination-log"
    created.write_text("")
    write_termination_log(str(created), "agent left")
    assert created.read_text() == "agent left\n"

    absent = tmp_path / "absent"
    write_termination_log(str(absent), "agent left")
    assert not absent.exists()


def test_reasons_never_carry_a_token() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhdmF0YXIifQ.c2lnbmF0dXJl"
    outcome = Outcome(ExitCode.TOKEN_REJECTED, f"401 Unauthorized - invalid token: {jwt}, error: bad")
    assert outcome.reason == "401 Unauthorized - invalid token: <token>, error: bad"


@pytest.mark.parametrize(
    ("error", "code", "start"),
    [
        (bithuman.ModelNotFoundError("Essence model not found: /m.imx"), ExitCode.AVATAR_INVALID,
         "bitHuman refused the avatar model: [model_not_found]"),
        (bithuman.InvalidAvatar("not an avatar"), ExitCode.AVATAR_INVALID, "bitHuman refused the avatar model"),
        (bithuman.TokenExpiredError("expired"), ExitCode.RENDERER_NOT_AUTHORISED, "bitHuman refused the credential"),
        (bithuman.AccountStatusError("402"), ExitCode.RENDERER_NOT_AUTHORISED, "bitHuman refused the credential"),
        (bithuman.NotAuthorised("no credit"), ExitCode.RENDERER_NOT_AUTHORISED, "bitHuman refused the credential"),
        (bithuman.BithumanError("AsyncAvatar.create: api_secret is required."), ExitCode.RENDERER_NOT_AUTHORISED,
         "bitHuman refused the credential"),
        (bithuman.TokenRequestError("503"), ExitCode.RENDERER_UNAVAILABLE, "bitHuman could not issue a token"),
        (bithuman.NotSupported("needs a GPU"), ExitCode.RENDERER_UNAVAILABLE, "bitHuman cannot run this avatar here"),
        (RuntimeError("auth_authenticate: curl_easy_perform: Couldn't resolve host name"),
         ExitCode.RENDERER_UNAVAILABLE, "bitHuman authentication service unreachable"),
        (RuntimeError("auth_authenticate: HTTP 401"), ExitCode.RENDERER_NOT_AUTHORISED,
         "bitHuman refused the credential"),
        (bithuman.Failed("try again"), ExitCode.RENDERER_FAILED, "bitHuman failed: Failed: try again"),
        (ValueError("boom"), ExitCode.RENDERER_FAILED, "bitHuman failed: ValueError: boom"),
    ],
)
def test_bithuman_refusals_map_to_exit_codes(error: Exception, code: ExitCode, start: str) -> None:
    outcome = refusal(error).outcome
    assert outcome.code is code
    assert outcome.reason.startswith(start)


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (rtc.DisconnectReason.ROOM_DELETED, ExitCode.OK),
        (rtc.DisconnectReason.ROOM_CLOSED, ExitCode.OK),
        (rtc.DisconnectReason.PARTICIPANT_REMOVED, ExitCode.OK),
        (rtc.DisconnectReason.SERVER_SHUTDOWN, ExitCode.ROOM_UNREACHABLE),  # joined again, then 75
        (rtc.DisconnectReason.DUPLICATE_IDENTITY, ExitCode.OK),
        (rtc.DisconnectReason.SIGNAL_CLOSE, ExitCode.ROOM_UNREACHABLE),
        (rtc.DisconnectReason.CONNECTION_TIMEOUT, ExitCode.ROOM_UNREACHABLE),
    ],
)
def test_server_ends_the_session_but_a_lost_connection_fails_it(
    reason: rtc.DisconnectReason.ValueType, code: ExitCode
) -> None:
    outcome = disconnect_outcome(reason)
    assert outcome.code is code
    if code is ExitCode.ROOM_UNREACHABLE:
        assert rtc.DisconnectReason.Name(reason) in outcome.reason


def test_connect_failures_tell_a_rejected_token_from_an_unreachable_server() -> None:
    rejected = connect_failure("engine: signal failure: client error: 401 Unauthorized - invalid authorization token")
    unreachable = connect_failure(
        "engine: signal failure: transport connection error: IO error: Connection refused (os error 111)"
    )
    assert rejected.outcome.code is ExitCode.TOKEN_REJECTED
    assert unreachable.outcome.code is ExitCode.ROOM_UNREACHABLE


async def test_a_lost_connection_is_joined_again_within_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lost after joining: joined again; a first join that fails is not retried; past the window, 75."""
    from avatar_runner import session
    from avatar_runner.exits import Outcome, RunnerFailure

    script: list[Outcome | RunnerFailure] = [
        Outcome(ExitCode.ROOM_UNREACHABLE, "lost the connection to LiveKit (SIGNAL_CLOSE)"),
        RunnerFailure(ExitCode.ROOM_UNREACHABLE, "cannot reach the LiveKit room"),
        Outcome(ExitCode.OK, "agent 'a' left the room"),
    ]
    joins: list[int] = []

    async def in_room(*_: object) -> Outcome:
        joins.append(1)
        step = script.pop(0)
        if isinstance(step, RunnerFailure):
            raise step
        return step

    monkeypatch.setattr(session, "_in_room", in_room)
    monkeypatch.setattr(session, "REJOIN_DELAY_S", 0.0)
    outcome = await session.serve_room(None, None, None, started_at=0.0, stop=session.StopRequest())  # type: ignore[arg-type]
    assert outcome.code is ExitCode.OK and len(joins) == 3

    script[:] = [RunnerFailure(ExitCode.ROOM_UNREACHABLE, "cannot reach the LiveKit room")]
    with pytest.raises(RunnerFailure):  # never in the room: not retried
        await session.serve_room(None, None, None, started_at=0.0, stop=session.StopRequest())  # type: ignore[arg-type]

    monkeypatch.setattr(session, "REJOIN_WINDOW_S", 0.0)
    script[:] = [Outcome(ExitCode.ROOM_UNREACHABLE, "lost the connection to LiveKit (SIGNAL_CLOSE)")]
    outcome = await session.serve_room(None, None, None, started_at=0.0, stop=session.StopRequest())  # type: ignore[arg-type]
    assert outcome.code is ExitCode.ROOM_UNREACHABLE and "joining again failed" in outcome.reason
