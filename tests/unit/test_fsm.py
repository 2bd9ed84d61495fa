"""The FSM: deterministic apply, versions, plans, snapshots."""

from __future__ import annotations

import pytest

from corral import structs
from corral.proto import pb
from corral.server.fsm import FSM
from corral.server.state import StateStore
from tests.support import factories as f
from tests.support.factories import command


def new_fsm() -> FSM:
    return FSM(StateStore())


def register(fsm: FSM, job: pb.Job) -> pb.Evaluation:
    ev = f.evaluation(job)
    res = fsm.apply(command(job_register=pb.JobRegisterCommand(job=job, eval=ev)))
    assert res.error == ""
    return ev


def test_register_stores_job_and_eval_in_one_index() -> None:
    fsm = new_fsm()
    job = f.job()
    ev = register(fsm, job)
    stored = fsm.state.job("default", "web")
    assert stored is not None
    assert stored.version == 0
    assert stored.create_index == stored.modify_index == fsm.state.index == 1
    stored_eval = fsm.state.eval(ev.id)
    assert stored_eval is not None and stored_eval.create_index == 1
    assert stored_eval.job_modify_index == stored.job_modify_index


def test_same_spec_keeps_version_changed_spec_bumps_it() -> None:
    fsm = new_fsm()
    job = f.job()
    register(fsm, job)
    register(fsm, job)
    assert fsm.state.job("default", "web").version == 0  # type: ignore[union-attr]
    job.task_groups[0].count = 5
    register(fsm, job)
    stored = fsm.state.job("default", "web")
    assert stored is not None and stored.version == 1
    assert [v.version for v in fsm.state.job_versions("default", "web")] == [1, 0]


def test_versions_are_capped_at_nomads_six() -> None:
    fsm = new_fsm()
    job = f.job()
    for count in range(10):
        job.task_groups[0].count = count
        register(fsm, job)
    versions = [v.version for v in fsm.state.job_versions("default", "web")]
    assert versions == [9, 8, 7, 6, 5, 4]


def test_deregister_stops_then_purge_deletes() -> None:
    fsm = new_fsm()
    register(fsm, f.job())
    fsm.apply(command(job_deregister=pb.JobDeregisterCommand(namespace="default", job_id="web")))
    stopped = fsm.state.job("default", "web")
    assert stopped is not None and stopped.stop and stopped.version == 1
    fsm.apply(
        command(
            job_deregister=pb.JobDeregisterCommand(namespace="default", job_id="web", purge=True)
        )
    )
    assert fsm.state.job("default", "web") is None


def test_purge_deletes_the_jobs_allocations_and_deployments_and_keeps_others() -> None:
    """A job purged and registered again starts its versions from 0: deployments
    of the purged incarnation must not pass for the new one's (Nomad deletes them)."""
    fsm = new_fsm()
    for job_id in ("web", "api"):
        job = f.job(job_id=job_id)
        register(fsm, job)
        plan = pb.Plan()
        plan.deployment.CopyFrom(
            pb.Deployment(id=f"d-{job_id}", namespace="default", job_id=job_id, status="running")
        )
        fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=plan)))
    assert {d.id for d in fsm.state.deployments()} == {"d-web", "d-api"}
    for job_id in ("web", "api"):
        alloc = pb.Allocation(
            id=f"a-{job_id}", namespace="default", job_id=job_id, node_id="n1", desired_status="run"
        )
        plan = pb.Plan()
        plan.node_allocation["n1"].allocs.append(alloc)
        fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=plan)))
    assert {a.id for a in fsm.state.allocs()} == {"a-web", "a-api"}
    fsm.apply(
        command(
            job_deregister=pb.JobDeregisterCommand(namespace="default", job_id="web", purge=True)
        )
    )
    assert {d.id for d in fsm.state.deployments()} == {"d-api"}
    assert {a.id for a in fsm.state.allocs()} == {"a-api"}
    assert fsm.state.allocs_by_job("default", "web") == []


def test_deregister_unknown_job_is_refused_without_change() -> None:
    fsm = new_fsm()
    res = fsm.apply(
        command(job_deregister=pb.JobDeregisterCommand(namespace="default", job_id="x"))
    )
    assert "not found" in res.error
    assert fsm.state.jobs() == []


