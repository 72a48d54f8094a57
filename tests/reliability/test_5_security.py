"""Scenario 5: design.md §3, checked on what the suite produced and on the Helm chart.

Runs last: the secret scan reads everything the other scenarios captured
(tokens, statuses, events, pod specs, logs, participant attributes).
"""

from __future__ import annotations

import base64
import collections
import json
import pathlib
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.build import pod as manifests

from tests.conftest import Stack
from tests.reliability.support import (
    BITHUMAN_SECRET,
    BITHUMAN_TOKEN,
    GROUP,
    PREFIX,
    Evidence,
    FakeProc,
    Kube,
    Namespaces,
    OperatorProc,
    Scenario,
    decode_token,
    phase,
    render_chart,
    timed,
    token_problems,
    wait_until,
)

pytestmark = pytest.mark.stack

# The operator's defaults (settings.py), which the suite's operators keep.
TTL_MARGIN_S, TTL_DEFAULT_S = 300.0, 3600.0


@pytest.fixture(scope="module")
def sec_operator(stack: Stack, kube: Kube, crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path) -> Iterator[tuple[OperatorProc, Namespaces]]:
    spaces = Namespaces(stack, kube, evidence, "sec")
    log = artifacts / "operator-security.log"
    evidence.file("operator log", log)
    op = OperatorProc(stack, fake, log, [spaces.glob])
    op.start()
    wait_until("operator up", lambda: "Initial authentication has finished" in op.logs(), 60)
    yield op, spaces
    evidence.fake_requests(fake.requests())
    spaces.teardown(operator_running=op.alive())
    op.stop()
    spaces.teardown(operator_running=False)


def _session(kube: Kube, evidence: Evidence, ns: str, name: str, spec: dict[str, Any]) -> None:
    kube.create_session(ns, name, spec)
    evidence.session(spec)


# --- RBAC -----------------------------------------------------------------------

CAN_I_ROW = re.compile(r"^(\S+)?\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s*$")


def can_i_list(stack: Stack, user: str, ns: str) -> set[tuple[str, str, str, str]]:
    out = stack.kubectl("auth", "can-i", "--list", f"--as={user}", "-n", ns).stdout
    rows = set()
    for line in out.splitlines()[1:]:
        m = CAN_I_ROW.match(line)
        if m:
            rows.add(tuple((g or "").strip() for g in m.groups()))  # type: ignore[arg-type]
    return rows


def can_i(stack: Stack, user: str, *args: str) -> bool:
    return stack.kubectl("auth", "can-i", *args, f"--as={user}", check=False).stdout.strip() == "yes"


