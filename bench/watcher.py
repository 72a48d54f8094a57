"""`python -m bench.watcher KUBECONFIG NAMESPACE`: one watch on AvatarSessions
and one on Pods in a namespace, printing each transition the bench times.

A process of its own, so its receive timestamps do not wait for the load
generator's event loop. Prints JSON lines on stdout: `{"ready": true}` once both
watches are open, then `{"t": monotonic, "k": "s"|"p", "n": name, "v": what}`
where `v` is a session phase, or `bound`/`Running` for a pod, or `deleted`.
On SIGTERM it prints `{"writes": {name: n}}`: how many times each session
object changed (each status patch or metadata write is one MODIFIED event).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

from bench.kubeapi import BenchKube

SESSIONS = "/apis/avatar-operator.dev/v1alpha1/namespaces/{ns}/avatarsessions"
PODS = "/api/v1/namespaces/{ns}/pods"


def out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def follow(kube: BenchKube, path: str, kind: str, opened: asyncio.Event, writes: Counter[str]) -> None:
    seen: dict[str, set[str]] = {}

    def handle(etype: str, obj: dict[str, Any], t: float) -> None:
        name = obj["metadata"]["name"]
        marks = seen.setdefault(name, set())
        if etype == "DELETED":
            out({"t": t, "k": kind, "n": name, "v": "deleted"})
            return
        if kind == "s":
            if etype == "MODIFIED":
                writes[name] += 1
            phase = (obj.get("status") or {}).get("phase")
            if phase and phase not in marks:
                marks.add(phase)
                out({"t": t, "k": kind, "n": name, "v": phase})
        else:
            if (obj.get("spec") or {}).get("nodeName") and "bound" not in marks:
                marks.add("bound")
                out({"t": t, "k": kind, "n": name, "v": "bound"})
            phase = (obj.get("status") or {}).get("phase")
            if phase in ("Running", "Failed", "Succeeded") and phase not in marks:
                marks.add(phase)
                out({"t": t, "k": kind, "n": name, "v": phase})

    listed = await kube.get(path)
    rv = listed["metadata"]["resourceVersion"]
    t = time.monotonic()
    for item in listed.get("items") or []:
        handle("ADDED", item, t)
    opened.set()
    while True:
        try:
            async for ev in kube.watch(path, rv):
                t = time.monotonic()
                if ev["type"] == "BOOKMARK":
                    rv = ev["object"]["metadata"]["resourceVersion"]
                    continue
                if ev["type"] == "ERROR":
                    raise RuntimeError(f"watch error: {ev['object']}")
                rv = ev["object"]["metadata"]["resourceVersion"]
                handle(ev["type"], ev["object"], t)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - reconnect from the last version seen
            print(f"watcher: {kind} stream: {e}; reconnecting", file=sys.stderr, flush=True)
            await asyncio.sleep(0.2)


async def main(kubeconfig: str, namespace: str) -> None:
    writes: Counter[str] = Counter()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    async with BenchKube(kubeconfig, pool=4) as kube:
        opened = [asyncio.Event(), asyncio.Event()]
        tasks = [
            asyncio.create_task(follow(kube, SESSIONS.format(ns=namespace), "s", opened[0], writes)),
            asyncio.create_task(follow(kube, PODS.format(ns=namespace), "p", opened[1], writes)),
        ]
        while not all(o.is_set() for o in opened):
            for task in tasks:
                if task.done():
                    task.result()  # a failed list raises here: the parent sees the watcher exit
            await asyncio.sleep(0.02)
        out({"ready": True})
        parent = os.getppid()
        while not stop.is_set():  # also ends when the bench that started it is gone
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                if os.getppid() != parent:
                    break
        for task in tasks:
            task.cancel()
        out({"writes": dict(writes)})


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
