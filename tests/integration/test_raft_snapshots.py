"""Raft log compaction with ``BackgroundSnapshots``: real PySyncObj members in this
process, on loopback, with a tiny compaction threshold so that dumps happen.

What must hold: a dump written in the background restores the exact state (at
start-up, with the journal tail after it), a follower that fell behind the
compacted log catches up from the leader's dump, and compaction no longer runs the
serialization on raft's thread.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.proto import pb
from corral.server.fsm import FSM
from corral.server.raft import BackgroundSnapshots, PySyncObjConsensus
from corral.server.state import StateStore
from tests.support import factories as f
from tests.support.env import free_port
from tests.support.factories import command
from tests.support.wait import wait_for

KEY = "dGVzdC1jbHVzdGVyLWtleS10ZXN0LWNsdXN0ZXIta2V5"


def register(i: int) -> bytes:
    job = f.job(job_id=f"job-{i:04d}", count=1)
    return command(job_register=pb.JobRegisterCommand(job=job, eval=f.evaluation(job)))


def member(
    address: str, peers: list[str], data_dir: Path, min_entries: int = 40
) -> tuple[FSM, PySyncObjConsensus]:
    fsm = FSM(StateStore())
    raft = PySyncObjConsensus(
        fsm,
        address,
        peers,
        str(data_dir),
        password=KEY if peers else "",
        append_entries_period=0.005,
        compaction_min_entries=min_entries,
    )
    raft.start()
    return fsm, raft


@pytest.fixture
def stop_all() -> Iterator[list[PySyncObjConsensus]]:
    members: list[PySyncObjConsensus] = []
    yield members
    for r in members:
        r.stop()


def test_a_background_dump_restores_the_state_with_the_journal_tail(
    tmp_path: Path, stop_all: list[PySyncObjConsensus]
) -> None:
    addr = f"127.0.0.1:{free_port()}"
    fsm, raft = member(addr, [], tmp_path)
    stop_all.append(raft)
    wait_for(raft.is_leader, 10, message="single member leads")
    for i in range(150):
        raft.propose(register(i), timeout=10)
    wait_for(lambda: raft.snapshots.completed >= 1, 20, message="a dump completed")
    assert (tmp_path / "raft.snapshot").read_bytes().startswith(BackgroundSnapshots.MAGIC)
    for i in range(150, 170):  # after the dump: only in the journal
        raft.propose(register(i), timeout=10)
    digest = fsm.digest()
    raft.stop()
    stop_all.remove(raft)

    fsm2, raft2 = member(addr, [], tmp_path)
    stop_all.append(raft2)
    wait_for(lambda: len(fsm2.state.jobs()) == 170, 20, message="all 170 jobs back")
    assert raft2.snapshots.restored == 1  # the dump, then the journal's tail
    wait_for(lambda: fsm2.digest() == digest, 10, message="identical state after restart")


def test_a_follower_behind_the_compacted_log_catches_up_from_the_dump(
    tmp_path: Path, stop_all: list[PySyncObjConsensus]
) -> None:
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    members = [member(a, addrs, tmp_path / f"s{i}") for i, a in enumerate(addrs)]
    stop_all.extend(r for _, r in members)
    leader_fsm, leader = wait_for(
        lambda: next(((fs, r) for fs, r in members if r.is_leader()), None), 20, message="a leader"
    )
    lagging_i = next(i for i, (_, r) in enumerate(members) if r is not leader)
    members[lagging_i][1].stop()
    stop_all.remove(members[lagging_i][1])
    for i in range(200):
        leader.propose(register(i), timeout=10)
    # The leader compacted past everything the stopped member has.
    wait_for(lambda: leader.snapshots.completed >= 2, 20, message="the leader compacted")

    fsm, raft = member(addrs[lagging_i], addrs, tmp_path / f"s{lagging_i}")
    stop_all.append(raft)
    wait_for(lambda: len(fsm.state.jobs()) == 200, 30, message="the lagging member caught up")
    assert raft.snapshots.restored >= 1  # from the leader's dump, not from the log
    wait_for(lambda: fsm.digest() == leader_fsm.digest(), 10, message="identical state")


def test_dumps_in_pysyncobj_own_format_are_still_read(tmp_path: Path) -> None:
    """Servers upgraded from a version that let PySyncObj write its dumps."""
    from pysyncobj import pickle as raft_pickle

    source = FSM(StateStore())
    for i in range(5):
        source.apply(register(i))
    meta = (("entry", 7, 1), ("entry", 6, 1), {"node"})
    legacy = gzip.compress(raft_pickle.dumps(([{}, source.snapshot()], *meta)))
    path = tmp_path / "raft.snapshot"
    path.write_bytes(legacy)

    target = FSM(StateStore())
    assert BackgroundSnapshots(target, str(path)).deserialize(str(path)) == meta
    assert target.digest() == source.digest()


def test_serialize_only_freezes_on_the_caller_and_ignores_a_stale_temp_file(
    tmp_path: Path,
) -> None:
    fsm = FSM(StateStore())
    for i in range(50):
        fsm.apply(register(i))
    dump = tmp_path / "raft.snapshot"
    stale = tmp_path / "raft.snapshot.tmp"
    stale.write_bytes(b"left over by a crash")
    snaps = BackgroundSnapshots(fsm, str(dump))
    snaps.serialize(str(stale), ("meta",))
    # The state changes right after the freeze: the dump keeps the frozen view.
    digest = fsm.digest()
    fsm.apply(register(99))
    assert not stale.exists()  # PySyncObj's own rename of it must fail harmlessly
    wait_for(lambda: snaps.check() == 2, 10, message="serializer reports SUCCESS")
    assert snaps.check() == 0  # success is reported once, then idle
    restored = FSM(StateStore())
    assert snaps.deserialize(str(dump)) == ("meta",)
    assert BackgroundSnapshots(restored, str(dump)).deserialize(str(dump)) == ("meta",)
    assert restored.digest() == digest


def test_a_dump_that_cannot_start_reports_failure_once(tmp_path: Path) -> None:
    """PySyncObj waits for SUCCESS or FAILED before it compacts or sends a dump
    again: a serializer that raised would leave it waiting for good."""

    class BrokenStore(StateStore):
        def snapshot(self):  # type: ignore[no-untyped-def]
            raise MemoryError("no room for a copy")

    snaps = BackgroundSnapshots(FSM(BrokenStore()), str(tmp_path / "raft.snapshot"))
    snaps.serialize(str(tmp_path / "raft.snapshot.tmp"), ("meta",))
    assert snaps.check() == 3  # FAILED
    assert snaps.check() == 0  # then idle: PySyncObj may try again
    assert not (tmp_path / "raft.snapshot").exists()