@pytest.mark.scenario("security", description="design.md §3: secrets kept out of tokens, attributes, status, events, pod specs and logs; minted tokens scoped; the chart's RBAC exact; runner and operator pods pass `restricted`; unwatched namespaces left alone")
@pytest.mark.parametrize("mode", ["namespaced", "cluster"])
def test_chart_rbac_has_no_wildcard_and_no_cluster_secret_list(stack: Stack, kube: Kube, evidence: Evidence, scenario: Scenario, mode: str) -> None:
    sc = scenario
    since = sc.checkpoint()
    spaces = Namespaces(stack, kube, evidence, f"rbac{mode[0]}")
    system = spaces.create("system", livekit=False, bithuman=False)
    watched = spaces.create("watched", livekit=False, bithuman=False)
    other = spaces.create("other", livekit=False, bithuman=False)
    release = f"{PREFIX}{mode[0]}rbac"
    values: dict[str, Any] = {"replicaCount": 2}
    values.update({"clusterWide": True} if mode == "cluster" else {"watchNamespaces": [watched]})
    objs = render_chart(stack, release, system, values)
    rbac = [o for o in objs if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    cluster_scoped = [o for o in rbac if o["kind"].startswith("Cluster")]
    try:
        with timed(sc):
            # What the chart grants, as written.
            for o in rbac:
                for rule in o.get("rules") or []:
                    sc.op("rbac_rule_read")
                    fields = rule.get("apiGroups", []) + rule.get("resources", []) + rule.get("verbs", []) + rule.get("resourceNames", [])
                    sc.check("no_wildcard_in_chart_rbac", "*" not in fields and not any("*" in f for f in rule.get("resources", [])), f"{mode} {o['kind']} {o['metadata']['name']}: {rule}")
                    if o["kind"] == "ClusterRole" and "secrets" in rule.get("resources", []):
                        sc.check("no_cluster_wide_secret_list_or_watch", not {"list", "watch"} & set(rule.get("verbs", [])), f"{mode}: {rule}")
            stack.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
            sa = next(o for o in rbac if o["kind"] == "ServiceAccount")["metadata"]["name"]
            user = f"system:serviceaccount:{system}:{sa}"
            stack.kubectl("create", "serviceaccount", "nobody", "-n", system)
            baseline = can_i_list(stack, f"system:serviceaccount:{system}:nobody", watched)
            for ns in (watched, other):
                rows = can_i_list(stack, user, ns) - baseline
                sc.note(f"can_i_{mode}_{'watched' if ns == watched else 'unwatched'}", sorted(" ".join(r) for r in rows))
                for resources, urls, names, verbs in rows:
                    sc.op("can_i_row")
                    sc.check("no_wildcard_in_effective_rights", "*" not in verbs.split() and "*" not in resources and "*" not in urls, f"{mode} -n {ns}: {resources} {urls} {names} [{verbs}]")
                    if resources.split(".")[0] == "secrets":
                        sc.check("no_secret_list_or_watch", not {"list", "watch"} & set(verbs.split()), f"{mode} -n {ns}: secrets [{verbs}]")
            for verb in ("list", "watch"):
                sc.op("can_i_query")
                sc.check("no_cluster_wide_secret_list_or_watch", not can_i(stack, user, verb, "secrets", "--all-namespaces"), f"{mode}: can {verb} secrets in all namespaces")
            if mode == "namespaced":
                for verb in ("get", "create", "delete"):
                    sc.op("can_i_query")
                    sc.check("no_secret_rights_outside_watched_namespaces", not can_i(stack, user, verb, "secrets", "-n", other), f"can {verb} secrets in unwatched {other}")
                    sc.check("secret_rights_in_watched_namespace", can_i(stack, user, verb, "secrets", "-n", watched), f"cannot {verb} secrets in {watched}")
            sc.check("no_cluster_admin_like_rights", not can_i(stack, user, "*", "*", "--all-namespaces"), f"{mode}: can * * everywhere")
    finally:
        for o in cluster_scoped:
            stack.kubectl("delete", "--ignore-not-found", "--wait=false", o["kind"].lower(), o["metadata"]["name"], check=False)
        spaces.teardown(operator_running=False)
    sc.assert_clean(since)


# --- Pod Security Standard `restricted` --------------------------------------------

RUNNER_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"modelPath": "/models/avatar.imx"},
    "gpu-pvc": {"model": "expression", "modelPath": "/models/avatar.imx", "modelVolume": {"persistentVolumeClaim": {"claimName": "models"}}},
    "csi": {"modelPath": "/models/avatar.imx", "modelVolume": {"csi": {"driver": "models.csi.example", "readOnly": True}}},
    "image-volume": {"modelPath": "/models/avatar.imx", "modelVolume": {"image": {"reference": "registry.invalid/models:1", "pullPolicy": "IfNotPresent"}}},
    "runner-knobs": {"modelPath": "/models/avatar.imx", "maxDuration": 60, "runner": {"gpus": 2, "nodeSelector": {"nvidia.com/gpu.present": "true"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}},
}


