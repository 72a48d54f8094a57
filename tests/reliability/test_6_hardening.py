"""Scenario 6: hardening, one small scenario per failure an adversarial pass found.

Each runs on the real stack against an operator process of its own and ends
with the operator alive and no Python traceback in its log (the operator logs
some expected problems at WARNING/ERROR; only tracebacks count):

- secret_value_newline: credentials stored with a trailing newline are trimmed;
  a line break inside a value is refused naming the Secret and key, no loop.
- malformed_http_answer: a server whose answers aiohttp cannot parse costs
  exactly maxRetry attempts, then RetriesExhausted.
- bounded_numbers: maxDuration, connection.timeout, connection.maxRetry and a
  room over LiveKit's byte bound are refused by the API server.
- deadline_before_start: a session past maxDuration before it started (waiting
  for its Secret, or for a Retry-After) ends without a pod or a paid request.
- resume_finds_things_gone: a runner pod or token Secret deleted while the
  operator was down is noticed (pod: Failed) or made again (Secret).
- image_bomb: a 13000x13000 PNG of a few kB is refused from its header, the
  operator's memory stays flat.
- shared_avatar_identity: a second session for the same room and avatar
  identity waits (AvatarIdentityInUse) and never disturbs the first.
- livekit_credentials_refused: LiveKit's 401 is reported as such, naming the Secret.

To check that the scenarios prove their fixes, run the operator from another
tree: AVATAR_OPERATOR_PYTHONPATH is put first on the operator process's
PYTHONPATH (only the operator's; the tests import nothing from it) and
AVATAR_OPERATOR_CRD names the CRD file to apply for this file's tests (the
tree's own CRD is applied again afterwards).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import os
import pathlib
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psutil
import pytest
from kubernetes.client.exceptions import ApiException
from livekit import rtc

from tests.conftest import ROOT, Stack
from tests.reliability.support import (
    BITHUMAN_SECRET,
    Evidence,
    FakeProc,
    Kube,
    Namespaces,
    OperatorProc,
    Scenario,
    condition,
    decode_token,
    phase,
    room_participants,
    timed,
    tracebacks,
    wait_until,
)

pytestmark = pytest.mark.stack

OPERATOR_PYTHONPATH = os.environ.get("AVATAR_OPERATOR_PYTHONPATH", "")
OPERATOR_CRD = os.environ.get("AVATAR_OPERATOR_CRD", "")
CRD_PATH = ROOT / "crds" / "avatarsessions.avatar-operator.dev.yaml"

CONN = {"maxRetry": 3, "retryInterval": 0.5, "timeout": 5}
TERMINAL = ("Succeeded", "Failed")
PHASE_ORDER = {"Pending": 0, "Starting": 1, "Running": 2, "Succeeded": 3, "Failed": 3}


# --- helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator_crd(stack: Stack, crd: None) -> Iterator[None]:
    """The CRD of the operator under test (AVATAR_OPERATOR_CRD), the tree's own after the module."""
    if not OPERATOR_CRD:
        yield
        return
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", OPERATOR_CRD)
    stack.kubectl("wait", "--for=condition=Established", "-f", OPERATOR_CRD)
    try:
        yield
    finally:
        stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
        stack.kubectl("wait", "--for=condition=Established", "-f", str(CRD_PATH))


def poll(check: Callable[[], Any], timeout: float, interval: float = 0.3) -> Any:
    """check()'s first truthy value within `timeout`, else None (an error counts as falsy).
    Unlike wait_until it does not raise: the invariant that follows records the miss."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - the cluster may be busy; try again
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def requests_for(fake: FakeProc, room: str, route: str = "session") -> list[dict[str, Any]]:
    """The fake API's requests on `route` for `room` (mint and session bodies both name it)."""
    out = []
    for r in fake.requests():
        body = r.get("json") or r.get("form") or {}
        if r.get("route") == route and isinstance(body, dict) and body.get("room_name") == room:
            out.append(r)
    return out


def header(record: Mapping[str, Any], name: str) -> str | None:
    return next((str(v) for k, v in (record.get("headers") or {}).items() if k.lower() == name.lower()), None)


def refusal(e: ApiException) -> str:
    body = e.body.decode() if isinstance(e.body, bytes) else str(e.body or "")
    try:
        return str(json.loads(body).get("message", body))
    except ValueError:
        return body


def brief(obj: Mapping[str, Any] | None, *types: str) -> dict[str, Any]:
    """Phase, attempts and the named conditions of a session, for a violation's details."""
    st = (obj or {}).get("status") or {}
    return {"phase": st.get("phase"), "attempts": st.get("attempts"), **{t: {k: condition(obj, t).get(k) for k in ("status", "reason", "message")} for t in types}}


def cloud_spec(room: str, **extra: Any) -> dict[str, Any]:
    return {"room": room, "agentIdentity": "agent-1", "avatarId": "A-hardening", "connection": dict(CONN), **extra}


