"""Node heartbeat tracking (leader only): a node that misses its TTL goes down.

Each heartbeat resets the node's timer to TTL + grace. TTL grows with the node
count so the leader sees at most ``max_heartbeats_per_second`` (Nomad's rule), and
is jittered so that nodes do not all report at once. After a leader change every
known node gets ``failover_ttl`` first, so nodes are not marked down en masse
while they find the new leader.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class HeartbeatTracker:
    def __init__(
        self,
        on_expire: Callable[[str], None],
        min_ttl: float = 10.0,
        grace: float = 10.0,
        max_per_second: float = 50.0,
        failover_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_expire = on_expire
        self.min_ttl = min_ttl
        self.grace = grace
        self.max_per_second = max_per_second
        self.failover_ttl = failover_ttl
        self._clock = clock
        self._deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False

    def ttl(self) -> float:
        """The TTL handed to a client; jittered up to 2x like Nomad's."""
        n = max(len(self._deadlines), 1)
        base = max(self.min_ttl, n / self.max_per_second)
        return base + random.random() * base

    def reset(self, node_id: str, ttl: float) -> None:
        with self._cond:
            deadline = self._clock() + ttl + self.grace
            self._deadlines[node_id] = deadline
            heapq.heappush(self._heap, (deadline, node_id))
            self._cond.notify()

    def forget(self, node_id: str) -> None:
        with self._cond:
            self._deadlines.pop(node_id, None)

    def start(self, known_nodes: list[str]) -> None:
        with self._cond:
            self._deadlines.clear()
            self._heap.clear()
            self._running = True
        for node_id in known_nodes:
            self.reset(node_id, self.failover_ttl)
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while True:
            expired: list[str] = []
            with self._cond:
                if not self._running:
                    return
                now = self._clock()
                while self._heap and self._heap[0][0] <= now:
                    deadline, node_id = heapq.heappop(self._heap)
                    if self._deadlines.get(node_id) == deadline:
                        del self._deadlines[node_id]
                        expired.append(node_id)
                if not expired:
                    wait = self._heap[0][0] - now if self._heap else 1.0
                    self._cond.wait(min(max(wait, 0.01), 1.0))
                    continue
            for node_id in expired:
                try:
                    self._on_expire(node_id)
                except Exception:
                    log.exception("marking node %s down failed", node_id)
