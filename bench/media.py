"""Part 2: the runner's media path (portrait renderer, real livekit-server).

A demo agent (`python -m avatar_runner.demo_agent`) speaks one long utterance
of real speech (the bitHuman wheel's sample, looped; synthetic speech when the
wheel is absent) to a runner (`python -m avatar_runner`, AVATAR_RENDERER=portrait)
through the LiveKit Agents avatar protocol, and a viewer in the bench process
subscribes to what the avatar publishes.

Measured:
- first_frame_ms: the runner's own histogram, from a speech segment's first
  audio at the runner to its first video frame handed to LiveKit;
- fps and drop_ratio: video frames the viewer received while the agent's
  speech played (the agent's lk.playback_started .. lk.playback_finished);
  drops are the frame slots missing against 25 fps;
- av_offset_ms: the lag between the audio the viewer heard and the mouth it
  saw, by cross-correlating the received loudness (mapped to a mouth opening
  the way the renderer maps it) with the mouth's darkness on the received
  pixels; positive: video behind audio;
- CPU per session: the runner process's CPU over the speech, in cores;
- sessions per core: k = 1, 2, 4 sessions at once (runner-side counters, no
  viewer, so the bench's own decoding does not compete); the largest k whose
  every runner holds >= 24.5 fps with < 1 % dropped slots, and 1 / (cores per
  session) measured there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import math
import pathlib
import sys
import time
import wave
from typing import Any

import aiohttp
import numpy as np
import psutil
from avatar_operator.build.token import avatar_token

from bench import stats
from bench.control_plane import RUN_ID, log
from tests.harness import viewer as harness_viewer
from tests.harness.net import free_port, http_get, metric, wait_healthy
from tests.harness.stack import ROOT
from tests.harness.viewer import Viewer

AGENT = "agent-1"
AVATAR = "bithuman-avatar-agent"
FPS = 25.0
SILENCE_DBFS = -50.0
# Windows of the offset and the viewer's jitter buffers (av_offset_windows, av_offset_net_ms).
NET_WINDOW_S = 5.0
NET_MAX_BUFFER_MS = 400.0
STARTUP_TIMEOUT_S = 120.0
# The demo agent hands its speech over at most this many times as fast as it
# plays, as a streaming TTS does. All at once (a 30-60 s utterance in one
# burst, through the server and the viewer on the same two cores) swelled the
# viewer's audio jitter buffer to 0.25-1.2 s and lost 3-4 % of its frames
# (bench/PERFORMANCE.md, "Lip sync").
AGENT_PACE = 2.0


def participant_token(env: dict[str, str], room: str, identity: str, *, agent: bool = False) -> str:
    return harness_viewer.participant_token(env["LIVEKIT_API_KEY"], env["LIVEKIT_API_SECRET"], room, identity, agent=agent)


def speech_wav(path: pathlib.Path, seconds: float) -> str:
    """A 16-bit mono WAV of `seconds` of speech; returns where it came from."""
    from avatar_runner import demo_agent

    sample = demo_agent.bundled_speech()
    if sample is not None:
        samples, rate = demo_agent.read_wav(sample)
        source = "bitHuman demo_sample.wav, looped"
    else:
        rate = demo_agent.SYNTHETIC_RATE
        samples = demo_agent.synthetic_speech(seconds, rate)
        source = "synthetic speech"
    n = int(seconds * rate)
    reps = math.ceil(n / len(samples))
    looped = np.tile(samples, reps)[:n]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(looped.astype(np.int16).tobytes())
    return source


def av_offset_ms(viewer: Viewer, start: float, end: float) -> tuple[float, float]:
    """(lag in ms of the mouth behind the audio, peak correlation) over [start, end]."""
    from avatar_runner.renderers import portrait_motion as portrait

    step = 0.005
    grid = np.arange(start, end, step)
    if len(grid) < 400:
        return math.nan, math.nan
    at = np.array([a[0] for a in viewer.audio])
    db = np.array([a[1] for a in viewer.audio])
    # The renderer's mapping of loudness to opening (instant attack, release per frame).
    opening = np.clip((db - portrait.SILENCE_DBFS) / (portrait.FULL_OPEN_DBFS - portrait.SILENCE_DBFS), 0, 1)
    frame_len = 1 / FPS
    slots = np.arange(start, end, frame_len)
    predicted = np.zeros(len(slots))
    level = 0.0
    for i, s in enumerate(slots):
        sel = (at >= s) & (at < s + frame_len)
        target = float(np.max(opening[sel])) if sel.any() else 0.0
        level = target if target >= level else max(target, level * portrait.MOUTH_RELEASE)
        predicted[i] = level
    vt = np.array([v[0] for v in viewer.video if not math.isnan(v[2])])
    vm = np.array([v[2] for v in viewer.video if not math.isnan(v[2])])
    if len(vt) < 50:
        return math.nan, math.nan
    a = np.interp(grid, slots + frame_len / 2, predicted)
    b = np.interp(grid, vt, vm)
    a = (a - a.mean()) / (a.std() or 1)
    b = (b - b.mean()) / (b.std() or 1)
    best, best_lag = -2.0, 0
    max_lag = int(0.5 / step)
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            c = float(np.mean(a[: len(a) - lag] * b[lag:]))
        else:
            c = float(np.mean(a[-lag:] * b[: len(b) + lag]))
        if c > best:
            best, best_lag = c, lag
    return round(best_lag * step * 1000, 1), round(best, 3)


def _onsets(times: list[float], values: list[float], threshold: float, quiet_s: float) -> list[float]:
    """Times where `values` rises above `threshold` after at least `quiet_s` below it."""
    out, last = [], -1e9
    for t, v in zip(times, values):
        if v > threshold:
            if t - last > quiet_s:
                out.append(t)
            last = t
    return out


def av_offset_onsets_ms(viewer: Viewer, start: float, end: float) -> tuple[float, int]:
    """(median lag in ms of mouth openings behind speech onsets, pairs): each onset of
    sound after >= 150 ms of quiet, paired with the mouth opening nearest to it."""
    audio = [(t, db) for t, db, _ in viewer.audio if start <= t <= end]
    video = [(t, m) for t, _, m in viewer.video if start <= t <= end and not math.isnan(m)]
    sound = _onsets([t for t, _ in audio], [db for _, db in audio], -40.0, 0.15)
    mouth = _onsets([t for t, _ in video], [m for _, m in video], 0.05, 0.15)
    lags = []
    for a in sound:
        near = [v - a for v in mouth if -0.3 < v - a < 0.5]
        if near:
            lags.append(min(near, key=abs))
    if not lags:
        return math.nan, 0
    return round(1000 * float(np.median(lags)), 1), len(lags)


def jitter_buffer_ms(viewer: Viewer, kind: str, start: float, end: float) -> float:
    """Mean time (ms) the `kind` track's media waited in the viewer's own jitter buffer over [start, end]."""
    samples = [(delay, emitted) for t, k, delay, emitted in viewer.jitter if k == kind and start <= t <= end]
    if len(samples) < 2 or samples[-1][1] <= samples[0][1]:
        return math.nan
    return round(1000 * (samples[-1][0] - samples[0][0]) / (samples[-1][1] - samples[0][1]), 1)


def av_offset_windows(viewer: Viewer, start: float, end: float) -> list[dict[str, float]]:
    """The offset and the viewer's own jitter-buffer delays per NET_WINDOW_S window, in ms.

    In a room LiveKit creates on join (no sync_streams) a viewer plays each
    track as soon as its own jitter buffer lets it: on this shared machine the
    audio one swells to 0.2-1 s within seconds of the speech's start and
    drains over ~15 s while the video one holds 0-40 ms, and the offset the
    viewer sees follows it (bench/PERFORMANCE.md, "Runner")."""
    out = []
    t = start
    while t + NET_WINDOW_S <= end:
        offset, _ = av_offset_ms(viewer, t, t + NET_WINDOW_S)
        out.append({
            "from_s": round(t - start, 1), "av_offset_ms": offset,
            "audio_jitter_buffer_ms": jitter_buffer_ms(viewer, "audio", t, t + NET_WINDOW_S),
            "video_jitter_buffer_ms": jitter_buffer_ms(viewer, "video", t, t + NET_WINDOW_S),
        })
        t += NET_WINDOW_S
    return out


def av_offset_net_ms(windows: list[dict[str, float]]) -> float:
    """Median over windows of the offset plus (audio minus video jitter-buffer delay), in ms.

    Per window the offset the viewer sees follows its own jitter buffers'
    difference (bench/PERFORMANCE.md, "Runner"); net of it, what is left is
    what reached the viewer: the runner and the rest of the pipeline. Windows
    whose audio buffer is beyond NET_MAX_BUFFER_MS are left out: av_offset_ms
    searches lags of +-500 ms only."""
    nets = [
        w["av_offset_ms"] + w["audio_jitter_buffer_ms"] - w["video_jitter_buffer_ms"]
        for w in windows
        if not any(math.isnan(w[k]) for k in ("av_offset_ms", "audio_jitter_buffer_ms", "video_jitter_buffer_ms"))
        and w["audio_jitter_buffer_ms"] < NET_MAX_BUFFER_MS
    ]
    return round(float(np.median(nets)), 1) if nets else math.nan


def inbound_frames(viewer: Viewer, start: float, end: float) -> dict[str, int]:
    """Video frames the viewer's WebRTC stack received, decoded and dropped over [start, end]."""
    samples = [x for x in viewer.video_inbound if start <= x[0] <= end]
    if len(samples) < 2:
        return {}
    first, last = samples[0], samples[-1]
    return {"rtc_frames_received": last[1] - first[1], "rtc_frames_decoded": last[2] - first[2], "rtc_frames_dropped": last[3] - first[3],
            "rtc_window_s": round(last[0] - first[0], 2)}


