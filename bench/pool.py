"""Part 3: warm runner pools against one cold runner per session, side by side.

The bench starts its own operator (AVATAR_RUNNER_LAUNCHER=process,
AVATAR_RUNNER_RENDERER=portrait: runners are local processes drawing the
built-in portrait, standing in for bitHuman's GPU model) watching one
namespace of its own, and an AvatarPool of `runners` x `N / runners` slots
(`python -m avatar_runner serve`), and waits for the pool's Ready.

Each burst is N sessions created at once (one request each, all in flight),
each in a room of its own with an agent participant and a viewer subscribed
to the avatar's audio (livekit-agents' AvatarRunner publishes video only once
someone listens); in the first `decoders` rooms the viewer also decodes the
video. Two kinds, in the same run, alternating which goes first:

- warm: sessions with spec.poolRef take slots on the pool's runner(s);
- cold: local-mode sessions (spec.modelPath, no poolRef): the operator starts
  one `python -m avatar_runner` process per session.

Measured per burst:
- create-to-Ready per session: from the bench's monotonic clock just before
  the session's create request to the moment a watch on AvatarSessions (a
  process of its own, `python -m bench.pool watch`, so its timestamps do not
  wait for the bench's LiveKit event loop) first shows its Ready condition
  True. Ready is the operator's: LiveKit lists the avatar publishing video,
  as the operator's LiveKit polls find it (first at once, then on a growing
  schedule), or at once after LiveKit's webhook about the avatar when the
  operator's receiver is on (`webhooks_and_polling` runs both, alternating);
- Ready after the video: per session, Ready minus the viewer seeing the
  avatar's video track (the operator's lag behind the media plane);
- create-to-video-at-viewer: when the room's viewer saw the avatar's video
  track published (the media plane, independent of the operator's polls);
- delivered fps: frames the decoding viewers received over a window once all
  N are Ready; and the pool runner's own published frames per session;
- runner cost: the pool runner process's CPU (utime + stime from
  /proc/<pid>/stat over the same window) and RSS (VmRSS), with 0 sessions
  (before the warm burst) and with N, per extra session; the cold runners'
  CPU and RSS per session over the same window, for comparison.

Sessions are deleted after each burst and the pool's slots are seen free
(or the cold runners gone) before the next one.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
import math
import os
import pathlib
import statistics
import sys
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import psutil
from avatar_operator.api import names

from bench import stats
from bench.kubeapi import ApiError, BenchKube
from tests.harness.net import http_get, metric
from tests.harness.operator_process import OperatorProcess, operator_env
from tests.harness.stack import ROOT, Stack

if TYPE_CHECKING:
    from livekit import rtc

# The watch process (`python -m bench.pool watch`) imports only the above: the
# media stack (livekit, the harness viewer, which loads livekit-agents) and the
# control-plane module are imported where the bench itself needs them.


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)

GROUP_PATH = f"/apis/{names.GROUP}/{names.VERSION}"
POOL = "warm"
AGENT = "agent"
MODEL_PATH = "/models/bench.imx"  # the portrait renderer never opens it; the rules want one
CLK_TCK = os.sysconf("SC_CLK_TCK")
FPS = 25.0


# --- process figures from /proc ----------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of `pid` (all its threads), in seconds, from /proc/<pid>/stat."""
    text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after the command, from field 3 (state) on
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15


def proc_rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def sample(pids: list[int]) -> tuple[float, float, float]:
    """(monotonic time, CPU seconds, RSS MiB) summed over `pids` that still exist."""
    cpu = rss = 0.0
    for pid in pids:
        try:
            cpu += proc_cpu_s(pid)
            rss += proc_rss_mib(pid)
        except (OSError, ValueError):
            pass
    return time.monotonic(), cpu, rss


# --- the Ready watch, as a process of its own -----------------------------------


