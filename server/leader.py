"""Leadership: one thread handles leadership changes in order, and each term of
leadership is one object that starts the leader-only loops and stops them all.

After Nomad's ``nomad/leader.go``: ``monitorLeadership`` consumes raft's leadership
notifications on one goroutine; ``establishLeadership(stopCh)`` starts the leader's
loops with a stop channel; ``revokeLeadership`` closes it and waits.

Why this shape:

* Raft reports changes on its own thread, which must never block. Handling each
  change on a new thread let "became leader" and "lost leadership" race, so the
  server could think it led when raft said it did not. Here raft only *enqueues*
  (``LeadershipMonitor.notify``); one thread applies the changes in the order raft
  made them.
* Loops that poll "am I leading?" outlive their term: leadership lost and regained
  within one of their waits left two copies running (duplicate proposals and
  evaluations). Here every loop belongs to a ``Term``: it gets the term's stop event,
  and the term joins it before the next term can start.

Life of a term (``Term.start`` then ``Term.stop``)::

    notify(True) --> [monitor thread] establish(term): barrier, then components start
                                         |
    notify(False) -> [monitor thread] term.stop(): stop event set, wakers called,
                                        components stopped in reverse order, threads joined
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from corral.proto import pb
from corral.server.fsm import ApplyResult
from corral.server.state import StateStore

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 10.0


class Component(Protocol):
    """Something a term starts and stops: the broker, the plan applier, a worker,
    the heartbeat tracker, or a ``LoopThread``."""

    def start(self) -> None: ...

    def stop(self) -> None:
        """Stop and wait until it has stopped."""
        ...


@dataclass
class LeaderContext:
    """What a leader loop may use: narrow dependencies, not the whole server.

    ``propose`` and ``propose_many`` commit commands through raft (they raise when
    this server is no longer the leader); ``new_eval(job, namespace, job_id,
    trigger, node_id="")`` makes an evaluation; ``now_ns`` is the clock."""

    state: StateStore
    propose: Callable[[pb.Command], ApplyResult]
    propose_many: Callable[[list[pb.Command]], list[ApplyResult]]
    new_eval: Callable[..., pb.Evaluation]
    now_ns: Callable[[], int]

    def update_evals(self, evals: list[pb.Evaluation]) -> int:
        return self.propose(pb.Command(eval_update=pb.EvalUpdateCommand(evals=evals))).index


class LoopThread:
    """A leader loop on its own thread: ``run(stop)`` must return soon after
    ``stop`` is set (wait on it, or wait with a short timeout and check it)."""

    def __init__(self, name: str, run: Callable[[threading.Event], None]) -> None:
        self.name = name
        self._run = run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._run(self._stop)
        except Exception:
            log.exception("leader loop %s failed", self.name)

    def signal(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                log.error("leader loop %s did not stop within %.0fs", self.name, JOIN_TIMEOUT_S)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


@dataclass
class Term:
    """One term of leadership: the components it started, stopped all together."""

    number: int
    components: list[Component] = field(default_factory=list)
    wakers: list[Callable[[], None]] = field(default_factory=list)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def add(self, component: Component) -> None:
        """Start ``component`` now; it is stopped when the term ends."""
        if self.stop_event.is_set():
            return
        self.components.append(component)
        component.start()

    def loop(self, name: str, run: Callable[[threading.Event], None]) -> LoopThread:
        loop = LoopThread(name, run)
        self.add(loop)
        return loop

    def on_stop(self, waker: Callable[[], None]) -> None:
        """Called when the term ends, to wake loops blocked elsewhere than on the
        stop event (a condition variable, a queue)."""
        self.wakers.append(waker)

    @property
    def ended(self) -> bool:
        return self.stop_event.is_set()

    def stop(self) -> None:
        self.stop_event.set()
        for c in self.components:  # signal every loop first, so they wind down together
            if isinstance(c, LoopThread):
                c.signal()
        for wake in self.wakers:
            try:
                wake()
            except Exception:
                log.exception("waking a leader loop failed")
        for c in reversed(self.components):
            try:
                c.stop()
            except Exception:
                log.exception("stopping %r failed", c)


class LeadershipMonitor:
    """Consumes leadership changes in order on one thread (``leadership``).

    ``establish(term)`` fills a new term (it may block, e.g. on a raft barrier; a
    loss of leadership meanwhile waits in the queue and ends the term right after);
    ``revoke()`` runs after the term's components have stopped.
    """

    def __init__(
        self,
        establish: Callable[[Term], None],
        revoke: Callable[[], None] = lambda: None,
    ) -> None:
        self._establish = establish
        self._revoke = revoke
        self._changes: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._term: Term | None = None
        self._terms = 0
        self._idle = threading.Condition()
        self._pending = 0

    # Called from raft's thread: never blocks.
    def notify(self, leader: bool) -> None:
        with self._idle:
            self._pending += 1
        self._changes.put(leader)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the current term, if any, and the monitor thread."""
        self._changes.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(JOIN_TIMEOUT_S * 2)
        self._thread = None

    @property
    def term(self) -> Term | None:
        return self._term

    @property
    def leading(self) -> bool:
        term = self._term
        return term is not None and not term.ended

    @property
    def terms_started(self) -> int:
        return self._terms

    def wait_idle(self, timeout: float) -> bool:
        """True once every change notified so far has been handled (for tests)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        while True:
            change = self._changes.get()
            try:
                if change is None:
                    self._end_term()
                    return
                if change and self._term is None:
                    self._begin_term()
                elif not change and self._term is not None:
                    self._end_term()
            except Exception:
                log.exception("handling a leadership change failed")
            finally:
                if change is not None:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()

    def _begin_term(self) -> None:
        self._terms += 1
        term = Term(self._terms)
        self._term = term
        log.info("leadership term %d: starting leader loops", term.number)
        try:
            self._establish(term)
        except Exception:
            log.exception("establishing leadership failed; ending the term")
            self._end_term()

    def _end_term(self) -> None:
        term, self._term = self._term, None
        if term is None:
            return
        log.info("leadership term %d ended: stopping leader loops", term.number)
        term.stop()
        self._revoke()
