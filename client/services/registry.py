"""The client's service registrations as the servers should see them.

``ServiceRegistry`` batches what the allocations' hooks publish into
``NodeService.UpdateServices`` calls, sent only when something changed and retried
with backoff; a deregistration can be waited for (the alloc runner kills tasks only
after it reached the servers). One per client, shared by every allocation's hook.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from corral.proto import pb

log = logging.getLogger(__name__)


SendFn = Callable[[list[pb.ServiceRegistration], list[str], list[str]], None]


class ServiceRegistry:
    """The client's registrations as the servers should see them.

    ``set_alloc`` replaces an allocation's registrations; a flusher thread sends
    what differs from what the servers acknowledged (upserts, and deletes of
    registrations that disappeared) in one ``UpdateServices`` call, retrying with
    backoff when it fails. Changes made while a call is in flight go in the next
    one, so bursts (three checks turning green at once) become one raft write.
    ``remove_alloc`` deletes every registration of an allocation by its ID and can
    wait until the servers acknowledged it.
    """

    def __init__(self, send: SendFn, coalesce: float = 0.02) -> None:
        self._send = send
        self._coalesce = coalesce
        self._cond = threading.Condition()
        self._desired: dict[str, dict[str, pb.ServiceRegistration]] = {}
        self._reported: dict[str, tuple[str, bytes]] = {}  # id -> (alloc id, bytes)
        self._alloc_deletes: set[str] = set()
        self._removed: set[str] = set()
        self._gen = 0  # bumped on every change
        self._acked = 0  # the last generation the servers acknowledged in full
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.sends = 0  # calls made (for tests and metrics)

    # ------------------------------------------------------------ API
    def set_alloc(self, alloc_id: str, regs: Iterable[pb.ServiceRegistration]) -> None:
        with self._cond:
            if alloc_id in self._removed:
                return
            self._desired[alloc_id] = {r.id: r for r in regs}
            self._changed()

    def remove_alloc(self, alloc_id: str, wait: float = 0.0) -> bool:
        """Delete the allocation's registrations; with ``wait``, block up to that
        many seconds until the servers acknowledged it. True when acknowledged."""
        with self._cond:
            self._removed.add(alloc_id)
            self._desired.pop(alloc_id, None)
            self._alloc_deletes.add(alloc_id)
            self._changed()
            target = self._gen
            if wait <= 0:
                return False
            deadline = time.monotonic() + wait
            while self._acked < target and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._acked >= target

    def wait_flushed(self, timeout: float) -> bool:
        """Block until everything changed so far was acknowledged (or ``timeout``)."""
        with self._cond:
            target = self._gen
            deadline = time.monotonic() + timeout
            while self._acked < target and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._acked >= target

    def forget_alloc(self, alloc_id: str) -> None:
        """The allocation is gone for good (garbage-collected): drop bookkeeping."""
        with self._cond:
            self._removed.discard(alloc_id)

    def resync(self) -> None:
        """Send everything again (the servers may have lost it: a node re-registered)."""
        with self._cond:
            self._reported.clear()
            self._changed()

    def registrations(self) -> list[pb.ServiceRegistration]:
        with self._cond:
            return [r for regs in self._desired.values() for r in regs.values()]

    def flushed(self) -> bool:
        with self._cond:
            return self._acked >= self._gen

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # ------------------------------------------------------------ flushing
    def _changed(self) -> None:
        self._gen += 1
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._loop, name="service-sync", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _pending(self) -> tuple[list[pb.ServiceRegistration], list[str], list[str], int]:
        upserts = []
        wanted: dict[str, str] = {}
        for alloc_id, regs in self._desired.items():
            for rid, reg in regs.items():
                wanted[rid] = alloc_id
                data = reg.SerializeToString(deterministic=True)
                if self._reported.get(rid, ("", b""))[1] != data:
                    upserts.append(reg)
        alloc_deletes = sorted(self._alloc_deletes)
        deletes = sorted(
            rid
            for rid, (alloc_id, _) in self._reported.items()
            if rid not in wanted and alloc_id not in self._alloc_deletes
        )
        return upserts, deletes, alloc_deletes, self._gen

    def _loop(self) -> None:
        backoff = 0.2
        while True:
            with self._cond:
                while not self._stopped and self._acked >= self._gen:
                    self._cond.wait()
                if self._stopped:
                    return
            if self._coalesce > 0:
                time.sleep(self._coalesce)
            with self._cond:
                upserts, deletes, alloc_deletes, gen = self._pending()
            try:
                if upserts or deletes or alloc_deletes:
                    self.sends += 1
                    self._send(list(upserts), deletes, alloc_deletes)
            except Exception as exc:
                log.warning("reporting service registrations failed: %s", exc)
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.2
            with self._cond:
                for reg in upserts:
                    self._reported[reg.id] = (
                        reg.alloc_id,
                        reg.SerializeToString(deterministic=True),
                    )
                for rid in deletes:
                    self._reported.pop(rid, None)
                for alloc_id in alloc_deletes:
                    self._alloc_deletes.discard(alloc_id)
                    for rid in [r for r, (a, _) in self._reported.items() if a == alloc_id]:
                        del self._reported[rid]
                self._acked = max(self._acked, gen)
                self._cond.notify_all()