def _out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def watch_main(kubeconfig: str, namespace: str) -> None:
    """`python -m bench.pool watch KUBECONFIG NAMESPACE`: prints `{"ready": true}` once the
    watch on AvatarSessions is open, then `{"t": monotonic, "n": name, "v": what}` for each
    change: `Ready` / `NotReady` (the Ready condition), `phase:<phase>`, `deleted`."""
    path = f"{GROUP_PATH}/namespaces/{namespace}/{names.PLURAL}"
    seen: dict[str, dict[str, str]] = {}
    parent = os.getppid()

    def handle(etype: str, obj: dict[str, Any], t: float) -> None:
        name = obj["metadata"]["name"]
        last = seen.setdefault(name, {})
        if etype == "DELETED":
            seen.pop(name, None)
            _out({"t": t, "n": name, "v": "deleted"})
            return
        st = obj.get("status") or {}
        ready = next((c.get("status") for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
        what = {"ready": "Ready" if ready == "True" else "NotReady", "phase": f"phase:{st.get('phase')}"}
        for key, v in what.items():
            if last.get(key) != v:
                last[key] = v
                msg: dict[str, Any] = {"t": t, "n": name, "v": v}
                if v in ("phase:Succeeded", "phase:Failed"):  # why it ended: its conditions' reasons
                    msg["why"] = "; ".join(f"{c.get('type')}: {c.get('reason')}: {c.get('message')}" for c in st.get("conditions") or [])
                _out(msg)

    async def follow(kube: BenchKube) -> None:
        listed = await kube.get(path)
        rv = listed["metadata"]["resourceVersion"]
        for item in listed.get("items") or []:
            handle("ADDED", item, time.monotonic())
        _out({"ready": True})
        while True:
            try:
                async for ev in kube.watch(path, rv):
                    t = time.monotonic()
                    rv = ev["object"]["metadata"]["resourceVersion"]
                    if ev["type"] == "BOOKMARK":
                        continue
                    if ev["type"] == "ERROR":
                        raise RuntimeError(f"watch error: {ev['object']}")
                    handle(ev["type"], ev["object"], t)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - reconnect from the last version seen
                print(f"pool watch: {e}; reconnecting", file=sys.stderr, flush=True)
                await asyncio.sleep(0.2)

    async with BenchKube(kubeconfig, pool=4) as kube:
        task = asyncio.create_task(follow(kube))
        while not task.done() and os.getppid() == parent:  # ends with the bench that started it
            await asyncio.sleep(1.0)
        task.cancel()


class ReadyWatch:
    """The watch process; `marks[name][what]` = monotonic time first seen (since the last reset)."""

    def __init__(self) -> None:
        self.marks: dict[str, dict[str, float]] = {}
        self.why: dict[str, str] = {}  # name -> why it ended (Succeeded or Failed)
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self, kubeconfig: str, ns: str) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.pool", "watch", kubeconfig, ns, cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE, limit=2**24, start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self._ready.wait(), 60)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            msg = json.loads(line)
            if msg.get("ready"):
                self._ready.set()
            else:
                self.marks.setdefault(msg["n"], {}).setdefault(msg["v"], msg["t"])
                if "why" in msg:
                    self.why.setdefault(msg["n"], msg["why"])

    def seen(self, name: str, what: str) -> float | None:
        return self.marks.get(name, {}).get(what)

    async def wait(self, keys: list[str], what: str, timeout: float, stop_on: tuple[str, ...] = ("phase:Failed", "phase:Succeeded")) -> list[str]:
        """Until each key shows `what` (or a stop_on mark); returns the keys that did not."""
        deadline = time.monotonic() + timeout
        while True:
            missing = [k for k in keys if not any(w in self.marks.get(k, {}) for w in (what, *stop_on))]
            if not missing or time.monotonic() > deadline:
                return missing
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError("the pool watch process exited")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
        if self._reader is not None:
            self._reader.cancel()


# --- rooms ------------------------------------------------------------------------


class Room:
    """An agent and a viewer in one room; the viewer listens to the avatar's audio, and
    decodes its video when `decode`. `video_published` = monotonic time the viewer saw
    the avatar's video track published."""

    def __init__(self, env: dict[str, str], name: str, decode: bool) -> None:
        from livekit import rtc

        from tests.harness.viewer import Viewer

        self.env, self.name, self.decode = env, name, decode
        self.agent = rtc.Room()
        self.viewer = Viewer(watch_video=decode)
        self.video_published: float | None = None

        def on_published(pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant) -> None:
            if pub.kind == rtc.TrackKind.KIND_VIDEO and self.video_published is None:
                self.video_published = time.monotonic()

        self.viewer.room.on("track_published", on_published)

    def token(self, identity: str, agent: bool = False) -> str:
        from tests.harness import viewer as harness_viewer

        return harness_viewer.participant_token(self.env["LIVEKIT_API_KEY"], self.env["LIVEKIT_API_SECRET"], self.name, identity, agent=agent)

    async def join(self) -> None:
        from livekit import rtc

        url = self.env["LIVEKIT_URL"]
        await self.agent.connect(url, self.token(AGENT, agent=True), rtc.RoomOptions(auto_subscribe=False))
        await self.viewer.join(url, self.token("viewer"))

    async def leave(self) -> None:
        await self.viewer.leave()
        await self.agent.disconnect()

    def fps(self, start: float, end: float) -> float:
        """Frames received per second over [start, end] (time.time())."""
        return len(self.viewer.frames_between(start, end)) / (end - start)


# --- the bench --------------------------------------------------------------------


@dataclasses.dataclass
class PoolConfig:
    n: int = 8  # sessions per burst
    runners: int = 1  # the pool's replicas; sessionsPerRunner = ceil(n / runners)
    repeats: int = 3  # warm and cold bursts each, as far as the budget allows
    decoders: int = 2  # rooms whose viewer decodes the video
    window_s: float = 5.0  # fps and CPU window once all N are Ready
    settle_s: float = 1.0  # after the last Ready, before the window
    budget_s: float = 360.0  # no new repeat once the part would run past this
    ready_timeout_s: float = 120.0
    # The operator's LiveKit webhook receiver (the stack's port, tests/harness), or polling only.
    webhooks: bool = True
    tag: str = ""  # the namespace's suffix, for parts run one after another


def secret(ns: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c.get("type") == ctype), {})


