"""Scenario 1: the operator dies (SIGKILL) at random moments under a churn of sessions,
and two replicas with kopf peering.

Afterwards nothing is lost, doubled, orphaned or stuck: every session in the
phase its spec and credentials call for, one runner pod per live local
session, one accepted cloud request per cloud session (the fake counts one per
Idempotency-Key), no pod or Secret owned by a deleted session, no deleted
session held by its finalizer.
"""

from __future__ import annotations

import calendar
import collections
import json
import random
import threading
import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.conftest import Stack
from tests.harness import finalizer_policy
from tests.reliability.support import (
    CHART,
    PREFIX,
    Evidence,
    FakeProc,
    Kube,
    Namespaces,
    OperatorProc,
    Scenario,
    condition,
    phase,
    render_chart,
    sa_kubeconfig,
    timed,
    tracebacks,
    wait_until,
)

pytestmark = pytest.mark.stack

SESSIONS = 200
KILLS = 12
IMMUTABLE_MSG = "cannot change once the session exists"
CLOUD_CONN = {"maxRetry": 3, "retryInterval": 0.5, "timeout": 5}


def make_specs(rng: random.Random, namespaces: list[str], nocreds: str) -> list[dict[str, Any]]:
    """The churn's sessions: (namespace, name, kind, spec, maxDuration), mixed modes."""
    plan = (
        ["local"] * 80 + ["local-max"] * 14 + ["cloud-id"] * 46 + ["cloud-img"] * 20 + ["cloud-max"] * 10
        + ["nocreds-local"] * 15 + ["nocreds-cloud"] * 15
    )
    assert len(plan) == SESSIONS
    rng.shuffle(plan)
    out = []
    for i, kind in enumerate(plan):
        ns = nocreds if kind.startswith("nocreds") else namespaces[i % len(namespaces)]
        name = f"s{i:03d}-{kind.replace('nocreds-', 'nc-')}"
        spec: dict[str, Any] = {"room": f"{ns}-{name}", "agentIdentity": f"agent-{i}"}
        if kind in ("local", "local-max", "nocreds-local"):
            spec.update({"model": "essence", "modelPath": "/models/avatar.imx"})
        elif kind in ("cloud-id", "cloud-max", "nocreds-cloud"):
            spec.update({"avatarId": f"A{i:05d}", "connection": dict(CLOUD_CONN)})
        else:
            spec.update({"avatarImage": "https://images.example.invalid/avatar.png", "connection": dict(CLOUD_CONN)})
        if kind.endswith("-max"):
            spec["maxDuration"] = rng.randint(15, 30)
        out.append({"ns": ns, "name": name, "kind": kind, "spec": spec, "mode": "local" if "local" in kind else "cloud"})
    return out


