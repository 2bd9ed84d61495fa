"""The scheduler worker's retry path: a real ``Worker`` and ``EvalBroker`` against an
in-memory state, with the scheduler harness's planner as plan applier refusing part
of the plans (Nomad's Harness with a rejecting ``Planner``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from corral import structs
from corral.proto import pb
from corral.server.eval_broker import DELIVERY_LIMIT, EvalBroker
from corral.server.worker import MAX_PLAN_ATTEMPTS, Worker
from tests.support import factories as f
from tests.support.scheduler_harness import SchedulerHarness, refuse_all, refuse_first
from tests.support.wait import wait_for


@contextmanager
def running_worker(h: SchedulerHarness) -> Iterator[EvalBroker]:
    """A started worker wired as the server wires it, with the harness's planner as
    plan applier; yields its (enabled) broker."""
    broker = EvalBroker()
    broker.set_enabled(True)
    worker = Worker("worker-test", h.state, broker, h.planner, h.update_evals, lambda: f.FAKE_NOW)
    worker.start()
    try:
        yield broker
    finally:
        worker.stop()
        broker.set_enabled(False)


def stored(h: SchedulerHarness, ev: pb.Evaluation) -> pb.Evaluation:
    got = h.state.eval(ev.id)
    assert got is not None
    return got


def eval_status(h: SchedulerHarness, ev: pb.Evaluation) -> str:
    return stored(h, ev).status


def settled(broker: EvalBroker) -> bool:
    stats = broker.stats()
    return bool(stats["ready"] == 0 and stats["unacked"] == 0)


def test_partly_refused_plan_is_replanned_on_a_newer_snapshot() -> None:
    # Two nodes that take exactly two allocations each: the job needs both, full.
    h = SchedulerHarness(refuse=refuse_first(nodes=1))
    nodes = {n.id: n for n in (h.add_node(f.node(cpu=1000)) for _ in range(2))}
    ev = h.register(f.job(count=4, cpu=500))

    with running_worker(h) as broker:
        broker.enqueue(stored(h, ev))
        wait_for(
            lambda: eval_status(h, ev) == structs.EVAL_STATUS_COMPLETE,
            timeout=10,
            interval=0.02,
            message=lambda: f"eval complete; submissions: {h.planner.submissions}",
        )
        wait_for(lambda: settled(broker), timeout=10, interval=0.02, message="eval acked")
    done = stored(h, ev)

    # The first plan used both nodes and lost one of them; the rest was committed,
    # without completing the evaluation.
    first, retry = h.planner.submissions
    refused = first.refused
    assert len(first.plan.node_allocation) == 2 and refused == [min(nodes)]
    assert first.committed and first.index > first.plan.snapshot_index
    # The retry was planned on a snapshot holding the first commit, so it only places
    # what was refused, on the node that has room; it is accepted and completes the eval.
    assert retry.plan.snapshot_index >= first.index
    assert list(retry.plan.node_allocation) == refused
    assert len(retry.plan.node_allocation[refused[0]].allocs) == 2
    assert not retry.refused and retry.committed
    assert [e.id for e in retry.evals] == [ev.id]

    # The full count runs, two per node, and no node is overcommitted.
    live = h.live()
    assert len(live) == 4
    for node_id, n in nodes.items():
        mine = [a for a in live if a.node_id == node_id]
        cpu, mem, ports = h.state.node_usage(node_id)
        assert len(mine) == 2
        assert cpu <= n.node_resources.cpu.cpu_shares
        assert mem <= n.node_resources.memory.memory_mb
        assert len(ports) == 2  # one dynamic port each, none given twice

    assert done.snapshot_index == retry.plan.snapshot_index
    assert done.modify_index == retry.index
    assert not done.failed_tg_allocs and not done.blocked_eval
    assert [e.id for e in h.state.evals_by_job(ev.namespace, ev.job_id)] == [ev.id]


def test_plan_refused_on_every_attempt_fails_the_eval_after_the_delivery_limit() -> None:
    h = SchedulerHarness(refuse=refuse_all)
    h.add_node()
    ev = h.register(f.job(count=2))

    with running_worker(h) as broker:
        broker.enqueue(stored(h, ev))
        wait_for(
            lambda: eval_status(h, ev) == structs.EVAL_STATUS_FAILED,
            timeout=10,
            interval=0.02,
            message=lambda: f"eval failed after {len(h.planner.submissions)} submissions",
        )
        assert settled(broker)  # not handed out again
    failed = stored(h, ev)

    # Each delivery tries MAX_PLAN_ATTEMPTS plans, then the worker nacks; once the
    # broker's delivery limit is reached the worker marks the evaluation failed.
    # (Nomad's worker instead fails it at once with a blocked evaluation triggered
    # by "max-plan-attempts"; corral's worker does not create one.)
    subs = h.planner.submissions
    assert len(subs) == MAX_PLAN_ATTEMPTS * DELIVERY_LIMIT
    assert all(s.refused and not s.committed for s in subs)
    assert failed.status_description == (
        f"evaluation failed: plan still refused after {MAX_PLAN_ATTEMPTS} attempts"
    )
    assert h.allocs() == []


def test_process_gives_up_after_max_plan_attempts_without_completing_the_eval() -> None:
    h = SchedulerHarness(refuse=refuse_all)
    h.add_node()
    ev = stored(h, h.register(f.job(count=2)))
    worker = Worker("worker-test", h.state, EvalBroker(), h.planner, h.update_evals, lambda: 0)

    with pytest.raises(RuntimeError, match=f"after {MAX_PLAN_ATTEMPTS} attempts"):
        worker.process(ev)

    assert len(h.planner.submissions) == MAX_PLAN_ATTEMPTS
    # Every attempt carried the completed evaluation, and none was committed.
    assert all(s.evals[0].status == structs.EVAL_STATUS_COMPLETE for s in h.planner.submissions)
    assert eval_status(h, ev) == structs.EVAL_STATUS_PENDING
    assert h.allocs() == []
