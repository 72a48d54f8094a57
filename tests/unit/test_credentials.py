"""Credential resolution: the session's Secrets, the defaults, and the plugin's wording."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from avatar_operator import settings
from avatar_operator.api import spec
from avatar_operator.controller import credentials

SETTINGS = settings.Settings.from_env({"AVATAR_LIVEKIT_URL": "wss://lk"})


def session(**fields: Any) -> spec.AvatarSessionSpec:
    body = {"room": "r", "agentIdentity": "a", **fields}
    return spec.parse_spec({"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "metadata": {"name": "x"}, "spec": body})


LOCAL = session(modelPath="/m/a.imx")
CLOUD = session(avatarId="A1")


def reader(secrets: Mapping[str, Mapping[str, str]]) -> credentials.SecretReader:
    return secrets.get


def test_default_named_secrets_are_used() -> None:
    read = reader({"livekit-credentials": {"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"}, "bithuman-credentials": {"BITHUMAN_API_TOKEN": "t"}})
    lk = credentials.livekit(LOCAL, SETTINGS, read)
    assert (lk.url, lk.api_key, lk.api_secret) == ("wss://lk", "k", "s")
    bh = credentials.bithuman(LOCAL, SETTINGS, read)
    assert (bh.secret_name, bh.api_token, bh.api_secret) == ("bithuman-credentials", "t", None)
    assert "s" not in repr(lk).replace("lk", "") or "api_secret" not in repr(lk)


def test_named_secret_must_exist() -> None:
    s = session(modelPath="/m/a.imx", bithuman={"secretRef": {"name": "mine"}})
    with pytest.raises(credentials.MissingCredentials) as e:
        credentials.bithuman(s, SETTINGS, reader({}))
    assert e.value.reason == "SecretNotFound" and "spec.bithuman.secretRef.name" in e.value.message


@pytest.mark.parametrize(
    ("s", "data", "wording"),
    [
        (LOCAL, {"OTHER": "x"}, "BITHUMAN_API_SECRET or BITHUMAN_API_TOKEN are required for local mode"),
        (CLOUD, {"BITHUMAN_API_TOKEN": "t"}, "BITHUMAN_API_SECRET are required for cloud mode"),
    ],
)
def test_missing_keys_use_the_plugins_wording(s: spec.AvatarSessionSpec, data: dict[str, str], wording: str) -> None:
    with pytest.raises(credentials.MissingCredentials) as e:
        credentials.bithuman(s, SETTINGS, reader({"bithuman-credentials": data}))
    assert e.value.reason == "SecretKeyMissing" and wording in e.value.message


def test_livekit_falls_back_to_operator_credentials_then_says_what_to_create() -> None:
    with_env = settings.Settings.from_env({"AVATAR_LIVEKIT_URL": "wss://lk", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"})
    assert credentials.livekit(CLOUD, with_env, reader({})).api_key == "k"
    with pytest.raises(credentials.MissingCredentials) as e:
        credentials.livekit(CLOUD, SETTINGS, reader({}))
    assert "livekit-credentials" in e.value.message
    with pytest.raises(credentials.MissingCredentials) as e2:
        credentials.livekit(CLOUD, SETTINGS, reader({"livekit-credentials": {"LIVEKIT_API_KEY": "k"}}))
    assert e2.value.reason == "SecretKeyMissing" and "LIVEKIT_API_SECRET" in e2.value.message


def test_no_livekit_url_anywhere() -> None:
    with pytest.raises(credentials.MissingCredentials) as e:
        credentials.livekit(CLOUD, settings.Settings(), reader({}))
    assert e.value.reason == "LiveKitNotConfigured"


def test_a_trailing_newline_in_a_secret_value_is_dropped() -> None:
    # `echo secret | base64` puts the newline in the Secret; headers and signatures refuse it.
    lk = credentials.livekit(CLOUD, SETTINGS, reader({"livekit-credentials": {"LIVEKIT_API_KEY": "key\n", "LIVEKIT_API_SECRET": " s3cret\r\n"}}))
    assert (lk.api_key, lk.api_secret) == ("key", "s3cret")
    bh = credentials.bithuman(CLOUD, SETTINGS, reader({"bithuman-credentials": {"BITHUMAN_API_SECRET": "bh\n"}}))
    assert bh.api_secret == "bh"


@pytest.mark.parametrize("value", ["two\nlines", "tab\tinside", "nul\x00"])
def test_a_secret_value_broken_inside_is_refused_naming_the_key(value: str) -> None:
    with pytest.raises(credentials.MissingCredentials) as e:
        credentials.bithuman(CLOUD, SETTINGS, reader({"bithuman-credentials": {"BITHUMAN_API_SECRET": value}}))
    assert e.value.reason == "SecretValueInvalid"
    assert "bithuman-credentials" in e.value.message and "BITHUMAN_API_SECRET" in e.value.message
    assert value not in e.value.message  # the value itself is never echoed


def test_operator_wide_livekit_credentials_are_trimmed() -> None:
    s = settings.Settings.from_env({"AVATAR_LIVEKIT_URL": "ws://x", "LIVEKIT_API_KEY": "k\n", "LIVEKIT_API_SECRET": "s\n"})
    assert (s.livekit.api_key, s.livekit.api_secret) == ("k", "s")