def local_spec(room: str, **extra: Any) -> dict[str, Any]:
    return {"room": room, "agentIdentity": "agent-1", "model": "essence", "modelPath": "/models/avatar.imx", **extra}


def terminal(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    obj = kube.session(ns, name)
    return obj if phase(obj) in TERMINAL else None


def cond_is(kube: Kube, ns: str, name: str, ctype: str, status: str, reason: str | None = None) -> dict[str, Any] | None:
    obj = kube.session(ns, name)
    c = condition(obj, ctype)
    return obj if c.get("status") == status and (reason is None or c.get("reason") == reason) else None


def pod_exists(kube: Kube, ns: str, name: str) -> bool:
    try:
        kube.core.read_namespaced_pod(name, ns, _request_timeout=10)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def owned(objs: list[dict[str, Any]], uid: str) -> list[str]:
    return [o["metadata"]["name"] for o in objs if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])]


class Sampler(threading.Thread):
    """Calls `sample()` every `interval` seconds until stopped; keeps (time, value) pairs."""

    def __init__(self, sample: Callable[[], Any], interval: float) -> None:
        super().__init__(daemon=True)
        self.sample, self.interval = sample, interval
        self.values: list[tuple[float, Any]] = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 300
        while not self.halt.is_set() and time.monotonic() < deadline:
            try:
                self.values.append((time.monotonic(), self.sample()))
            except Exception:  # noqa: BLE001 - a busy API server: the next sample
                self.errors += 1
            self.halt.wait(self.interval)

    def stop(self) -> list[tuple[float, Any]]:
        self.halt.set()
        self.join(5)
        return self.values


@contextlib.contextmanager
def rig(stack: Stack, kube: Kube, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, sc: Scenario, group: str) -> Iterator[tuple[Namespaces, OperatorProc]]:
    """The scenario's namespaces and an operator watching them (not yet started); torn down after."""
    spaces = Namespaces(stack, kube, evidence, group)
    log = artifacts / f"operator-hardening-{group}.log"
    evidence.file("operator log", log)
    op = OperatorProc(stack, fake, log, [spaces.glob], env={"PYTHONPATH": OPERATOR_PYTHONPATH} if OPERATOR_PYTHONPATH else None)
    fake.reset()
    try:
        with timed(sc):
            yield spaces, op
    finally:
        op.stop()
        spaces.teardown(operator_running=False)


def start(op: OperatorProc) -> None:
    op.start()
    wait_until("operator up", lambda: op.logs().count("Initial authentication has finished") >= op.starts, 60, 0.2)


def finish(sc: Scenario, op: OperatorProc, spaces: Namespaces, fake: FakeProc, evidence: Evidence) -> None:
    """What every scenario ends with: the operator alive, no traceback; then the namespaces go."""
    sc.check("operator_alive_at_end", op.alive(), "the operator process exited")
    tb = tracebacks(op.logs())
    sc.check("no_traceback_in_operator_log", not tb, str(collections.Counter(tb).most_common(5)))
    evidence.fake_requests(fake.requests())
    spaces.teardown(operator_running=op.alive(), wait_s=30)


# --- 1. a newline in a Secret's value -------------------------------------------