def test_apply_plan_places_and_stops_and_links_replacements() -> None:
    fsm = new_fsm()
    node = f.node()
    fsm.apply(command(node_register=pb.NodeRegisterCommand(node=node)))
    job = f.job(count=1)
    register(fsm, job)
    first = pb.Allocation(
        id=f.uid("c"),
        namespace="default",
        job_id="web",
        task_group="web",
        node_id=node.id,
        desired_status="run",
    )
    plan = pb.Plan(job_id="web", namespace="default")
    plan.node_allocation[node.id].allocs.append(first)
    fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=plan)))
    stored = fsm.state.alloc(first.id)
    assert stored is not None and stored.client_status == structs.ALLOC_CLIENT_PENDING
    assert [a.id for a in fsm.state.allocs_by_node(node.id)] == [first.id]

    second = pb.Allocation(
        id=f.uid("c"),
        namespace="default",
        job_id="web",
        task_group="web",
        node_id=node.id,
        desired_status="run",
        previous_allocation=first.id,
    )
    plan = pb.Plan(job_id="web", namespace="default")
    plan.node_update[node.id].allocs.append(
        pb.Allocation(id=first.id, desired_status="stop", desired_description="replaced")
    )
    plan.node_allocation[node.id].allocs.append(second)
    fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=plan)))
    old = fsm.state.alloc(first.id)
    assert old is not None
    assert old.desired_status == "stop" and old.next_allocation == second.id
    assert len(fsm.state.allocs_by_job("default", "web")) == 2


def test_client_update_merges_client_fields_only() -> None:
    fsm = new_fsm()
    node = f.node()
    alloc = pb.Allocation(
        id=f.uid("c"), namespace="default", job_id="web", node_id=node.id, desired_status="run"
    )
    plan = pb.Plan()
    plan.node_allocation[node.id].allocs.append(alloc)
    fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=plan)))
    update = pb.Allocation(id=alloc.id, client_status="running", desired_status="stop")
    update.task_states["server"].state = "running"
    fsm.apply(command(alloc_client_update=pb.AllocClientUpdateCommand(allocs=[update])))
    stored = fsm.state.alloc(alloc.id)
    assert stored is not None
    assert stored.client_status == "running"
    assert stored.desired_status == "run"  # clients cannot change the server's intent
    assert stored.task_states["server"].state == "running"


def test_stored_messages_are_never_mutated() -> None:
    """Snapshots share messages with the live store: writes must replace, not edit."""
    fsm = new_fsm()
    register(fsm, f.job())
    snap = fsm.state.snapshot()
    before = snap.job("default", "web")
    job = f.job(count=9)
    register(fsm, job)
    assert before is not None and before.task_groups[0].count == 3
    assert snap.job("default", "web") is before


def test_snapshot_restore_round_trip_and_replicas_agree() -> None:
    commands = []
    node = f.node()
    commands.append(command(node_register=pb.NodeRegisterCommand(node=node)))
    job = f.job()
    commands.append(command(job_register=pb.JobRegisterCommand(job=job, eval=f.evaluation(job))))
    plan = pb.Plan()
    plan.node_allocation[node.id].allocs.add(
        id=f.uid("c"), namespace="default", job_id="web", node_id=node.id
    )
    commands.append(command(apply_plan=pb.ApplyPlanCommand(plan=plan)))
    job2 = f.job(count=1)
    commands.append(command(job_register=pb.JobRegisterCommand(job=job2)))

    a, b = new_fsm(), new_fsm()
    for c in commands:
        a.apply(c)
        b.apply(c)
    assert a.digest() == b.digest()

    restored = new_fsm()
    restored.restore(a.snapshot())
    assert restored.digest() == a.digest()
    assert restored.state.index == a.state.index
    assert [v.version for v in restored.state.job_versions("default", "web")] == [1, 0]
    assert len(restored.state.allocs_by_node(node.id)) == 1
    # The restored replica keeps applying identically.
    extra = command(noop=pb.NoopCommand())
    a.apply(extra)
    restored.apply(extra)
    assert restored.digest() == a.digest()


def test_node_reregistration_keeps_operator_decisions() -> None:
    fsm = new_fsm()
    node = f.node()
    fsm.apply(command(node_register=pb.NodeRegisterCommand(node=node)))
    fsm.apply(
        command(
            node_eligibility=pb.NodeEligibilityCommand(node_id=node.id, eligibility="ineligible")
        )
    )
    fsm.apply(command(node_register=pb.NodeRegisterCommand(node=node)))
    stored = fsm.state.node(node.id)
    assert stored is not None and stored.scheduling_eligibility == "ineligible"
    impostor = pb.Node()
    impostor.CopyFrom(node)
    impostor.secret_id = "wrong"
    res = fsm.apply(command(node_register=pb.NodeRegisterCommand(node=impostor)))
    assert "different secret" in res.error


def test_blocking_wait_returns_when_index_passes() -> None:
    import threading

    fsm = new_fsm()
    start = fsm.state.table_index("jobs")
    timer = threading.Timer(0.05, lambda: register(fsm, f.job()))
    timer.start()
    index = fsm.state.wait_for_index(start, 5.0, "jobs")
    timer.join()
    assert index > start
    # Nothing changes: the wait times out with the same index.
    assert fsm.state.wait_for_index(index, 0.05, "jobs") == index


