"""`make demo`: an AvatarSession from Pending to Ready on the local stack, recorded.

Runs after `make stack-up`. Starts the operator with the development process
launcher and the built-in portrait renderer (kwok's nodes run no containers),
applies examples/demo-session.yaml, starts the demo agent (a LiveKit
participant speaking a WAV file through DataStreamAudioOutput), prints every
change of the session's status as it happens, and records what the avatar
publishes as seen by a third participant: demo-output/avatar.mp4 and
demo-output/contact-sheet.png. Then it starts `avatar-operator view` for the
session and prints the page's URL. The agent keeps speaking (its sample in a
loop) and the operator, runner and viewer keep running, so the session stays
Running while someone watches; `make stack-down` stops them.

LiveKit closes a room once only agent participants are left in it (the
avatar and the agent are agents), after the room's departure timeout: the demo
creates its room with DEPARTURE_S, so there is time to open the page after
the recording, and the session ends that long after the last page closes.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.request
from typing import Any

import av
import numpy as np
from livekit import api, rtc
from PIL import Image, ImageDraw

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import stack as stack_mod  # hack/stack.py: start/stop processes the way stack-down expects

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "demo-output"
SESSION = ROOT / "examples" / "demo-session.yaml"
NAMESPACE, NAME, ROOM, AGENT, AVATAR = "avatar-sessions", "demo", "demo-room", "demo-agent", "bithuman-avatar-agent"
FPS = 25
# How long the room outlives its last viewer (LiveKit's departure timeout;
# its default is 20 s), and how long it waits for a first one.
DEPARTURE_S = 120
EMPTY_S = 300


def read_env() -> dict[str, str]:
    env = {}
    for line in (stack_mod.STACK / "env").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    return env


ENV = read_env()


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run([str(stack_mod.BIN / "kubectl"), "--kubeconfig", ENV["KUBECONFIG"], *args],
                          check=False, input=input, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def secret(name: str, data: dict[str, str]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE}, "stringData": data})


def token(identity: str, *, kind: str = "standard") -> str:
    return (api.AccessToken(ENV["LIVEKIT_API_KEY"], ENV["LIVEKIT_API_SECRET"]).with_identity(identity).with_kind(kind)
            .with_grants(api.VideoGrants(room_join=True, room=ROOM)).with_ttl(datetime.timedelta(hours=1)).to_jwt())


def summary(st: dict[str, Any]) -> str:
    conds = " ".join(
        f"{c['type']}={c['status']}" + ("" if c["status"] == "True" else f"({c['reason']})") for c in st.get("conditions") or []
    )
    return f"phase={st.get('phase', '-'):<9} {conds}"


def start_operator() -> None:
    for name in ("demo-view", "demo-agent", "demo-operator"):
        stack_mod.stop(name)
    env = {
        **ENV,
        "PATH": f"{stack_mod.BIN}{os.pathsep}{os.environ['PATH']}",
        "AVATAR_LIVEKIT_URL": ENV["LIVEKIT_URL"],
        "AVATAR_RUNNER_LAUNCHER": "process",
        "AVATAR_RUNNER_RENDERER": "portrait",
        "AVATAR_PROCESS_WORKDIR": str(stack_mod.STACK / "runners"),
    }
    stack_mod.start("demo-operator", [sys.executable, "-m", "avatar_operator", "run", "--standalone",
                                      "--namespace", NAMESPACE, "--liveness", "http://127.0.0.1:0/healthz"], env)


async def prepare_room() -> None:
    """The room, made afresh with the demo's timeouts before anyone joins it."""
    http_url = ENV["LIVEKIT_URL"].replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    lk = api.LiveKitAPI(http_url, ENV["LIVEKIT_API_KEY"], ENV["LIVEKIT_API_SECRET"])
    try:
        await lk.room.delete_room(api.DeleteRoomRequest(room=ROOM))
    except api.TwirpError:
        pass  # no such room: the usual case
    try:
        await lk.room.create_room(api.CreateRoomRequest(name=ROOM, departure_timeout=DEPARTURE_S, empty_timeout=EMPTY_S))
    finally:
        await lk.aclose()


