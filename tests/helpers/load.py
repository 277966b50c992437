"""Load tests run for a time *and* until they did enough to check.

A test that runs threads for a fixed time and then asserts how much they did
fails on a slow or loaded machine for no fault of the code. These tests run
for their time, then on until ``enough()`` holds (bounded by ``limit``
seconds), then stop their threads; the counts they assert are what
``enough`` waited for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_until(stop: threading.Event, seconds: float, enough: Callable[[], bool], limit: float = 300.0) -> float:
    """Wait ``seconds`` (or until ``stop`` is set by a failing thread), then until
    ``enough()``, at most ``limit`` seconds in all; set ``stop``. Returns the time run."""
    t0 = time.monotonic()
    stop.wait(seconds)
    while not stop.is_set() and not enough() and time.monotonic() - t0 < limit:
        stop.wait(0.1)
    stop.set()
    return time.monotonic() - t0
