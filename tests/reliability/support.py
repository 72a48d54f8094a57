"""Shared machinery of the reliability suite: processes, the cluster, counters, evidence.

Everything here talks to 127.0.0.1 only and bounds every wait in time.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jwt
import kubernetes
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from livekit import rtc

from tests.conftest import ROOT, Stack
from tests.fakes.process import FakeProcess
from tests.harness import polling
from tests.harness.net import free_port as free_port  # re-exported: the tests take it from here
from tests.harness.operator_process import OperatorProcess, operator_env

GROUP, VERSION, PLURAL = "avatar-operator.dev", "v1alpha1", "avatarsessions"
FINALIZER = "avatar-operator.dev/cleanup"
# Namespaces of this run start with this prefix. It differs from tests/conftest's
# RUN_PREFIX on purpose: the integration suite's operator watches `RUN_PREFIX*`
# and must never act on the reliability suite's sessions (nor they on its).
PREFIX = f"r{uuid.uuid4().hex[:4]}-"

# Secrets of this run: long and random, so a scan can't pass or fail by luck.
BITHUMAN_SECRET = "bh-account-secret-" + os.urandom(16).hex()
BITHUMAN_TOKEN = "bh-api-token-" + os.urandom(16).hex()


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """check()'s first truthy value; AssertionError with the last value after `timeout`.
    An exception counts as a falsy answer: the cluster may be restarting."""
    return polling.wait_until(what, check, timeout, interval, retry_on=(Exception,))


# --- counters and the report ------------------------------------------------


class Scenario:
    """Counters of one scenario: operations tried, faults injected, invariants checked."""

    MAX_DETAILS = 40

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.operations: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()
        self.invariants: dict[str, dict[str, int]] = {}
        self.violation_details: list[str] = []
        self.notes: dict[str, Any] = {}
        self.tests: dict[str, str] = {}
        self.started = time.monotonic()
        self.seconds = 0.0
        self._lock = threading.Lock()

    def op(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.operations[what] += n

    def fault(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.faults[what] += n

    def check(self, invariant: str, ok: bool, detail: str = "") -> bool:
        with self._lock:
            inv = self.invariants.setdefault(invariant, {"checked": 0, "violations": 0})
            inv["checked"] += 1
            if not ok:
                inv["violations"] += 1
                if len(self.violation_details) < self.MAX_DETAILS:
                    self.violation_details.append(f"{invariant}: {detail}"[:2000])
        return ok

    def note(self, key: str, value: Any) -> None:
        with self._lock:
            self.notes[key] = value

    @property
    def violations(self) -> int:
        return sum(i["violations"] for i in self.invariants.values())

    def checkpoint(self) -> tuple[int, int]:
        """Where a test starts, for assert_clean: several tests count into one scenario."""
        return self.violations, len(self.violation_details)

    def assert_clean(self, since: tuple[int, int] = (0, 0)) -> None:
        new = self.violations - since[0]
        assert new == 0, f"{self.name}: {new} violation(s):\n" + "\n".join(self.violation_details[since[1]:])

    def as_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "seconds": round(self.seconds or (time.monotonic() - self.started), 1),
            "operations": dict(sorted(self.operations.items())),
            "operations_total": sum(self.operations.values()),
            "faults": dict(sorted(self.faults.items())),
            "faults_total": sum(self.faults.values()),
            "invariants": dict(sorted(self.invariants.items())),
            "invariants_checked": sum(i["checked"] for i in self.invariants.values()),
            "violations": self.violations,
            "violation_details": self.violation_details,
            "notes": self.notes,
            "tests": self.tests,
        }


class Report:
    def __init__(self) -> None:
        self.scenarios: dict[str, Scenario] = {}
        self.started = time.time()
        self.t0 = time.monotonic()

    def scenario(self, name: str, description: str = "") -> Scenario:
        sc = self.scenarios.get(name)
        if sc is None:
            sc = self.scenarios[name] = Scenario(name, description)
        elif description and not sc.description:
            sc.description = description
        return sc

    def as_dict(self) -> dict[str, Any]:
        scenarios = {n: s.as_dict() for n, s in self.scenarios.items()}
        tests = {t: o for s in self.scenarios.values() for t, o in s.tests.items()}
        import platform

        import kopf

        return {
            "suite": "tests/reliability",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "kopf": kopf.__version__},
            "seconds": round(time.monotonic() - self.t0, 1),
            "scenarios": scenarios,
            "totals": {
                "operations": sum(s["operations_total"] for s in scenarios.values()),
                "faults": sum(s["faults_total"] for s in scenarios.values()),
                "invariants_checked": sum(s["invariants_checked"] for s in scenarios.values()),
                "violations": sum(s["violations"] for s in scenarios.values()),
                "tests_failed": sum(o != "passed" for o in tests.values()),
            },
        }

    def write(self, path: pathlib.Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2, sort_keys=False) + "\n")
        tmp.replace(path)


# --- evidence for the security scan -----------------------------------------


@dataclasses.dataclass
class TokenSample:
    source: str  # where it was captured
    token: str
    room: str | None  # the room it must be for (None: the token's own room grant)
    key: tuple[str, str] | None = None  # (namespace, session name) it was minted for
    uid: str | None = None  # or the session's uid (a cloud request's Idempotency-Key)


class Evidence:
    """Everything captured during the suite that the secret scan reads."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []  # (kind, text)
        self.tokens: list[TokenSample] = []
        self.sessions: dict[str, dict[str, Any]] = {}  # room -> {"agent", "maxDuration", "mode"}
        self.room_specs: dict[str, int] = collections.Counter()  # how many sessions used each room
        self.by_key: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> expectations
        self.by_uid: dict[str, dict[str, Any]] = {}
        self.files: list[tuple[str, pathlib.Path]] = []  # logs read at the end
        self.requests: list[dict[str, Any]] = []  # session requests the fake API received
        self._request_keys: set[tuple[Any, ...]] = set()
        self._lock = threading.Lock()

    def text(self, kind: str, text: str) -> None:
        with self._lock:
            self.texts.append((kind, text))

    def file(self, kind: str, path: pathlib.Path) -> None:
        with self._lock:
            self.files.append((kind, path))

    def token(self, source: str, token: str, room: str | None = None, *, key: tuple[str, str] | None = None, uid: str | None = None) -> None:
        with self._lock:
            self.tokens.append(TokenSample(source, token, room, key, uid))

    @staticmethod
    def _expect(spec: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "room": spec.get("room"),
            "agent": spec.get("agentIdentity"),
            "maxDuration": spec.get("maxDuration"),
            "mode": "cloud" if any(k in spec for k in ("avatarId", "avatarImage", "avatarImageFrom")) else "local",
        }

    def session(self, spec: Mapping[str, Any]) -> None:
        room = str(spec.get("room"))
        with self._lock:
            if self.sessions.get(room) != self._expect(spec):
                self.room_specs[room] += 1
            self.sessions[room] = self._expect(spec)

    def created(self, ns: str, obj: Mapping[str, Any]) -> None:
        """A session the API server stored: what its tokens must say."""
        spec = obj.get("spec") or {}
        if not isinstance(spec, Mapping):
            return
        expect = self._expect(spec)
        with self._lock:
            self.by_key[(ns, str(obj["metadata"]["name"]))] = expect
            self.by_uid[str(obj["metadata"]["uid"])] = expect

    def expectation(self, sample: TokenSample, room: str) -> dict[str, Any] | None:
        """The session a token was minted for: by name or uid, else by room when only one session used it."""
        if sample.key is not None and sample.key in self.by_key:
            return self.by_key[sample.key]
        if sample.uid is not None and sample.uid in self.by_uid:
            return self.by_uid[sample.uid]
        if self.room_specs.get(room, 0) == 1:
            return self.sessions.get(room)
        return None

    def fake_requests(self, requests: Iterable[Mapping[str, Any]]) -> None:
        """The session requests the operator sent: their LiveKit tokens.

        The requests' headers are not scanned as 'output': the api-secret header
        to bitHuman's API is where the account credential belongs."""
        for r in requests:
            body = r.get("json") or r.get("form") or {}
            key = (r.get("t"), r.get("idempotency_key"), r.get("route"))
            with self._lock:
                if key in self._request_keys:
                    continue
                self._request_keys.add(key)
                if r.get("route") == "session":
                    self.requests.append(dict(r))
            if r.get("route") == "session" and isinstance(body, dict) and body.get("livekit_token"):
                self.token("cloud session request", str(body["livekit_token"]), str(body.get("room_name")), uid=r.get("idempotency_key"))