class Churn:
    """Creates, deletes and edits sessions on a schedule, in one thread."""

    def __init__(self, kube: Kube, sc: Scenario, evidence: Evidence, sessions: list[dict[str, Any]], rng: random.Random) -> None:
        self.kube, self.sc, self.evidence, self.sessions, self.rng = kube, sc, evidence, sessions, rng
        self.created: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted: dict[tuple[str, str], dict[str, Any]] = {}
        self.errors: list[str] = []
        self.done = threading.Event()
        self.edit_results: list[tuple[str, bool, str]] = []

    def schedule(self) -> list[tuple[float, str, Any]]:
        ops: list[tuple[float, str, Any]] = []
        for i, s in enumerate(self.sessions):
            t = i * 0.2
            ops.append((t, "create", s))
            if self.rng.random() < 0.25:
                ops.append((t + self.rng.uniform(0.0, 15.0), "delete", s))
        end = len(self.sessions) * 0.2
        for _ in range(40):
            ops.append((self.rng.uniform(2.0, end), "refused-edit", None))
        for _ in range(20):
            ops.append((self.rng.uniform(2.0, end), "allowed-edit", None))
        return sorted(ops, key=lambda o: o[0])

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            for t, kind, arg in self.schedule():
                delay = t0 + t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                try:
                    getattr(self, kind.replace("-", "_"))(arg)
                except Exception as e:  # noqa: BLE001 - counted, and the test fails on it
                    self.errors.append(f"{kind}: {type(e).__name__}: {e}"[:500])
        finally:
            self.done.set()

    def create(self, s: dict[str, Any]) -> None:
        obj = self.kube.create_session(s["ns"], s["name"], s["spec"])
        s["uid"] = obj["metadata"]["uid"]
        self.created[(s["ns"], s["name"])] = s
        self.evidence.session(s["spec"])
        self.sc.op(f"create_{s['mode']}")

    def delete(self, s: dict[str, Any]) -> None:
        if self.kube.delete_session(s["ns"], s["name"]):
            self.deleted[(s["ns"], s["name"])] = s
            self.sc.op("delete")

    def _live(self, mode: str | None = None) -> dict[str, Any] | None:
        live = [s for k, s in self.created.items() if k not in self.deleted and (mode is None or s["mode"] == mode)]
        return self.rng.choice(live) if live else None

    def refused_edit(self, _: Any) -> None:
        s = self._live()
        if s is None:
            return
        field = self.rng.choice(["room", "agentIdentity"] + (["modelPath", "model"] if s["mode"] == "local" else ["avatarId" if "avatarId" in s["spec"] else "avatarImage"]))
        value: Any = {"room": f"{s['spec']['room']}-moved", "agentIdentity": "someone-else", "modelPath": "/models/other.imx", "model": "essence-2", "avatarId": "B00000", "avatarImage": "https://images.example.invalid/other.png"}[field]
        self.sc.op("edit_immutable_field")
        try:
            self.kube.patch_spec(s["ns"], s["name"], {field: value})
        except ApiException as e:
            if e.status == 404:  # deleted meanwhile by its finalizer run
                return
            body = e.body.decode() if isinstance(e.body, bytes) else str(e.body)
            ok = e.status == 422 and IMMUTABLE_MSG in body and f"spec.{field}" in body
            self.sc.check("immutable_field_edit_refused_by_apiserver", ok, f"{s['ns']}/{s['name']} spec.{field}: HTTP {e.status} {body[:300]}")
            return
        self.sc.check("immutable_field_edit_refused_by_apiserver", False, f"{s['ns']}/{s['name']}: changing spec.{field} was accepted")

    def allowed_edit(self, _: Any) -> None:
        s = self._live("cloud")
        if s is None:
            return
        self.sc.op("edit_connection")
        try:
            self.kube.patch_spec(s["ns"], s["name"], {"connection": {"retryInterval": round(self.rng.uniform(0.2, 1.0), 2)}})
        except ApiException as e:
            if e.status == 404:
                return
            self.sc.check("mutable_field_edit_accepted", False, f"{s['ns']}/{s['name']}: spec.connection edit refused: HTTP {e.status}")
            return
        self.sc.check("mutable_field_edit_accepted", True)


class Tally:
    """Per invariant: how many subjects were checked, and what violated it."""

    def __init__(self) -> None:
        self.checked: collections.Counter[str] = collections.Counter()
        self.problems: dict[str, list[str]] = collections.defaultdict(list)

    def check(self, invariant: str, ok: bool, detail: str) -> None:
        self.checked[invariant] += 1
        if not ok:
            self.problems[invariant].append(detail)

    @property
    def clean(self) -> bool:
        return not any(self.problems.values())

    def record(self, sc: Scenario) -> None:
        for inv, n in sorted(self.checked.items()):
            bad = self.problems.get(inv, [])
            for detail in bad:
                sc.check(inv, False, detail)
            for _ in range(n - len(bad)):
                sc.check(inv, True)


