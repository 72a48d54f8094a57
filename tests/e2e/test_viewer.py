"""`avatar-operator view` in a real Chromium (Debian's, driven by Playwright) on the real stack.

An operator (process launcher, portrait renderer) runs a local session; a
demo agent speaks into its room in a loop; the real `avatar-operator view`
command serves the page. The browser picks the session from the list, joins
the room with the page's own livekit-client bundle, and the test measures what
the browser got: decoded frames per second on the video element, the level
of the remote audio through a WebAudio analyser, the mouth region on
screenshots, and the status panel against the session's phase. When the page
closes, only agents are left in the room, and the session ends. The figures
are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from avatar_runner.renderers.portrait_face import DRAWN_FACE, SIZE
from PIL import Image
from playwright import async_api as playwright_api

from tests.conftest import ROOT, Stack
from tests.harness import viewer as harness_viewer
from tests.harness.operator_process import OperatorProcess, operator_env

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Root without a user namespace: no sandbox. Audio plays without a click, as after one.
CHROMIUM_ARGS = ("--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--use-fake-ui-for-media-stream")
NAME, AGENT = "watched", "agent"
MIN_FPS = 20.0
MEASURE_S = 5.0
SILENCE_DBFS = -50.0
MOUTH_DARK = 70  # luma below this inside the mouth region: the open mouth
SCREENSHOT = ROOT / "docs" / "viewer.png"

# Frames the video element presented (requestVideoFrameCallback) and decoded
# (getVideoPlaybackQuality) over `seconds`.
MEASURE_VIDEO_JS = """async (seconds) => {
  const v = document.getElementById('video');
  const q0 = v.getVideoPlaybackQuality();
  const t0 = performance.now();
  const metas = [];
  await new Promise((resolve) => {
    const cb = (now, meta) => {
      metas.push([now, meta.presentedFrames]);
      if (now - t0 < seconds * 1000) v.requestVideoFrameCallback(cb); else resolve();
    };
    v.requestVideoFrameCallback(cb);
  });
  const q1 = v.getVideoPlaybackQuality();
  const elapsed = (performance.now() - t0) / 1000;
  const [first, last] = [metas[0], metas[metas.length - 1]];
  return {
    presentedFps: (last[1] - first[1]) / ((last[0] - first[0]) / 1000),
    decodedFps: (q1.totalVideoFrames - q0.totalVideoFrames) / elapsed,
    dropped: q1.droppedVideoFrames - q0.droppedVideoFrames,
    width: v.videoWidth, height: v.videoHeight,
  };
}"""

# RMS levels (dBFS) of the remote audio track, every 50 ms for `seconds`.
MEASURE_AUDIO_JS = """async (seconds) => {
  const stream = document.getElementById('audio').srcObject;
  const ctx = new AudioContext();
  await ctx.resume();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  const levels = [];
  const end = performance.now() + seconds * 1000;
  while (performance.now() < end) {
    await new Promise((r) => setTimeout(r, 50));
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const x of buf) sum += x * x;
    const rms = Math.sqrt(sum / buf.length);
    levels.push(rms > 0 ? 20 * Math.log10(rms) : -120);
  }
  const state = ctx.state;
  await ctx.close();
  return { state, levels, tracks: stream.getAudioTracks().length };
}"""


def mouth_share(png: bytes) -> float:
    """Share of dark pixels in the drawn face's mouth, on a screenshot of the video element."""
    image = Image.open(io.BytesIO(png)).convert("L")
    sx, sy = image.width / SIZE, image.height / SIZE
    cx, cy = DRAWN_FACE.mouth_center
    half_w, half_h = DRAWN_FACE.mouth_width * 0.3, DRAWN_FACE.mouth_max_height / 2 + 4
    box = (round((cx - half_w) * sx), round((cy - half_h) * sy), round((cx + half_w) * sx), round((cy + half_h) * sy))
    region = image.crop(box)
    dark = sum(p < MOUTH_DARK for p in region.tobytes())
    return dark / (region.width * region.height)


def session_phase(stack: Stack, namespace: str) -> str:
    got = stack.kubectl("get", "avs", NAME, "-n", namespace, "-o", "jsonpath={.status.phase}", check=False)
    return got.stdout