@pytest.mark.scenario("secret_value_newline", description="credentials stored with a trailing newline (as `echo secret | base64` gives) are trimmed; a line break inside a value is refused naming the Secret and key, with nothing sent")
def test_secret_value_newline(stack: Stack, kube: Kube, operator_crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    with rig(stack, kube, fake, evidence, artifacts, sc, "newline") as (spaces, op):
        trailing = spaces.create("trail", livekit=False, bithuman=False)
        kube.put_secret(trailing, "livekit-credentials", {"LIVEKIT_API_KEY": stack.livekit_api_key + "\n", "LIVEKIT_API_SECRET": stack.livekit_api_secret + "\n"})
        kube.put_secret(trailing, "bithuman-credentials", {"BITHUMAN_API_SECRET": BITHUMAN_SECRET + "\n"})
        inside = spaces.create("inside", bithuman=False)
        kube.put_secret(inside, "bithuman-credentials", {"BITHUMAN_API_SECRET": "ab\ncd"})
        stored = base64.b64decode(kube.core.read_namespaced_secret("bithuman-credentials", trailing).data["BITHUMAN_API_SECRET"])
        sc.check("stored_value_ends_in_newline", stored.endswith(b"\n"), repr(stored[-4:]))
        sc.fault("secret_values_with_trailing_newline", 3)
        sc.fault("secret_value_with_inner_newline")
        start(op)
        room_t, room_i = f"{trailing}-s", f"{inside}-s"
        kube.create_session(trailing, "s", cloud_spec(room_t))
        t_inside = time.monotonic()
        kube.create_session(inside, "s", cloud_spec(room_i))
        sc.op("create_cloud_session", 2)

        obj = poll(lambda: cond_is(kube, trailing, "s", "CloudRequestAccepted", "True") or terminal(kube, trailing, "s"), 30)
        sc.check("trailing_newline_session_accepted", condition(obj, "CloudRequestAccepted").get("status") == "True", str(brief(obj or kube.session(trailing, "s"), "CredentialsReady", "CloudRequestAccepted")))
        sessions = requests_for(fake, room_t)
        mints = requests_for(fake, room_t, "mint")
        sc.check("exactly_one_session_request", len(sessions) == 1, f"{len(sessions)} session requests")
        sc.check("mint_carries_trimmed_account_secret", len(mints) >= 1 and all(header(m, "api-secret") == BITHUMAN_SECRET for m in mints), f"{len(mints)} mints, api-secret headers {[repr((header(m, 'api-secret') or '')[-6:]) for m in mints]}")
        sc.check("session_request_secret_has_no_newline", bool(sessions) and all((h := header(r, "api-secret")) and h == h.strip() for r in sessions), str([repr((header(r, 'api-secret') or '')[-6:]) for r in sessions]))
        problem = "no session request"
        if sessions:
            token = str((sessions[0].get("json") or {}).get("livekit_token") or "")
            try:
                claims, _ = decode_token(token, stack.livekit_api_key, stack.livekit_api_secret)
                problem = "" if claims.get("iss") == stack.livekit_api_key else f"iss {claims.get('iss')!r}"
            except Exception as e:  # noqa: BLE001 - what the check is about
                problem = f"{type(e).__name__}: {e}"
        sc.check("livekit_token_signed_with_trimmed_key_and_secret", not problem, problem)

        # The value with a line break inside: refused, nothing sent, for 15 s.
        time.sleep(max(0.0, t_inside + 15 - time.monotonic()))
        obj = kube.session(inside, "s")
        c = condition(obj, "CredentialsReady")
        sc.check("inner_newline_session_pending", phase(obj) == "Pending", str(brief(obj, "CredentialsReady")))
        ok = c.get("status") == "False" and c.get("reason") == "SecretValueInvalid" and "bithuman-credentials" in c.get("message", "") and "BITHUMAN_API_SECRET" in c.get("message", "")
        sc.check("inner_newline_refused_naming_secret_and_key", ok, str(c))
        sent = requests_for(fake, room_i) + requests_for(fake, room_i, "mint")
        sc.check("inner_newline_nothing_sent_in_15s", not sent, f"{len(sent)} requests")
        sc.note("inner_newline_condition", c.get("message", "")[:200])
        finish(sc, op, spaces, fake, evidence)
    sc.assert_clean(since)


# --- 2. an answer aiohttp cannot parse ---------------------------------------------


class RawServer(threading.Thread):
    """A TCP server on 127.0.0.1 that reads each request and answers it with `answer`, then closes."""

    def __init__(self, answer: bytes) -> None:
        super().__init__(daemon=True)
        self.answer = answer
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.3)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self.halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 1 << 20:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip() or 0)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            conn.sendall(self.answer)

    def stop(self) -> None:
        self.halt.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        self.join(2)


MALFORMED = {
    "not-http": b"NOTHTTP garbage\r\n\r\n",
    "bad-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
    "long-header": b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 9000 + b"\r\n\r\n",
}


