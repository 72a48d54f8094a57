"""The shipped Grafana dashboard against real scrapes: every metric a panel's query names is on a /metrics page.

The operator runs beside the stack (process launcher, portrait renderer) with
--metrics-port, in a namespace of its own. A warm pool of one runner takes a
session to Ready (an agent and a listener in its room), and a cloud session
is accepted by the fake bitHuman API after one 503 and then deleted (ended at
bitHuman), so the start histograms, the cloud outcomes and the runner's video
metrics have samples. Then the
operator's /metrics and the pool runner's /metrics are scraped and each name
the dashboard's PromQL reads is looked up in them.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from livekit import rtc
from prometheus_client import parser as prom_parser

from tests.conftest import ROOT, Stack
from tests.harness import viewer as harness_viewer
from tests.harness.net import free_port
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.integration.conftest import (
    BITHUMAN_SECRET,
    FakeAPI,
    apply_crds,
    secret_manifest,
    wait_for,
)

DASHBOARD = ROOT / "charts" / "avatar-operator" / "dashboards" / "avatar-operator.json"
POOL = "dash"

# What PromQL spells that is not a metric: functions and aggregations are
# followed by "(", so only the keywords that may stand alone are listed.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (suffixes such as _bucket kept as written)."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries, $__rate_interval included
    text = _LABEL_LISTS.sub("", text)  # `sum by (le) (x)`: the aggregation then reads as a call
    names = set()
    for m in _NAME.finditer(text):
        rest, before = text[m.end():].lstrip(), text[m.start() - 1 : m.start()]
        # A call, a keyword, a Grafana variable, or a number's tail (5m, 1e3).
        if rest.startswith("(") or m.group().lower() in _KEYWORDS or (before and before in "$0123456789."):
            continue
        names.add(m.group())
    return names


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every target's expr, in rows and out of them."""
    out = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            out += [t["expr"] for t in inner.get("targets", []) if t.get("expr")]
    return out


def test_metric_names_reads_names_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, pool) (rate(a_seconds_bucket{mode="pool", x=~"rate(b)"}[$__rate_interval])))'
        " / on (pool) group_left (mode) sum without (le) (c_total offset 5m) > bool 2 and d"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "c_total", "d"}
    assert metric_names("sum(avatar_operator_session_workers)") == {"avatar_operator_session_workers"}


def test_the_dashboard_names_each_panel_it_promises() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = set().union(*map(metric_names, queries(dashboard)))
    for wanted in (
        "avatar_operator_session_create_to_starting_seconds_bucket",
        "avatar_operator_session_create_to_ready_seconds_bucket",
        "avatar_operator_sessions",
        "avatar_operator_cloud_requests_total",
        "avatar_video_fps",
        "avatar_video_frames_dropped_total",
    ):
        assert wanted in names, f"no panel reads {wanted}"


def scrape(url: str) -> dict[str, tuple[str, list[Any]]]:
    """Sample name -> (its family's type, its samples) on a Prometheus text page."""
    with urllib.request.urlopen(url, timeout=10) as response:
        page = response.read().decode()
    out: dict[str, tuple[str, list[Any]]] = {}
    for family in prom_parser.text_string_to_metric_families(page):
        for s in family.samples:
            out.setdefault(s.name, (family.type, []))[1].append(s)
    return out


def status(stack: Stack, ns: str, kind: str, name: str) -> dict[str, Any]:
    return dict(json.loads(stack.kubectl("get", kind, name, "-n", ns, "-o", "json").stdout).get("status") or {})


def gone(page: dict[str, tuple[str, list[Any]]]) -> bool:
    """The deleted session is out of the by-phase gauge (its DELETED event reached the operator)."""
    return sum(s.value for s in page["avatar_operator_sessions"][1]) == 1


def is_ready(st: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or [])


@pytest.fixture
def own_namespace(stack: Stack) -> Iterator[str]:
    """Not this run's prefix: the suite's shared operator must not act on it beside this test's."""
    name = f"dash-{uuid.uuid4().hex[:10]}"
    stack.kubectl("create", "namespace", name)
    stack.kubectl("label", "namespace", name, "avatar-operator.dev/test=true")
    yield name
    stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def metrics_operator(
    stack: Stack, own_namespace: str, fake_api: FakeAPI, tmp_path: pathlib.Path
) -> Iterator[tuple[int, pathlib.Path]]:
    apply_crds(stack)
    port, work = free_port(), tmp_path / "runners"
    env = operator_env(
        stack.process_env(),
        livekit_url=stack.livekit_url,
        fake_urls=fake_api.urls,
        runner_image="registry.invalid/avatar-runner:test",
        extra={
            "AVATAR_RUNNER_LAUNCHER": "process",
            "AVATAR_RUNNER_RENDERER": "portrait",
            "AVATAR_PROCESS_WORKDIR": str(work),
            "LIVEKIT_API_KEY": stack.livekit_api_key,
            "LIVEKIT_API_SECRET": stack.livekit_api_secret,
        },
    )
    op = OperatorProcess(env, tmp_path / "operator.log", [own_namespace], extra_args=("--metrics-port", str(port)), stop_grace=30.0)
    op.start()
    try:
        yield port, work / "pools"
    finally:
        stack.kubectl("delete", "avs", "--all", "-n", own_namespace, "--timeout=60s", check=False)
        stack.kubectl("delete", "avp", "--all", "-n", own_namespace, "--timeout=60s", check=False)
        op.stop()
        print(op.logs()[-3000:])


