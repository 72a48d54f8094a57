"""Part 1: session start latency and throughput on the real control plane.

For each mode (cloud, local) and burst size N the bench creates N
AvatarSessions at once (at most `concurrency` requests in flight) in a fresh
namespace watched by its own operator process, and times each session from
its create request to `status.phase: Starting` (cloud: bitHuman accepted the
request; local: the runner pod is bound to a node) and, in local mode, to its
runner pod Running (kwok marks a bound pod Running). One watch on sessions and
one on pods (bench.watcher, a process of its own) time the transitions.

Side by side, same N, same concurrency, the baseline is a plain client doing
what the operator does for the user with no operator at all: local, the same
token Secret and runner Pod (built by the operator's own `manifests` module)
created back to back; cloud, the same JSON POST to the fake bitHuman API.

Capacity: bench-only kwok nodes (`avatar-operator.dev/bench=true`, tainted so
nothing else lands there and bench pods, which tolerate it and select it, land
nowhere else) with room for a thousand GPU runners; deleted at the end.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pathlib
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from avatar_operator import settings as settings_mod
from avatar_operator.api import names
from avatar_operator.api import spec as spec_mod
from avatar_operator.build import cloud_request as cloud
from avatar_operator.build import pod as manifests
from avatar_operator.build import secret
from avatar_operator.build import token as tokens

from bench import opvariant, stats
from bench.kubeapi import ApiError, BenchKube
from bench.procs import BITHUMAN_SECRET, ROOT, FakeAPI, Operator, StackCPU
from tests.harness import finalizer_policy
from tests.harness.stack import Stack

BENCH_LABEL = "avatar-operator.dev/bench"
RUN_ID = uuid.uuid4().hex[:4]
PREFIX = f"bench-{RUN_ID}-"
OP_PREFIX = PREFIX + "op-"  # the bench's operator watches only these
BL_PREFIX = PREFIX + "bl-"  # baseline namespaces: no operator looks at them
GROUP_PATH = f"/apis/{names.GROUP}/{names.VERSION}"
NODE_COUNT = 4
NODE_CAPACITY = {"cpu": "4000", "memory": "16Ti", "pods": "1100", "nvidia.com/gpu": "1000"}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- objects -----------------------------------------------------------------


def node_manifest(name: str) -> dict[str, Any]:
    labels = {
        "type": "kwok", BENCH_LABEL: "true", "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "nvidia.com/gpu.present": "true",
    }
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"taints": [{"key": BENCH_LABEL, "value": "true", "effect": "NoSchedule"}]},
        "status": {"capacity": NODE_CAPACITY, "allocatable": NODE_CAPACITY},
    }


RUNNER_PLACEMENT = {
    "nodeSelector": {BENCH_LABEL: "true"},
    "tolerations": [{"key": BENCH_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
}

# What a session asks for, per mode. Cloud by image URL: one POST to bitHuman
# per session (an avatarId session adds one runtime-token mint round trip).
SPECS: dict[str, dict[str, Any]] = {
    "cloud": {"avatarImage": "https://example.invalid/avatar.jpg"},
    "local": {"model": "expression", "modelPath": "/models/avatar.imx", "runner": RUNNER_PLACEMENT},  # 1 GPU each
    "local-cpu": {"model": "essence", "modelPath": "/models/avatar.imx", "runner": RUNNER_PLACEMENT},  # no GPU
}


def session_manifest(mode: str, ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.KIND,
        "metadata": {"name": name, "namespace": ns},
        "spec": {"room": f"room-{name}", "agentIdentity": "agent", **SPECS[mode]},
    }


def credentials_secret(ns: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


# --- the watcher process -----------------------------------------------------


class Watcher:
    """bench.watcher as a process; `marks[(kind, name)][what]` = monotonic time first seen."""

    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], dict[str, float]] = {}
        self.writes: dict[str, int] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @classmethod
    async def start(cls, kubeconfig: str, ns: str) -> Watcher:
        w = cls()
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.watcher", kubeconfig, ns, cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE, limit=2**24, start_new_session=True,
        )
        w._reader = asyncio.create_task(w._read())
        await asyncio.wait_for(w._ready.wait(), 60)
        return w

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            msg = json.loads(line)
            if msg.get("ready"):
                self._ready.set()
            elif "writes" in msg:
                self.writes = msg["writes"]
            else:
                self.marks.setdefault((msg["k"], msg["n"]), {}).setdefault(msg["v"], msg["t"])

    def seen(self, kind: str, name: str, what: str) -> float | None:
        return self.marks.get((kind, name), {}).get(what)

    async def wait_all(
        self, keys: list[tuple[str, str]], whats: tuple[str, ...], timeout: float,
        stop_on: tuple[str, ...] = ("Failed",), alive: Callable[[], bool] | None = None,
    ) -> list[tuple[str, str]]:
        """Waits until each key reached one of `whats` (or a stop_on mark); returns the keys that did not."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [k for k in keys if not any(w in self.marks.get(k, {}) for w in (*whats, *stop_on))]
            if not missing or time.monotonic() > deadline:
                return missing
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError("the watcher exited")
            if alive is not None and not alive():
                raise RuntimeError("the operator exited")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
            if self._reader is not None:
                await asyncio.wait_for(self._reader, 5)
        except asyncio.TimeoutError:
            self.proc.kill()