@pytest.mark.scenario("malformed_http_answer", description="a raw TCP server answers the session request with a status line that is not HTTP, a Content-Length that is not a number, or a 9000-byte header: maxRetry attempts, then RetriesExhausted, and nothing more")
def test_malformed_http_answer(stack: Stack, kube: Kube, operator_crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    servers = {kind: RawServer(answer) for kind, answer in MALFORMED.items()}
    for s in servers.values():
        s.start()
    try:
        with rig(stack, kube, fake, evidence, artifacts, sc, "malformed") as (spaces, op):
            ns = spaces.create("a")
            start(op)
            for kind, s in servers.items():
                spec = cloud_spec(f"{ns}-{kind}", bithuman={"apiUrl": f"http://127.0.0.1:{s.port}/launch"}, connection={"maxRetry": 2, "retryInterval": 0.3, "timeout": 2})
                kube.create_session(ns, kind, spec)
                sc.op("create_cloud_session")
                sc.fault(f"malformed_answer_{kind}")
            results: dict[str, Any] = {}
            for kind, s in servers.items():
                obj = poll(lambda kind=kind: terminal(kube, ns, kind), 25) or kube.session(ns, kind)
                c = condition(obj, "CloudRequestAccepted")
                st = (obj or {}).get("status") or {}
                res = {**brief(obj, "CloudRequestAccepted"), "connections": s.connections}
                results[kind] = res
                sc.check("ends_failed_retries_exhausted", st.get("phase") == "Failed" and c.get("reason") == "RetriesExhausted", f"{kind}: {res}")
                sc.check("attempts_in_status_is_max_retry", st.get("attempts") == 2, f"{kind}: {res}")
                sc.check("max_retry_connections_reach_the_server", s.connections == 2, f"{kind}: {res}")
            time.sleep(10)
            for kind, s in servers.items():
                results[kind]["connections_10s_later"] = s.connections
                sc.check("no_connection_after_the_end", s.connections == 2, f"{kind}: {s.connections} connections 10 s later")
            sc.note("cases", results)
            finish(sc, op, spaces, fake, evidence)
    finally:
        for s in servers.values():
            s.stop()
    sc.assert_clean(since)


# --- 3. numbers and names bounded at the API server ---------------------------------


@pytest.mark.scenario("bounded_numbers", description="maxDuration 1e12, connection.timeout 1e308, connection.maxRetry 1000 and a room of 100 emoji (400 bytes) are refused by the API server naming the field; nothing reaches the bitHuman API")
def test_bounded_numbers(stack: Stack, kube: Kube, operator_crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    with rig(stack, kube, fake, evidence, artifacts, sc, "bounds") as (spaces, op):
        ns = spaces.create("a")
        start(op)
        emoji = "\U0001f600" * 100
        cases: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
            ("max-duration", cloud_spec(f"{ns}-md", maxDuration=1e12), ("spec.maxDuration",)),
            ("timeout", cloud_spec(f"{ns}-to", connection={"maxRetry": 3, "retryInterval": 0.5, "timeout": 1e308}), ("spec.connection.timeout",)),
            ("max-retry", cloud_spec(f"{ns}-mr", connection={"maxRetry": 1000, "retryInterval": 0.5, "timeout": 5}), ("spec.connection.maxRetry",)),
        ]
        verdicts: dict[str, str] = {}
        for name, spec, words in cases:
            sc.op("create_out_of_bounds_session")
            sc.fault(f"out_of_bounds_{name}")
            try:
                kube.create_session(ns, name, spec)
                message, refused = "stored", False
            except ApiException as e:
                message, refused = f"HTTP {e.status}: {refusal(e)}", e.status in (400, 422)
            verdicts[name] = message[:300]
            sc.check("refused_at_once_by_apiserver", refused, f"{name}: {message[:300]}")
            sc.check("refusal_names_the_field", refused and all(w in message for w in words), f"{name}: want {words} in {message[:300]}")
        # The room through kubectl, as a user applies it.
        assert len(emoji) == 100 and len(emoji.encode()) == 400
        manifest = {"apiVersion": "avatar-operator.dev/v1alpha1", "kind": "AvatarSession", "metadata": {"name": "emoji-room"}, "spec": cloud_spec(emoji)}
        sc.op("kubectl_apply_emoji_room")
        sc.fault("room_over_256_bytes")
        proc = stack.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest), check=False)
        message = (proc.stdout + proc.stderr).strip()
        verdicts["emoji-room"] = message[:300]
        sc.check("refused_at_once_by_apiserver", proc.returncode != 0 and "invalid" in message.lower(), f"emoji-room: {message[:300]}")
        sc.check("refusal_names_the_field", proc.returncode != 0 and "spec.room" in message and "bytes" in message, f"emoji-room: want spec.room and bytes in {message[:300]}")
        sc.note("refusals", verdicts)
        time.sleep(5)  # a stored session would have been worked on by now
        stored = [o["metadata"]["name"] for o in kube.sessions(ns)]
        sc.check("nothing_stored", not stored, str(stored))
        reqs = fake.requests()
        counts = collections.Counter(r.get("route") for r in reqs)
        sc.check("nothing_reaches_the_fake", not reqs, f"{dict(counts)}")
        finish(sc, op, spaces, fake, evidence)
    sc.assert_clean(since)


# --- 4. maxDuration over before the avatar started --------------------------------


