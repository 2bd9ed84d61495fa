"""Rolling updates in the pure scheduler: max_parallel, health gating, canaries."""

from __future__ import annotations

from corral import structs
from corral.proto import pb
from tests.support import factories as f
from tests.support.factories import command
from tests.unit.test_scheduler import Harness


def rolling_job(count: int = 4, max_parallel: int = 1, canary: int = 0, env: str = "1") -> pb.Job:
    job = f.job(count=count)
    job.task_groups[0].update.max_parallel = max_parallel
    job.task_groups[0].update.canary = canary
    job.task_groups[0].tasks[0].env["V"] = env
    structs.canonicalize(job)
    return job


def healthy(h: Harness, ok: bool = True) -> None:
    """Clients report every running-to-be allocation of the current version healthy."""
    ups = []
    for a in h.state.allocs():
        if a.desired_status == "run" and a.client_status in ("pending", "running"):
            if a.deployment_status.HasField("healthy"):
                continue
            u = pb.Allocation(id=a.id, client_status="running")
            u.deployment_status.healthy = ok
            ups.append(u)
    h.fsm.apply(command(alloc_client_update=pb.AllocClientUpdateCommand(allocs=ups)))


def versions(h: Harness) -> list[int]:
    return sorted(a.job_version for a in h.live())


def test_update_replaces_max_parallel_at_a_time_gated_on_health() -> None:
    h = Harness()
    for _ in range(3):
        h.add_node()
    h.run(rolling_job(env="1"))
    healthy(h)
    dep0 = h.state.deployments()
    assert len(dep0) == 1 and dep0[0].job_version == 0
    v1 = rolling_job(env="2")
    h.run(v1)
    assert versions(h) == [0, 0, 0, 1]  # one at a time
    job = h.state.job("default", "web")
    assert job is not None
    ev = f.evaluation(job)
    h.process(ev)
    assert versions(h) == [0, 0, 0, 1], "no progress before the new one is healthy"
    for expected in ([0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]):
        healthy(h)
        h.process(f.evaluation(job))
        assert versions(h) == expected
    d = next(d for d in h.state.deployments() if d.job_version == 1)
    assert d.task_groups["web"].healthy_allocs == 3
    assert d.task_groups["web"].placed_allocs == 4


def test_unhealthy_allocation_stops_the_rollout() -> None:
    h = Harness()
    h.add_node()
    h.run(rolling_job(env="1"))
    healthy(h)
    h.run(rolling_job(env="2", max_parallel=2))
    healthy(h, ok=False)
    job = h.state.job("default", "web")
    assert job is not None
    h.process(f.evaluation(job))
    assert versions(h) == [0, 0, 1, 1]
    d = next(d for d in h.state.deployments() if d.job_version == 1)
    assert d.task_groups["web"].unhealthy_allocs == 2


def test_canaries_run_beside_old_allocations_until_promoted() -> None:
    h = Harness()
    h.add_node()
    h.run(rolling_job(count=3, env="1"))
    healthy(h)
    h.run(rolling_job(count=3, canary=1, env="2"))
    live = h.live()
    assert sorted(a.job_version for a in live) == [0, 0, 0, 1]
    canary = next(a for a in live if a.job_version == 1)
    assert canary.deployment_status.canary
    healthy(h)
    job = h.state.job("default", "web")
    assert job is not None
    h.process(f.evaluation(job))
    assert len(h.live()) == 4, "nothing moves before promotion"
    d = next(d for d in h.state.deployments() if d.job_version == 1)
    h.fsm.apply(command(deployment_promote=pb.DeploymentPromoteCommand(deployment_id=d.id)))
    h.process(f.evaluation(job))
    live = h.live()
    # The canary took over its index's old allocation; rolling continues from there.
    assert canary.id in {a.id for a in live}
    assert len(live) <= 4 and sum(a.job_version == 1 for a in live) == 2
    for _ in range(4):
        healthy(h)
        h.process(f.evaluation(job))
    assert versions(h) == [1, 1, 1]


def test_count_change_is_in_place_and_needs_no_replacement() -> None:
    h = Harness()
    h.add_node()
    h.run(rolling_job(count=2, env="1"))
    healthy(h)
    ids = {a.id for a in h.live()}
    job = rolling_job(count=2, env="1")
    job.task_groups[0].services.add(name="web", port_label="http", tags=["v2"])
    h.run(job)
    assert {a.id for a in h.live()} == ids
    assert versions(h) == [1, 1]


def test_scale_only_change_joins_the_deployment_and_it_can_succeed() -> None:
    """In-place updated allocations count into the new version's deployment (else a
    scale-only deployment never reaches its desired healthy count)."""
    from corral.server.deployment_watcher import SUCCESSFUL, decide

    h = Harness()
    h.add_node()
    h.run(rolling_job(count=2, env="1"))
    healthy(h)
    h.run(rolling_job(count=3, env="1"))
    job = h.state.job("default", "web")
    assert job is not None and job.version == 1
    d = next(d for d in h.state.deployments() if d.job_version == 1)
    state = d.task_groups["web"]
    assert state.placed_allocs == 3  # 1 new + 2 moved in place
    assert all(a.deployment_id == d.id for a in h.live())
    healthy(h)
    d = next(d for d in h.state.deployments() if d.job_version == 1)
    assert d.task_groups["web"].healthy_allocs == 3
    assert decide(d, job, h.state.job_versions("default", "web"), 0, 0).status == SUCCESSFUL


def test_a_purged_incarnations_deployment_is_not_this_jobs() -> None:
    """Purged and registered again, a job starts its versions from 0: a deployment
    of the purged job with the same version number is not this job's (Nomad compares
    JobCreateIndex)."""
    from corral.scheduler.deployment import find_deployment, new_deployment

    old_job = f.job(job_id="pr")
    old_job.version, old_job.create_index = 1, 10
    new_job = f.job(job_id="pr")
    new_job.version, new_job.create_index = 1, 50
    purged = new_deployment(old_job, "d-old")
    purged.create_index = 12
    assert find_deployment([purged], old_job) is purged
    assert find_deployment([purged], new_job) is None
    current = new_deployment(new_job, "d-new")
    current.create_index = 51
    assert find_deployment([purged, current], new_job) is current