# --- the bench ----------------------------------------------------------------


@dataclass
class Config:
    sizes: dict[str, list[int]]  # mode -> burst sizes
    repeats: dict[int, int]  # burst size -> repeats
    concurrency: int = 32
    idle_settle_s: float = 20.0
    idle_window_s: float = 15.0
    profile: pathlib.Path | None = None  # run the operator under cProfile, stats here
    timeout_s: float = 300.0
    variant: str | None = None  # also run the operator with these bench.opvariant patches, side by side


@dataclass
class ControlPlane:
    stack: Stack
    cfg: Config
    artifacts: pathlib.Path
    kube: BenchKube = field(init=False)
    fake: FakeAPI | None = None
    nodes: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    http: aiohttp.ClientSession | None = None
    stack_cpu: StackCPU | None = None
    partial: dict[str, Any] = field(default_factory=dict)

    @property
    def stack_env(self) -> Mapping[str, str]:
        return self.stack.env

    @property
    def kubeconfig(self) -> str:
        return self.stack.kubeconfig

    # -- setup and teardown ----------------------------------------------------

    async def setup(self) -> None:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.kube = BenchKube(self.kubeconfig, pool=self.cfg.concurrency + 8)
        crd = await self.kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/avatarsessions.{names.GROUP}")
        if crd is None:
            raise RuntimeError("the AvatarSession CRD is not installed: run `make stack-up` (it applies crds/)")
        self.fake = FakeAPI(self.artifacts / "fake-bithuman.log")
        self.stack_cpu = StackCPU(self.stack.dir)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.cfg.concurrency))
        await self.add_nodes()

    async def add_nodes(self) -> None:
        self.nodes = [f"{PREFIX}node-{i}" for i in range(NODE_COUNT)]
        for name in self.nodes:
            await self.kube.create(node_manifest(name))

        async def ready(name: str) -> bool:
            node = await self.kube.get(f"/api/v1/nodes/{name}")
            return any(c["type"] == "Ready" and c["status"] == "True" for c in (node.get("status") or {}).get("conditions") or [])

        deadline = time.monotonic() + 60
        for name in self.nodes:
            while not await ready(name):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kwok did not make node {name} Ready")
                await asyncio.sleep(0.2)
            # Admission taints a new node not-ready and the node lifecycle
            # controller that would lift it is off (kwok nodes): lift it, as hack/stack.py does.
            node = await self.kube.get(f"/api/v1/nodes/{name}")
            taints = [t for t in node["spec"].get("taints") or [] if t["key"] != "node.kubernetes.io/not-ready"]
            await self.kube.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": taints}})
        log(f"{len(self.nodes)} bench kwok nodes up ({NODE_CAPACITY['nvidia.com/gpu']} GPUs, {NODE_CAPACITY['pods']} pods each)")

    async def teardown(self) -> None:
        if not hasattr(self, "kube"):
            if self.fake is not None:
                self.fake.stop()
            return
        for ns in list(self.namespaces):
            try:
                if ns.startswith(OP_PREFIX):
                    stuck = await self.strip_finalizers(ns)
                    if stuck:
                        log(f"{stuck} session(s) left in {ns} after its operator stopped: finalizers removed")
                await self.kube.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            except Exception as e:  # noqa: BLE001
                log(f"could not delete namespace {ns}: {e}")
        try:
            await asyncio.to_thread(finalizer_policy.remove, self.stack)
        except Exception as e:  # noqa: BLE001
            log(f"could not remove the finalizer policy: {e}")
        for name in self.nodes:
            try:
                await self.kube.delete({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
            except Exception as e:  # noqa: BLE001
                log(f"could not delete node {name}: {e}")
        if self.http is not None:
            await self.http.close()
        if self.fake is not None:
            self.fake.stop()
        await self.kube.close()

    async def new_namespace(self, name: str, credentials: bool) -> str:
        await self.kube.create({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {
                "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest",
                BENCH_LABEL: "true",
            }},
        })
        self.namespaces.append(name)
        # The namespace's default ServiceAccount must exist before a pod can be admitted.
        deadline = time.monotonic() + 60
        while await self.kube.get(f"/api/v1/namespaces/{name}/serviceaccounts/default") is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no default ServiceAccount in {name}")
            await asyncio.sleep(0.1)
        if credentials:
            env = self.stack_env
            await self.kube.create(credentials_secret(name, "livekit-credentials", {"LIVEKIT_API_KEY": env["LIVEKIT_API_KEY"], "LIVEKIT_API_SECRET": env["LIVEKIT_API_SECRET"]}))
            await self.kube.create(credentials_secret(name, "bithuman-credentials", {"BITHUMAN_API_SECRET": BITHUMAN_SECRET}))
        return name

    async def delete_sessions(self, ns: str, timeout: float = 300.0) -> float:
        """Deletes every AvatarSession in `ns` and waits until the operator has finalized them all.

        Sessions go before their namespace: kopf, watching namespaces by a
        glob, stops watching one as soon as it is marked for deletion with no
        blocking condition yet, and then never removes the finalizers of the
        sessions in it (the namespace stays Terminating for good)."""
        t = time.monotonic()
        path = f"{GROUP_PATH}/namespaces/{ns}/avatarsessions"
        for attempt in range(1, 6):
            try:
                await self.kube.request("DELETE", path, ok404=True)
                break
            except TimeoutError:  # marking 500 sessions deleted can outlast the client's 30 s; the rest on the next ask
                log(f"deleting the sessions in {ns}: no answer within the client's timeout (ask {attempt} of 5)")
        while (listed := await self.kube.get(path, limit=1)) and listed.get("items"):
            if time.monotonic() - t > timeout:
                log(f"sessions in {ns} not finalized after {timeout:.0f}s")
                break
            await asyncio.sleep(0.5)
        return time.monotonic() - t

    async def strip_finalizers(self, ns: str) -> int:
        """Bench cleanup only, once its operator is gone: lets stuck sessions go."""
        path = f"{GROUP_PATH}/namespaces/{ns}/avatarsessions"
        listed = await self.kube.get(path)
        items = (listed or {}).get("items") or []
        for item in items:
            if item["metadata"].get("finalizers"):
                try:
                    await self.kube.merge_patch(f"{path}/{item['metadata']['name']}", {"metadata": {"finalizers": None}})
                except ApiError as e:
                    if e.status != 404:
                        raise
        return len(items)

    async def drop_namespace(self, ns: str, timeout: float = 300.0) -> float:
        """Deletes the namespace and waits until it is gone."""
        t = time.monotonic()
        await self.kube.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        deadline = t + timeout
        while await self.kube.get(f"/api/v1/namespaces/{ns}") is not None:
            if time.monotonic() > deadline:
                log(f"namespace {ns} still terminating after {timeout:.0f}s; moving on")
                break
            await asyncio.sleep(0.5)
        else:
            self.namespaces.remove(ns)
        return time.monotonic() - t

    # -- bursts --------------------------------------------------------------------

    async def burst(self, n: int, one: Callable[[int], Awaitable[None]]) -> list[float]:
        """Runs one(i) for i < n with at most `concurrency` in flight; returns each start time."""
        sem = asyncio.Semaphore(self.cfg.concurrency)
        t0 = [0.0] * n

        async def run(i: int) -> None:
            async with sem:
                t0[i] = time.monotonic()
                await one(i)

        await asyncio.gather(*(run(i) for i in range(n)))
        return t0

    def start_operator(self, tag: str, variant: str | None = None) -> Operator:
        assert self.fake is not None
        profile = None
        if self.cfg.profile is not None:
            self.cfg.profile.mkdir(parents=True, exist_ok=True)
            profile = self.cfg.profile / f"operator-{tag}"
        return Operator(self.stack, self.fake, f"{OP_PREFIX}*", self.artifacts / f"operator-{tag}.log", profile_out=profile, variant=variant)

    async def operator_run(self, mode: str, n: int, rep: int, *, idle: bool = False, variant: str | None = None) -> dict[str, Any]:
        tag = f"{mode}-{n}-{rep}" + ("-variant" if variant else "")
        op = self.start_operator(tag, variant)
        try:
            ns = await self.new_namespace(f"{OP_PREFIX}{tag}", credentials=True)
            if opvariant.KOPF_FINALIZER not in opvariant.names_in(variant):
                # As the chart installs it: the finalizer put on at admission, in this run's namespace.
                await asyncio.to_thread(finalizer_policy.install, self.stack, [ns])
            w = await Watcher.start(self.kubeconfig, ns)
            # A first session shows the operator is up and watching this namespace.
            await self.kube.create(session_manifest(mode, ns, "warmup"))
            if await w.wait_all([("s", "warmup")], ("Starting",), 90, alive=op.alive):
                raise RuntimeError(f"the operator did not start the warm-up session in {ns}; see {op.log}")
            await asyncio.sleep(1.0)
            cpu0, rss0 = op.cpu_s(), op.rss_mb()
            assert self.stack_cpu is not None
            stack0 = self.stack_cpu.sample()
            session_names = [f"s{i:04d}" for i in range(n)]
            t_begin = time.monotonic()
            t0 = await self.burst(n, lambda i: self.kube.create(session_manifest(mode, ns, session_names[i])))
            t_created = time.monotonic()
            missing = await w.wait_all([("s", x) for x in session_names], ("Starting", "Running"), self.cfg.timeout_s, alive=op.alive)
            if mode != "cloud":
                missing += await w.wait_all([("p", f"{x}-runner") for x in session_names], ("Running",), 60)
            cpu1 = op.cpu_s()
            stack1 = self.stack_cpu.sample()
            if self.cfg.profile is not None and os.environ.get("BENCH_PROFILER", "cprofile") == "cprofile":
                op.signal(signal.SIGUSR1)  # opprofile keeps the burst's profile apart
            starting = {x: w.seen("s", x, "Starting") for x in session_names}
            lat = [starting[x] - t0[i] for i, x in enumerate(session_names) if starting[x] is not None]
            pending = [w.seen("s", x, "Pending") for x in session_names]
            first_write = [p - t0[i] for i, p in enumerate(pending) if p is not None]
            failed = sum(1 for x in session_names if w.seen("s", x, "Failed") is not None)
            t_last = max((v for v in starting.values() if v is not None), default=float("nan"))
            result: dict[str, Any] = {
                "n": n, **stats.summary_ms(lat),
                "sessions_per_s": round(len(lat) / (t_last - t_begin), 2),
                "create_s": round(t_created - t_begin, 3),
                "first_status_write_p50_ms": stats.summary_ms(first_write)["p50_ms"],
                "incomplete": len(missing), "failed": failed,
                "operator_cpu_s_per_session": round((cpu1 - cpu0) / n, 4),
                # CPU ms per session the stack spent meanwhile (other users of the stack included).
                "stack_cpu_ms_per_session": StackCPU.per_session(stack0, stack1, n),
            }
            if mode != "cloud":
                bound = [w.seen("p", f"{x}-runner", "bound") for x in session_names]
                running = [w.seen("p", f"{x}-runner", "Running") for x in session_names]
                lat_run = [r - t0[i] for i, r in enumerate(running) if r is not None]
                lat_bound = [b - t0[i] for i, b in enumerate(bound) if b is not None]
                result["pod_bound"] = stats.summary_ms(lat_bound)
                result["pod_running"] = stats.summary_ms(lat_run)
                t_last_run = max((r for r in running if r is not None), default=float("nan"))
                result["running_per_s"] = round(len(lat_run) / (t_last_run - t_begin), 2)
            await asyncio.sleep(3.0)  # late patches and kopf's events land
            result["operator_rss_mb"] = round(op.rss_mb(), 1)
            result["operator_rss_mb_before"] = round(rss0, 1)
            if idle:
                await asyncio.sleep(self.cfg.idle_settle_s)
                c0, t = op.cpu_s(), time.monotonic()
                await asyncio.sleep(self.cfg.idle_window_s)
                if self.cfg.profile is not None and os.environ.get("BENCH_PROFILER") == "tracemalloc":
                    op.signal(signal.SIGUSR1)  # opprofile writes a heap snapshot
                result["idle"] = {
                    "sessions": n + 1,
                    "rss_mb": round(op.rss_mb(), 1),
                    "cpu_cores": round((op.cpu_s() - c0) / (time.monotonic() - t), 3),
                    "threads": op.threads(),
                }
            await w.stop()
            writes = [w.writes.get(x, 0) for x in session_names]
            result["session_writes_per_session"] = round(sum(writes) / n, 2)
            events = (await self.kube.get(f"/api/v1/namespaces/{ns}/events", limit=20000))["items"]
            mine = [e for e in events if not e["involvedObject"].get("name", "").startswith("warmup")]
            # Events the operator (kopf) posted, per session: on the session, and on its runner pod.
            by_op = [e for e in mine if e.get("source", {}).get("component") == "kopf" or e.get("reportingComponent") == "kopf"]
            result["events_per_session"] = round(sum(1 for e in by_op if e["involvedObject"].get("kind") == names.KIND) / n, 2)
            result["pod_events_per_session"] = round(sum(1 for e in by_op if e["involvedObject"].get("kind") == "Pod") / n, 2)
            result["all_events_per_session"] = round(len(mine) / n, 2)
            result["operator_peak_rss_mb"] = round(op.peak_rss_mb(), 1)
            result["latencies_ms"] = [round(x * 1000, 1) for x in lat]
            if idle:
                # The big idle run is torn down without timing its deletion (it
                # would add a minute to `make bench`): operator off, finalizers off.
                t_td = time.monotonic()
                op.stop()
                await self.strip_finalizers(ns)
                result["teardown_s"] = round(time.monotonic() - t_td + await self.drop_namespace(ns), 2)
            else:
                delete_s = await self.delete_sessions(ns)
                result["delete_per_s"] = round((n + 1) / delete_s, 2)
                result["teardown_s"] = round(delete_s + await self.drop_namespace(ns), 2)
            log(f"operator {tag}: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, {result['sessions_per_s']}/s, "
                f"{result['operator_cpu_s_per_session'] * 1000:.1f} ms CPU/session, rss {result['operator_rss_mb']} MB, "
                f"{result['session_writes_per_session']} writes + {result['events_per_session']}+{result['pod_events_per_session']} events/session, "
                f"deleted at {result.get('delete_per_s')}/s; stack CPU ms/session {result['stack_cpu_ms_per_session']}")
            return result
        finally:
            op.stop()

    async def baseline_local(self, mode: str, n: int, rep: int) -> dict[str, Any]:
        """The same token Secret and runner Pod per session, created by a plain client."""
        ns = await self.new_namespace(f"{BL_PREFIX}{mode}-{n}-{rep}", credentials=False)
        settings = settings_mod.Settings.from_env({"AVATAR_RUNNER_IMAGE": "registry.invalid/avatar-runner:bench"})
        defaults = manifests.RunnerDefaults(image=settings.runner.image, renderer=settings.runner.renderer, cpu=settings.runner.cpu, memory=settings.runner.memory)
        session_names = [f"s{i:04d}" for i in range(n)]
        objs = []
        for x in session_names:
            body = session_manifest(mode, ns, x)
            spec = spec_mod.parse_spec(body)
            ref = names.SessionRef(name=x, namespace=ns, uid=str(uuid.uuid4()))
            s = secret.token_secret(ref, "bench-token")
            p = manifests.runner_pod(ref, spec, livekit_url=self.stack_env["LIVEKIT_URL"], bithuman_secret="bithuman-credentials", defaults=defaults)
            for o in (s, p):  # no owner: the garbage collector would delete an orphan at once
                o["metadata"].pop("ownerReferences")
            objs.append((s, p))
        w = await Watcher.start(self.kubeconfig, ns)

        async def one(i: int) -> None:
            await self.kube.create(objs[i][0])
            await self.kube.create(objs[i][1])

        assert self.stack_cpu is not None
        stack0 = self.stack_cpu.sample()
        t_begin = time.monotonic()
        t0 = await self.burst(n, one)
        missing = await w.wait_all([("p", f"{x}-runner") for x in session_names], ("Running",), self.cfg.timeout_s)
        stack1 = self.stack_cpu.sample()
        bound = [w.seen("p", f"{x}-runner", "bound") for x in session_names]
        running = [w.seen("p", f"{x}-runner", "Running") for x in session_names]
        lat_bound = [b - t0[i] for i, b in enumerate(bound) if b is not None]
        lat_run = [r - t0[i] for i, r in enumerate(running) if r is not None]
        t_last_bound = max((b for b in bound if b is not None), default=float("nan"))
        t_last_run = max((r for r in running if r is not None), default=float("nan"))
        await w.stop()
        result = {
            "n": n, **stats.summary_ms(lat_bound),
            "per_s": round(len(lat_bound) / (t_last_bound - t_begin), 2),
            "pod_running": stats.summary_ms(lat_run),
            "running_per_s": round(len(lat_run) / (t_last_run - t_begin), 2),
            "incomplete": len(missing),
            "stack_cpu_ms_per_session": StackCPU.per_session(stack0, stack1, n),
            "latencies_ms": [round(x * 1000, 1) for x in lat_bound],
        }
        result["teardown_s"] = round(await self.drop_namespace(ns), 2)
        log(f"baseline {mode}-{n}-{rep}: pod bound p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, {result['per_s']}/s; stack CPU ms/session {result['stack_cpu_ms_per_session']}")
        return result

    async def baseline_cloud(self, n: int, rep: int) -> dict[str, Any]:
        """The same session request per session, POSTed to the fake bitHuman API by a plain client."""
        assert self.fake is not None and self.http is not None
        env = self.stack_env
        done = [0.0] * n
        statuses: list[int] = []

        async def one(i: int) -> None:
            room = f"room-bl-{RUN_ID}-{rep}-{i}"
            token = tokens.avatar_token(
                api_key=env["LIVEKIT_API_KEY"], api_secret=env["LIVEKIT_API_SECRET"], room=room,
                identity=spec_mod.DEFAULT_AVATAR_IDENTITY, name=spec_mod.DEFAULT_AVATAR_NAME, agent_identity="agent",
                ttl=tokens.token_ttl(None, 300.0, 3600.0),
            )
            req = cloud.build_request(
                api_url=self.fake.urls["url"], api_secret=BITHUMAN_SECRET, api_token=None, livekit_url=env["LIVEKIT_URL"],
                livekit_token=token, room=room, model=None, avatar_id=None, avatar_image=SPECS["cloud"]["avatarImage"],
                avatar_image_bytes=None, idempotency_key=str(uuid.uuid4()), default_api=True,
            )
            async with self.http.post(req.url, headers=dict(req.headers), json=dict(req.json or {})) as r:
                await r.read()
                statuses.append(r.status)
            done[i] = time.monotonic()

        t_begin = time.monotonic()
        t0 = await self.burst(n, one)
        lat = [done[i] - t0[i] for i in range(n)]
        result = {
            "n": n, **stats.summary_ms(lat),
            "per_s": round(n / (max(done) - t_begin), 2),
            "incomplete": sum(1 for s in statuses if s != 200),
            "latencies_ms": [round(x * 1000, 1) for x in lat],
        }
        log(f"baseline cloud-{n}-{rep}: accepted p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, {result['per_s']}/s")
        return result

    async def floor_cloud(self, n: int, rep: int) -> dict[str, Any]:
        """The least any controller must do per cloud session, by a plain client:
        the AvatarSession create, the POST, one status write (phase Starting)."""
        assert self.fake is not None and self.http is not None
        ns = await self.new_namespace(f"{BL_PREFIX}floor-{n}-{rep}", credentials=False)
        env = self.stack_env
        done = [0.0] * n

        async def one(i: int) -> None:
            name = f"s{i:04d}"
            obj = session_manifest("cloud", ns, name)
            await self.kube.create(obj)
            token = tokens.avatar_token(
                api_key=env["LIVEKIT_API_KEY"], api_secret=env["LIVEKIT_API_SECRET"], room=f"room-{name}",
                identity=spec_mod.DEFAULT_AVATAR_IDENTITY, name=spec_mod.DEFAULT_AVATAR_NAME, agent_identity="agent",
                ttl=tokens.token_ttl(None, 300.0, 3600.0),
            )
            req = cloud.build_request(
                api_url=self.fake.urls["url"], api_secret=BITHUMAN_SECRET, api_token=None, livekit_url=env["LIVEKIT_URL"],
                livekit_token=token, room=f"room-{name}", model=None, avatar_id=None, avatar_image=SPECS["cloud"]["avatarImage"],
                avatar_image_bytes=None, idempotency_key=str(uuid.uuid4()), default_api=True,
            )
            async with self.http.post(req.url, headers=dict(req.headers), json=dict(req.json or {})) as r:
                await r.read()
            await self.kube.merge_patch(f"{GROUP_PATH}/namespaces/{ns}/avatarsessions/{name}/status", {"status": {"phase": "Starting", "mode": "cloud"}})
            done[i] = time.monotonic()

        assert self.stack_cpu is not None
        stack0 = self.stack_cpu.sample()
        t_begin = time.monotonic()
        t0 = await self.burst(n, one)
        stack1 = self.stack_cpu.sample()
        lat = [done[i] - t0[i] for i in range(n)]
        result = {
            "n": n, **stats.summary_ms(lat), "per_s": round(n / (max(done) - t_begin), 2),
            "stack_cpu_ms_per_session": StackCPU.per_session(stack0, stack1, n),
        }
        result["teardown_s"] = round(await self.drop_namespace(ns), 2)
        log(f"floor cloud-{n}-{rep}: create+POST+status write p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, {result['per_s']}/s")
        return result

    # -- all of it -----------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {"concurrency": self.cfg.concurrency, "bench_nodes": NODE_COUNT}
        self.partial = out  # what is done so far, for a run cut short
        idle_done = False
        for mode, sizes in self.cfg.sizes.items():
            per_mode: dict[str, Any] = {}
            for n in sizes:
                reps = self.cfg.repeats.get(n, 1)
                ops, bls, variants, floors = [], [], [], []
                for rep in range(reps):
                    # Baseline and operator back to back, alternating which goes first.
                    order = ("bl", "op") if rep % 2 == 0 else ("op", "bl")
                    for which in order:
                        if which == "bl":
                            bls.append(await (self.baseline_cloud(n, rep) if mode == "cloud" else self.baseline_local(mode, n, rep)))
                        else:
                            idle = n >= 1000 and rep == 0
                            ops.append(await self.operator_run(mode, n, rep, idle=idle))
                    if mode == "cloud" and n <= 500:
                        floors.append(await self.floor_cloud(n, rep))
                    if self.cfg.variant:
                        variants.append(await self.operator_run(mode, n, rep, idle=n >= 1000 and rep == 0, variant=self.cfg.variant))
                peak = max([out.get("operator_peak_rss_mb", 0.0)] + [o["operator_peak_rss_mb"] for o in ops])
                out["operator_peak_rss_mb"] = peak
                per_mode[f"n{n}"] = combine(ops, bls, mode)
                if floors:
                    fl = stats.median_of(floors)
                    r = per_mode[f"n{n}"]
                    r["floor"] = fl
                    r["floor_per_s"] = fl["per_s"]
                    r["throughput_ratio_vs_floor"] = round(statistics.median(
                        stats.ratio(o["sessions_per_s"], f["per_s"]) for o, f in zip(ops, floors)), 3)
                if variants:
                    for v in variants:
                        v.pop("latencies_ms", None)
                    var = stats.median_of(variants)
                    op_med = per_mode[f"n{n}"]["operator"]
                    per_mode[f"n{n}"]["variant"] = {
                        "patches": self.cfg.variant, **var,
                        "throughput_vs_operator": stats.ratio(var["sessions_per_s"], op_med["sessions_per_s"]),
                        "p99_vs_operator": stats.ratio(var["p99_ms"], op_med["p99_ms"]),
                        "cpu_vs_operator": stats.ratio(var["operator_cpu_s_per_session"], op_med["operator_cpu_s_per_session"]),
                        "throughput_ratio_vs_baseline": stats.ratio(var["sessions_per_s"], per_mode[f"n{n}"]["baseline_per_s"]),
                    }
                idle = per_mode[f"n{n}"].get("idle")
                if idle is not None:
                    out[f"idle_1000_{mode}"] = idle
                    if not idle_done:  # cloud first: sessions accepted and waiting
                        out["operator_rss_mb_1000_idle"] = idle["rss_mb"]
                        out["idle_1000"] = idle
                        idle_done = True
                out[mode] = per_mode
        return out


def combine(ops: list[dict[str, Any]], bls: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    """Medians over repeats; the ratios are taken per repeat (same run) then their median."""
    lat_op = [o.pop("latencies_ms") for o in ops]
    lat_bl = [b.pop("latencies_ms") for b in bls]
    op = stats.median_of(ops)
    bl = stats.median_of(bls)
    tp = [stats.ratio(o["sessions_per_s"], b["per_s"]) for o, b in zip(ops, bls)]
    p50 = [stats.ratio(o["p50_ms"], b["p50_ms"]) for o, b in zip(ops, bls)]
    res: dict[str, Any] = {
        "p50_ms": op["p50_ms"], "p90_ms": op["p90_ms"], "p99_ms": op["p99_ms"], "max_ms": op["max_ms"],
        "sessions_per_s": op["sessions_per_s"],
        "baseline_p50_ms": bl["p50_ms"], "baseline_p90_ms": bl["p90_ms"], "baseline_p99_ms": bl["p99_ms"],
        "baseline_per_s": bl["per_s"],
        "throughput_ratio": round(statistics.median(tp), 3),
        "p50_ratio": round(statistics.median(p50), 3),
        "repeats": len(ops),
        "operator": op, "baseline": bl,
        "_latencies_ms": {"operator": lat_op[0], "baseline": lat_bl[0]},
    }
    if "idle" in op:
        res["idle"] = op["idle"]
    return res
