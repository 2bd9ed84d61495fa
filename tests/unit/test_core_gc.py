"""Core garbage collection: which evaluations and allocations are reaped, and the
FSM deleting exactly those (Nomad's eval GC)."""

from __future__ import annotations

import time

from corral import structs
from corral.proto import pb
from corral.server.core_gc import collect, collect_deployments, delete_commands
from corral.server.fsm import FSM
from corral.server.server import Server, ServerConfig
from corral.server.state import StateStore
from tests.support import factories as f
from tests.support.factories import FAKE_NOW, command

HOUR = 3600 * 10**9


class Cluster:
    """An FSM with one node and one running job, driven by raft commands."""

    def __init__(self) -> None:
        self.fsm = FSM(StateStore())
        self.node = f.node()
        self.fsm.apply(command(node_register=pb.NodeRegisterCommand(node=self.node)))
        self.job = f.job(count=0)
        self.fsm.apply(
            command(job_register=pb.JobRegisterCommand(job=self.job, eval=f.evaluation(self.job)))
        )

    def place(self, client_status: str = "pending", next_alloc: str = "") -> tuple[str, str]:
        """A completed evaluation with one allocation in ``client_status``."""
        ev = f.evaluation(self.job)
        ev.status = structs.EVAL_STATUS_COMPLETE
        alloc = pb.Allocation(
            id=f.uid("a"),
            eval_id=ev.id,
            namespace="default",
            job_id=self.job.id,
            node_id=self.node.id,
            task_group="web",
            desired_status="run",
        )
        plan = pb.Plan()
        plan.node_allocation[self.node.id].allocs.append(alloc)
        self.fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=plan, evals=[ev])))
        if client_status != "pending":
            update = pb.Allocation(id=alloc.id, client_status=client_status)
            self.fsm.apply(
                command(alloc_client_update=pb.AllocClientUpdateCommand(allocs=[update]))
            )
        if next_alloc:
            stored = pb.Allocation()
            stored.CopyFrom(self.fsm.state.alloc(alloc.id))
            stored.next_allocation = next_alloc
            with self.fsm.state.write() as txn:  # as a reschedule would have linked it
                txn.put_alloc(stored)
        return ev.id, alloc.id


