"""One way to time a tail alone, for every benchmark and for the KServe peer's own venv.

Standard library and torch only: ``benchmarks/peer_kserve.py`` imports this file as a plain
module (``from tailtime import time_ms``) inside a venv that has kserve but not splitinfer.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch


def time_ms(fn: Any, *inputs: torch.Tensor, repeats: int) -> float:
    """Median ms of ``fn(*inputs)`` under ``torch.inference_mode`` (as the edge node runs a
    tail), after ``max(20, repeats // 10)`` warm-up calls."""
    times = []
    with torch.inference_mode():
        for _ in range(max(20, repeats // 10)):
            fn(*inputs)
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(*inputs)
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3
