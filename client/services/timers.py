"""The timer wheel that runs every check of every allocation on one client.

One thread keeps a heap of due times and hands the work to a small thread pool,
so a slow check does not delay the others; the hooks also use it for one-shot
timers (the deployment health deadline). ``TimerWheel`` knows nothing of services:
it runs callables, with the clock passed in so tests move time by hand.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class Timer:
    __slots__ = ("fn", "interval", "cancelled", "running")

    def __init__(self, fn: Callable[[], None], interval: float | None) -> None:
        self.fn = fn
        self.interval = interval
        self.cancelled = False
        self.running = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerWheel:
    """Timers for every check on the client: one thread keeps a heap of due
    times; the work runs on a small pool. A periodic timer runs again
    ``interval`` after its previous run started (or at once when the run took
    longer), never twice at the same time."""

    def __init__(self, workers: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="checks")
        self._thread: threading.Thread | None = None
        self._stopped = False

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(fn, None)
        self._push(self._clock() + max(delay, 0.0), timer)
        return timer

    def every(self, interval: float, fn: Callable[[], None], first_delay: float = 0.0) -> Timer:
        timer = Timer(fn, max(interval, 0.01))
        self._push(self._clock() + max(first_delay, 0.0), timer)
        return timer

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _push(self, due: float, timer: Timer) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (due, next(self._seq), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="check-timers", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > self._clock()):
                    timeout = self._heap[0][0] - self._clock() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            timer.running = True
            try:
                self._pool.submit(self._run, timer, self._clock())
            except RuntimeError:  # pool shut down
                return

    def _run(self, timer: Timer, started: float) -> None:
        try:
            if not timer.cancelled:
                timer.fn()
        except Exception:
            log.exception("scheduled check failed")
        finally:
            timer.running = False
            if timer.interval is not None and not timer.cancelled:
                self._push(max(started + timer.interval, self._clock()), timer)
