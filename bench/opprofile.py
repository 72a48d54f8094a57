"""`python -m bench.opprofile OUT ARGS...`: `avatar-operator ARGS...` with a profiler.

The bench's profiling hook (`python -m bench --profile DIR`); nothing in the
operator package changes. Three kinds, by BENCH_PROFILER:

- `cprofile` (default): cProfile on the main thread (kopf's event loop), timed
  by its CPU clock; OUT.prof and a summary in OUT.txt, and OUT-burst.prof of
  the start and the burst alone (to SIGUSR1, which the bench sends once every
  session of the first burst is Starting; the profiler stops there). Exact call counts and
  a faithful split of the loop's CPU, but it slows the operator 2-3 fold, so
  latencies in such a run mean nothing.
- `sample`: a thread samples every thread's Python stack every
  BENCH_SAMPLE_MS (20) milliseconds, a poor man's py-spy. Cheap enough that the
  run behaves as without it. Writes OUT.txt: per thread group, the share of
  samples by innermost frame (self) and by any frame on the stack
  (inclusive), plus OUT.folded (flame-graph input). Samples in the event
  loop's `select` (idle) are counted apart, so "busy" shares are of the time
  the loop was doing work. Biased: the sampler thread gets the GIL when the
  loop releases it, so calls that release it (socket writes, os.urandom)
  are over-represented; use it for "is the loop saturated", not for CPU shares.
- `tracemalloc`: Python heap allocations by source line; a snapshot is
  written to OUT-heap.txt on SIGUSR1 (the bench sends it while 1000 sessions
  sit idle): by file, by line, by live object type, and, with more than one
  frame kept (BENCH_TRACE_DEPTH, 1 by default), by whose code asked (the
  innermost frame in our package, else in kopf's). Slows allocation, and each
  frame kept slows it more (at 25, a 1000 burst ran at 2.3 sessions/s); for
  memory questions only.

Per-thread CPU seconds (from /proc) are written at exit in every mode.
"""

from __future__ import annotations

import collections
import cProfile
import gc
import io
import os
import pstats
import signal
import sys
import threading
import time
import tracemalloc
from types import FrameType

# Innermost frames of a thread that waits rather than works.
IDLE = ("selectors.py:select", "threading.py:wait", "queue.py:get", "thread.py:_worker")
IO_WAIT = ("ssl.py:read", "ssl.py:recv_into", "socket.py:readinto", "ssl.py:recv")


def _is_idle(stack: tuple[str, ...]) -> bool:
    return not stack or stack[-1].endswith(IDLE) or stack[-1].endswith(IO_WAIT)


