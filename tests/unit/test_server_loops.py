"""Leader loops without sockets: eval broker, plan applier, restart policy, and a
whole in-memory server (LocalConsensus) taking a job from register to placement."""

from __future__ import annotations

import pytest

from corral import structs
from corral.client.restarts import DONE, FAIL, RESTART, RestartTracker
from corral.proto import pb
from corral.server.eval_broker import DELIVERY_LIMIT, EvalBroker
from corral.server.fsm import FSM
from corral.server.plan_apply import evaluate_plan
from corral.server.server import InvalidRequest, NotFound, Server, ServerConfig
from corral.server.state import StateStore
from tests.support import factories as f
from tests.support.factories import command
from tests.support.wait import wait_for


def evaluated(server: Server, eval_id: str) -> pb.Evaluation | None:
    """The evaluation once a worker is done with it."""
    ev = server.state.eval(eval_id)
    return ev if ev is not None and ev.status != structs.EVAL_STATUS_PENDING else None


def ev_for(job_id: str, priority: int = 50) -> pb.Evaluation:
    return pb.Evaluation(id=f.uid("e"), namespace="default", job_id=job_id, priority=priority)


def test_broker_serializes_per_job_and_orders_by_priority() -> None:
    b = EvalBroker()
    b.set_enabled(True)
    a1, a2, hi = ev_for("a"), ev_for("a"), ev_for("b", priority=90)
    for e in (a1, a2, hi):
        b.enqueue(e)
    first = b.dequeue(0.1)
    second = b.dequeue(0.1)
    assert first is not None and second is not None
    assert first[0].id == hi.id and second[0].id == a1.id
    assert b.dequeue(0.05) is None  # a2 waits behind a1 (same job)
    b.ack(a1.id, second[1])
    third = b.dequeue(0.1)
    assert third is not None and third[0].id == a2.id


def test_broker_redelivers_nacked_until_the_limit() -> None:
    b = EvalBroker()
    b.set_enabled(True)
    e = ev_for("a")
    b.enqueue(e)
    for attempt in range(1, DELIVERY_LIMIT + 1):
        got = b.dequeue(0.1)
        assert got is not None and got[0].id == e.id
        assert b.nack(e.id, got[1]) == (attempt < DELIVERY_LIMIT)
    assert b.dequeue(0.05) is None