def nan_metric(page: str, name: str) -> float:
    """The sample on the runner's /metrics page; NaN when absent (no measurement)."""
    return metric(page, name, math.nan)


@dataclasses.dataclass
class Session:
    j: int
    room: str
    port: int
    proc: psutil.Process | None = None
    agent: asyncio.subprocess.Process | None = None
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    at_start: tuple[float, float, float, float] | None = None  # t, cpu, published, dropped
    at_end: tuple[float, float, float, float] | None = None
    page: str = ""


class MediaBench:
    def __init__(self, stack_env: dict[str, str], artifacts: pathlib.Path, speech_s: float, ks: list[int], scan_speech_s: float) -> None:
        self.env = stack_env
        self.artifacts = artifacts
        self.speech_s = speech_s
        self.scan_speech_s = scan_speech_s
        self.ks = ks

    async def run_k(self, k: int, speech_s: float, with_viewer: bool) -> dict[str, Any]:
        from avatar_runner.launcher import RunnerLauncher

        work = self.artifacts / f"media-k{k}"
        work.mkdir(parents=True, exist_ok=True)
        wav = work / "speech.wav"
        source = speech_wav(wav, speech_s)
        launcher = RunnerLauncher(work / "runners")
        sessions = [Session(j, f"bench-{RUN_ID}-media-k{k}-{j}", free_port()) for j in range(k)]
        # One listener per room (an audio-only one costs the bench little CPU);
        # the first room's viewer also decodes the video when with_viewer.
        viewers = [Viewer(watch_video=with_viewer and j == 0) for j in range(k)]
        viewer = viewers[0] if with_viewer else None
        env = self.env
        async with aiohttp.ClientSession() as http:
            try:
                for s in sessions:
                    token = avatar_token(
                        api_key=env["LIVEKIT_API_KEY"], api_secret=env["LIVEKIT_API_SECRET"], room=s.room, identity=AVATAR,
                        name="Avatar", agent_identity=AGENT, ttl=datetime.timedelta(minutes=30),
                    )
                    pid = launcher.start(f"s{s.j}", {
                        "LIVEKIT_URL": env["LIVEKIT_URL"], "LIVEKIT_TOKEN": token, "AGENT_IDENTITY": AGENT,
                        "AVATAR_RENDERER": "portrait", "HEALTH_PORT": str(s.port),
                    })
                    s.proc = psutil.Process(pid)
                for s in sessions:
                    await wait_healthy(f"http://127.0.0.1:{s.port}/healthz", launcher, f"s{s.j}", STARTUP_TIMEOUT_S, http)
                for s, v in zip(sessions, viewers):
                    await v.join(env["LIVEKIT_URL"], participant_token(env, s.room, "viewer"))
                for s in sessions:
                    s.agent = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "avatar_runner.demo_agent", "--url", env["LIVEKIT_URL"],
                        "--token", participant_token(env, s.room, AGENT, agent=True), "--avatar-identity", AVATAR,
                        "--wav", str(wav), "--lead-in", "1.5", "--linger", "1.0", "--pace", str(AGENT_PACE),
                        cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=open(work / f"agent-{s.j}.log", "wb"),
                    )
                async def watchdog() -> None:
                    # A runner that dies leaves its agent waiting for playback: fail now, not at the timeout.
                    while True:
                        await asyncio.sleep(0.5)
                        for s in sessions:
                            if not launcher.is_running(f"s{s.j}") and s.at_end is None:
                                raise RuntimeError(f"runner {s.j} exited: {launcher.status(f's{s.j}')}")

                followers = asyncio.gather(*(self._follow(http, s) for s in sessions))
                dog = asyncio.ensure_future(watchdog())
                try:
                    done, _ = await asyncio.wait({followers, dog}, timeout=speech_s + STARTUP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
                    if not done:
                        raise TimeoutError(f"speech did not finish in {speech_s + STARTUP_TIMEOUT_S:.0f} s")
                    for fut in done:
                        fut.result()
                finally:
                    dog.cancel()
                    followers.cancel()
            finally:
                for s in sessions:
                    if s.agent is not None and s.agent.returncode is None:
                        s.agent.kill()
                        await s.agent.wait()
                for s in sessions:
                    await asyncio.to_thread(launcher.stop, f"s{s.j}", 10.0)
                for v in viewers:
                    await v.leave()

        per: list[dict[str, Any]] = []
        for s in sessions:
            if s.at_start is None or s.at_end is None:
                per.append({"j": s.j, "error": "speech never played"})
                continue
            dt = s.at_end[0] - s.at_start[0]
            published = s.at_end[2] - s.at_start[2]
            dropped = max(0.0, s.at_end[3] - s.at_start[3])
            segs = nan_metric(s.page, "avatar_audio_to_video_latency_seconds_count")
            per.append({
                "j": s.j,
                "runner_fps": round(published / dt, 2),
                "runner_drop_ratio": round(dropped / max(1.0, published + dropped), 4),
                "cpu_cores": round((s.at_end[1] - s.at_start[1]) / dt, 3),
                "first_frame_ms": round(1000 * nan_metric(s.page, "avatar_audio_to_video_latency_seconds_sum") / max(1.0, segs), 1),
                "time_to_first_frame_s": nan_metric(s.page, "avatar_time_to_first_frame_seconds"),
                "speech_s": round(dt, 2),
            })
        result: dict[str, Any] = {"k": k, "speech_source": source, "sessions": per}
        good = [p for p in per if "error" not in p]
        if good:
            result["fps_min"] = min(p["runner_fps"] for p in good)
            result["drop_ratio_max"] = max(p["runner_drop_ratio"] for p in good)
            result["cpu_cores_per_session"] = round(sum(p["cpu_cores"] for p in good) / len(good), 3)
            result["holds_25fps"] = len(good) == k and result["fps_min"] >= 24.5 and result["drop_ratio_max"] < 0.01
        if viewer is not None and sessions[0].events:
            (work / "viewer.json").write_text(json.dumps({"video": viewer.video, "audio": viewer.audio, "jitter": viewer.jitter, "video_inbound": viewer.video_inbound, "events": sessions[0].events}))
            result["viewer"] = self._viewer_figures(viewer, sessions[0])
        log(f"runner k={k}: " + json.dumps({kk: v for kk, v in result.items() if kk not in ("sessions", "speech_source")}))
        return result

    def _viewer_figures(self, viewer: Viewer, s: Session) -> dict[str, Any]:
        started = next((e["t"] for e in s.events if e["event"] == "playback_started"), None)
        finished = next((e["t"] for e in s.events if e["event"] == "playback_finished"), None)
        speaking = next((e["t"] for e in s.events if e["event"] == "speaking"), None)
        if started is None or finished is None:
            return {"error": "no playback"}
        frames = [f for f in viewer.video if started <= f[0] <= finished]
        dur = finished - started
        times = [f[0] for f in frames]
        gaps = np.diff(times) if len(times) > 1 else np.array([0.0])
        # Frame slots missing: a gap of g seconds hides round(g * fps) - 1 frames.
        missing = int(sum(max(0, round(g * FPS) - 1) for g in gaps))
        loud = [t for t, db, _ in viewer.audio if t >= (speaking or started) and db > SILENCE_DBFS]
        mouth = [t for t, _, m in viewer.video if t >= (speaking or started) and not math.isnan(m) and m > 0.05]
        offset, corr = av_offset_ms(viewer, started + 0.5, finished - 0.2)
        windows = av_offset_windows(viewer, started + 0.5, finished - 0.2)
        onset_offset, pairs = av_offset_onsets_ms(viewer, started, finished)
        return {
            "fps": round(len(frames) / dur, 2),
            "frames": len(frames),
            "speech_s": round(dur, 2),
            "drop_ratio": round(max(0.0, 1 - len(frames) / (dur * FPS)), 4),
            "missing_slots": missing,
            "frame_gap_p99_ms": round(stats.percentile(list(gaps * 1000), 99), 1),
            "av_offset_ms": offset,
            "av_correlation": corr,
            "av_offset_onsets_ms": onset_offset,
            "av_onset_pairs": pairs,
            "audio_jitter_buffer_ms": jitter_buffer_ms(viewer, "audio", started, finished),
            "video_jitter_buffer_ms": jitter_buffer_ms(viewer, "video", started, finished),
            **inbound_frames(viewer, started, finished),
            "av_offset_windows": windows,
            "av_offset_net_ms": av_offset_net_ms(windows),
            "first_audio_at_viewer_ms": round(1000 * (loud[0] - speaking), 1) if loud and speaking else math.nan,
            "first_open_mouth_at_viewer_ms": round(1000 * (mouth[0] - speaking), 1) if mouth and speaking else math.nan,
        }

    async def _sample(self, http: aiohttp.ClientSession, s: Session) -> tuple[float, float, float, float]:
        assert s.proc is not None
        t = time.time()
        cpu = s.proc.cpu_times()
        _, page = await http_get(f"http://127.0.0.1:{s.port}/metrics", http)
        s.page = page
        return (t, cpu.user + cpu.system, nan_metric(page, "avatar_video_frames_published_total"), nan_metric(page, "avatar_video_frames_dropped_total"))

    async def _follow(self, http: aiohttp.ClientSession, s: Session) -> None:
        assert s.agent is not None and s.agent.stdout is not None
        async for line in s.agent.stdout:
            event = json.loads(line)
            s.events.append(event)
            if event["event"] == "playback_started" and s.at_start is None:
                s.at_start = await self._sample(http, s)
            elif event["event"] == "playback_finished" and s.at_end is None:
                s.at_end = await self._sample(http, s)
        code = await s.agent.wait()
        if code != 0:
            raise RuntimeError(f"demo agent {s.j} exited {code}")

    async def run_k_safe(self, k: int, speech_s: float, with_viewer: bool) -> dict[str, Any]:
        """run_k, with a failure recorded as the result (a runner that dies under load is a finding)."""
        try:
            return await self.run_k(k, speech_s, with_viewer)
        except Exception as e:  # noqa: BLE001
            reasons = []
            for f in sorted((self.artifacts / f"media-k{k}" / "runners").glob("*.termination-log")):
                text = f.read_text().strip()
                if text:
                    reasons.append(f"{f.stem}: {text}")
            log(f"runner k={k} failed: {type(e).__name__}: {e}; runner exits: {reasons}")
            return {"k": k, "error": f"{type(e).__name__}: {e}", "runner_exits": reasons, "holds_25fps": False, "sessions": []}

    async def run(self) -> dict[str, Any]:
        first = await self.run_k_safe(1, self.speech_s, with_viewer=True)
        scan = [first] + [await self.run_k_safe(k, self.scan_speech_s, with_viewer=False) for k in self.ks if k != 1]
        viewer = first.get("viewer", {})
        s0 = first["sessions"][0] if first["sessions"] else {}
        held = [r for r in scan if r.get("holds_25fps")]
        k_max = max((r["k"] for r in held), default=0)
        at = next((r for r in held if r["k"] == k_max), first)
        cores = at.get("cpu_cores_per_session") or math.nan
        return {
            "renderer": "portrait (built-in CPU renderer, not bitHuman)",
            "speech_s": viewer.get("speech_s"),
            "speech_source": first.get("speech_source"),
            "first_frame_ms": s0.get("first_frame_ms"),
            "fps": viewer.get("fps"),
            "drop_ratio": viewer.get("drop_ratio"),
            "av_offset_ms": viewer.get("av_offset_ms"),
            "av_correlation": viewer.get("av_correlation"),
            "av_offset_onsets_ms": viewer.get("av_offset_onsets_ms"),
            "av_onset_pairs": viewer.get("av_onset_pairs"),
            "audio_jitter_buffer_ms": viewer.get("audio_jitter_buffer_ms"),
            "video_jitter_buffer_ms": viewer.get("video_jitter_buffer_ms"),
            "viewer_rtc_frames": {k: v for k, v in viewer.items() if k.startswith("rtc_")},
            "av_offset_net_ms": viewer.get("av_offset_net_ms"),
            "av_offset_windows": viewer.get("av_offset_windows"),
            "first_audio_at_viewer_ms": viewer.get("first_audio_at_viewer_ms"),
            "frame_gap_p99_ms": viewer.get("frame_gap_p99_ms"),
            "runner_fps": s0.get("runner_fps"),
            "runner_drop_ratio": s0.get("runner_drop_ratio"),
            "cpu_cores_per_session": s0.get("cpu_cores"),
            "sessions_per_core": round(1 / cores, 2) if cores and not math.isnan(cores) else math.nan,
            "k_max_25fps": k_max,
            "k_scan": [{kk: v for kk, v in r.items() if kk != "viewer"} for r in scan],
        }
