"""The state store's persistent tables: O(1) snapshots isolated from later writes,
commands published whole or not at all, indexes consistent with their tables."""

from __future__ import annotations

import threading
import time

import pytest

from corral.proto import pb
from corral.server.fsm import FSM
from corral.server.state import StateStore
from tests.support import factories as f
from tests.support.factories import command


def place(fsm: FSM, node_id: str, n: int, job_id: str = "j") -> list[pb.Allocation]:
    plan = pb.Plan()
    allocs = []
    for _ in range(n):
        a = pb.Allocation(
            id=f.uid("a"), namespace="default", job_id=job_id, node_id=node_id, desired_status="run"
        )
        a.allocated_resources.tasks["t"].cpu.cpu_shares = 10
        allocs.append(a)
    plan.node_allocation[node_id].allocs.extend(allocs)
    assert fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=plan))).error == ""
    return allocs


def test_a_snapshot_does_not_see_later_writes() -> None:
    fsm = FSM(StateStore())
    node = f.node()
    fsm.apply(command(node_register=pb.NodeRegisterCommand(node=node)))
    first = place(fsm, node.id, 3)
    snap = fsm.state.snapshot()
    place(fsm, node.id, 2)
    stop = pb.Plan()
    stop.node_update[node.id].allocs.add(id=first[0].id, desired_status="stop")
    fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=stop)))

    assert len(snap.allocs_by_node(node.id)) == 3
    assert snap.node_usage(node.id)[0] == 30
    assert snap.alloc(first[0].id).desired_status == "run"  # type: ignore[union-attr]
    assert len(fsm.state.allocs_by_node(node.id)) == 5
    # The stopped allocation holds its resources until its client says it ended.
    assert fsm.state.node_usage(node.id)[0] == 50
    assert snap.index < fsm.state.index


def test_snapshot_cost_does_not_grow_with_the_state() -> None:
    """Scheduler workers take one per evaluation: it must not copy the tables."""
    fsm = FSM(StateStore())
    node = f.node()
    fsm.apply(command(node_register=pb.NodeRegisterCommand(node=node)))
    place(fsm, node.id, 20_000)

    def cost() -> float:
        t = time.perf_counter()
        for _ in range(1000):
            fsm.state.snapshot()
        return time.perf_counter() - t

    # 1,000 snapshots of 20,000 allocations: copying the dicts took ~1.5 s here.
    assert min(cost() for _ in range(3)) < 0.05


def test_a_command_that_fails_midway_publishes_nothing() -> None:
    store = StateStore()
    before = store.snapshot()
    with pytest.raises(RuntimeError), store.write() as txn:
        txn.put_node(f.node())
        raise RuntimeError("handler bug")
    assert store.nodes() == []
    assert store.index == before.index == 0
    with store.write() as txn:  # the lock was released: the store still works
        txn.put_node(f.node())
    assert len(store.nodes()) == 1 and store.index == 1


def test_readers_never_see_half_a_command() -> None:
    """A reader racing a writer sees an allocation and its node index together."""
    fsm = FSM(StateStore())
    node = f.node()
    fsm.apply(command(node_register=pb.NodeRegisterCommand(node=node)))
    done = threading.Event()
    torn: list[str] = []

    def read() -> None:
        while not done.is_set():
            snap = fsm.state.snapshot()
            on_node = {a.id for a in snap.allocs_by_node(node.id)}
            if on_node != {a.id for a in snap.allocs()}:
                torn.append(f"index {snap.index}")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(200):
            place(fsm, node.id, 5)
    finally:
        done.set()
        reader.join()
    assert torn == []
    assert len(fsm.state.allocs()) == 1000
