"""Part: the gateway's request-to-success latency with a warm pool, per protocol.

The bed is the gateway tests' (tests/harness/gateway_bed.py): an operator
(process launcher, portrait renderer), a warm AvatarPool of one runner with
`n` slots, a tenant, `avatar-operator gateway` watching the namespace. The
pool is Ready before the first request.

Per protocol (the plugin's JSON, the plugin's form, inference.AvatarSession's
create; the requests as the real clients build them, tests/harness/gateway_calls.py),
each repeat is:
- one at a time: `n` requests, each sent once the previous one was answered;
- a burst: `n` requests at once, one room each (as many as the pool's slots).
Request-to-success is from just before the POST to its 200 (the gateway
answers once the session holds a slot, RunnerScheduled=True), on the bench's
monotonic clock. The sessions are deleted and the slots seen free between
runs. The protocols alternate which goes first; the figures are medians over
the repeats of each repeat's p50 and p99.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import pathlib
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from bench import stats
from tests.harness import gateway_calls
from tests.harness.gateway_bed import BedConfig, GatewayBed
from tests.harness.stack import Stack

KINDS: dict[str, Callable[[GatewayBed, str], gateway_calls.Call]] = {
    "plugin_json": gateway_calls.plugin_json,
    "plugin_form": gateway_calls.plugin_form,
    "inference": gateway_calls.inference_create,
}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class GatewayBench:
    def __init__(self, stack: Stack, artifacts: pathlib.Path, n: int = 5, repeats: int = 3) -> None:
        self.stack, self.n, self.repeats = stack, n, repeats
        # Long enough that no request of a burst the pool can hold is refused on a loaded machine.
        self.admission_wait_s = 15.0
        self.bed = GatewayBed(
            stack, artifacts / f"gateway-{uuid.uuid4().hex[:6]}",
            BedConfig(runners=1, slots=n, gateway_env={"AVATAR_GATEWAY_ADMISSION_WAIT_S": str(self.admission_wait_s)}),
        )

    async def timed(self, http: aiohttp.ClientSession, kind: str) -> float:
        call = KINDS[kind](self.bed, f"bench-{uuid.uuid4().hex[:8]}")
        t0 = time.monotonic()
        status, _, body = await gateway_calls.send(self.bed, call, http)
        took = time.monotonic() - t0
        if status != 200:
            raise RuntimeError(f"{kind}: {status} {body}")
        return took

    async def clear(self) -> None:
        for s in self.bed.sessions():
            self.bed.kubectl("delete", "avs", s["metadata"]["name"], "-n", self.bed.namespace, "--wait=false", check=False)
        await asyncio.to_thread(self.bed.wait_idle, 90)

    async def run_kind(self, http: aiohttp.ClientSession, kind: str) -> dict[str, Any]:
        one_by_one = [await self.timed(http, kind) for _ in range(self.n)]
        await self.clear()
        burst = list(await asyncio.gather(*(self.timed(http, kind) for _ in range(self.n))))
        await self.clear()
        return {"one_at_a_time": stats.summary_ms(one_by_one), "burst": stats.summary_ms(burst)}

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        out: dict[str, Any] = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "renderer": "portrait (built-in CPU renderer, standing in for bitHuman's GPU model)",
            "n": self.n, "runners": 1, "sessions_per_runner": self.n, "repeats": self.repeats,
            "admission_wait_s": self.admission_wait_s,
            "measured": "monotonic time from before each POST to its 200 (the session holds a slot: RunnerScheduled=True)",
        }
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
        try:
            t = time.monotonic()
            await asyncio.to_thread(self.bed.up)
            out["bed_up_s"] = round(time.monotonic() - t, 2)
            async with aiohttp.ClientSession() as http:
                for rep in range(self.repeats):
                    order = list(KINDS) if rep % 2 == 0 else list(reversed(KINDS))
                    for kind in order:
                        one = await self.run_kind(http, kind)
                        runs[kind].append(one)
                        log(f"gateway {kind} repeat {rep}: {one}")
        except Exception as e:  # noqa: BLE001 - keep what was measured, say what broke
            out["error"] = f"{type(e).__name__}: {e}"
            log(f"gateway part failed: {out['error']}")
        finally:
            leaked = self.bed.leaked(self.bed.api_key, self.stack.livekit_api_secret)
            await asyncio.to_thread(self.bed.down)
        out["key_in_logs"] = leaked
        for kind, rs in runs.items():
            out[kind] = {
                mode: {
                    q: round(statistics.median(r[mode][q] for r in rs), 1) if rs else None
                    for q in ("p50_ms", "p99_ms", "max_ms")
                }
                for mode in ("one_at_a_time", "burst")
            } | {"repeats": len(rs), "runs": rs}
        out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        out["duration_s"] = round(time.monotonic() - started, 1)
        return out


def table(g: dict[str, Any]) -> list[str]:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:,.0f}"

    lines = [
        (
            f"gateway: request -> 200 (RunnerScheduled) with a warm pool of 1 runner x {g.get('n')} slots,"
            f" medians over {g.get('repeats')} repeats (p50 / p99 ms)"
        ),
        f"  {'protocol':12} {'one at a time':>17} {'burst of ' + str(g.get('n')):>17}",
    ]
    for kind in KINDS:
        k = g.get(kind) or {}
        one, burst = k.get("one_at_a_time") or {}, k.get("burst") or {}
        lines.append(
            f"  {kind:12} {f(one.get('p50_ms')):>8} / {f(one.get('p99_ms')):>6} {f(burst.get('p50_ms')):>8} / {f(burst.get('p99_ms')):>6}"
        )
    if g.get("error"):
        lines.append(f"  error: {g['error']}")
    return lines