def evaluate(kube: Kube, fake: FakeProc, churn: Churn, namespaces: list[str]) -> Tally:
    """Every invariant of the churn, on the cluster and the fake API as they are now."""
    t = Tally()
    live = {(ns, o["metadata"]["name"]): o for ns in namespaces for o in kube.sessions(ns)}
    pods = [p for ns in namespaces for p in kube.pods(ns)]
    secrets = [s for ns in namespaces for s in kube.secrets(ns)]
    accepted = collections.Counter(s["room_name"] for s in fake.sessions())
    live_uids = {o["metadata"]["uid"] for o in live.values()}

    def owned(objs: list[dict[str, Any]], uid: str) -> list[str]:
        return [o["metadata"]["name"] for o in objs if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]

    now = time.time()
    for key, s in churn.created.items():
        name, room, kind = f"{key[0]}/{key[1]}", s["spec"]["room"], s["kind"]
        if key in churn.deleted:
            meta = (live.get(key) or {}).get("metadata") or {}
            t.check("deleted_session_released_by_finalizer", key not in live, f"{name} still exists (deletionTimestamp {meta.get('deletionTimestamp')}, finalizers {meta.get('finalizers')})")
            leftovers = owned(pods, s["uid"]) + owned(secrets, s["uid"])
            t.check("no_object_owned_by_deleted_session", not leftovers, f"{name}: {leftovers}")
            if s["mode"] == "cloud":
                t.check("at_most_one_cloud_session_per_deleted_session", accepted.get(room, 0) <= 1, f"{name}: {accepted.get(room, 0)} accepted")
            continue
        obj = live.get(key)
        t.check("live_session_exists", obj is not None, f"{name} vanished")
        if obj is None:
            continue
        st = obj.get("status") or {}
        ph = st.get("phase")
        pod_names, secret_names = owned(pods, s["uid"]), owned(secrets, s["uid"])
        if kind.startswith("nocreds"):
            c = condition(obj, "CredentialsReady")
            ok = ph == "Pending" and c.get("status") == "False" and c.get("reason") == "SecretNotFound" and "bithuman-credentials" in c.get("message", "")
            t.check("right_phase", ok, f"{name}: want Pending/SecretNotFound, have {ph} {c}")
            t.check("nothing_started_without_credentials", not (pod_names or secret_names or accepted.get(room)), f"{name}: pods {pod_names} secrets {secret_names} cloud {accepted.get(room)}")
            continue
        if kind.endswith("-max"):
            due = "startTime" in st and now > _epoch(st["startTime"]) + s["spec"]["maxDuration"] + 2
            ready = condition(obj, "Reconciling")  # a Succeeded session says how it ended there
            ok = due and ph == "Succeeded" and ready.get("reason") == "MaxDurationReached"
            t.check("right_phase", ok, f"{name}: want Succeeded/MaxDurationReached{'' if due else ' (not yet due)'}, have {ph} {ready.get('reason')}")
            if s["mode"] == "local":
                t.check("ended_local_session_owns_nothing", not (pod_names or secret_names), f"{name}: pods {pod_names} secrets {secret_names}")
        elif s["mode"] == "local":
            c = condition(obj, "RunnerScheduled")
            t.check("right_phase", ph == "Starting" and c.get("status") == "True", f"{name}: want Starting/RunnerScheduled, have {ph} {c.get('reason')}")
            ok = pod_names == [f"{key[1]}-runner"] and secret_names == [f"{key[1]}-token"] and st.get("runnerPod") == f"{key[1]}-runner"
            t.check("one_runner_pod_per_live_local_session", ok, f"{name}: pods {pod_names}, token secrets {secret_names}, status.runnerPod {st.get('runnerPod')}")
        else:
            c = condition(obj, "CloudRequestAccepted")
            t.check("right_phase", ph == "Starting" and c.get("status") == "True", f"{name}: want Starting/CloudRequestAccepted, have {ph} {c.get('reason')}: {c.get('message')}")
        if s["mode"] == "cloud":
            t.check("one_accepted_cloud_request_per_cloud_session", accepted.get(room, 0) == 1, f"{name}: {accepted.get(room, 0)} accepted by the API")
            t.check("cloud_session_owns_no_pod", not pod_names, f"{name}: {pod_names}")
    # Anything in the namespaces owned by a session that is not there.
    for o in pods + secrets:
        gone = [r.get("name") for r in o["metadata"].get("ownerReferences") or [] if r.get("kind") == "AvatarSession" and r.get("uid") not in live_uids]
        t.check("no_orphan_pod_or_secret", not gone, f"{o['metadata']['namespace']}/{o['metadata']['name']} owned by missing {gone}")
    return t