async def until(what: str, check: Any, timeout: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture
def operator(stack: Stack, namespace: str, tmp_path: pathlib.Path) -> Iterator[OperatorProcess]:
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    env = operator_env(
        stack.process_env(),
        livekit_url=stack.livekit_url,
        fake_urls={"url": "http://127.0.0.1:9/unused", "mint_url": "http://127.0.0.1:9/unused"},
        runner_image="registry.invalid/avatar-runner:test",
        extra={
            "AVATAR_RUNNER_LAUNCHER": "process",
            "AVATAR_RUNNER_RENDERER": "portrait",
            "AVATAR_PROCESS_WORKDIR": str(tmp_path / "runners"),
        },
    )
    op = OperatorProcess(env, tmp_path / "operator.log", [namespace], stop_grace=30.0)
    op.start()
    try:
        yield op
    finally:
        stack.kubectl("delete", "avs", NAME, "-n", namespace, "--timeout=60s", check=False)
        op.stop()


def apply_session(stack: Stack, namespace: str, room: str) -> None:
    secrets = {
        "livekit-credentials": {"LIVEKIT_API_KEY": stack.livekit_api_key, "LIVEKIT_API_SECRET": stack.livekit_api_secret},
        "bithuman-credentials": {"BITHUMAN_API_TOKEN": "unused-by-the-portrait-renderer"},
    }
    for name, data in secrets.items():
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "stringData": data}
        stack.kubectl("apply", "-f", "-", input=json.dumps(secret))
    session = {
        "apiVersion": "avatar-operator.dev/v1alpha1",
        "kind": "AvatarSession",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {"room": room, "agentIdentity": AGENT, "modelPath": "/models/unused.imx", "maxDuration": 600},
    }
    stack.kubectl("apply", "-f", "-", input=json.dumps(session))


@pytest.fixture
async def agent(stack: Stack, namespace: str) -> AsyncIterator[list[dict[str, Any]]]:
    """The demo agent speaking 4 s utterances in a loop; its events as they come. The token is in its environment."""
    room = f"view-{namespace}"
    apply_session(stack, namespace, room)
    token = harness_viewer.participant_token(stack.livekit_api_key, stack.livekit_api_secret, room, AGENT, agent=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "avatar_runner.demo_agent", "--url", stack.livekit_url,
        "--seconds", "4", "--repeat", "1000", "--pause", "0.3",
        env={**os.environ, "LIVEKIT_TOKEN": token}, stdout=asyncio.subprocess.PIPE,
    )
    events: list[dict[str, Any]] = []

    async def follow() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            events.append(json.loads(line))

    task = asyncio.create_task(follow())
    try:
        yield events
    finally:
        proc.kill()
        await proc.wait()
        task.cancel()


