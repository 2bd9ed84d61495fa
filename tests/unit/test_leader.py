"""Leadership terms: changes handled in order on one thread; every leader loop
belongs to a term and is joined when the term ends (refactor issue, defects 1-2)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from corral.server.fsm import FSM
from corral.server.leader import LeadershipMonitor, Term
from corral.server.raft import PySyncObjConsensus
from corral.server.server import Server, ServerConfig
from corral.server.state import StateStore
from tests.support.cluster import CLUSTER_KEY
from tests.support.wait import wait_for

LEADER_LOOPS = ("unblock", "drainer", "deployments", "core-gc")


def loop_threads_since(baseline: frozenset[threading.Thread] = frozenset()) -> Counter[str]:
    """Leader-loop threads alive now, leaving out ``baseline`` (threads that other
    tests' servers left behind)."""
    return Counter(
        t.name for t in threading.enumerate() if t.name in LEADER_LOOPS and t not in baseline
    )


# ---------------------------------------------------------------- the monitor alone


class Recorder:
    """establish/revoke callbacks that record what happened, with one loop per term."""

    def __init__(self, establish_delay: float = 0.0) -> None:
        self.events: list[str] = []
        self.delay = establish_delay
        self.loops_alive: list[threading.Event] = []

    def establish(self, term: Term) -> None:
        self.events.append(f"establish {term.number}")
        time.sleep(self.delay)  # a raft barrier that takes a while

        def loop(stop: threading.Event) -> None:
            alive = threading.Event()
            alive.set()
            self.loops_alive.append(alive)
            stop.wait()
            alive.clear()

        term.loop(f"loop-{term.number}", loop)

    def revoke(self) -> None:
        self.events.append("revoke")


@pytest.fixture
def monitor_and_recorder() -> tuple[LeadershipMonitor, Recorder]:
    rec = Recorder()
    mon = LeadershipMonitor(rec.establish, rec.revoke)
    mon.start()
    yield mon, rec
    mon.stop()


def test_changes_are_applied_in_order_one_term_at_a_time(
    monitor_and_recorder: tuple[LeadershipMonitor, Recorder],
) -> None:
    mon, rec = monitor_and_recorder
    for leader in (True, True, False, False, True, False, True):
        mon.notify(leader)
    assert mon.wait_idle(5)
    assert rec.events == [
        "establish 1",
        "revoke",
        "establish 2",
        "revoke",
        "establish 3",
    ]
    assert mon.leading and mon.term is not None and mon.term.number == 3
    # Only the current term's loop runs; the earlier ones were joined.
    assert [a.is_set() for a in rec.loops_alive] == [False, False, True]


def test_loss_during_a_slow_establish_ends_the_term_right_after() -> None:
    rec = Recorder(establish_delay=0.2)
    mon = LeadershipMonitor(rec.establish, rec.revoke)
    mon.start()
    try:
        mon.notify(True)
        mon.notify(False)
        assert mon.wait_idle(5)
        assert rec.events == ["establish 1", "revoke"]
        assert not mon.leading
        assert all(not a.is_set() for a in rec.loops_alive)
    finally:
        mon.stop()


def test_stop_ends_the_current_term() -> None:
    rec = Recorder()
    mon = LeadershipMonitor(rec.establish, rec.revoke)
    mon.start()
    mon.notify(True)
    assert mon.wait_idle(5)
    mon.stop()
    assert rec.events == ["establish 1", "revoke"]
    assert all(not a.is_set() for a in rec.loops_alive)


# ---------------------------------------------------------------- raft's callbacks


def test_raft_reports_leadership_changes_in_raft_order(tmp_path: Path) -> None:
    """A slow handler of "became leader" must not let "lost leadership" overtake it
    (defect 1: a thread per change did)."""
    raft = PySyncObjConsensus(
        FSM(StateStore()), "127.0.0.1:1", [], str(tmp_path), password=CLUSTER_KEY
    )
    seen: list[bool] = []

    def slow_callback(leader: bool) -> None:
        if leader:
            time.sleep(0.1)
        seen.append(leader)

    raft.on_leadership(slow_callback)
    raft._on_state_changed(0, PySyncObjConsensus._LEADER_STATE)
    raft._on_state_changed(PySyncObjConsensus._LEADER_STATE, 0)
    wait_for(lambda: len(seen) == 2, timeout=5)
    assert seen == [True, False]


# ---------------------------------------------------------------- a whole server


def test_leader_loops_end_with_their_term_and_never_double() -> None:
    """Leadership lost and regained quickly: exactly one copy of each leader loop
    (defect 2: the old ones polled "leading?" and ran on beside the new ones)."""
    before = frozenset(threading.enumerate())

    def loop_threads() -> Counter[str]:
        return loop_threads_since(before)

    server = Server(ServerConfig(in_memory=True, num_workers=1))
    server.start()
    try:
        assert server.wait_leader(5)
        wait_for(lambda: loop_threads() == Counter(LEADER_LOOPS), timeout=5)
        for _ in range(3):
            server.raft.stop()  # LocalConsensus: "lost leadership"
            server.raft.start()  # "became leader" again, at once
        wait_for(
            lambda: loop_threads() == Counter(LEADER_LOOPS),
            timeout=10,
            message=lambda: f"one of each leader loop, have {dict(loop_threads())}",
        )
        assert server.leading
        server.raft.stop()
        wait_for(
            lambda: not loop_threads(),
            timeout=5,
            message=lambda: f"no leader loop after the term, have {dict(loop_threads())}",
        )
        assert not server.leading
    finally:
        server.stop()
    assert not loop_threads()