async def until(what: str, check: Any, timeout: float) -> Any:
    return await asyncio.to_thread(wait_for, what, check, timeout)


@pytest.mark.stack
async def test_every_metric_the_dashboard_reads_is_in_a_real_scrape(
    stack: Stack, own_namespace: str, fake_api: FakeAPI, metrics_operator: tuple[int, pathlib.Path]
) -> None:
    ns, (port, records) = own_namespace, metrics_operator
    secret = secret_manifest("bithuman-credentials", {"BITHUMAN_API_SECRET": BITHUMAN_SECRET})
    stack.kubectl("apply", "-n", ns, "-f", "-", input=secret)
    key, lk_secret = stack.livekit_api_key, stack.livekit_api_secret
    room = f"{ns}-pool"
    agent, listener = rtc.Room(), harness_viewer.Viewer(watch_video=False)
    await agent.connect(stack.livekit_url, harness_viewer.participant_token(key, lk_secret, room, "agent", agent=True), rtc.RoomOptions(auto_subscribe=False))
    await listener.join(stack.livekit_url, harness_viewer.participant_token(key, lk_secret, room, "listener"))
    try:
        pool = {"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarPool", "metadata": {"name": POOL, "namespace": ns},
                "spec": {"replicas": 1, "sessionsPerRunner": 1, "modelPath": "/models/demo.imx"}}
        stack.kubectl("apply", "-f", "-", input=json.dumps(pool))
        fake_api.script([{"status": 503}, {}])  # one retry, then accepted
        sessions = {
            "pooled": {"room": room, "agentIdentity": "agent", "poolRef": {"name": POOL}},
            "cloudy": {"room": f"{ns}-cloud", "agentIdentity": "agent", "avatarId": "A23WJF0199", "connection": {"retryInterval": 0.2}},
        }
        for name, spec in sessions.items():
            body = {"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "metadata": {"name": name, "namespace": ns}, "spec": spec}
            stack.kubectl("apply", "-f", "-", input=json.dumps(body))
        await until("the pool session Ready", lambda: is_ready(status(stack, ns, "avs", "pooled")), 120)
        await until("the cloud session accepted", lambda: status(stack, ns, "avs", "cloudy").get("phase") in ("Starting", "Running"), 60)
        # Its deletion ends it at bitHuman: the cloud ends counter gets its sample.
        await asyncio.to_thread(stack.kubectl, "delete", "avs", "cloudy", "-n", ns, "--timeout=60s")
        t0 = time.monotonic()
        wanted = ("avatar_operator_session_create_to_ready_seconds_count", "avatar_operator_session_create_to_starting_seconds_count")
        operator_page = await until(
            "the start histograms on /metrics",
            lambda: (page := scrape(f"http://127.0.0.1:{port}/metrics")) and all(w in page for w in wanted) and gone(page) and page,
            30,
        )
        [record] = [json.loads(p.read_text()) for p in records.glob("*.json")]
        runner_page = await until(
            "the pool runner's frame rate on its /metrics",
            lambda: (page := scrape(f"http://127.0.0.1:{record['port']}/metrics"))
            and any(s.value > 0 for s in page.get("avatar_video_fps", ("", []))[1])
            and page,
            30,
        )
    finally:
        await listener.leave()
        await agent.disconnect()

    names = set().union(*map(metric_names, queries(json.loads(DASHBOARD.read_text()))))
    scraped = {**operator_page, **runner_page}
    missing = sorted(n for n in names if n not in scraped)
    assert not missing, f"the dashboard reads metrics no /metrics page has: {missing} (scraped {time.monotonic() - t0:.1f} s after Ready)"
    for name in names:
        if name.endswith(("_bucket", "_sum", "_count")):
            assert scraped[name][0] == "histogram", f"{name}: a {scraped[name][0]}, not a histogram's series"

    # The samples are the sessions driven here: the pool's by its name, the cloud one by its mode.
    def count(metric: str, **labels: str) -> float:
        return sum(s.value for s in scraped[f"{metric}_count"][1] if labels.items() <= s.labels.items())

    for metric in ("avatar_operator_session_create_to_starting_seconds", "avatar_operator_session_create_to_ready_seconds"):
        assert count(metric, mode="pool", pool=POOL) == 1, scraped[f"{metric}_count"][1]
    assert count("avatar_operator_session_create_to_starting_seconds", mode="cloud", pool="") == 1
    phases = {s.labels["phase"]: s.value for s in scraped["avatar_operator_sessions"][1]}
    assert phases["Running"] == 1 and sum(phases.values()) == 1, phases  # the cloud session is gone