def _epoch(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


@pytest.mark.scenario("operator_crash", description="SIGKILL of the operator at random moments under a churn of 200 mixed sessions (creates, deletes, CEL-refused and allowed spec edits), then convergence and cleanup")
def test_operator_sigkill_under_churn(stack: Stack, kube: Kube, crd: None, fake: FakeProc, evidence: Evidence, artifacts: Any, scenario: Scenario) -> None:
    sc = scenario
    rng = random.Random(int(time.time()))
    sc.note("seed", rng.random())
    spaces = Namespaces(stack, kube, evidence, "crash")
    namespaces = [spaces.create(x) for x in ("a", "b", "c")]
    nocreds = spaces.create("nocreds", bithuman=False)
    all_ns = namespaces + [nocreds]
    # Two namespaces get the chart's finalizer policy (the finalizer at admission), the others
    # kopf's patch: both ways of holding a session are killed under.
    finalizer_policy.install(stack, namespaces[:2])
    sc.note("finalizer_at_admission_in", namespaces[:2])
    log = artifacts / "operator-crash.log"
    evidence.file("operator log", log)
    op = OperatorProc(stack, fake, log, [spaces.glob])
    sessions = make_specs(rng, namespaces, nocreds)
    churn = Churn(kube, sc, evidence, sessions, rng)
    with timed(sc):
        op.start()
        worker = threading.Thread(target=churn.run, name="churn", daemon=True)
        worker.start()
        t0 = time.monotonic()
        kill_times = []
        # Kill at random moments until the churn is over and at least KILLS happened.
        while (op.kills < KILLS or not churn.done.is_set()) and time.monotonic() - t0 < 240:
            time.sleep(rng.uniform(2.0, 7.0))
            op.kill()
            kill_times.append(round(time.monotonic() - t0, 1))
            sc.fault("operator_sigkill")
            time.sleep(rng.uniform(0.0, 1.5))
            op.start()
        worker.join(60)
        sc.note("kill_times_s", kill_times)
        sc.note("churn_seconds", round(time.monotonic() - t0, 1))
        sc.note("sessions_created", len(churn.created))
        sc.note("sessions_deleted", len(churn.deleted))
        assert not churn.errors, churn.errors[:10]
        assert op.kills >= KILLS and len(churn.created) == SESSIONS

        # Convergence: the last operator finishes the work.
        t1 = time.monotonic()
        try:
            wait_until("convergence after the last restart", lambda: evaluate(kube, fake, churn, all_ns).clean, 180, 3.0)
        except AssertionError:
            pass
        sc.note("convergence_seconds", round(time.monotonic() - t1, 1))
        evaluate(kube, fake, churn, all_ns).record(sc)
        fake_requests = fake.requests()
        evidence.fake_requests(fake_requests)
        rooms = {s["spec"]["room"] for s in sessions}
        mine = [r for r in fake_requests if ((r.get("json") or r.get("form") or {}).get("room_name") in rooms)]
        replays = sum(s.get("replays", 0) for s in fake.sessions() if s["room_name"] in rooms)
        sc.note("cloud_requests_sent", sum(r["route"] == "session" for r in mine))
        sc.note("cloud_requests_replayed_by_idempotency_key", replays)
        sc.op("operator_start", op.starts)

        # Cleanup at scale: every remaining session deleted at once, each let go by its finalizer.
        for ns in all_ns:
            spaces.capture(ns)
        remaining = [(ns, o["metadata"]["name"]) for ns in all_ns for o in kube.sessions(ns)]
        t2 = time.monotonic()
        for ns, name in remaining:
            kube.delete_session(ns, name)
            sc.op("delete")
        try:
            wait_until("every session released", lambda: not any(kube.sessions(ns) for ns in all_ns), 120, 2.0)
        except AssertionError:
            pass
        left = [f"{ns}/{o['metadata']['name']} finalizers={o['metadata'].get('finalizers')}" for ns in all_ns for o in kube.sessions(ns)]
        sc.note("cleanup_seconds", round(time.monotonic() - t2, 1))
        for ns, name in remaining:
            stuck = [x for x in left if x.startswith(f"{ns}/{name} ")]
            sc.check("deleted_session_released_by_finalizer", not stuck, "; ".join(stuck))
        try:
            wait_until("owned objects gone", lambda: not any(o["metadata"].get("ownerReferences") for ns in all_ns for o in kube.pods(ns) + kube.secrets(ns)), 60, 2.0)
        except AssertionError:
            pass
        leftovers = [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for ns in all_ns for o in kube.pods(ns) + kube.secrets(ns) if o["metadata"].get("ownerReferences")]
        sc.check("no_object_left_after_cleanup", not leftovers, str(leftovers[:20]))
        sc.check("operator_alive_at_end", op.alive(), "the operator process exited")
        tb = tracebacks(op.logs())
        sc.note("operator_log_tracebacks", collections.Counter(tb).most_common(10))
        op.stop()
        spaces.teardown(operator_running=False)
        finalizer_policy.remove(stack)
    sc.assert_clean()


@pytest.mark.scenario("operator_peering", description="two operator replicas with kopf peering, run with the Helm chart's RBAC, KopfPeering and arguments (--peering, random priorities): only one acts, the other takes over when the active one is SIGKILLed")
def test_two_replicas_with_peering(stack: Stack, kube: Kube, crd: None, fake: FakeProc, evidence: Evidence, artifacts: Any, scenario: Scenario) -> None:
    sc = scenario
    for f in ("kopfpeerings.kopf.dev.yaml", "clusterkopfpeerings.kopf.dev.yaml"):
        path = CHART / "crds" / f
        if not path.exists():
            pytest.fail(f"{path} is missing: the chart's kopf peering CRDs are needed for this test")
        stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    stack.kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev")
    spaces = Namespaces(stack, kube, evidence, "peer")
    system = spaces.create("system", livekit=False, bithuman=False)
    ns = spaces.create("a")
    release = f"{PREFIX}rel"
    objs = render_chart(stack, release, system, {"replicaCount": 2, "watchNamespaces": [ns]})
    # What the chart installs besides the Deployment: ServiceAccount, RBAC, KopfPeering.
    infra = [o for o in objs if o["kind"] not in ("Deployment", "Service", "ServiceMonitor")]
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    peering = next(a.split("=", 1)[1] for a in args if a.startswith("--peering="))
    served = [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")]
    assert served == [ns], args
    assert any(o["kind"] == "KopfPeering" and o["metadata"]["namespace"] == ns for o in infra), "the chart renders no KopfPeering for the served namespace"
    stack.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": infra}))
    sa = next(o for o in infra if o["kind"] == "ServiceAccount")["metadata"]["name"]
    kubeconfig = sa_kubeconfig(stack, system, sa, artifacts / "peer-sa.kubeconfig")
    logs = {r: artifacts / f"operator-peer-{r}.log" for r in ("a", "b")}
    ops = {
        r: OperatorProc(stack, fake, logs[r], served, peering=peering, identity=f"{release}-{r}", kubeconfig=str(kubeconfig),
                        # Debug logging: kopf then logs every object it handles (kopf.objects), which tells who acted.
                        extra_args=("--verbose",))
        for r in ("a", "b")
    }
    for r in ops:
        evidence.file("operator log", logs[r])

    def spec(i: int, name: str) -> dict[str, Any]:
        base = {"room": f"{ns}-{name}", "agentIdentity": f"agent-{i}"}
        if "local" in name:
            return {**base, "model": "essence", "modelPath": "/models/avatar.imx"}
        return {**base, "avatarId": f"P{i:04d}", "connection": dict(CLOUD_CONN)}

    def create(i: int, name: str) -> None:
        kube.create_session(ns, name, spec(i, name))
        evidence.session(spec(i, name))
        sc.op("create")

    def acted(r: str, since: int = 0) -> int:
        """Lines of replica r's log about objects it handled (kopf's per-object logger)."""
        return sum(" kopf.objects " in line for line in ops[r].logs()[since:].splitlines())

    def all_starting(names: list[str]) -> bool:
        return all(phase(kube.session(ns, n)) == "Starting" for n in names)

    first = [f"p{i}-{m}" for i, m in enumerate(["local", "cloud", "local", "cloud"])]
    later = ["p4-local", "p5-cloud"]
    try:
        with timed(sc):
            for r in ops:
                ops[r].start()
                sc.op("replica_start")
            for r in ops:
                wait_until(f"replica {r} up", lambda r=r: "Initial authentication has finished" in ops[r].logs(), 60)
            time.sleep(3)
            for i, name in enumerate(first):
                create(i, name)
            try:
                wait_until("the sessions handled", lambda: all_starting(first), 60, 1.0)
            except AssertionError:
                pass
            time.sleep(3)
            acting = [r for r in ops if acted(r) > 0]
            sc.note("acting_replicas_while_both_alive", acting)
            sc.note("peering_log_lines", {r: [ln[:200] for ln in ops[r].logs().splitlines() if "kopf._core.engines.p" in ln and ("Pausing" in ln or "Resuming" in ln)][:4] for r in ops})
            sc.check("exactly_one_replica_acts_while_both_alive", len(acting) == 1 and all_starting(first),
                     f"acting replicas {acting}; phases {[phase(kube.session(ns, n)) for n in first]}")
            victim = acting[0] if acting else "a"
            survivor = "b" if victim == "a" else "a"
            mark = len(ops[survivor].logs())
            ops[victim].kill()
            sc.fault("active_replica_sigkill")
            t0 = time.monotonic()
            # New work and a deletion, which only the survivor can do.
            for i, name in enumerate(later, start=len(first)):
                create(i, name)
            kube.delete_session(ns, first[0])
            sc.op("delete")
            try:
                wait_until("the other replica takes over", lambda: all_starting(later) and kube.session(ns, first[0]) is None, 150, 2.0)
                took: float | None = round(time.monotonic() - t0, 1)
            except AssertionError:
                took = None
            sc.note("takeover_seconds", took)
            sc.note("kopf_peering_lifetime_s", 60)
            sc.check("survivor_takes_over", took is not None and acted(survivor, mark) > 0,
                     f"after SIGKILL of replica {victim}, replica {survivor} did not start the new sessions and release the deleted one in 150s")
            live = first[1:] + later
            counted = collections.Counter(s["room_name"] for s in fake.sessions())
            pods = kube.pods(ns)
            for n in live:
                if "cloud" in n:
                    sc.check("one_accepted_cloud_request_per_cloud_session", counted.get(f"{ns}-{n}", 0) == 1, f"{n}: {counted.get(f'{ns}-{n}', 0)}")
                else:
                    mine = [p["metadata"]["name"] for p in pods if p["metadata"]["name"].startswith(f"{n}-")]
                    sc.check("one_runner_pod_per_live_local_session", mine == [f"{n}-runner"], f"{n}: {mine}")
            sc.check("deleted_session_owns_nothing", not [p for p in pods if p["metadata"]["name"].startswith(f"{first[0]}-")], "runner pod of the deleted session left")
            denied = [ln[:300] for r in ops for ln in ops[r].logs().splitlines() if "forbidden" in ln.lower() or " 403" in ln]
            sc.check("chart_rbac_suffices", not denied, "; ".join(denied[:5]))
            evidence.fake_requests(fake.requests())
            spaces.teardown(operator_running=ops[survivor].alive())
    finally:
        for r in ops:
            if ops[r].alive():
                ops[r].stop()
        spaces.teardown(operator_running=False)
        stack.kubectl("delete", "--ignore-not-found", "--wait=false", "clusterrole,clusterrolebinding", f"{release}-avatar-operator", check=False)
    sc.assert_clean()