def _median(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return round(statistics.median(vals), 3) if vals else math.nan


class PoolBench:
    def __init__(self, stack: Stack, artifacts: pathlib.Path, cfg: PoolConfig) -> None:
        from bench.control_plane import (
            RUN_ID,  # the run's id: one namespace prefix for all parts
        )

        self.stack = stack
        self.env = dict(stack.env)
        self.artifacts = artifacts
        self.cfg = cfg
        self.slots = math.ceil(cfg.n / cfg.runners)
        self.ns = f"bench-{RUN_ID}-pool" + ("" if cfg.webhooks else "-polling") + cfg.tag
        self.work = artifacts / f"pool-runners-{RUN_ID}"
        self.kube: BenchKube | None = None
        self.op: OperatorProcess | None = None
        self.watch = ReadyWatch()
        self.http: aiohttp.ClientSession | None = None
        self.ns_created = False

    # -- paths and objects -------------------------------------------------------

    @property
    def sessions_path(self) -> str:
        return f"{GROUP_PATH}/namespaces/{self.ns}/{names.PLURAL}"

    @property
    def pool_path(self) -> str:
        return f"{GROUP_PATH}/namespaces/{self.ns}/{names.POOL_PLURAL}/{POOL}"

    def session(self, kind: str, name: str, room: str) -> dict[str, Any]:
        spec: dict[str, Any] = {"room": room, "agentIdentity": AGENT, "maxDuration": 600}
        spec |= {"poolRef": {"name": POOL}} if kind == "warm" else {"modelPath": MODEL_PATH}
        return {
            "apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.KIND,
            "metadata": {"name": name, "namespace": self.ns}, "spec": spec,
        }

    def pool_runners(self) -> list[dict[str, Any]]:
        """The pool's runner processes, from the records the process pool launcher leaves."""
        out = []
        for p in sorted((self.work / "pools").glob(f"{self.ns}_{POOL}_*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                pass
        return out

    def cold_runner_pids(self) -> list[int]:
        """The operator's `python -m avatar_runner` children that are not pool runners (`serve`)."""
        assert self.op is not None
        pids = []
        try:
            for child in psutil.Process(self.op.pid).children(recursive=True):
                try:
                    cmd = child.cmdline()
                except psutil.Error:
                    continue
                if "avatar_runner" in cmd and "serve" not in cmd:
                    pids.append(child.pid)
        except psutil.Error:
            pass
        return pids

    # -- setup and teardown ------------------------------------------------------------

    async def setup(self) -> float:
        """Namespace, operator, watch, pool; returns the seconds from the pool's create to its Ready."""
        self.kube = BenchKube(self.env["KUBECONFIG"], pool=self.cfg.n + 8)
        self.http = aiohttp.ClientSession()
        crd = await self.kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{names.POOL_PLURAL}.{names.GROUP}")
        if crd is None:
            raise RuntimeError("the AvatarPool CRD is not installed: run `make stack-up` (it applies crds/)")
        await self.kube.create({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": self.ns, "labels": {
                "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest",
                "avatar-operator.dev/bench": "true",
            }},
        })
        self.ns_created = True
        # The plugin's rule wants a bitHuman credential for local mode; the portrait renderer never uses it.
        await self.kube.create(secret(self.ns, "bithuman-credentials", {"BITHUMAN_API_TOKEN": "bench-not-used-by-the-portrait-renderer"}))
        self.work.mkdir(parents=True, exist_ok=True)
        env = operator_env(
            self.stack.process_env(),
            livekit_url=self.stack.livekit_url,
            fake_urls={"url": "http://127.0.0.1:9/unused", "mint_url": "http://127.0.0.1:9/unused"},
            runner_image="registry.invalid/avatar-runner:bench",
            extra={
                "AVATAR_RUNNER_LAUNCHER": "process",
                "AVATAR_RUNNER_RENDERER": "portrait",
                "AVATAR_PROCESS_WORKDIR": str(self.work),
                "LIVEKIT_API_KEY": self.env["LIVEKIT_API_KEY"],
                "LIVEKIT_API_SECRET": self.env["LIVEKIT_API_SECRET"],
                **({} if self.cfg.webhooks else {"AVATAR_WEBHOOK_PORT": "0"}),
            },
        )
        if self.cfg.webhooks and not env.get("AVATAR_WEBHOOK_PORT"):
            raise RuntimeError("the stack sends no webhooks (no AVATAR_STACK_WEBHOOK_PORTS in .stack/env): run `make stack-up`")
        log_name = "pool-operator.log" if self.cfg.webhooks else "pool-operator-polling.log"
        self.op = OperatorProcess(env, self.artifacts / log_name, [self.ns], stop_grace=30.0)
        self.op.start()
        await self.watch.start(self.env["KUBECONFIG"], self.ns)
        t0 = time.monotonic()
        await self.kube.create({
            "apiVersion": f"{names.GROUP}/{names.VERSION}", "kind": names.POOL_KIND,
            "metadata": {"name": POOL, "namespace": self.ns},
            "spec": {"replicas": self.cfg.runners, "sessionsPerRunner": self.slots, "modelPath": MODEL_PATH},
        })
        deadline = t0 + self.cfg.ready_timeout_s
        while condition(await self.kube.get(self.pool_path), "Ready").get("status") != "True":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pool was not Ready in {self.cfg.ready_timeout_s:.0f} s; see {self.op.log}")
            if not self.op.alive():
                raise RuntimeError(f"the operator exited; see {self.op.log}")
            await asyncio.sleep(0.1)
        ready_s = time.monotonic() - t0
        log(f"pool: {self.cfg.runners} runner(s) x {self.slots} slots Ready {ready_s:.1f} s after its create")
        return ready_s

    async def teardown(self) -> None:
        kube = self.kube
        if kube is not None and self.ns_created:
            try:
                await self.delete_sessions(60)
                await kube.request("DELETE", self.pool_path, ok404=True)
                deadline = time.monotonic() + 60
                while await kube.get(self.pool_path) is not None and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
            except Exception as e:  # noqa: BLE001
                log(f"pool teardown: {e}")
        await self.watch.stop()
        if self.op is not None:
            await asyncio.to_thread(self.op.stop)
        if kube is not None:
            if self.ns_created:
                try:
                    # Finalizers of anything the stopped operator left, then the namespace.
                    for path in (self.sessions_path, f"{GROUP_PATH}/namespaces/{self.ns}/{names.POOL_PLURAL}"):
                        for item in ((await kube.get(path)) or {}).get("items") or []:
                            if item["metadata"].get("finalizers"):
                                try:
                                    await kube.merge_patch(f"{path}/{item['metadata']['name']}", {"metadata": {"finalizers": None}})
                                except ApiError as e:
                                    if e.status != 404:
                                        raise
                    await kube.delete({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.ns}})
                except Exception as e:  # noqa: BLE001
                    log(f"could not delete namespace {self.ns}: {e}")
            await kube.close()
        if self.http is not None:
            await self.http.close()

    async def delete_sessions(self, timeout: float) -> float:
        assert self.kube is not None
        t = time.monotonic()
        await self.kube.request("DELETE", self.sessions_path, ok404=True)
        while (listed := await self.kube.get(self.sessions_path, limit=1)) and listed.get("items"):
            if time.monotonic() - t > timeout:
                log(f"sessions in {self.ns} not finalized after {timeout:.0f} s")
                break
            await asyncio.sleep(0.2)
        return time.monotonic() - t

    async def wait_idle(self, timeout: float = 60.0) -> None:
        """Until the pool shows no busy slot and no cold runner is left."""
        assert self.kube is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pool = await self.kube.get(self.pool_path)
            slots = ((pool or {}).get("status") or {}).get("slots") or {}
            if slots.get("busy") == 0 and slots.get("free") == slots.get("total") and not self.cold_runner_pids():
                return
            await asyncio.sleep(0.2)
        log(f"pool not idle after {timeout:.0f} s: slots {slots}, cold runners {self.cold_runner_pids()}")

    async def runner_frames(self) -> float:
        """Frames the pool's runners published (their /metrics, all sessions added up)."""
        assert self.http is not None
        total = 0.0
        for r in self.pool_runners():
            try:
                _, page = await http_get(f"http://127.0.0.1:{r['port']}/metrics", self.http)
                total += metric(page, "avatar_video_frames_published_total", 0.0)
            except (aiohttp.ClientError, OSError):
                return math.nan
        return total

    # -- one burst ------------------------------------------------------------------------

    async def cost_window(self, pids: list[int]) -> dict[str, float]:
        """CPU (% of one core) and RSS (MiB) of `pids` over the window; the pool runners' published frames."""
        f0 = await self.runner_frames()
        t0, c0, _ = sample(pids)
        await asyncio.sleep(self.cfg.window_s)
        t1, c1, rss = sample(pids)
        f1 = await self.runner_frames()
        return {"cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 1), "rss_mib": round(rss, 1), "frames_per_s": round((f1 - f0) / (t1 - t0), 2)}

    async def burst(self, kind: str, rep: int) -> dict[str, Any]:
        assert self.kube is not None and self.op is not None
        n = self.cfg.n
        tag = f"{kind[0]}{rep}"
        names_ = [f"{tag}-{i}" for i in range(n)]
        rooms = [Room(self.env, f"{self.ns}-{tag}-{i}", decode=i < self.cfg.decoders) for i in range(n)]
        result: dict[str, Any] = {"kind": kind, "rep": rep, "n": n}
        await asyncio.gather(*(r.join() for r in rooms))
        try:
            pool_pids = [int(r["pid"]) for r in self.pool_runners()]
            if kind == "warm":
                await asyncio.sleep(0.5)
                result["runner_at_0"] = await self.cost_window(pool_pids)
            created: dict[str, float] = {}

            async def create(i: int) -> None:
                created[names_[i]] = time.monotonic()
                await self.kube.create(self.session(kind, names_[i], rooms[i].name))  # type: ignore[union-attr]

            t_begin = time.monotonic()
            await asyncio.gather(*(create(i) for i in range(n)))
            result["create_s"] = round(time.monotonic() - t_begin, 3)
            missing = await self.watch.wait(names_, "Ready", self.cfg.ready_timeout_s)
            ready = {x: self.watch.seen(x, "Ready") for x in names_}
            lat = [t - created[x] for x, t in ready.items() if t is not None]
            media = [r.video_published - created[x] for x, r in zip(names_, rooms) if r.video_published is not None]
            # The operator's lag behind the media plane, per session (negative: Ready before the viewer saw the track).
            lag = [t - r.video_published for x, r in zip(names_, rooms) if (t := ready[x]) is not None and r.video_published is not None]
            # Starting: warm, the runner accepted the launch (a task id); cold, the runner process started.
            starting = [t - created[x] for x in names_ if (t := self.watch.seen(x, "phase:Starting")) is not None]
            result |= {
                "starting": stats.summary_ms(starting),
                "ready": stats.summary_ms(lat),
                "video_at_viewer": stats.summary_ms(media),
                "ready_after_video": stats.summary_ms(lag),
                "ready_s_each": sorted(round(v, 2) for v in lat),
                "incomplete": len(missing),
                "failed": sum(1 for x in names_ if self.watch.seen(x, "phase:Failed") is not None),
            }
            if missing:
                log(f"{kind} burst {rep}: {len(missing)} session(s) not Ready in {self.cfg.ready_timeout_s:.0f} s: {missing}")
            if kind == "warm":
                placed: dict[str, int] = {}
                for x in names_:
                    obj = await self.kube.get(f"{self.sessions_path}/{x}")
                    pod = str((((obj or {}).get("status") or {}).get("runner") or {}).get("pod"))
                    placed[pod] = placed.get(pod, 0) + 1
                result["sessions_per_runner"] = placed
            await asyncio.sleep(self.cfg.settle_s)
            pids = pool_pids if kind == "warm" else self.cold_runner_pids()
            w0 = time.time()
            window = await self.cost_window(pids)
            w1 = time.time()
            result["runner_at_n" if kind == "warm" else "cold_runners"] = window | {"processes": len(pids)}
            ended = {x: self.watch.why[x] for x in names_ if x in self.watch.why}
            if ended:  # before the deletion: sessions that ended on their own during the burst
                result["ended_early"] = ended
            result["viewer_fps"] = [round(r.fps(w0, w1), 2) for r in rooms if r.decode]
            if kind == "warm":
                result["runner_fps_per_session"] = round(window["frames_per_s"] / n, 2)
            log(f"{kind} burst {rep}: " + json.dumps({k: v for k, v in result.items() if k not in ("ready_s_each",)}))
        finally:
            result["delete_s"] = round(await self.delete_sessions(60), 2)
            await asyncio.gather(*(r.leave() for r in rooms), return_exceptions=True)
            await self.wait_idle()
        return result

    # -- the part -----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        out: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "renderer": "portrait (built-in CPU renderer, standing in for bitHuman's GPU model)",
            "n": self.cfg.n, "runners": self.cfg.runners, "sessions_per_runner": self.slots,
            "decoding_viewers": self.cfg.decoders, "window_s": self.cfg.window_s,
            "ready_detection": "watch on AvatarSessions (own process), first Ready=True; from monotonic time before each create request",
            "readiness": "webhooks" if self.cfg.webhooks else "polling",
        }
        runs: list[dict[str, Any]] = []
        try:
            out["pool_ready_s"] = round(await self.setup(), 2)
            rep_s = 0.0
            for rep in range(self.cfg.repeats):
                if rep and time.monotonic() - started + rep_s > self.cfg.budget_s:
                    log(f"pool: stopping after {rep} repeat(s): another would pass the {self.cfg.budget_s:.0f} s budget")
                    break
                t = time.monotonic()
                for kind in (("warm", "cold") if rep % 2 == 0 else ("cold", "warm")):
                    runs.append(await self.burst(kind, rep))
                rep_s = max(rep_s, time.monotonic() - t)
        except Exception as e:  # noqa: BLE001 - keep what was measured, say what broke
            out["error"] = f"{type(e).__name__}: {e}"
            log(f"pool part failed: {out['error']}")
        finally:
            await self.teardown()
        out |= summarize(runs, self.cfg.n)
        if self.cfg.webhooks and self.op is not None:  # the receiver listened (not a port another operator held)
            out["webhook_receiver"] = "webhook receiver on" in self.op.logs()
        out["runs"] = runs
        out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        out["duration_s"] = round(time.monotonic() - started, 1)
        return out