def test_old_terminal_evaluations_go_with_their_finished_allocations() -> None:
    c = Cluster()
    done_eval, done_alloc = c.place("complete")
    running_eval, running_alloc = c.place("running")
    retry_eval, retry_alloc = c.place("failed")  # may still be rescheduled
    replaced_eval, replaced_alloc = c.place("failed", next_alloc="later")

    evals, allocs = collect(c.fsm.state.snapshot(), FAKE_NOW + 2 * HOUR, HOUR)
    assert done_eval in evals and done_alloc in allocs
    assert replaced_eval in evals and replaced_alloc in allocs
    for kept in (running_eval, retry_eval):
        assert kept not in evals
    for kept in (running_alloc, retry_alloc):
        assert kept not in allocs

    # Younger than the threshold: nothing yet.
    assert collect(c.fsm.state.snapshot(), FAKE_NOW + HOUR // 2, HOUR) == ([], [])


def test_a_failed_allocation_of_a_stopped_job_is_collected() -> None:
    c = Cluster()
    ev_id, alloc_id = c.place("failed")
    c.fsm.apply(
        command(job_deregister=pb.JobDeregisterCommand(namespace="default", job_id=c.job.id))
    )
    evals, allocs = collect(c.fsm.state.snapshot(), FAKE_NOW, 0)
    assert ev_id in evals and alloc_id in allocs


def test_pending_and_blocked_evaluations_are_kept() -> None:
    c = Cluster()
    pending = f.evaluation(c.job)
    blocked = f.evaluation(c.job)
    blocked.status = structs.EVAL_STATUS_BLOCKED
    c.fsm.apply(command(eval_update=pb.EvalUpdateCommand(evals=[pending, blocked])))
    evals, _ = collect(c.fsm.state.snapshot(), FAKE_NOW + 10 * HOUR, HOUR)
    assert pending.id not in evals and blocked.id not in evals


def test_the_fsm_deletes_exactly_what_the_command_names() -> None:
    c = Cluster()
    c.place("running")
    usage_before = c.fsm.state.node_usage(c.node.id)
    doomed = [c.place("complete") for _ in range(3)]
    evals, allocs = collect(c.fsm.state.snapshot(), FAKE_NOW, 0)
    assert sorted(allocs) == sorted(a for _, a in doomed)
    for cmd in delete_commands(evals, allocs):
        assert c.fsm.apply(cmd.SerializeToString()).error == ""  # type: ignore[union-attr]
    for ev_id, alloc_id in doomed:
        assert c.fsm.state.eval(ev_id) is None and c.fsm.state.alloc(alloc_id) is None
    assert len(c.fsm.state.allocs()) == 1
    assert c.fsm.state.node_usage(c.node.id) == usage_before
    assert c.fsm.state.allocs_by_job("default", c.job.id)[0].client_status == "running"


def test_old_deployments_go_but_the_latest_and_those_in_use_stay() -> None:
    c = Cluster()

    def deployment(status: str, create_index: int) -> pb.Deployment:
        d = pb.Deployment(id=f.uid("d"), namespace="default", job_id=c.job.id, status=status)
        with c.fsm.state.write() as txn:  # as the FSM stores a plan's deployment
            d.create_index = create_index
            txn.put_deployment(d)
        return d

    old = deployment("successful", 1)
    failed = deployment("failed", 2)
    in_use = deployment("successful", 3)
    running = deployment("running", 4)
    latest = deployment("successful", 5)
    _, alloc_id = c.place("running")
    stored = pb.Allocation()
    stored.CopyFrom(c.fsm.state.alloc(alloc_id))
    stored.deployment_id = in_use.id
    with c.fsm.state.write() as txn:
        txn.put_alloc(stored)

    seen: dict[str, int] = {}
    # First seen terminal now: too young for a one-hour threshold.
    assert collect_deployments(c.fsm.state.snapshot(), FAKE_NOW, HOUR, seen) == []
    later = collect_deployments(c.fsm.state.snapshot(), FAKE_NOW + HOUR, HOUR, seen)
    assert later == sorted([old.id, failed.id])
    assert running.id not in seen and latest.id in seen
    evals: list[str] = []
    for cmd in delete_commands(evals, [], later):
        c.fsm.apply(cmd.SerializeToString())
    assert {d.id for d in c.fsm.state.deployments()} == {in_use.id, running.id, latest.id}


def test_delete_commands_are_chunked() -> None:
    ids = [f"e{i}" for i in range(2500)]
    cmds = delete_commands(ids, ids[:10])
    assert [len(c.eval_delete.eval_ids) for c in cmds] == [1000, 1000, 500]
    assert sum(len(c.eval_delete.alloc_ids) for c in cmds) == 10


def test_system_gc_on_a_server_reaps_a_finished_batch_job() -> None:
    server = Server(ServerConfig(in_memory=True, num_workers=1))
    server.start()
    try:
        assert server.wait_leader(5)
        server.register_node(f.node())
        job = f.job(count=2, job_type=structs.JOB_TYPE_BATCH)
        server.register_job(job)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(server.state.allocs()) < 2:
            time.sleep(0.01)
        allocs = server.state.allocs()
        assert len(allocs) == 2
        server.update_allocs_from_client(
            [pb.Allocation(id=a.id, client_status="complete") for a in allocs]
        )
        while time.monotonic() < deadline and any(
            e.status != structs.EVAL_STATUS_COMPLETE for e in server.state.evals()
        ):
            time.sleep(0.01)
        resp = server.system_gc()
        assert resp.allocs_deleted == 2 and resp.evals_deleted >= 1
        assert server.state.allocs() == []
        assert all(e.status not in ("complete", "failed") for e in server.state.evals())
    finally:
        server.stop()