@pytest.mark.scenario("deadline_before_start", description="maxDuration runs out while a session waits for its bitHuman Secret (cloud, local) or for a 429's Retry-After: it ends MaxDurationReached with no runner pod, no mint and no further paid request")
def test_deadline_before_start(stack: Stack, kube: Kube, operator_crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    with rig(stack, kube, fake, evidence, artifacts, sc, "deadline") as (spaces, op):
        ns_a = spaces.create("cloud", bithuman=False)
        ns_b = spaces.create("local", bithuman=False)
        ns_c = spaces.create("retry")
        start(op)
        room_a, room_b, room_c = f"{ns_a}-s", f"{ns_b}-s", f"{ns_c}-s"
        # (c) first: the 429 is for its request; (a) and (b) send nothing before their Secret.
        fake.script([{"status": 429, "headers": {"Retry-After": "20"}, "body": {"error": {"message": "slow down"}}}, {}])
        sc.fault("http_429_retry_after_20s")
        t_c = time.monotonic()
        kube.create_session(ns_c, "s", cloud_spec(room_c, maxDuration=5))
        t0 = time.monotonic()
        kube.create_session(ns_a, "s", cloud_spec(room_a, maxDuration=4))
        kube.create_session(ns_b, "s", local_spec(room_b, maxDuration=4))
        sc.op("create_session_with_max_duration", 3)
        sc.fault("bithuman_secret_missing", 2)
        pods = Sampler(lambda: [p["metadata"]["name"] for p in kube.pods(ns_b)], 0.3)
        pods.start()

        # (c) is watched until the Secrets are due, and after them if it has not ended.
        obj_c = poll(lambda: terminal(kube, ns_c, "s"), max(0.0, t0 + 8 - time.monotonic()), 0.2)
        took_c = time.monotonic() - t_c
        time.sleep(max(0.0, t0 + 8 - time.monotonic()))
        for label, ns in (("cloud", ns_a), ("local", ns_b)):
            obj = kube.session(ns, "s")
            ok = phase(obj) == "Succeeded" and condition(obj, "Reconciling").get("reason") == "MaxDurationReached"
            sc.check("ended_while_waiting_for_the_secret", ok, f"{label}, 8 s after creation: {brief(obj, 'CredentialsReady', 'Reconciling')}")
        for ns in (ns_a, ns_b):
            kube.put_secret(ns, "bithuman-credentials", {"BITHUMAN_API_SECRET": BITHUMAN_SECRET})
        t_secret = time.monotonic()
        sc.op("create_secret_after_8s", 2)
        if obj_c is None:
            obj_c = poll(lambda: terminal(kube, ns_c, "s"), max(0.0, t_c + 25 - time.monotonic()), 0.2)
            took_c = time.monotonic() - t_c
        obj_c = obj_c or kube.session(ns_c, "s")
        ends = {ns: poll(lambda ns=ns: terminal(kube, ns, "s"), max(1.0, t0 + 25 - time.monotonic())) or kube.session(ns, "s") for ns in (ns_a, ns_b)}
        time.sleep(max(0.0, t_secret + 3 - time.monotonic()))
        seen_pods = sorted({n for _, names in pods.stop() for n in names})

        for label, ns, room in (("cloud", ns_a, room_a), ("local", ns_b, room_b)):
            obj = ends[ns]
            ready = condition(obj, "Reconciling")  # a Succeeded session says how it ended there
            sc.check("ends_succeeded_max_duration_reached", phase(obj) == "Succeeded" and ready.get("reason") == "MaxDurationReached", f"{label}: {brief(obj, 'CredentialsReady', 'Reconciling')}")
            sent = requests_for(fake, room)
            mints = requests_for(fake, room, "mint")
            sc.check("no_mint_and_no_session_request", not sent and not mints, f"{label}: {len(sent)} session requests, {len(mints)} mints")
        obj_b = kube.session(ns_b, "s") or {}
        st_b = obj_b.get("status") or {}
        sc.check("no_runner_pod_ever", not seen_pods and not st_b.get("runnerPod"), f"pods seen {seen_pods}, status.runnerPod {st_b.get('runnerPod')}")
        tokens = [s["metadata"]["name"] for s in kube.secrets(ns_b) if s["metadata"]["name"].endswith("-token")]
        sc.check("no_token_secret", not tokens, str(tokens))

        ready_c = condition(obj_c, "Reconciling")
        sc.check("retry_after_past_deadline_ends_max_duration_reached", phase(obj_c) == "Succeeded" and ready_c.get("reason") == "MaxDurationReached", str(brief(obj_c, "CloudRequestAccepted", "Reconciling")))
        sc.check("ends_within_8s_of_creation", took_c <= 9.0, f"ended after {took_c:.1f}s (maxDuration 5)")
        sent_c = requests_for(fake, room_c)
        sc.check("exactly_one_session_request", len(sent_c) == 1, f"{len(sent_c)} session requests (the 429, then {'a paid one' if len(sent_c) > 1 else 'none'})")
        sc.note("retry_after_case_seconds", round(took_c, 1))
        finish(sc, op, spaces, fake, evidence)
    sc.assert_clean(since)


# --- 5. things gone while the operator was down ------------------------------------


@pytest.mark.scenario("resume_finds_things_gone", description="while the operator is SIGKILLed, one session's runner pod and another's token Secret are deleted; started again, it fails the first (RunnerFailed, pod deleted) and makes the second's Secret again")
def test_resume_finds_things_gone(stack: Stack, kube: Kube, operator_crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    with rig(stack, kube, fake, evidence, artifacts, sc, "resume") as (spaces, op):
        ns = spaces.create("a")
        start(op)
        uids = {}
        for name in ("podgone", "tokengone"):
            uids[name] = kube.create_session(ns, name, local_spec(f"{ns}-{name}"))["metadata"]["uid"]
            sc.op("create_local_session")
        for name in ("podgone", "tokengone"):
            obj = poll(lambda name=name: cond_is(kube, ns, name, "RunnerScheduled", "True"), 45)
            sc.check("runner_scheduled_before_kill", obj is not None, f"{name}: {brief(kube.session(ns, name), 'RunnerScheduled')}")
        op.kill()
        sc.fault("operator_sigkill")
        kube.core.delete_namespaced_pod("podgone-runner", ns, grace_period_seconds=0, _request_timeout=30)
        sc.fault("runner_pod_deleted_while_down")
        gone = poll(lambda: not pod_exists(kube, ns, "podgone-runner"), 30)
        sc.check("pod_gone_before_restart", bool(gone), "podgone-runner still exists")
        kube.core.delete_namespaced_secret("tokengone-token", ns, _request_timeout=30)
        sc.fault("token_secret_deleted_while_down")
        start(op)
        t_start = time.monotonic()

        def token_back() -> dict[str, Any] | None:
            sec = kube.core.read_namespaced_secret("tokengone-token", ns, _request_timeout=10)
            return kube.api.sanitize_for_serialization(sec)

        failed = poll(lambda: terminal(kube, ns, "podgone"), 30)
        took = time.monotonic() - t_start
        obj = failed or kube.session(ns, "podgone")
        reasons = {t: condition(obj, t) for t in ("RunnerScheduled", "Ready")}
        ok = phase(obj) == "Failed" and any(c.get("reason") == "RunnerFailed" and "deleted" in c.get("message", "") for c in reasons.values())
        sc.check("deleted_pod_fails_session_runner_failed", ok, f"after {took:.0f}s: {brief(obj, 'RunnerScheduled', 'Ready')}")
        sc.note("pod_gone_failed_after_s", round(took, 1))

        sec = poll(token_back, max(1.0, t_start + 30 - time.monotonic()))
        sc.check("token_secret_made_again", sec is not None, "tokengone-token absent 30 s after the restart")
        sc.check("token_secret_owned_by_session", bool(sec) and owned([sec], uids["tokengone"]) == ["tokengone-token"], str(((sec or {}).get("metadata") or {}).get("ownerReferences")))
        sc.check("token_secret_holds_a_token", bool(sec) and bool((sec.get("data") or {}).get("LIVEKIT_TOKEN")), str(sorted(((sec or {}).get("data") or {}).keys())))
        obj = kube.session(ns, "tokengone")
        sc.check("token_gone_session_not_failed", phase(obj) in ("Pending", "Starting", "Running"), str(brief(obj, "RunnerScheduled", "Ready")))
        finish(sc, op, spaces, fake, evidence)
    sc.assert_clean(since)


# --- 6. a decompression bomb ---------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def blank_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG, all black, compressed row by row (its pixels are never held)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


RSS_LIMIT = 250 * 1024 * 1024


@pytest.mark.scenario("image_bomb", description="a ConfigMap holds a PNG of 13000x13000 pixels in a few kB; the cloud session from it fails naming the size limit, with the operator's memory under 250 MB and nothing sent")
def test_image_bomb(stack: Stack, kube: Kube, operator_crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    png = blank_png(13000, 13000)
    sc.note("png_bytes", len(png))
    with rig(stack, kube, fake, evidence, artifacts, sc, "bomb") as (spaces, op):
        ns = spaces.create("a")
        kube.core.create_namespaced_config_map(ns, {"metadata": {"name": "avatar-image"}, "binaryData": {"image.png": base64.b64encode(png).decode()}}, _request_timeout=30)
        start(op)
        proc = psutil.Process(op.pid)
        rss = Sampler(lambda: proc.memory_info().rss, 0.2)
        rss.start()
        room = f"{ns}-s"
        spec = {"room": room, "agentIdentity": "agent-1", "avatarImageFrom": {"configMapKeyRef": {"name": "avatar-image", "key": "image.png"}}, "connection": dict(CONN)}
        t0 = time.monotonic()
        kube.create_session(ns, "s", spec)
        sc.op("create_cloud_image_session")
        sc.fault("png_13000x13000")
        obj = poll(lambda: terminal(kube, ns, "s"), 20, 0.2)
        took = time.monotonic() - t0
        obj = obj or kube.session(ns, "s")
        time.sleep(2)  # what a slow decode would still send
        samples = [v for _, v in rss.stop()]
        peak = max(samples, default=0)
        sc.note("rss_peak_mb", round(peak / 2**20, 1))
        sc.note("rss_samples", len(samples))
        c = condition(obj, "CloudRequestAccepted")
        msg = c.get("message", "")
        attempts = ((obj or {}).get("status") or {}).get("attempts")
        # Failed by the operator itself, before any attempt: not by the API refusing an over-large body.
        sc.check("ends_failed_within_20s_before_any_attempt", phase(obj) == "Failed" and took <= 20 and not attempts, f"after {took:.1f}s: {brief(obj, 'CloudRequestAccepted')}")
        sc.check("message_names_size_and_limit", "13000x13000" in msg and ("4096" in msg or "megapixel" in msg), msg[:300])
        sc.check("operator_rss_under_250mb", bool(samples) and peak < RSS_LIMIT, f"peak {peak / 2**20:.0f} MB over {len(samples)} samples")
        # Any session request: one whose body was too large to read names no room.
        sent = [r for r in fake.requests() if r.get("route") == "session"]
        sc.check("no_session_request", not sent, f"{len(sent)} session requests, answered {[r.get('status') for r in sent]}")
        finish(sc, op, spaces, fake, evidence)
    sc.assert_clean(since)


# --- 7. two sessions, one avatar identity in one room ----------------------------------


class StandInAvatar:
    """The first cloud session's avatar, in a thread: joins the room with the token the
    operator sent bitHuman for it, and stays until stopped or removed."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.halt = threading.Event()
        self.events: list[str] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="stand-in-avatar", daemon=True)

    async def _run(self) -> None:
        room = rtc.Room()
        room.on("disconnected", lambda reason: self.events.append(f"disconnected {reason}"))
        try:
            await room.connect(self.url, self.token)
        except Exception as e:  # noqa: BLE001 - recorded; the check that follows fails on it
            self.events.append(f"connect failed: {type(e).__name__}: {e}")
            return
        self.events.append("connected")
        while not self.halt.is_set():
            await asyncio.sleep(0.2)
        await room.disconnect()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.halt.set()
        self.thread.join(10)



@pytest.mark.scenario("shared_avatar_identity", description="two sessions for the same room and avatar identity (local, and cloud): the second waits with AvatarIdentityInUse naming the first, gets no pod and sends nothing while the first lives, and deleting it leaves the first untouched")
def test_shared_avatar_identity(stack: Stack, kube: Kube, operator_crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    with rig(stack, kube, fake, evidence, artifacts, sc, "identity") as (spaces, op):
        ns = spaces.create("local")
        nc = spaces.create("cloud")
        start(op)
        room, croom = f"{ns}-shared", f"{nc}-shared"
        kube.create_session(ns, "first", local_spec(room))
        kube.create_session(nc, "first", cloud_spec(croom))
        sc.op("create_first_session", 2)

        def sample() -> dict[str, Any]:
            pods = [p["metadata"]["name"] for p in kube.pods(ns)]  # before A: a pod seen, then A alive, is a real overlap
            a = kube.session(ns, "first")
            ca = kube.session(nc, "first")
            return {"b_pod": "second-runner" in pods, "a": phase(a) if a else None, "a_deleting": bool(a and a["metadata"].get("deletionTimestamp")), "ca": phase(ca) if ca else None}

        sampler = Sampler(sample, 0.3)
        sampler.start()
        time.sleep(2)
        kube.create_session(ns, "second", local_spec(room))
        sc.op("create_second_session_same_identity")
        ca_ok = poll(lambda: cond_is(kube, nc, "first", "CloudRequestAccepted", "True"), 20)
        sc.check("first_cloud_session_accepted", ca_ok is not None, str(brief(kube.session(nc, "first"), "CloudRequestAccepted")))
        # The first's avatar joins the room, as bitHuman would make it, with the token sent for it.
        first_req = requests_for(fake, croom)
        token = str(((first_req[0].get("json") or {}) if first_req else {}).get("livekit_token") or "")
        avatar = StandInAvatar(stack.livekit_url, token)
        avatar.start()
        joined = poll(lambda: avatar.events, 15, 0.2)
        sc.check("first_cloud_avatar_joined", bool(joined) and joined[0] == "connected", str(avatar.events))
        kube.create_session(nc, "second", cloud_spec(croom))
        sc.op("create_second_session_same_identity")
        sc.fault("avatar_identity_shared", 2)

        for where, nsx, what in (("local", ns, "RunnerScheduled"), ("cloud", nc, "CloudRequestAccepted")):
            obj = poll(lambda nsx=nsx, what=what: cond_is(kube, nsx, "first", what, "True"), 30)
            sc.check("first_session_proceeds", obj is not None, f"{where}: {brief(kube.session(nsx, 'first'), what)}")
            b = poll(lambda nsx=nsx, what=what: cond_is(kube, nsx, "second", what, "False", "AvatarIdentityInUse"), 15)
            b = b or kube.session(nsx, "second")
            acc = condition(b, what)
            ok = phase(b) == "Pending" and acc.get("reason") == "AvatarIdentityInUse" and "first" in acc.get("message", "")
            sc.check("second_waits_avatar_identity_in_use_naming_first", ok, f"{where}: {brief(b, 'Accepted', what)}")
        time.sleep(3)  # the second keeps waiting
        for where, nsx, what in (("local", ns, "RunnerScheduled"), ("cloud", nc, "CloudRequestAccepted")):
            b = kube.session(nsx, "second")
            sc.check("second_still_pending", phase(b) == "Pending" and condition(b, what).get("reason") == "AvatarIdentityInUse", f"{where}: {brief(b, what)}")
        sent, mints = requests_for(fake, croom), requests_for(fake, croom, "mint")
        sc.check("one_session_request_for_the_shared_room", len(sent) == 1, f"{len(sent)} session requests for {croom}")
        sc.check("one_mint_for_the_shared_room", len(mints) == 1, f"{len(mints)} mints for {croom}")
        ca_phase = phase(kube.session(nc, "first"))

        # Delete the local first and the cloud second.
        kube.delete_session(ns, "first")
        kube.delete_session(nc, "second")
        sc.op("delete", 2)
        b = poll(lambda: cond_is(kube, ns, "second", "RunnerScheduled", "True"), 20)
        sc.check("second_proceeds_after_first_deleted", b is not None, str(brief(kube.session(ns, "second"), "Accepted", "RunnerScheduled")))
        gone = poll(lambda: kube.session(nc, "second") is None, 20)
        sc.check("deleted_waiting_session_released", bool(gone), str(brief(kube.session(nc, "second"), "Accepted")))
        time.sleep(3)  # what the second's cleanup would still remove
        values = [v for _, v in sampler.stop()]
        ca = kube.session(nc, "first")
        sc.check("first_cloud_session_untouched", ca is not None and not ca["metadata"].get("deletionTimestamp") and phase(ca) == ca_phase, f"phase before {ca_phase}, now {brief(ca, 'CloudRequestAccepted', 'Ready')}")
        present = [p["identity"] for p in room_participants(stack, croom)]
        sc.check("first_cloud_avatar_still_in_room", avatar.events == ["connected"] and "bithuman-avatar-agent" in present, f"avatar events {avatar.events}, participants {present}")
        avatar.stop()
        sent = requests_for(fake, croom)
        sc.check("one_session_request_for_the_shared_room", len(sent) == 1, f"{len(sent)} session requests for {croom} after deleting the second")

        overlap = [i for i, v in enumerate(values) if v["b_pod"] and v["a"] is not None and not v["a_deleting"]]
        sc.check("second_has_no_pod_while_first_lives", not overlap, f"{len(overlap)} samples with both")
        for key, label in (("a", "local first"), ("ca", "cloud first")):
            seq = [v[key] for v in values if v[key] is not None]
            ranks = [PHASE_ORDER.get(p, -1) for p in seq]
            backwards = [(seq[i], seq[i + 1]) for i in range(len(seq) - 1) if ranks[i + 1] < ranks[i]]
            sc.check("first_phase_never_goes_backwards", not backwards, f"{label}: {backwards[:5]} in {len(seq)} samples")
        sc.note("samples", len(values))
        finish(sc, op, spaces, fake, evidence)
    sc.assert_clean(since)


# --- 8. LiveKit refuses the credentials ---------------------------------------------------


@pytest.mark.scenario("livekit_credentials_refused", description="the namespace's LiveKit Secret has the right key and a wrong secret: the accepted cloud session's Ready says LiveKitCredentialsRefused naming the Secret, not LiveKitUnreachable")
def test_livekit_credentials_refused(stack: Stack, kube: Kube, operator_crd: None, fake: FakeProc, evidence: Evidence, artifacts: pathlib.Path, scenario: Scenario) -> None:
    sc = scenario
    since = sc.checkpoint()
    with rig(stack, kube, fake, evidence, artifacts, sc, "lkauth") as (spaces, op):
        ns = spaces.create("a", livekit=False)
        kube.put_secret(ns, "livekit-credentials", {"LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": "wrong-" + os.urandom(16).hex()})
        sc.fault("livekit_secret_wrong")
        start(op)
        room = f"{ns}-s"
        t0 = time.monotonic()
        kube.create_session(ns, "s", cloud_spec(room))
        sc.op("create_cloud_session")
        obj = poll(lambda: cond_is(kube, ns, "s", "CloudRequestAccepted", "True"), 20)
        sc.check("cloud_request_accepted", obj is not None, str(brief(kube.session(ns, "s"), "CloudRequestAccepted")))
        sent = requests_for(fake, room)
        sc.check("one_session_request", len(sent) == 1, f"{len(sent)} session requests")
        obj = poll(lambda: cond_is(kube, ns, "s", "Ready", "False", "LiveKitCredentialsRefused"), max(1.0, t0 + 20 - time.monotonic()))
        took = time.monotonic() - t0
        obj = obj or kube.session(ns, "s")
        ready = condition(obj, "Ready")
        sc.check("ready_says_livekit_credentials_refused", ready.get("reason") == "LiveKitCredentialsRefused", f"after {took:.0f}s: {ready}")
        sc.check("message_names_the_secret", "livekit-credentials" in ready.get("message", ""), ready.get("message", "")[:300])
        sc.note("ready", {k: ready.get(k) for k in ("reason", "message")})
        finish(sc, op, spaces, fake, evidence)
    sc.assert_clean(since)