class FakeClocks:
    """The broker's two clocks, moved by hand."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall_ns = 1_700_000_000 * 1_000_000_000

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_ns += int(seconds * 1e9)

    def broker(self, nack_timeout: float = 60.0) -> EvalBroker:
        b = EvalBroker(
            nack_timeout=nack_timeout, clock=lambda: self.mono, wall_clock=lambda: self.wall_ns
        )
        b.set_enabled(True)
        return b


def test_broker_requeues_after_nack_timeout() -> None:
    clocks = FakeClocks()
    b = clocks.broker(nack_timeout=5.0)
    e = ev_for("a")
    b.enqueue(e)
    assert b.dequeue(0) is not None
    clocks.advance(4.9)
    assert b.dequeue(0) is None  # still out with its worker
    clocks.advance(0.2)
    again = b.dequeue(0)
    assert again is not None and again[0].id == e.id


def test_plan_applier_refuses_overcommit_from_a_stale_plan() -> None:
    fsm = FSM(StateStore())
    node = f.node(cpu=1000, memory=1000)
    fsm.apply(command(node_register=pb.NodeRegisterCommand(node=node)))

    def plan_with(cpu: int, port: int) -> pb.Plan:
        alloc = pb.Allocation(
            id=f.uid("c"), namespace="default", job_id="j", node_id=node.id, desired_status="run"
        )
        alloc.allocated_resources.tasks["t"].cpu.cpu_shares = cpu
        alloc.allocated_resources.tasks["t"].memory.memory_mb = 10
        alloc.allocated_resources.shared.ports.add(label="http", value=port)
        plan = pb.Plan()
        plan.node_allocation[node.id].allocs.append(alloc)
        return plan

    # Two workers planned on the same snapshot; the first commits.
    first, second = plan_with(700, 20001), plan_with(700, 20002)
    accepted, rejected = evaluate_plan(fsm.state, first)
    assert not rejected
    fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=accepted)))
    accepted, rejected = evaluate_plan(fsm.state, second)
    assert rejected == [node.id] and not accepted.node_allocation
    # A port given twice is refused too.
    accepted, rejected = evaluate_plan(fsm.state, plan_with(10, 20001))
    assert rejected == [node.id]


def test_restart_tracker_follows_policy() -> None:
    policy = pb.RestartPolicy(attempts=2, interval=100, delay=5, mode="fail")
    t = RestartTracker(policy, "service")
    assert t.on_exit(0, successful=True).action == RESTART  # services run forever
    assert t.on_exit(10, successful=False).action == RESTART
    assert t.on_exit(20, successful=False).action == FAIL
    # After the interval the budget is back.
    assert t.on_exit(200, successful=False).action == RESTART
    batch = RestartTracker(policy, "batch")
    assert batch.on_exit(0, successful=True).action == DONE
    delay_mode = RestartTracker(
        pb.RestartPolicy(attempts=0, interval=100, delay=5, mode="delay"), "service"
    )
    assert delay_mode.on_exit(0, successful=False).action == FAIL  # nothing to wait for yet
    assert RestartTracker(policy, "service").on_start_error(0, False, "no image").action == FAIL


def test_in_memory_server_places_a_registered_job() -> None:
    server = Server(ServerConfig(in_memory=True, num_workers=1))
    server.start()
    try:
        assert server.wait_leader(5)
        node = f.node()
        server.register_node(node)
        resp = server.register_job(f.job(count=3))
        ev = wait_for(lambda: evaluated(server, resp.eval_id), timeout=10)
        assert ev.status == structs.EVAL_STATUS_COMPLETE
        assert len(server.state.allocs_by_node(node.id)) == 3
    finally:
        server.stop()


def test_in_memory_server_blocks_then_places_when_capacity_appears() -> None:
    server = Server(ServerConfig(in_memory=True, num_workers=1))
    server.start()
    try:
        assert server.wait_leader(5)
        resp = server.register_job(f.job(count=2))
        ev = wait_for(lambda: evaluated(server, resp.eval_id), timeout=10)
        assert ev.status == structs.EVAL_STATUS_COMPLETE
        assert ev.blocked_eval and ev.failed_tg_allocs["web"].nodes_evaluated == 0
        server.register_node(f.node())
        wait_for(lambda: len(server.state.allocs_by_job("default", "web")) == 2, timeout=10)
    finally:
        server.stop()


def test_invalid_job_is_refused_and_changes_nothing() -> None:
    server = Server(ServerConfig(in_memory=True, num_workers=1))
    server.start()
    try:
        job = f.job()
        job.task_groups[0].tasks[0].driver = "nosuchdriver"
        job.task_groups[0].count = -1
        index = server.state.index
        try:
            server.register_job(job)
        except InvalidRequest as exc:
            assert len(exc.problems) >= 2
        else:
            raise AssertionError("an invalid job was accepted")
        assert server.state.index == index and server.state.jobs() == []
    finally:
        server.stop()


def test_broker_holds_delayed_evaluations_until_due() -> None:
    clocks = FakeClocks()
    b = clocks.broker()
    later = ev_for("a")
    later.wait_until = clocks.wall_ns + 30 * 1_000_000_000
    now = ev_for("b")
    b.enqueue(later)
    b.enqueue(now)
    first = b.dequeue(0)
    assert first is not None and first[0].id == now.id
    clocks.advance(29.9)
    assert b.dequeue(0) is None  # not due yet
    assert b.stats()["delayed"] == 1
    clocks.advance(0.2)
    due = b.dequeue(0)
    assert due is not None and due[0].id == later.id
    assert b.stats()["delayed"] == 0


def test_scaling_a_job_places_the_new_count() -> None:
    server = Server(ServerConfig(in_memory=True, num_workers=1))
    server.start()
    try:
        assert server.wait_leader(5)
        server.register_node(f.node())
        server.register_job(f.job(count=1))
        resp = server.scale_job("default", "web", "", 4)

        def placed() -> int:
            return sum(
                1 for a in server.state.allocs_by_job("default", "web") if a.desired_status == "run"
            )

        wait_for(lambda: placed() == 4, timeout=10, interval=0.01)
        ev = wait_for(lambda: evaluated(server, resp.eval_id), timeout=10)
        assert ev.status == structs.EVAL_STATUS_COMPLETE
        job = server.state.job("default", "web")
        assert job is not None and job.version == 1 and job.task_groups[0].count == 4
    finally:
        server.stop()


def test_heartbeats_of_many_returning_nodes_share_raft_entries() -> None:
    """A fleet's nodes marked down come back in one heartbeat call: all ready, in
    far fewer raft entries than nodes; an unknown node in the batch changes nothing."""
    server = Server(ServerConfig(in_memory=True, num_workers=1))
    server.start()
    try:
        assert server.wait_leader(5)
        nodes = [f.node() for _ in range(300)]
        for node in nodes:
            server.register_node(node)
        for node in nodes:
            server._node_expired(node.id)
        assert {n.status for n in server.state.nodes()} == {structs.NODE_STATUS_DOWN}
        beats = [pb.NodeHeartbeatRequest(node_id=n.id, secret_id=n.secret_id) for n in nodes]

        before = server.state.index
        with pytest.raises(NotFound):
            server.heartbeat_many([*beats[:5], pb.NodeHeartbeatRequest(node_id="nope")])
        assert server.state.index == before

        entries = []
        propose = server.raft.propose

        def counting_propose(data: bytes, timeout: float = 10.0) -> object:
            entries.append(len(data))
            return propose(data, timeout)

        server.raft.propose = counting_propose  # type: ignore[method-assign]
        server.heartbeat_many(beats)
        assert {n.status for n in server.state.nodes()} == {structs.NODE_STATUS_READY}
        assert server.state.index == before + len(nodes)  # one command per node...
        assert len(entries) <= 10  # ...in shared raft entries
    finally:
        server.stop()
