"""System jobs: one allocation per eligible, feasible node, including nodes that join
later; stopped where a node stops qualifying, kept where it is only ineligible."""

from __future__ import annotations

from corral import structs
from corral.proto import pb
from tests.support import factories as f
from tests.support.scheduler_harness import SchedulerHarness


def _system_job(**kw: object) -> pb.Job:
    job = f.job(job_type=structs.JOB_TYPE_SYSTEM, count=1, **kw)  # type: ignore[arg-type]
    return job


def _by_node(h: SchedulerHarness, job_id: str = "web") -> dict[str, pb.Allocation]:
    live = h.live(job_id)
    assert len({a.node_id for a in live}) == len(live), "two allocations on one node"
    return {a.node_id: a for a in live}


def test_one_allocation_per_feasible_node_with_index_zero() -> None:
    h = SchedulerHarness()
    linux = [h.add_node() for _ in range(3)]
    other = h.add_node(f.placement_node(attributes={"kernel.name": "windows"}))
    h.add_node(f.placement_node(drivers=("docker",)))  # no mock driver
    job = _system_job()
    job.constraints.add(l_target="${attr.kernel.name}", operand="=", r_target="linux")
    result = h.run(job)
    allocs = _by_node(h)
    assert set(allocs) == {n.id for n in linux}
    assert other.id not in allocs
    assert {a.name for a in allocs.values()} == {"web.web[0]"}
    assert {a.alloc_index for a in allocs.values()} == {0}
    # Filtered nodes are not failures: they simply do not run the job.
    assert not result.failed_tg_allocs and result.queued == {"web": 0}


def test_a_node_that_joins_later_gets_one() -> None:
    h = SchedulerHarness()
    h.add_node()
    h.run(_system_job())
    first = dict(_by_node(h))
    late = h.add_node()
    result = h.reevaluate()
    assert result.placed == 1
    allocs = _by_node(h)
    assert set(allocs) == set(first) | {late.id}
    assert all(allocs[n].id == a.id for n, a in first.items())  # untouched


def test_ineligible_node_keeps_its_allocation_but_gets_no_new_one() -> None:
    h = SchedulerHarness()
    a = h.add_node()
    h.run(_system_job())
    h.set_eligibility(a.id, False)
    b = h.add_node()
    h.set_eligibility(b.id, False)
    result = h.reevaluate()
    assert result.placed == 0 and not result.plan.node_update
    assert set(_by_node(h)) == {a.id}


def test_drain_stops_system_allocations_unless_ignored() -> None:
    h = SchedulerHarness()
    a = h.add_node()
    b = h.add_node()
    h.run(_system_job())
    h.drain(a.id)
    h.drain(b.id, ignore_system_jobs=True)
    h.reevaluate()
    assert set(_by_node(h)) == {b.id}
    stopped = [x for x in h.allocs() if x.node_id == a.id]
    assert stopped[0].desired_status == "stop"
    assert stopped[0].desired_description == "alloc is being migrated"


def test_down_node_allocation_is_lost_and_not_replaced() -> None:
    h = SchedulerHarness()
    a = h.add_node()
    h.add_node()
    h.run(_system_job())
    h.set_node_status(a.id, structs.NODE_STATUS_DOWN)
    result = h.reevaluate()
    assert result.placed == 0
    lost = [x for x in h.allocs() if x.node_id == a.id]
    assert lost[0].client_status == "lost" and lost[0].desired_status == "stop"
    assert a.id not in _by_node(h)


def test_node_that_no_longer_satisfies_the_job_has_it_stopped() -> None:
    h = SchedulerHarness()
    a = h.add_node(f.placement_node(meta={"role": "edge"}))
    b = h.add_node(f.placement_node(meta={"role": "edge"}))
    job = _system_job()
    job.task_groups[0].constraints.add(l_target="${meta.role}", operand="=", r_target="edge")
    h.run(job)
    assert set(_by_node(h)) == {a.id, b.id}
    changed = pb.Node()
    changed.CopyFrom(h.state.node(b.id))
    changed.meta["role"] = "core"
    h.add_node(changed)  # re-registration with new meta
    h.reevaluate()
    assert set(_by_node(h)) == {a.id}
    gone = [x for x in h.allocs() if x.node_id == b.id][0]
    assert "no longer meets" in gone.desired_description


def test_stopping_the_job_stops_every_allocation() -> None:
    h = SchedulerHarness()
    for _ in range(3):
        h.add_node()
    job = _system_job()
    h.run(job)
    job.stop = True
    h.run(job)
    assert h.live() == []
    assert {a.desired_status for a in h.allocs()} == {"stop"}


def test_full_node_is_a_placement_failure() -> None:
    h = SchedulerHarness()
    h.add_node(f.placement_node(cpu=4000))
    h.add_node(f.placement_node(cpu=200, node_class="tiny"))
    h.add_node(f.placement_node(cpu=200, node_class="tiny"))
    result = h.run(_system_job(cpu=500))
    assert result.placed == 1
    assert result.queued == {"web": 2}
    m = result.failed_tg_allocs["web"]
    assert m.nodes_exhausted == 2 and dict(m.dimension_exhausted) == {"cpu": 2}
    assert dict(m.class_exhausted) == {"tiny": 2}
    assert m.coalesced_failures == 1


def test_updates_in_place_or_replace_on_the_same_node() -> None:
    h = SchedulerHarness()
    for _ in range(2):
        h.add_node()
    job = _system_job()
    h.run(job)
    before = _by_node(h)

    job.priority = 70  # job-level only: in place
    h.run(job)
    after = _by_node(h)
    assert {n: a.id for n, a in after.items()} == {n: a.id for n, a in before.items()}
    assert {a.job_version for a in after.values()} == {1}

    job.task_groups[0].tasks[0].env["V"] = "2"  # destructive: replaced where it ran
    result = h.run(job)
    assert result.placed == 2
    replaced = _by_node(h)
    assert set(replaced) == set(before)
    for node_id, alloc in replaced.items():
        assert alloc.previous_allocation == before[node_id].id
        assert alloc.job_version == 2


def test_failed_system_allocation_is_replaced_on_its_node() -> None:
    h = SchedulerHarness()
    a = h.add_node()
    h.run(_system_job())
    (old,) = h.live()
    h.set_client_status([old], structs.ALLOC_CLIENT_FAILED)
    result = h.reevaluate()
    assert result.placed == 1
    (new,) = h.live()
    assert new.node_id == a.id and new.previous_allocation == old.id
    # Once replaced, the failed one is not replaced again.
    assert h.reevaluate().placed == 0


def test_system_job_honours_datacenters() -> None:
    h = SchedulerHarness()
    a = h.add_node(f.placement_node(datacenter="dc1"))
    h.add_node(f.placement_node(datacenter="dc2"))
    job = _system_job()
    job.datacenters[:] = ["dc1"]
    h.run(job)
    assert set(_by_node(h)) == {a.id}


def test_purged_system_job_stops_everything() -> None:
    h = SchedulerHarness()
    for _ in range(2):
        h.add_node()
    job = _system_job()
    h.run(job)
    ev = f.evaluation(h.job(), structs.TRIGGER_JOB_DEREGISTER)
    assert len(h.live()) == 2
    h.apply(job_deregister=pb.JobDeregisterCommand(namespace="default", job_id="web", purge=True))
    # A purge deletes the job's allocations with it (Nomad's DeleteJobTxn; the clients
    # stop what they no longer see): the evaluation finds nothing left to stop.
    assert h.state.allocs_by_job("default", "web") == []
    result = h.process(ev)
    assert not result.plan.node_update and not result.plan.node_allocation
    assert h.live() == []
