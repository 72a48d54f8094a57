"""Tenants from their Secrets, the cache the watch keeps, and the key match (no cluster)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from avatar_operator.api import names
from avatar_operator.gateway import keys, tenants


def secret(name: str = "acme", namespace: str = "team-a", labelled: bool = True, **data: str) -> dict[str, Any]:
    labels = {names.GATEWAY_TENANT_LABEL: "true"} if labelled else {}
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


FULL = {
    "LIVEKIT_API_KEY": "lk-key\n",
    "LIVEKIT_API_SECRET": "lk-secret-value",
    "GATEWAY_API_KEYS": "old-key\n\n  new-key  \n",
    "LIVEKIT_URL": "ws://livekit:7880",
    "DEFAULT_POOL": "warm",
    "MAX_DURATION": "120.5",
    "TTL_SECONDS_AFTER_FINISHED": "0",
    "MAX_SESSIONS": "3",
}


def test_a_full_secret_reads_every_key() -> None:
    t = tenants.from_secret(secret(**FULL))
    assert (t.namespace, t.name, t.livekit_api_key, t.livekit_api_secret) == ("team-a", "acme", "lk-key", "lk-secret-value")
    assert t.gateway_keys == ("old-key", "new-key")
    assert (t.livekit_url, t.default_pool, t.max_duration, t.ttl_seconds_after_finished, t.max_sessions) == (
        "ws://livekit:7880",
        "warm",
        120.5,
        0,
        3,
    )
    # The secret and the keys stay out of a repr (a log line of a tenant).
    assert "lk-secret-value" not in repr(t) and "new-key" not in repr(t)


def test_defaults_for_the_optional_keys() -> None:
    t = tenants.from_secret(secret(LIVEKIT_API_KEY="k", LIVEKIT_API_SECRET="s"))
    assert t.gateway_keys == () and t.default_pool is None and t.max_sessions is None and t.max_duration is None
    assert t.ttl_seconds_after_finished == tenants.DEFAULT_TTL_SECONDS_AFTER_FINISHED == 300


def test_missing_livekit_credentials_name_the_keys() -> None:
    with pytest.raises(tenants.TenantError, match=r"team-a/acme: add the key\(s\) LIVEKIT_API_SECRET"):
        tenants.from_secret(secret(LIVEKIT_API_KEY="k"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("MAX_SESSIONS", "many", "MAX_SESSIONS='many' is not an integer"),
        ("MAX_SESSIONS", "-1", "must be 0 or more"),
        ("TTL_SECONDS_AFTER_FINISHED", "1.5", "is not an integer"),
        ("MAX_DURATION", "0", "must be more than 0"),
        ("MAX_DURATION", "nan", "must be more than 0"),
    ],
)
def test_bad_numbers_name_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(tenants.TenantError, match=message):
        tenants.from_secret(secret(LIVEKIT_API_KEY="k", LIVEKIT_API_SECRET="s", **{key: value}))


def test_the_cache_follows_watch_events() -> None:
    cache = tenants.Tenants()
    problems = cache.replace_all("team-a", [secret(**FULL), secret("broken", LIVEKIT_API_KEY="k")])
    assert [t.name for t in cache.all()] == ["acme"] and len(problems) == 1 and "broken" in problems[0]
    assert [t.name for t in cache.by_gateway_key("new-key")] == ["acme"]
    assert [t.name for t in cache.by_gateway_key("old-key")] == ["acme"]  # both, during a rotation
    assert cache.by_gateway_key("new-ke") == [] and cache.by_gateway_key("") == []
    assert [t.name for t in cache.by_livekit_key("lk-key")] == ["acme"]
    # Rotation done: the old line removed.
    cache.apply("MODIFIED", secret(**{**FULL, "GATEWAY_API_KEYS": "new-key"}))
    assert cache.by_gateway_key("old-key") == [] and len(cache.by_gateway_key("new-key")) == 1
    # The label taken off, or the Secret deleted: no longer a tenant.
    cache.apply("MODIFIED", secret(labelled=False, **FULL))
    assert cache.all() == []
    cache.apply("ADDED", secret(**FULL))
    cache.apply("DELETED", secret(**FULL))
    assert cache.all() == []


def test_a_namespace_list_replaces_only_that_namespace() -> None:
    cache = tenants.Tenants()
    cache.replace_all("team-a", [secret(**FULL)])
    cache.replace_all("team-b", [secret("other", "team-b", **FULL)])
    cache.replace_all("team-a", [])
    assert [(t.namespace, t.name) for t in cache.all()] == [("team-b", "other")]


def test_keys_match_whole_keys_only() -> None:
    assert keys.parse_keys("a\n\n b \r\n") == ("a", "b")
    assert keys.matches("b", ("a", "b")) and not keys.matches("b ", ("a", "b")) and not keys.matches("", ())
    assert keys.bearer("Bearer  tok ") == "tok" and keys.bearer("bearer tok") == "tok"
    assert keys.bearer("Basic tok") is None and keys.bearer("Bearer ") is None and keys.bearer(None) is None


def test_one_tenant_per_key() -> None:
    from avatar_operator.gateway import context, errors

    a = tenants.from_secret(secret(**FULL))
    b = tenants.from_secret(secret("copy", "team-b", **FULL))
    assert context.one_tenant([a], "the key") is a
    for found, message in (([], "not registered by any tenant"), ([a, b], "more than one tenant (team-a/acme, team-b/copy)")):
        with pytest.raises(errors.Refusal) as caught:
            context.one_tenant(found, "the key")
        assert caught.value.status == 401 and message in caught.value.message


def test_task_ids_and_the_tenants_livekit_url() -> None:
    from avatar_operator.gateway import context, errors

    assert context.split_session_id("ns/gw-1", "task_id") == ("ns", "gw-1")
    assert context.split_session_id("ns.gw-1", "task_id") == ("ns", "gw-1")
    for bad in ("gw-1", "/gw-1", "ns/"):
        with pytest.raises(errors.Refusal) as caught:
            context.split_session_id(bad, "task_id")
        assert caught.value.field == "task_id"
    t = tenants.from_secret(secret(**FULL))
    context.check_livekit_url(t, "ws://livekit:7880/")
    with pytest.raises(errors.Refusal) as caught:
        context.check_livekit_url(t, "ws://elsewhere:7880")
    assert caught.value.field == "livekit_url"