def test_node_usage_totals_follow_every_allocation_write() -> None:
    """The running totals equal a recount from scratch after places, stops, client
    updates and a snapshot restore."""
    from corral.scheduler.rank import NodeUsage

    fsm = new_fsm()
    node = f.node()
    fsm.apply(command(node_register=pb.NodeRegisterCommand(node=node)))

    def alloc(cpu: int, port: int) -> pb.Allocation:
        a = pb.Allocation(
            id=f.uid("c"), namespace="default", job_id="j", node_id=node.id, desired_status="run"
        )
        a.allocated_resources.tasks["t"].cpu.cpu_shares = cpu
        a.allocated_resources.tasks["t"].memory.memory_mb = cpu // 2
        a.allocated_resources.shared.ports.add(label="http", value=port)
        return a

    allocs = [alloc(100 * (i + 1), 20000 + i) for i in range(4)]
    plan = pb.Plan()
    plan.node_allocation[node.id].allocs.extend(allocs)
    fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=plan)))
    stop = pb.Plan()
    stop.node_update[node.id].allocs.add(id=allocs[0].id, desired_status="stop")
    fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=stop)))
    done = pb.Allocation(id=allocs[1].id, client_status="failed")
    fsm.apply(command(alloc_client_update=pb.AllocClientUpdateCommand(allocs=[done])))

    def recount(store: StateStore) -> tuple[int, int, frozenset[int]]:
        u = NodeUsage.of(node, store.allocs_by_node(node.id))
        return (u.cpu_used, u.mem_used, frozenset(u.ports_used))

    # The stopped allocation still holds its resources: its client has not said it
    # ended (Nomad's AllocsFit); the failed one no longer does.
    assert (
        fsm.state.node_usage(node.id)
        == recount(fsm.state)
        == (
            800,
            400,
            frozenset({20000, 20002, 20003}),
        )
    )
    ended = pb.Allocation(id=allocs[0].id, client_status="complete")
    fsm.apply(command(alloc_client_update=pb.AllocClientUpdateCommand(allocs=[ended])))
    assert (
        fsm.state.node_usage(node.id) == recount(fsm.state) == (700, 350, frozenset({20002, 20003}))
    )
    restored = new_fsm()
    restored.restore(fsm.snapshot())
    assert restored.state.node_usage(node.id) == recount(restored.state)


def test_node_usage_is_not_confused_by_an_id_another_store_used() -> None:
    """Two stores may hold different allocations under one ID and create index (test
    harnesses, a restored snapshot): each store's totals count its own resources.
    Regression: a process-wide footprint memo once overcommitted nodes this way."""
    totals = []
    for memory in (100, 700):
        fsm = new_fsm()
        node = f.node()
        node.id = "n1"
        fsm.apply(command(node_register=pb.NodeRegisterCommand(node=node)))
        a = pb.Allocation(id="same", namespace="default", job_id="j", node_id="n1")
        a.desired_status = "run"
        a.allocated_resources.tasks["t"].memory.memory_mb = memory
        plan = pb.Plan()
        plan.node_allocation["n1"].allocs.append(a)
        fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=plan)))
        totals.append(fsm.state.node_usage("n1")[1])
    assert totals == [100, 700]


def test_chunked_snapshot_bytes_equal_one_big_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """``snapshot_bytes`` writes many small messages; protobuf concatenation must
    give exactly the bytes of one message holding everything (same digests as
    before, and ``restore`` reads it as one)."""
    from corral.server import fsm as fsm_module

    fsm = new_fsm()
    for i in range(7):
        job = f.job(job_id=f"job-{i}", count=1)
        fsm.apply(command(job_register=pb.JobRegisterCommand(job=job, eval=f.evaluation(job))))
    fsm.apply(command(node_register=pb.NodeRegisterCommand(node=f.node())))
    t = fsm.state.snapshot()._t
    whole = pb.StateSnapshot(schema=fsm_module.SNAPSHOT_SCHEMA, index=t.index)
    whole.table_index.update(t.table_index)
    whole.jobs.extend(t.jobs[k] for k in sorted(t.jobs))
    whole.nodes.extend(t.nodes[k] for k in sorted(t.nodes))
    whole.evals.extend(t.evals[k] for k in sorted(t.evals))
    monkeypatch.setattr(fsm_module, "SNAPSHOT_CHUNK", 2)  # several chunks per table
    chunked = fsm_module.snapshot_bytes(fsm.state.snapshot())
    assert chunked == whole.SerializeToString(deterministic=True)
    assert pb.StateSnapshot.FromString(chunked) == whole