def _where(frame: FrameType) -> str:
    code = frame.f_code
    path = code.co_filename
    for marker in ("site-packages/", "python3.11/", "/operator/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{code.co_name}"


class Sampler:
    def __init__(self, interval_s: float) -> None:
        self.interval = interval_s
        self.stacks: dict[str, collections.Counter[tuple[str, ...]]] = collections.defaultdict(collections.Counter)
        self.samples: collections.Counter[str] = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._me = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _group(self, ident: int, names: dict[int, str]) -> str:
        name = names.get(ident, "?")
        if ident == threading.main_thread().ident:
            return "main (event loop)"
        return name.rstrip("0123456789_").rstrip("-_") or name

    def _run(self) -> None:
        self._me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate() if t.ident is not None}
            for ident, frame in sys._current_frames().items():
                if ident == self._me:
                    continue
                group = self._group(ident, names)
                self.samples[group] += 1
                top = _where(frame)
                if top.endswith(IDLE) or top.endswith(IO_WAIT):
                    self.stacks[group][(top,)] += 1  # waiting: no need to walk the stack
                    continue
                stack: list[str] = []
                f: FrameType | None = frame
                while f is not None and len(stack) < 80:
                    stack.append(_where(f))
                    f = f.f_back
                self.stacks[group][tuple(reversed(stack))] += 1

    def report(self, limit: int = 40) -> str:
        out = io.StringIO()
        for group, stacks in sorted(self.stacks.items(), key=lambda kv: -self.samples[kv[0]]):
            total = sum(stacks.values())
            idle = sum(c for s, c in stacks.items() if _is_idle(s))
            busy = total - idle
            out.write(f"\n== {group}: {total} samples, {idle} waiting ({100 * idle / max(total, 1):.0f}%), {busy} busy ==\n")
            if not busy:
                continue
            selfc: collections.Counter[str] = collections.Counter()
            incl: collections.Counter[str] = collections.Counter()
            for s, c in stacks.items():
                if _is_idle(s):
                    continue
                selfc[s[-1]] += c
                for fn in set(s):
                    incl[fn] += c
            out.write("  self % of busy:\n")
            for fn, c in selfc.most_common(limit // 2):
                out.write(f"    {100 * c / busy:5.1f}%  {fn}\n")
            out.write("  inclusive % of busy:\n")
            for fn, c in incl.most_common(limit):
                out.write(f"    {100 * c / busy:5.1f}%  {fn}\n")
        return out.getvalue()

    def folded(self) -> str:
        lines = []
        for group, stacks in self.stacks.items():
            for s, c in stacks.items():
                lines.append(";".join((group.replace(" ", "_"), *s)) + f" {c}")
        return "\n".join(lines) + "\n"


def thread_cpu() -> str:
    """CPU seconds per thread name, from /proc (utime+stime)."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    groups: collections.Counter[str] = collections.Counter()
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = open(f"/proc/self/task/{tid}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick
        name = names.get(int(tid), open(f"/proc/self/task/{tid}/comm").read().strip())
        if int(tid) == os.getpid():
            name = "main (event loop)"
        groups[name.rstrip("0123456789_").rstrip("-_") or name] += cpu
    return "".join(f"  {cpu:8.2f} s  {name}\n" for name, cpu in groups.most_common())


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    out = sys.argv[1]
    argv = sys.argv[2:]
    kind = os.environ.get("BENCH_PROFILER", "cprofile")
    from bench import opvariant

    opvariant.apply(os.environ.get("BENCH_VARIANT", ""))
    from avatar_operator import cli

    sampler = prof = None
    if kind == "tracemalloc":
        tracemalloc.start(TRACE_DEPTH)

        def heap(*_: object) -> None:
            snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            total = sum(st.size for st in snap.statistics("filename"))
            lines = [f"traced Python heap: {total / 2**20:.1f} MB; RSS {rss_mb():.1f} MB", "by file:"]
            lines += [f"  {st.size / 2**20:7.2f} MB {st.count:8d} blocks  {st.traceback[0].filename.split('site-packages/')[-1]}" for st in snap.statistics("filename")[:25]]
            lines.append("by line:")
            lines += [f"  {st.size / 2**20:7.2f} MB {st.count:8d} blocks  {str(st.traceback[0]).split('site-packages/')[-1]}" for st in snap.statistics("lineno")[:30]]
            if TRACE_DEPTH > 1:
                lines.append("by whose code asked (the innermost frame of ours, else kopf's, else the line):")
                lines += [f"  {size / 2**20:7.2f} MB {count:8d} blocks  {where}" for where, size, count in by_owner(snap)[:40]]
            lines.append("live objects the collector tracks, by type (sys.getsizeof, the object alone):")
            lines += [f"  {size / 2**20:7.2f} MB {count:8d}  {name}" for name, size, count in by_type()[:40]]
            with open(out + "-heap.txt", "a") as f:
                f.write("\n".join(lines) + "\n\n")

        signal.signal(signal.SIGUSR1, heap)
    elif kind == "cprofile":
        prof = cProfile.Profile(time.thread_time)
        prof.enable()

        def burst(*_: object) -> None:
            # The bench's word that the burst is in (every session Starting): what follows
            # (deletion, the late-avatar guards' polls) would otherwise outweigh it.
            assert prof is not None
            pstats.Stats(prof).dump_stats(out + "-burst.prof")  # stops the profiler

        signal.signal(signal.SIGUSR1, burst)
    if kind == "sample":
        sampler = Sampler(float(os.environ.get("BENCH_SAMPLE_MS", "20")) / 1000)
        sampler.start()
    try:
        code = cli.main(argv)
    finally:
        text = io.StringIO()
        text.write(f"CPU by thread:\n{thread_cpu()}")
        if prof is not None:
            prof.disable()
            stats = pstats.Stats(prof, stream=text)
            stats.dump_stats(out + ".prof")
            text.write(f"\n== main thread (event loop): {stats.total_tt:.2f} CPU s ==\n")
            stats.sort_stats("cumulative").print_stats(50)
            stats.sort_stats("tottime").print_stats(50)
        if sampler is not None:
            sampler.stop()
            text.write(sampler.report())
            with open(out + ".folded", "w") as f:
                f.write(sampler.folded())
        with open(out + ".txt", "w") as f:
            f.write(text.getvalue())
    return code


# Frames kept per allocation: enough to get from a library's line back to the code that called it.
TRACE_DEPTH = int(os.environ.get("BENCH_TRACE_DEPTH", "1"))
OWNERS = ("avatar_operator/", "kopf/")


def by_owner(snap: "tracemalloc.Snapshot") -> list[tuple[str, int, int]]:
    """Heap by the innermost frame in our package, else in kopf, else the allocating line."""
    sums: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for trace in snap.traces:
        frames = list(reversed(trace.traceback))  # a trace's frames come oldest first: the allocating line first here
        owner = next((f for pkg in OWNERS for f in frames if pkg in f.filename), frames[0])
        key = f"{owner.filename.split('site-packages/')[-1].split('operator/', 1)[-1]}:{owner.lineno}"
        sums[key][0] += trace.size
        sums[key][1] += 1
    return sorted(((k, v[0], v[1]) for k, v in sums.items()), key=lambda r: -r[1])


def by_type() -> list[tuple[str, int, int]]:
    """Objects the garbage collector tracks, by type: how many sessions' worth of each is alive."""
    sums: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for o in gc.get_objects():
        t = type(o)
        row = sums[f"{t.__module__}.{t.__qualname__}"]
        row[0] += sys.getsizeof(o)
        row[1] += 1
    return sorted(((k, v[0], v[1]) for k, v in sums.items()), key=lambda r: -r[1])


if __name__ == "__main__":
    sys.exit(main())