async def webhooks_and_polling(stack: Stack, artifacts: pathlib.Path, cfg: PoolConfig) -> dict[str, Any]:
    """The part with the operator's webhook receiver on and off, alternating one repeat of each
    (each its own namespace, operator and pool), so both see the machine's load of the moment.
    The webhooks' figures are the part's; the polling ones beside them under `polling`."""
    parts: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    for rep in range(cfg.repeats):
        for on in ((True, False) if rep % 2 == 0 else (False, True)):
            one = dataclasses.replace(cfg, repeats=1, webhooks=on, tag=f"-{rep}", budget_s=math.inf)
            parts[on].append(await PoolBench(stack, artifacts, one).run())
    out: dict[str, dict[str, Any]] = {}
    for on, done in parts.items():
        runs = [r | {"rep": i} for i, d in enumerate(done) for r in d.get("runs") or []]
        first = done[0]
        out[on] = {k: v for k, v in first.items() if k not in ("runs", "warm", "cold", "runner_cost", "cold_over_warm_p50", "cold_over_warm_p99")}
        out[on] |= summarize(runs, cfg.n) | {"runs": runs, "repeats_alternated": True}
        out[on]["loadavg_each"] = [[d.get("loadavg_start"), d.get("loadavg_end")] for d in done]
        out[on]["duration_s"] = round(sum(d.get("duration_s") or 0 for d in done), 1)
        errors = [d["error"] for d in done if d.get("error")]
        if errors:
            out[on]["error"] = "; ".join(errors)
    return out[True] | {"polling": out[False]}