# --- processes --------------------------------------------------------------


def _load_stack_module() -> Any:
    spec = importlib.util.spec_from_file_location("avatar_stack_ctl", ROOT / "hack" / "stack.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class StackControl:
    """Stops and starts the stack's components as hack/stack.py does (same dirs, ports, logs)."""

    def __init__(self, stack: Stack) -> None:
        os.environ.setdefault("AVATAR_STACK_DIR", str(stack.dir))
        self.mod = _load_stack_module()
        assert pathlib.Path(self.mod.STACK) == stack.dir, (self.mod.STACK, stack.dir)

    def stop(self, name: str) -> None:
        self.mod.stop(name)

    def start_apiserver(self) -> None:
        self.mod.start_apiserver(self.mod.load_state())

    def start_livekit(self) -> None:
        self.mod.start_livekit(self.mod.load_state())

    def running(self, name: str) -> bool:
        return bool(self.mod.running(name))


class FakeProc(FakeProcess):
    """tests.reliability.timed_fake as a process, driven over its /_control endpoints."""

    def __init__(self, log: pathlib.Path) -> None:
        super().__init__("tests.reliability.timed_fake", log, api_secret=BITHUMAN_SECRET, api_token=BITHUMAN_TOKEN, timeout=20)


class OperatorProc(OperatorProcess):
    """`avatar-operator run` as a process (tests.harness.operator_process) with the
    suite's settings; start() it, kill() and start() it again as a test needs."""

    def __init__(
        self,
        stack: Stack,
        fake: FakeProc,
        log: pathlib.Path,
        namespaces: list[str],
        *,
        peering: str | None = None,
        identity: str | None = None,
        env: Mapping[str, str] | None = None,
        kubeconfig: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        extra = {"AVATAR_RUNNER_CPU": "10m", "AVATAR_RUNNER_MEMORY": "32Mi", "PYTHONUNBUFFERED": "1"}
        if identity:
            extra["POD_ID"] = identity
        if kubeconfig:
            extra["KUBECONFIG"] = kubeconfig
        extra.update(env or {})
        full_env = operator_env(
            stack.process_env(),
            livekit_url=stack.livekit_url,
            fake_urls=fake.urls,
            runner_image="registry.invalid/avatar-runner:test",
            extra=extra,
        )
        super().__init__(full_env, log, namespaces, peering=peering, extra_args=extra_args, stop_grace=30.0)
        self.stack = stack


def tracebacks(log: str) -> list[str]:
    """Python tracebacks in a log, each with the line that names the exception."""
    out = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" in line:
            tail = [ln for ln in lines[i + 1 : i + 60] if ln and not ln.startswith((" ", "\t"))]
            out.append(tail[0] if tail else line)
    return out


# --- the cluster ------------------------------------------------------------


class Kube:
    """The python client against the stack, for bulk work kubectl would be slow at."""

    def __init__(self, stack: Stack, evidence: Evidence | None = None) -> None:
        self.evidence = evidence
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=stack.kubeconfig, client_configuration=cfg)
        cfg.connection_pool_maxsize = 16
        cfg.retries = 1
        self.api = ApiClient(cfg)
        self.core = CoreV1Api(self.api)
        self.custom = CustomObjectsApi(self.api)
        self.stack = stack

    # sessions
    def create_session(self, ns: str, name: str, spec: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AvatarSession", "metadata": {"name": name, **({"labels": dict(labels)} if labels else {})}, "spec": dict(spec)}
        return self.create_raw(ns, body)

    def create_raw(self, ns: str, body: Mapping[str, Any]) -> dict[str, Any]:
        obj = dict(self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, dict(body), field_validation="Strict", _request_timeout=30))
        if self.evidence is not None:
            self.evidence.created(ns, obj)
        return obj

    def patch_spec(self, ns: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"spec": dict(spec)}, _request_timeout=30))

    def delete_session(self, ns: str, name: str) -> bool:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, _request_timeout=30)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def sessions(self, ns: str) -> list[dict[str, Any]]:
        return list(self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _request_timeout=30)["items"])

    def session(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, _request_timeout=30))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def strip_finalizers(self, ns: str, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"metadata": {"finalizers": None}}, _request_timeout=30)

    # core
    def pods(self, ns: str) -> list[dict[str, Any]]:
        return [self.api.sanitize_for_serialization(p) for p in self.core.list_namespaced_pod(ns, _request_timeout=30).items]

    def secrets(self, ns: str) -> list[dict[str, Any]]:
        return [self.api.sanitize_for_serialization(s) for s in self.core.list_namespaced_secret(ns, _request_timeout=30).items]

    def events(self, ns: str) -> list[dict[str, Any]]:
        return [self.api.sanitize_for_serialization(e) for e in self.core.list_namespaced_event(ns, _request_timeout=30).items]

    def create_namespace(self, name: str, labels: Mapping[str, str]) -> None:
        self.core.create_namespace({"metadata": {"name": name, "labels": dict(labels)}}, _request_timeout=30)

    def put_secret(self, ns: str, name: str, data: Mapping[str, str]) -> None:
        body = {"metadata": {"name": name}, "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
        try:
            self.core.create_namespaced_secret(ns, body, _request_timeout=30)
        except ApiException as e:
            if e.status != 409:
                raise
            self.core.replace_namespaced_secret(name, ns, body, _request_timeout=30)

    def delete_namespace(self, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.core.delete_namespace(name, _request_timeout=30)


def condition(obj: Mapping[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def phase(obj: Mapping[str, Any] | None) -> str | None:
    return ((obj or {}).get("status") or {}).get("phase")


class Namespaces:
    """Namespaces of one scenario: created with credentials, captured for the
    secret scan and removed (sessions first, so no namespace is left Terminating)."""

    def __init__(self, stack: Stack, kube: Kube, evidence: Evidence, group: str) -> None:
        self.stack, self.kube, self.evidence, self.group = stack, kube, evidence, group
        self.names: list[str] = []

    @property
    def glob(self) -> str:
        return f"{PREFIX}{self.group}-*"

    def create(self, suffix: str | None = None, *, livekit: bool = True, bithuman: bool = True, restricted: bool = True, name: str | None = None) -> str:
        ns = name or f"{PREFIX}{self.group}-{suffix or uuid.uuid4().hex[:6]}"
        labels = {"avatar-operator.dev/test": "reliability"}
        if restricted:
            labels.update({"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"})
        self.kube.create_namespace(ns, labels)
        self.names.append(ns)
        if livekit:
            self.kube.put_secret(ns, "livekit-credentials", {"LIVEKIT_API_KEY": self.stack.livekit_api_key, "LIVEKIT_API_SECRET": self.stack.livekit_api_secret})
        if bithuman:
            self.kube.put_secret(ns, "bithuman-credentials", {"BITHUMAN_API_SECRET": BITHUMAN_SECRET})
        # The namespace's ServiceAccount `default` must exist before pods are admitted.
        wait_until(f"ServiceAccount default in {ns}", lambda: self.kube.core.read_namespaced_service_account("default", ns, _request_timeout=10), 60)
        return ns

    def capture(self, ns: str) -> None:
        """Statuses, events and pod specs, and the token Secrets' tokens, for the scan."""
        with contextlib.suppress(Exception):
            for s in self.kube.sessions(ns):
                self.evidence.text("status", json.dumps(s.get("status") or {}))
                self.evidence.text("session", json.dumps(s))
        with contextlib.suppress(Exception):
            for e in self.kube.events(ns):
                self.evidence.text("event", json.dumps(e, default=str))
        with contextlib.suppress(Exception):
            for p in self.kube.pods(ns):
                self.evidence.text("pod", json.dumps(p, default=str))
        with contextlib.suppress(Exception):
            for sec in self.kube.secrets(ns):
                if sec["metadata"]["name"].endswith("-token") and (sec.get("data") or {}).get("LIVEKIT_TOKEN"):
                    token = base64.b64decode(sec["data"]["LIVEKIT_TOKEN"]).decode()
                    self.evidence.token(f"token Secret {ns}/{sec['metadata']['name']}", token, key=(ns, sec["metadata"]["name"][: -len("-token")]))

    def teardown(self, operator_running: bool, wait_s: float = 60.0) -> None:
        for ns in self.names:
            self.capture(ns)
        for ns in self.names:
            with contextlib.suppress(Exception):
                for s in self.kube.sessions(ns):
                    self.kube.delete_session(ns, s["metadata"]["name"])
        if operator_running:
            with contextlib.suppress(AssertionError):
                wait_until("sessions gone", lambda: all(not self.kube.sessions(ns) for ns in self.names), wait_s, 1.0)
        for ns in self.names:
            with contextlib.suppress(Exception):
                for s in self.kube.sessions(ns):
                    self.kube.strip_finalizers(ns, s["metadata"]["name"])
            self.kube.delete_namespace(ns)
        self.names = []


# --- tokens -------------------------------------------------------------------

# VideoGrants that a room-scoped avatar token may carry (livekit-api writes the
# three `can*` permissions with their default True).
ALLOWED_VIDEO = {"roomJoin", "room", "canPublish", "canSubscribe", "canPublishData"}
FORBIDDEN_VIDEO = {"roomAdmin", "roomCreate", "roomList", "roomRecord", "recorder", "ingressAdmin", "agent", "hidden", "destinationRoom", "canUpdateOwnMetadata", "canManageAgentSession", "canSubscribeMetrics"}
ALLOWED_TOP = {"sub", "iss", "nbf", "exp", "name", "kind", "video", "attributes"}
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")


def decode_token(token: str, api_key: str, api_secret: str) -> tuple[dict[str, Any], Any]:
    """The raw claims and livekit-api's parsed Claims, both with the signature and
    issuer verified. Expiry is not enforced: the suite keeps tokens for minutes
    and a session's token may rightly have expired by the time it is checked."""
    from livekit import api as lkapi

    raw = dict(jwt.decode(token, key=api_secret, issuer=api_key, algorithms=["HS256"], options={"require": ["exp", "nbf"], "verify_exp": False}))
    parsed = lkapi.TokenVerifier(api_key, api_secret, leeway=datetime.timedelta(days=7)).verify(token)
    return raw, parsed


def token_problems(claims: Mapping[str, Any], *, room: str, agent: str | None, max_duration: float | None, ttl_margin: float, ttl_default: float, secrets: Iterable[str]) -> list[str]:
    """What is wrong with an avatar token, per design.md §2/§3 (empty: nothing)."""
    problems = []
    if claims.get("kind") != "agent":
        problems.append(f"kind {claims.get('kind')!r} is not 'agent'")
    extra = set(claims) - ALLOWED_TOP
    if extra:
        problems.append(f"unexpected claims {sorted(extra)}")
    video = dict(claims.get("video") or {})
    if video.get("roomJoin") is not True:
        problems.append("no roomJoin grant")
    if video.get("room") != room:
        problems.append(f"room grant {video.get('room')!r} is not {room!r}")
    bad = sorted(k for k in video if k not in ALLOWED_VIDEO and video.get(k))
    bad += sorted(k for k in FORBIDDEN_VIDEO if video.get(k))
    if bad:
        problems.append(f"forbidden grants {sorted(set(bad))}")
    ttl = float(claims["exp"]) - float(claims["nbf"])
    bound = (float(max_duration) + ttl_margin) if max_duration else ttl_default
    if ttl > bound + 2:
        problems.append(f"TTL {ttl:.0f}s exceeds {bound:.0f}s (maxDuration {max_duration}, margin {ttl_margin:.0f}s, default {ttl_default:.0f}s)")
    attributes = dict(claims.get("attributes") or {})
    if agent is not None and attributes.get("lk.publish_on_behalf") != agent:
        problems.append(f"lk.publish_on_behalf {attributes.get('lk.publish_on_behalf')!r} is not {agent!r}")
    if "api_secret" in attributes and not str(attributes["api_secret"]).startswith("bhrt_"):
        problems.append("attribute api_secret is not a minted bhrt_ runtime token")
    blob = json.dumps(claims)
    for s in secrets:
        if s and s in blob:
            problems.append("an account secret is in the token's claims")
    return problems


@contextlib.contextmanager
def timed(sc: Scenario) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        sc.seconds += time.monotonic() - t0


# --- the Helm chart -------------------------------------------------------------

CHART = ROOT / "charts" / "avatar-operator"


def render_chart(stack: Stack, release: str, namespace: str, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`helm template` of the chart, as objects (comments and empty documents dropped)."""
    import yaml

    helm = stack.bin_dir / "helm"
    if not (CHART / "Chart.yaml").exists() or not helm.exists():
        raise FileNotFoundError(f"the Helm chart ({CHART}) or helm ({helm}) is missing")
    proc = subprocess.run(
        [str(helm), "template", release, str(CHART), "--namespace", namespace, "--values", "-"],
        input=json.dumps(dict(values)), capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed: {proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def sa_kubeconfig(stack: Stack, namespace: str, sa: str, path: pathlib.Path) -> pathlib.Path:
    """A kubeconfig that authenticates as the ServiceAccount (a bound token, 1 h)."""
    token = stack.kubectl("create", "token", sa, "-n", namespace, "--duration", "1h").stdout.strip()
    cfg = json.loads(pathlib.Path(stack.kubeconfig).read_text())
    cfg["users"] = [{"name": "sa", "user": {"token": token}}]
    cfg["contexts"] = [{"name": "sa", "context": {"cluster": cfg["clusters"][0]["name"], "user": "sa"}}]
    cfg["current-context"] = "sa"
    path.write_text(json.dumps(cfg))
    os.chmod(path, 0o600)
    return path


def room_participants(stack: Stack, room: str) -> list[dict[str, Any]]:
    """The room's participants as LiveKit reports them (identity, kind, attributes)."""
    import asyncio

    from livekit import api as lkapi

    url = stack.livekit_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)

    async def go() -> list[dict[str, Any]]:
        async with lkapi.LiveKitAPI(url, stack.livekit_api_key, stack.livekit_api_secret) as lk:
            res = await lk.room.list_participants(lkapi.ListParticipantsRequest(room=room))
            return [{"identity": p.identity, "kind": int(p.kind), "attributes": dict(p.attributes), "metadata": p.metadata} for p in res.participants]

    return asyncio.run(go())


class StandInCloudWorker:
    """Plays bitHuman's cloud worker: joins with the token the operator sent and publishes
    video; told to, it leaves and later rejoins with the same token (a reconnection)."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.stop = threading.Event()
        self.leave = threading.Event()
        self.rejoin = threading.Event()
        self.events: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="stand-in-worker", daemon=True)

    async def _session(self) -> None:
        room = rtc.Room()
        room.on("disconnected", lambda reason: self.events.append((time.time(), f"disconnected {reason}")))
        await room.connect(self.url, self.token)
        self.events.append((time.time(), "connected"))
        source = rtc.VideoSource(64, 64)
        track = rtc.LocalVideoTrack.create_video_track("avatar", source)
        await room.local_participant.publish_track(track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA))
        frame = rtc.VideoFrame(64, 64, rtc.VideoBufferType.RGBA, bytes(64 * 64 * 4))
        while not self.stop.is_set() and not self.leave.is_set():
            source.capture_frame(frame)
            await asyncio.sleep(0.1)
        self.events.append((time.time(), "left"))
        try:
            await asyncio.wait_for(room.disconnect(), 5)
        except Exception:  # noqa: BLE001 - the server may be gone
            pass

    async def _run(self) -> None:
        while not self.stop.is_set():
            self.leave.clear()
            await self._session()
            while not self.stop.is_set() and not self.rejoin.is_set():
                await asyncio.sleep(0.1)
            self.rejoin.clear()

    @property
    def connected(self) -> bool:
        last = [e for _, e in self.events if e in ("connected", "left")]
        return bool(last) and last[-1] == "connected"
