"""Small statistics helpers: percentiles and medians over repeats."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary_ms(seconds: Iterable[float]) -> dict[str, float]:
    ms = [s * 1000.0 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 1),
        "p90_ms": round(percentile(ms, 90), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1) if ms else float("nan"),
    }


def median_of(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Key-wise median of numeric values over repeated runs (other values from the first run)."""
    if not runs:
        return {}
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        vals = [r.get(key) for r in runs]
        if isinstance(first, (int, float)) and not isinstance(first, bool) and all(isinstance(v, (int, float)) for v in vals):
            m = statistics.median(float(v) for v in vals)  # type: ignore[arg-type]
            out[key] = round(m, 3)
        elif isinstance(first, Mapping):
            out[key] = median_of([r[key] for r in runs if isinstance(r.get(key), Mapping)])
        else:
            out[key] = first
    return out


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")