def start_agent() -> None:
    """The demo agent, speaking its sample over and over. Its token goes in its
    environment: a command line is readable by anyone listing processes."""
    stack_mod.start("demo-agent", [sys.executable, "-m", "avatar_runner.demo_agent", "--url", ENV["LIVEKIT_URL"],
                                   "--repeat", "100000", "--pause", "1.5"],
                    {"LIVEKIT_TOKEN": token(AGENT, kind="agent")})


def start_viewer() -> str:
    """`avatar-operator view` for the session, in the background like the operator; its URL."""
    port = stack_mod.free_port()
    stack_mod.start("demo-view", [sys.executable, "-m", "avatar_operator", "view", "-n", NAMESPACE, NAME, "--port", str(port)],
                    {"KUBECONFIG": ENV["KUBECONFIG"], "AVATAR_LIVEKIT_URL": ENV["LIVEKIT_URL"]})
    base = f"http://127.0.0.1:{port}"
    stack_mod.wait_for("the viewer's page", lambda: urllib.request.urlopen(f"{base}/healthz", timeout=2).status == 200, 60, log="demo-view")
    return f"{base}/?session={NAME}"


def apply_session() -> None:
    kubectl("apply", "-f", "-", input=secret("livekit-credentials", {"LIVEKIT_API_KEY": ENV["LIVEKIT_API_KEY"], "LIVEKIT_API_SECRET": ENV["LIVEKIT_API_SECRET"]}))
    # The plugin's rule wants a bitHuman credential for local mode; the
    # portrait renderer never uses it.
    kubectl("apply", "-f", "-", input=secret("bithuman-credentials", {"BITHUMAN_API_TOKEN": "demo-not-used-by-the-portrait-renderer"}))
    kubectl("delete", "avatarsession", NAME, "-n", NAMESPACE, "--ignore-not-found", "--timeout=60s")
    kubectl("apply", "-f", str(SESSION))


class Recorder:
    """A third participant: subscribes to the avatar's tracks and keeps what it receives."""

    def __init__(self) -> None:
        self.room = rtc.Room()
        self.frames: list[tuple[float, np.ndarray]] = []
        self.audio: list[np.ndarray] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        @self.room.on("track_subscribed")
        def _on_track(track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant) -> None:
            if p.identity != AVATAR:
                return
            if track.kind == rtc.TrackKind.KIND_VIDEO:
                self.tasks.append(asyncio.ensure_future(self._video(rtc.VideoStream(track))))
            elif track.kind == rtc.TrackKind.KIND_AUDIO:
                self.tasks.append(asyncio.ensure_future(self._audio(rtc.AudioStream(track, sample_rate=48000, num_channels=1))))

        await self.room.connect(ENV["LIVEKIT_URL"], token("demo-viewer"))

    async def _video(self, stream: rtc.VideoStream) -> None:
        async for ev in stream:
            rgb = ev.frame.convert(rtc.VideoBufferType.RGB24)
            arr = np.frombuffer(rgb.data, dtype=np.uint8).reshape(rgb.height, rgb.width, 3).copy()
            self.frames.append((time.monotonic(), arr))

    async def _audio(self, stream: rtc.AudioStream) -> None:
        async for ev in stream:
            self.audio.append(np.frombuffer(ev.frame.data, dtype=np.int16).copy())

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await self.room.disconnect()


def save_mp4(frames: list[tuple[float, np.ndarray]], audio: list[np.ndarray], path: pathlib.Path) -> None:
    h, w = frames[0][1].shape[:2]
    with av.open(str(path), "w") as container:
        vs = container.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        aus = container.add_stream("aac", rate=48000)
        aus.layout = "mono"
        # Frames keep the times they arrived at, so the video lasts as long as
        # the audio even when the viewer received fewer than 25 per second.
        t0, last_pts = frames[0][0], -1
        for t, arr in frames:
            pts = max(round((t - t0) * FPS), last_pts + 1)
            vf = av.VideoFrame.from_ndarray(arr[: vs.height, : vs.width], format="rgb24")
            vf.pts, last_pts = pts, pts
            container.mux(vs.encode(vf))
        container.mux(vs.encode(None))
        if audio:
            samples = np.concatenate(audio).reshape(1, -1)
            af = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            af.sample_rate, af.pts = 48000, 0
            container.mux(aus.encode(af))
            container.mux(aus.encode(None))


