"""The latency plot, drawn with Pillow (no matplotlib): one CDF panel per mode,
create -> Starting for the operator against the plain client's baseline, and
the runner's frame rate per number of concurrent sessions."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFont

W, H = 1500, 560
PANEL_W = 470
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 60, 16, 50, 70
COLORS = {
    100: (31, 119, 180), 500: (214, 39, 40), 1000: (44, 160, 44), 200: (148, 103, 189), 50: (140, 86, 75),
}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _color(n: int) -> tuple[int, int, int]:
    return COLORS.get(n, (100, 100, 100))


def _cdf_panel(draw: ImageDraw.ImageDraw, x0: int, title: str, series: Sequence[tuple[str, Sequence[float], tuple[int, int, int], bool]]) -> None:
    font, small = _font(15), _font(12)
    left, right = x0 + MARGIN_L, x0 + PANEL_W - MARGIN_R
    top, bottom = MARGIN_T, H - MARGIN_B
    draw.text((left, 14), title, fill="black", font=font)
    values = [v for _, vs, _, _ in series for v in vs if v > 0]
    lo = 10 ** math.floor(math.log10(max(min(values), 0.1))) if values else 1
    hi = 10 ** math.ceil(math.log10(max(values))) if values else 1000
    lo, hi = min(lo, 1.0), max(hi, 10.0)

    def px(ms: float) -> float:
        return left + (math.log10(max(ms, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (right - left)

    def py(frac: float) -> float:
        return bottom - frac * (bottom - top)

    draw.rectangle((left, top, right, bottom), outline="black")
    d = lo
    while d <= hi * 1.0001:
        x = px(d)
        draw.line((x, top, x, bottom), fill=(225, 225, 225))
        label = f"{d:g} ms" if d < 1000 else f"{d / 1000:g} s"
        draw.text((x - 18, bottom + 6), label, fill="black", font=small)
        d *= 10
    for frac in (0, 0.25, 0.5, 0.75, 0.9, 1.0):
        y = py(frac)
        draw.line((left, y, right, y), fill=(235, 235, 235))
        draw.text((x0 + 14, y - 7), f"{frac:g}", fill="black", font=small)
    draw.text((left + (right - left) // 2 - 120, bottom + 26), "latency from create (log scale)", fill="black", font=small)
    ly = top + 8
    for label, vs, color, dashed in series:
        xs = sorted(vs)
        if not xs:
            continue
        pts = [(px(x), py((i + 1) / len(xs))) for i, x in enumerate(xs)]
        if dashed:
            for i in range(0, len(pts) - 1, 2):
                draw.line((pts[i], pts[i + 1]), fill=color, width=2)
        else:
            draw.line(pts, fill=color, width=2)
        draw.line((right - 150, ly + 7, right - 128, ly + 7), fill=color, width=3 if not dashed else 1)
        draw.text((right - 124, ly), label, fill="black", font=small)
        ly += 16


def _runner_panel(draw: ImageDraw.ImageDraw, x0: int, runner: dict[str, Any]) -> None:
    font, small = _font(15), _font(12)
    left, right = x0 + MARGIN_L, x0 + PANEL_W - MARGIN_R - 30
    top, bottom = MARGIN_T, H - MARGIN_B
    draw.text((left, 14), "runner (portrait): fps per session vs sessions at once", fill="black", font=font)
    scan = [r for r in runner.get("k_scan") or [] if "fps_min" in r]
    draw.rectangle((left, top, right, bottom), outline="black")
    fmax = 30.0

    def py(f: float) -> float:
        return bottom - f / fmax * (bottom - top)

    for f in (0, 5, 10, 15, 20, 25, 30):
        draw.line((left, py(f), right, py(f)), fill=(235, 235, 235))
        draw.text((x0 + 24, py(f) - 7), str(f), fill="black", font=small)
    draw.line((left, py(25), right, py(25)), fill=(214, 39, 40), width=1)
    draw.text((right - 90, py(25) - 16), "25 fps target", fill=(214, 39, 40), font=small)
    if not scan:
        return
    bw = (right - left) / (len(scan) * 1.6 + 0.6)
    for i, r in enumerate(scan):
        bx = left + bw * (0.6 + i * 1.6)
        fps = float(r["fps_min"])
        color = (44, 160, 44) if r.get("holds_25fps") else (255, 127, 14)
        draw.rectangle((bx, py(fps), bx + bw, bottom), fill=color)
        draw.text((bx, py(fps) - 30), f"{fps:.1f} fps", fill="black", font=small)
        draw.text((bx, py(fps) - 16), f"{100 * float(r.get('drop_ratio_max', 0)):.1f}% drop", fill="black", font=small)
        draw.text((bx + bw / 2 - 12, bottom + 6), f"k={r['k']}", fill="black", font=small)
        draw.text((bx - 4, bottom + 22), f"{r.get('cpu_cores_per_session', 0):.2f} core/sess", fill="black", font=small)


def draw(results: dict[str, Any], latencies: dict[str, dict[int, dict[str, list[float]]]], path: pathlib.Path) -> None:
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    titles = {
        "cloud": "cloud: create -> Starting (operator) vs HTTP accepted (plain client)",
        "local": "local: create -> Starting (operator) vs pod bound (plain client)",
    }
    for i, mode in enumerate(("cloud", "local")):
        series = []
        for n, lat in sorted((latencies.get(mode) or {}).items()):
            series.append((f"operator n={n}", lat.get("operator", []), _color(n), False))
            series.append((f"baseline n={n}", lat.get("baseline", []), _color(n), True))
        _cdf_panel(d, i * (PANEL_W + 20), titles[mode], series)
    _runner_panel(d, 2 * (PANEL_W + 20), results.get("runner") or {})
    machine = results.get("machine") or {}
    d.text((10, H - 18), f"{results.get('date', '')}  {machine.get('nproc')} cores, {machine.get('mem_gb')} GB, Python {machine.get('python')}, kernel {machine.get('kernel')}", fill=(90, 90, 90), font=_font(12))
    img.save(path)