@pytest.mark.scenario("security")
def test_runner_and_operator_pods_pass_restricted(stack: Stack, kube: Kube, fake: FakeProc, evidence: Evidence, sec_operator: tuple[OperatorProc, Namespaces], scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    op, spaces = sec_operator
    ns = spaces.create("psa")
    with timed(sc):
        # The namespace enforces: a privileged pod is refused (the check below means something).
        bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "baseline-only", "namespace": ns}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
        proc = stack.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
        sc.check("namespace_enforces_restricted", proc.returncode != 0 and "PodSecurity" in proc.stderr, proc.stderr[:300])
        # Runner pods as the operator builds them, for each kind of spec, server-side dry run.
        ref = names.SessionRef(name="variant", namespace=ns, uid="00000000-0000-0000-0000-000000000000")
        for variant, extra in RUNNER_VARIANTS.items():
            spec = spec_mod.parse_spec({"spec": {"room": "r", "agentIdentity": "a", **extra}})
            pod = manifests.runner_pod(ref, spec, livekit_url=stack.livekit_url, bithuman_secret="bithuman-credentials", defaults=manifests.RunnerDefaults(image="registry.invalid/runner:1", renderer="bithuman", cpu="10m", memory="32Mi"))
            pod["metadata"].pop("ownerReferences", None)
            pod["metadata"]["name"] = f"runner-{variant}"
            proc = stack.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
            sc.op("dry_run_runner_pod")
            sc.check("runner_pod_admitted_by_restricted", proc.returncode == 0 and "PodSecurity" not in proc.stderr, f"{variant}: {proc.stderr[:400]}")
            evidence.text("pod", json.dumps(pod))
        # A runner pod the running operator creates.
        _session(kube, evidence, ns, "psa-real", {"room": f"{ns}-psa-real", "agentIdentity": "agent-psa", "model": "essence", "modelPath": "/models/avatar.imx"})
        sc.op("create_local_session")
        try:
            wait_until("the operator's runner pod", lambda: any(p["metadata"]["name"] == "psa-real-runner" for p in kube.pods(ns)), 60)
            created = True
        except AssertionError:
            created = False
        denied = [ln[:300] for ln in op.logs().splitlines() if "violates PodSecurity" in ln]
        sc.check("runner_pod_admitted_by_restricted", created and not denied, f"created={created}; {denied[:3]}")
        # The operator's own pod, from the chart's Deployment.
        objs = render_chart(stack, f"{PREFIX}psa", ns, {"watchNamespaces": [ns]})
        dep = next(o for o in objs if o["kind"] == "Deployment")
        stack.kubectl("apply", "-f", "-", input=json.dumps(next(o for o in objs if o["kind"] == "ServiceAccount")))
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "operator-dry-run", "namespace": ns}, "spec": dep["spec"]["template"]["spec"]}
        proc = stack.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
        sc.op("dry_run_operator_pod")
        sc.check("operator_pod_admitted_by_restricted", proc.returncode == 0 and "PodSecurity" not in proc.stderr, proc.stderr[:400])
        evidence.text("pod", json.dumps(pod))
    sc.assert_clean(since)


# --- a namespace the operator does not watch ------------------------------------------