def contact_sheet(frames: list[tuple[float, np.ndarray]], path: pathlib.Path, cols: int = 4, rows: int = 3) -> None:
    t0 = frames[0][0]
    picks = [frames[i * (len(frames) - 1) // (cols * rows - 1)] for i in range(cols * rows)]
    thumb_w = 256
    h, w = picks[0][1].shape[:2]
    thumb_h = thumb_w * h // w
    sheet = Image.new("RGB", (cols * thumb_w, rows * (thumb_h + 18)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (t, arr) in enumerate(picks):
        x, y = (i % cols) * thumb_w, (i // cols) * (thumb_h + 18)
        sheet.paste(Image.fromarray(arr).resize((thumb_w, thumb_h)), (x, y + 18))
        draw.text((x + 4, y + 3), f"t = {t - t0:5.2f} s", fill="black")
    sheet.save(path)


async def main() -> int:
    OUT.mkdir(exist_ok=True)
    t0 = time.monotonic()
    print(f"[demo] operator: process launcher, portrait renderer; session {NAMESPACE}/{NAME} in room {ROOM!r}")
    start_operator()
    await prepare_room()
    recorder = Recorder()
    await recorder.start()
    apply_session()
    start_agent()
    agent_log = stack_mod.LOGS / "demo-agent.log"
    last, ready_at, spoke_at = "", None, None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        raw = kubectl("get", "avatarsession", NAME, "-n", NAMESPACE, "-o", "json", check=False)
        st = json.loads(raw).get("status", {}) if raw else {}
        line = summary(st)
        if line != last:
            print(f"[demo] +{time.monotonic() - t0:5.1f}s {line}", flush=True)
            last = line
        if st.get("phase") == "Running" and ready_at is None:
            ready_at = time.monotonic() - t0
        log = agent_log.read_text() if agent_log.exists() else ""
        if '"playback_finished"' in log:
            spoke_at = time.monotonic() - t0
            break
        if st.get("phase") in ("Failed", "Succeeded"):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(0.5)
    await recorder.stop()
    if not recorder.frames:
        print("[demo] FAILED: no video frame received from the avatar; logs in .stack/logs and .stack/runners", file=sys.stderr)
        return 1
    mp4, sheet = OUT / "avatar.mp4", OUT / "contact-sheet.png"
    save_mp4(recorder.frames, recorder.audio, mp4)
    contact_sheet(recorder.frames, sheet)
    span = recorder.frames[-1][0] - recorder.frames[0][0]
    fps = (len(recorder.frames) - 1) / span if span > 0 else 0.0
    final = json.loads(kubectl("get", "avatarsession", NAME, "-n", NAMESPACE, "-o", "json"))["status"]
    print()
    print(f"  session          {NAMESPACE}/{NAME}: phase {final.get('phase')}, " + summary(final).split(" ", 1)[1])
    print(f"  Ready after      {ready_at:.1f} s" if ready_at is not None else "  Ready after      (not reached)")
    print(f"  speech played    {'yes' if spoke_at else 'no'}")
    print(f"  frames received  {len(recorder.frames)} in {span:.1f} s ({fps:.1f} fps), audio {sum(map(len, recorder.audio)) / 48000:.1f} s")
    print(f"  saved            {mp4.relative_to(ROOT)}, {sheet.relative_to(ROOT)}")
    url = start_viewer()
    print("  still running    operator, runner, agent (speaking in a loop) and viewer; `make stack-down` stops them")
    print(f"  the session runs while a page watches it, and ends {DEPARTURE_S} s after the last one closes "
          f"(or at its maxDuration); open it within {DEPARTURE_S} s:")
    print()
    print(f"  watch it         {url}")
    return 0 if ready_at is not None and spoke_at else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