@pytest.fixture
async def view_url(stack: Stack, namespace: str) -> AsyncIterator[str]:
    """The real `avatar-operator view -n NAMESPACE` (no name: the page lists the sessions), and the URL it prints.

    It gets the kubeconfig and the LiveKit URL, not the API key or secret: it
    signs tokens with the session's Secret, as the operator does."""
    env = {k: v for k, v in stack.process_env().items() if k not in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "avatar_operator", "view", "-n", namespace,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith(f"Watching the sessions of namespace {namespace!r}: http://127.0.0.1:"), line
        yield line.split(": ", 1)[1].split()[0]
    finally:
        proc.terminate()
        await proc.wait()


async def pick_session(page: Any, url: str) -> None:
    """The list of the namespace's sessions, then a click on ours."""
    await page.goto(url)
    link = page.locator("#sessions a", has_text=NAME)
    await link.wait_for(timeout=30_000)
    await link.click()
    await page.wait_for_url(f"**/?session={NAME}")


async def mouth_shares(video: Any, count: int, every_s: float) -> list[float]:
    shares = []
    for _ in range(count):
        shares.append(mouth_share(await video.screenshot()))
        await asyncio.sleep(every_s)
    return shares


async def screenshot_speaking(page: Any, path: pathlib.Path) -> pathlib.Path:
    """The page, caught with the mouth open (a few tries: speech has pauses)."""
    best = -1.0
    for _ in range(10):
        share = mouth_share(await page.locator("#video").screenshot())
        if share > best:
            best = share
            await page.screenshot(path=str(path))
        if best > 0.25:
            break
        await asyncio.sleep(0.15)
    return path


@pytest.mark.stack
async def test_the_page_plays_the_avatar_and_shows_the_session(
    stack: Stack, namespace: str, operator: OperatorProcess, agent: list[dict[str, Any]], view_url: str, tmp_path: pathlib.Path
) -> None:
    bodies: list[str] = []
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        page = await browser.new_page(viewport={"width": 960, "height": 640})

        async def keep(response: Any) -> None:
            if response.url.startswith(view_url.rstrip("/")) and "/api/" in response.url:
                bodies.append(await response.text())

        page.on("response", keep)
        await pick_session(page, view_url)
        # The avatar publishes video once someone listens: this page, here.
        try:
            await until("the session Running", lambda: asyncio.to_thread(lambda: session_phase(stack, namespace) == "Running"), 90)
        except AssertionError as e:
            status = stack.kubectl("get", "avs", NAME, "-n", namespace, "-o", "jsonpath={.status}", check=False).stdout
            raise AssertionError(f"{e}; status: {status}; operator log (end): {operator.logs()[-3000:]}") from None
        await until("the video playing", lambda: page.evaluate("document.getElementById('video').videoWidth > 0"), 30)

        async def speaking() -> bool:
            return any(e["event"] == "playback_started" for e in agent)

        await until("the agent speaking", speaking, 30)
        await until("the status panel", lambda: page.evaluate("document.getElementById('phase').textContent === 'Running'"), 10)
        await until("the stats panel", lambda: page.evaluate("/^\\d/.test(document.getElementById('stat-fps').textContent)"), 10)

        video_figures = await page.evaluate(MEASURE_VIDEO_JS, MEASURE_S)
        audio = await page.evaluate(MEASURE_AUDIO_JS, 3.0)
        shares = await mouth_shares(page.locator("#video"), 12, 0.2)
        panel = await page.evaluate("""() => Object.fromEntries(
            ['phase', 'mode', 'room', 'avatar', 'connection', 'stat-fps', 'stat-resolution', 'stat-video-codec',
             'stat-video-bitrate', 'stat-audio-codec', 'stat-audio-bitrate']
            .map((id) => [id, document.getElementById(id).textContent]))""")
        conditions = await page.locator("#conditions tbody tr").all_inner_texts()
        shot = await screenshot_speaking(page, tmp_path / "viewer.png")
        if os.environ.get("AVATAR_UPDATE_SCREENSHOT") == "1":
            SCREENSHOT.parent.mkdir(exist_ok=True)
            Image.open(shot).convert("P", palette=Image.Palette.ADAPTIVE, colors=128).save(SCREENSHOT, optimize=True)
        await browser.close()
    closed_at = time.monotonic()
    # Only agents are left in the room (the agent and the avatar): LiveKit
    # closes it after its departure timeout (20 s), the runner leaves, and the
    # session ends.
    ended = await until(
        "the session to end after the page closed",
        lambda: asyncio.to_thread(lambda: session_phase(stack, namespace) in ("Succeeded", "Failed") and session_phase(stack, namespace)),
        90,
        interval=1.0,
    )
    ended_after = time.monotonic() - closed_at

    levels = audio["levels"]
    print(
        "\nviewer e2e figures (headless Chromium, portrait renderer, real livekit-server):"
        f"\n  video {video_figures['width']}x{video_figures['height']}: {video_figures['presentedFps']:.1f} fps presented,"
        f" {video_figures['decodedFps']:.1f} fps decoded over {MEASURE_S:g} s, {video_figures['dropped']} dropped"
        f"\n  audio: {len(levels)} samples, max {max(levels):.1f} dBFS, {sum(lv > SILENCE_DBFS for lv in levels)} above"
        f" {SILENCE_DBFS:g} dBFS (AudioContext {audio['state']})"
        f"\n  mouth dark share on 12 screenshots: {', '.join(f'{s:.2f}' for s in shares)}"
        f"\n  panel: {panel}\n  conditions: {conditions}"
        f"\n  session {ended} {ended_after:.1f} s after the page closed"
    )

    assert video_figures["decodedFps"] >= MIN_FPS
    # Presented frames also wait for the compositor, which a loaded machine slows: a lower bar.
    assert video_figures["presentedFps"] >= 0.75 * MIN_FPS
    assert (video_figures["width"], video_figures["height"]) == (SIZE, SIZE)
    assert audio["tracks"] == 1 and audio["state"] == "running"
    assert max(levels) > SILENCE_DBFS  # speech, not silence
    assert max(shares) - min(shares) > 0.1  # the mouth opens and closes as it speaks
    assert panel["phase"] == "Running" and panel["connection"] == "connected"
    assert panel["avatar"] == "bithuman-avatar-agent" and panel["mode"] == "local"
    assert panel["stat-resolution"] == f"{SIZE}×{SIZE}"
    assert panel["stat-video-codec"].startswith("video/") and panel["stat-audio-codec"] == "audio/opus"
    assert panel["stat-video-bitrate"].endswith("kbit/s")
    assert any(row.split("\t")[:2] == ["Ready", "True"] for row in conditions), conditions
    # The page got tokens, never the secret that signs them.
    assert bodies and not any(stack.livekit_api_secret in body for body in bodies)
    assert ended == "Succeeded"