def summarize(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Medians over the repeats, the cold/warm ratios and the runner's cost per extra session."""
    out: dict[str, Any] = {}
    for kind in ("warm", "cold"):
        rs = [r for r in runs if r["kind"] == kind and "ready" in r]
        if not rs:
            continue
        fps = [f for r in rs for f in r.get("viewer_fps") or []]
        out[kind] = {
            "repeats": len(rs),
            "starting_p50_ms": _median([r["starting"]["p50_ms"] for r in rs]),
            "starting_p99_ms": _median([r["starting"]["p99_ms"] for r in rs]),
            "ready_p50_ms": _median([r["ready"]["p50_ms"] for r in rs]),
            "ready_p99_ms": _median([r["ready"]["p99_ms"] for r in rs]),
            "video_at_viewer_p50_ms": _median([r["video_at_viewer"]["p50_ms"] for r in rs]),
            "video_at_viewer_p99_ms": _median([r["video_at_viewer"]["p99_ms"] for r in rs]),
            "ready_after_video_p50_ms": _median([r.get("ready_after_video", {}).get("p50_ms", math.nan) for r in rs]),
            "ready_after_video_p99_ms": _median([r.get("ready_after_video", {}).get("p99_ms", math.nan) for r in rs]),
            "viewer_fps_median": _median(fps),
            "viewer_fps_min": min(fps) if fps else math.nan,
            "incomplete": sum(r.get("incomplete", 0) for r in rs),
            "failed": sum(r.get("failed", 0) for r in rs),
            "ended_early": sum(len(r.get("ended_early") or {}) for r in rs),
        }
        if kind == "warm":
            out[kind]["runner_fps_per_session"] = _median([r.get("runner_fps_per_session", math.nan) for r in rs])
        else:
            cold = [r["cold_runners"] for r in rs if r.get("cold_runners", {}).get("processes")]
            out[kind]["cpu_pct_per_session"] = _median([c["cpu_pct"] / c["processes"] for c in cold])
            out[kind]["rss_mib_per_session"] = _median([c["rss_mib"] / c["processes"] for c in cold])
    if "warm" in out and "cold" in out:
        out["cold_over_warm_p50"] = stats.ratio(out["cold"]["ready_p50_ms"], out["warm"]["ready_p50_ms"])
        out["cold_over_warm_p99"] = stats.ratio(out["cold"]["ready_p99_ms"], out["warm"]["ready_p99_ms"])
    warm = [r for r in runs if r["kind"] == "warm" and "runner_at_n" in r and "runner_at_0" in r]
    if warm:
        extra_cpu = [(r["runner_at_n"]["cpu_pct"] - r["runner_at_0"]["cpu_pct"]) / n for r in warm]
        # RSS: the first repeat's is from a fresh runner; later ones start from what earlier sessions left.
        first = warm[0]
        out["runner_cost"] = {
            "cpu_pct_at_0": _median([r["runner_at_0"]["cpu_pct"] for r in warm]),
            "cpu_pct_at_n": _median([r["runner_at_n"]["cpu_pct"] for r in warm]),
            "cpu_pct_per_extra_session": _median(extra_cpu),
            "rss_mib_at_0_first": first["runner_at_0"]["rss_mib"],
            "rss_mib_at_n_first": first["runner_at_n"]["rss_mib"],
            "rss_mib_per_extra_session": round((first["runner_at_n"]["rss_mib"] - first["runner_at_0"]["rss_mib"]) / n, 1),
            "rss_mib_at_0_each_repeat": [r["runner_at_0"]["rss_mib"] for r in warm],
            "rss_mib_at_n_each_repeat": [r["runner_at_n"]["rss_mib"] for r in warm],
            "note": "CPU in % of one core (utime+stime from /proc over the window); RSS per extra session from the first repeat (a fresh runner)",
        }
    return out


def table(p: dict[str, Any]) -> list[str]:
    def f(v: Any, d: int = 0) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{d}f}"

    head = (f"pool: {p.get('runners')} runner(s) x {p.get('sessions_per_runner')} slots ({p.get('renderer')}), bursts of N={p.get('n')}, "
            f"pool Ready {f(p.get('pool_ready_s'), 1)} s after its create; Ready from {p.get('readiness', 'polling')}; medians of repeats")
    lines = [head]
    for kind in ("warm", "cold"):
        k = p.get(kind)
        if k:
            lines.append(
                f"  {kind}: create -> Starting p50 {f(k['starting_p50_ms'])} ms; -> Ready p50 {f(k['ready_p50_ms'])} ms, p99 {f(k['ready_p99_ms'])} ms; video at the viewer p50 {f(k['video_at_viewer_p50_ms'])} ms, "
                f"p99 {f(k['video_at_viewer_p99_ms'])} ms; Ready after the video p50 {f(k.get('ready_after_video_p50_ms'))} ms; viewer fps {f(k['viewer_fps_median'], 2)} (min {f(k['viewer_fps_min'], 2)}); repeats {k['repeats']}"
                + (f"; {k['incomplete']} not Ready" if k.get("incomplete") else "")
                + (f"; {k['ended_early']} ended on their own" if k.get("ended_early") else "")
            )
    if "cold_over_warm_p50" in p:
        lines.append(f"  cold / warm: p50 x{f(p['cold_over_warm_p50'], 1)}, p99 x{f(p['cold_over_warm_p99'], 1)}")
    rc = p.get("runner_cost")
    if rc:
        lines.append(
            f"  pool runner: CPU {f(rc['cpu_pct_at_0'], 1)} % idle, {f(rc['cpu_pct_at_n'], 1)} % with N -> {f(rc['cpu_pct_per_extra_session'], 1)} % of a core per extra session; "
            f"RSS {f(rc['rss_mib_at_0_first'], 1)} -> {f(rc['rss_mib_at_n_first'], 1)} MiB -> {f(rc['rss_mib_per_extra_session'], 1)} MiB per extra session"
        )
    cold = p.get("cold") or {}
    if "cpu_pct_per_session" in cold:
        lines.append(f"  cold runners: {f(cold['cpu_pct_per_session'], 1)} % of a core and {f(cold['rss_mib_per_session'], 1)} MiB per session (one process each)")
    if p.get("error"):
        lines.append(f"  error: {p['error']}")
    lines.append(f"  ({f(p.get('duration_s'))} s)")
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "watch":
        asyncio.run(watch_main(sys.argv[2], sys.argv[3]))
    else:
        sys.exit("usage: python -m bench.pool watch KUBECONFIG NAMESPACE (the bench runs it; run the part with python -m bench --only pool)")