@pytest.mark.scenario("security")
def test_unwatched_namespace_is_left_alone(stack: Stack, kube: Kube, fake: FakeProc, evidence: Evidence, sec_operator: tuple[OperatorProc, Namespaces], scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    op, spaces = sec_operator
    watched = spaces.create("watched")
    # Outside the operator's `--namespace` glob, with credentials and everything a session needs.
    outside = Namespaces(stack, kube, evidence, "outside")
    other = outside.create("a")
    try:
        with timed(sc):
            specs = {
                "local": {"model": "essence", "modelPath": "/models/avatar.imx"},
                "cloud": {"avatarId": "A-outside", "connection": {"maxRetry": 1, "retryInterval": 0, "timeout": 2}},
            }
            for kind, extra in specs.items():
                _session(kube, evidence, other, f"out-{kind}", {"room": f"{other}-{kind}", "agentIdentity": "agent-x", **extra})
                _session(kube, evidence, watched, f"in-{kind}", {"room": f"{watched}-{kind}", "agentIdentity": "agent-x", **extra})
                sc.op("create_session", 2)
            wait_until("the watched sessions handled", lambda: all(phase(kube.session(watched, f"in-{k}")) == "Starting" for k in specs), 60)
            time.sleep(5)
            for kind in specs:
                obj = kube.session(other, f"out-{kind}") or {}
                meta = obj.get("metadata") or {}
                touched = [a for a in (meta.get("annotations") or {}) if a.startswith(GROUP) or "kopf" in a]
                sc.check("unwatched_session_has_no_status", not obj.get("status"), f"out-{kind}: {obj.get('status')}")
                sc.check("unwatched_session_has_no_finalizer", not meta.get("finalizers"), f"out-{kind}: {meta.get('finalizers')}")
                sc.check("unwatched_session_has_no_operator_annotation", not touched, f"out-{kind}: {touched}")
            sc.check("nothing_created_in_unwatched_namespace", not kube.pods(other) and not [s for s in kube.secrets(other) if s["metadata"]["name"].endswith("-token")], str([p["metadata"]["name"] for p in kube.pods(other)]))
            sc.check("no_event_in_unwatched_namespace", not kube.events(other), str([(e.get("reason"), e.get("message")) for e in kube.events(other)][:5]))
            rooms = {f"{other}-{k}" for k in specs}
            sent = [r for r in fake.requests() if ((r.get("json") or r.get("form") or {}).get("room_name") in rooms) or ((r.get("json") or {}).get("room_name") in rooms)]
            sc.check("no_cloud_request_for_unwatched_session", not sent, f"{len(sent)} request(s)")
            # Deleting it is not blocked by anyone.
            for kind in specs:
                kube.delete_session(other, f"out-{kind}")
                sc.op("delete_session")
            try:
                gone = bool(wait_until("deleted", lambda: not kube.sessions(other), 20))
            except AssertionError:
                gone = False
            sc.check("unwatched_session_deletes_at_once", gone, str([o["metadata"] for o in kube.sessions(other)]))
    finally:
        outside.teardown(operator_running=False)
    sc.assert_clean(since)


# --- tokens and the secret scan (last: they read what every scenario captured) ----------


@pytest.mark.scenario("security")
def test_every_minted_token_is_scoped(stack: Stack, kube: Kube, fake: FakeProc, evidence: Evidence, sec_operator: tuple[OperatorProc, Namespaces], scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    _, spaces = sec_operator
    for ns in spaces.names:
        spaces.capture(ns)
    with timed(sc):
        requests = fake.requests()
        evidence.fake_requests(requests)
        # Which credential the session requests carried (bitHuman's API authenticates
        # them; design.md §3 does not cover this header, so it is reported, not judged).
        carried: collections.Counter[str] = collections.Counter()
        for r in evidence.requests:
            header = str((r.get("headers") or {}).get("api-secret") or "")
            carried["account secret" if header == BITHUMAN_SECRET else "runtime token (bhrt_)" if header.startswith("bhrt_") else "other" if header else "none (form/Bearer)"] += 1
        sc.note("session_request_api_secret_header", dict(carried))
        seen: set[str] = set()
        unmatched = 0
        kinds: collections.Counter[str] = collections.Counter()
        for sample in evidence.tokens:
            if sample.token in seen:
                continue
            seen.add(sample.token)
            sc.op("token_decoded")
            try:
                claims, parsed = decode_token(sample.token, stack.livekit_api_key, stack.livekit_api_secret)
            except Exception as e:  # noqa: BLE001 - a token we cannot verify is itself a finding
                sc.check("token_verifies", False, f"{sample.source}: {type(e).__name__}: {e}")
                continue
            sc.check("token_verifies", True)
            room = sample.room or str((claims.get("video") or {}).get("room"))
            expect = evidence.expectation(sample, room)
            if expect is None:
                unmatched += 1  # a session created outside the suite's wrappers, or a room used twice
                continue
            sc.check("token_for_its_session_room", expect["room"] == room, f"{sample.source}: token for room {room!r}, session's room {expect['room']!r}")
            kinds[expect["mode"]] += 1
            problems = token_problems(claims, room=room, agent=expect["agent"], max_duration=expect["maxDuration"] if isinstance(expect["maxDuration"], (int, float)) and expect["maxDuration"] > 0 else None, ttl_margin=TTL_MARGIN_S, ttl_default=TTL_DEFAULT_S, secrets=[BITHUMAN_SECRET, BITHUMAN_TOKEN, stack.livekit_api_secret])
            sc.check("token_scoped_kind_grants_ttl_attributes", not problems, f"{sample.source} (room {room}): {problems}")
            # The same, as livekit-api's TokenVerifier reads it.
            video = parsed.video
            sc.check(
                "token_verifier_reads_agent_room_join_only",
                parsed.kind == "agent" and video is not None and video.room_join is True and video.room == room
                and not any((video.room_admin, video.room_create, video.room_list, video.room_record, video.recorder, video.agent)),
                f"{sample.source}: kind {parsed.kind!r}, video {video}",
            )
            attributes = claims.get("attributes") or {}
            evidence.text("participant attributes (token)", json.dumps(attributes))
            if "api_secret" in attributes:
                sc.check("api_secret_attribute_is_minted_runtime_token", str(attributes["api_secret"]).startswith("bhrt_") and attributes["api_secret"] not in (BITHUMAN_SECRET, BITHUMAN_TOKEN), f"{sample.source}")
        sc.note("tokens_checked_by_mode", dict(kinds))
        sc.note("tokens_not_matched_to_a_session", unmatched)
        sc.check("tokens_were_captured", len(seen) > 0, "no token was captured: run the other scenarios first")
    sc.assert_clean(since)


@pytest.mark.scenario("security")
def test_no_account_secret_in_anything_captured(stack: Stack, evidence: Evidence, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    secrets = {"bitHuman account secret": BITHUMAN_SECRET, "bitHuman API token": BITHUMAN_TOKEN, "LiveKit API secret": stack.livekit_api_secret}
    needles = dict(secrets)
    for label, value in secrets.items():
        needles[f"{label} (base64)"] = base64.b64encode(value.encode()).decode().rstrip("=")
    scanned: collections.Counter[str] = collections.Counter()
    volume: collections.Counter[str] = collections.Counter()

    def scan(kind: str, text: str) -> None:
        scanned[kind] += 1
        volume[kind] += len(text)
        for label, needle in needles.items():
            if needle and needle in text:
                i = text.index(needle)
                context = (text[max(0, i - 80) : i] + "<SECRET>" + text[i + len(needle) : i + len(needle) + 40]).replace("\n", " ")
                sc.check("no_account_secret_in_output", False, f"{label} in {kind}: ...{context}...")
                return
        sc.check("no_account_secret_in_output", True)

    with timed(sc):
        for kind, text in evidence.texts:
            scan(kind, text)
        for kind, path in evidence.files:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for n, line in enumerate(text.splitlines()):
                scan(f"{kind} line", line)
        for sample in {s.token: s for s in evidence.tokens}.values():
            scan("token", sample.token)
            try:
                payload = sample.token.split(".")[1]
                scan("token payload", base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode(errors="replace"))
            except (IndexError, ValueError):
                pass
        sc.note("scanned_items_by_kind", dict(sorted(scanned.items())))
        sc.note("scanned_bytes_by_kind", dict(sorted(volume.items())))
        sc.op("items_scanned", sum(scanned.values()))
        for kind in ("status", "event", "pod", "token", "operator log line"):
            sc.check("every_kind_of_output_was_captured", scanned.get(kind, 0) > 0, f"nothing of kind {kind!r} was captured")
    sc.assert_clean(since)
