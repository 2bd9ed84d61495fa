"""The eval broker (leader only): hands pending evaluations to scheduler workers.

* Per-job serialization: at most one evaluation of a job is out at a time; later
  ones wait behind it (Nomad's broker does the same, so two workers never plan the
  same job against each other).
* At-least-once: a dequeued evaluation must be acked; an unacked one returns to the
  queue after the nack timeout, and one nacked too often is marked failed by the
  caller (delivery limit).
* Blocked evaluations (no capacity) wait here until capacity may have appeared
  (a node registered or became eligible, an allocation stopped), then go back in.

The broker is in memory, rebuilt from the state store when a server becomes leader.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from corral.proto import pb

NACK_TIMEOUT = 60.0
DELIVERY_LIMIT = 3


@dataclass
class _Outstanding:
    ev: pb.Evaluation
    token: str
    deadline: float


class EvalBroker:
    """Clocks are injected: ``clock`` (monotonic seconds: nack timeouts, dequeue
    deadlines) and ``wall_clock`` (ns: an evaluation's ``wait_until``). Tests pass
    fakes and dequeue with ``timeout=0`` after moving them."""

    def __init__(
        self,
        nack_timeout: float = NACK_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Condition()
        self._ready: list[tuple[int, int, str]] = []  # (-priority, seq, eval id)
        self._evals: dict[str, pb.Evaluation] = {}  # ready or waiting
        self._waiting: dict[tuple[str, str], list[str]] = {}  # job -> evals behind the one out
        self._job_out: set[tuple[str, str]] = set()
        self._unack: dict[str, _Outstanding] = {}
        self._deliveries: dict[str, int] = {}
        self._blocked: dict[tuple[str, str], pb.Evaluation] = {}
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        self._enabled = False
        self._nack_timeout = nack_timeout
        # Evaluations that must wait until a wall-clock time (rescheduling delays).
        self._delayed: list[tuple[int, int, str]] = []  # (wait_until ns, seq, id)
        self._delayed_evals: dict[str, pb.Evaluation] = {}

    # ------------------------------------------------------------ lifecycle
    def set_enabled(self, enabled: bool) -> None:
        with self._lock:
            self._enabled = enabled
            if not enabled:
                self._delayed.clear()
                self._delayed_evals.clear()
                self._ready.clear()
                self._evals.clear()
                self._waiting.clear()
                self._job_out.clear()
                self._unack.clear()
                self._deliveries.clear()
                self._blocked.clear()
            self._lock.notify_all()

    @property
    def enabled(self) -> bool:
        return self._enabled

    # ------------------------------------------------------------ producers
    def enqueue(self, ev: pb.Evaluation) -> None:
        with self._lock:
            if not self._enabled or ev.id in self._evals or ev.id in self._unack:
                return
            if ev.wait_until and ev.wait_until > self._wall_clock():
                if ev.id not in self._delayed_evals:
                    self._delayed_evals[ev.id] = ev
                    heapq.heappush(self._delayed, (ev.wait_until, next(self._seq), ev.id))
                    self._lock.notify_all()
                return
            key = (ev.namespace, ev.job_id)
            self._evals[ev.id] = ev
            if key in self._job_out:
                self._waiting.setdefault(key, []).append(ev.id)
            else:
                self._push(ev)

    def _push(self, ev: pb.Evaluation) -> None:
        self._job_out.add((ev.namespace, ev.job_id))
        heapq.heappush(self._ready, (-ev.priority, next(self._seq), ev.id))
        self._lock.notify()

    def block(self, ev: pb.Evaluation) -> None:
        """Park a blocked evaluation: one per job, the newest wins."""
        with self._lock:
            if self._enabled:
                self._blocked[(ev.namespace, ev.job_id)] = ev

    def unblock_all(self) -> list[pb.Evaluation]:
        """Capacity may have changed: release the blocked evaluations (the caller
        turns them into pending ones through raft)."""
        with self._lock:
            released = list(self._blocked.values())
            self._blocked.clear()
            return released

    def blocked_count(self) -> int:
        with self._lock:
            return len(self._blocked)

    # ------------------------------------------------------------ consumers
    def dequeue(self, timeout: float) -> tuple[pb.Evaluation, str] | None:
        deadline = self._clock() + timeout
        with self._lock:
            while True:
                self._expire_unacked()
                self._release_delayed()
                while self._ready:
                    _, _, eval_id = heapq.heappop(self._ready)
                    ev = self._evals.pop(eval_id, None)
                    if ev is None:
                        continue
                    token = str(next(self._tokens))
                    self._unack[ev.id] = _Outstanding(ev, token, self._clock() + self._nack_timeout)
                    self._deliveries[ev.id] = self._deliveries.get(ev.id, 0) + 1
                    return ev, token
                remaining = deadline - self._clock()
                if remaining <= 0 or not self._enabled:
                    return None
                wait = min(remaining, 1.0)
                if self._delayed:
                    due = (self._delayed[0][0] - self._wall_clock()) / 1e9
                    wait = max(min(wait, due), 0.001)
                self._lock.wait(wait)

    def ack(self, eval_id: str, token: str) -> None:
        with self._lock:
            out = self._unack.get(eval_id)
            if out is None or out.token != token:
                return
            del self._unack[eval_id]
            self._deliveries.pop(eval_id, None)
            self._release_job(out.ev)

    def nack(self, eval_id: str, token: str) -> bool:
        """Return the evaluation to the queue; False when its delivery limit is
        reached (the caller then marks it failed)."""
        with self._lock:
            out = self._unack.get(eval_id)
            if out is None or out.token != token:
                return True
            del self._unack[eval_id]
            if self._deliveries.get(eval_id, 0) >= DELIVERY_LIMIT:
                self._deliveries.pop(eval_id, None)
                self._release_job(out.ev)
                return False
            self._evals[eval_id] = out.ev
            heapq.heappush(self._ready, (-out.ev.priority, next(self._seq), eval_id))
            self._lock.notify()
            return True

    def _release_job(self, ev: pb.Evaluation) -> None:
        key = (ev.namespace, ev.job_id)
        self._job_out.discard(key)
        waiting = self._waiting.get(key)
        if waiting:
            # Only the newest waiting eval matters for a job; older ones are
            # coalesced into it, as their job state is the same snapshot away.
            next_id = waiting.pop(0)
            if not waiting:
                del self._waiting[key]
            nxt = self._evals.get(next_id)
            if nxt is not None:
                self._push(nxt)

    def _release_delayed(self) -> None:
        now = self._wall_clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, eval_id = heapq.heappop(self._delayed)
            ev = self._delayed_evals.pop(eval_id, None)
            if ev is None:
                continue
            key = (ev.namespace, ev.job_id)
            self._evals[ev.id] = ev
            if key in self._job_out:
                self._waiting.setdefault(key, []).append(ev.id)
            else:
                self._push(ev)

    def _expire_unacked(self) -> None:
        now = self._clock()
        for eval_id, out in list(self._unack.items()):
            if out.deadline <= now:
                del self._unack[eval_id]
                self._evals[eval_id] = out.ev
                heapq.heappush(self._ready, (-out.ev.priority, next(self._seq), eval_id))

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "ready": len(self._ready),
                "unacked": len(self._unack),
                "waiting": sum(len(v) for v in self._waiting.values()),
                "blocked": len(self._blocked),
                "delayed": len(self._delayed_evals),
            }
