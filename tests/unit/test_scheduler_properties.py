"""Properties of the scheduler over random clusters and jobs (hypothesis):

- no node is ever overcommitted (cpu, memory, ports);
- every placed allocation's node satisfies the job's constraints, distinct_hosts
  and distinct_property included;
- counts are honoured: a group gets all its allocations unless no node could take
  one more (checked independently of the scheduler's own explanation);
- the plan is a function of (snapshot, evaluation, seed).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral import structs
from corral.proto import pb
from corral.scheduler import compute_plan
from corral.scheduler.constraints import check, resolve
from tests.support import factories as f
from tests.support.scheduler_harness import SchedulerHarness

CONSTRAINTS = [
    pb.Constraint(l_target="${meta.rack}", operand="=", r_target="r1"),
    pb.Constraint(l_target="${meta.rack}", operand="!=", r_target="r2"),
    pb.Constraint(l_target="${meta.rack}", operand="is_set"),
    pb.Constraint(l_target="${node.class}", operand="regexp", r_target="^(a|b)$"),
    pb.Constraint(l_target="${attr.cpu.numcores}", operand=">=", r_target="4"),
    pb.Constraint(l_target="${attr.kernel.version}", operand="version", r_target="~> 5.4"),
    pb.Constraint(l_target="${meta.tags}", operand="set_contains_any", r_target="ssd,gpu"),
]

node_st = st.fixed_dictionaries(
    {
        "cpu": st.integers(200, 4000),
        "mem": st.integers(128, 4096),
        "cls": st.sampled_from(["a", "b", "c", ""]),
        "rack": st.sampled_from(["r1", "r2", "r3", None]),
        "cores": st.sampled_from(["2", "4", "16"]),
        "kernel": st.sampled_from(["5.4.0", "5.15.2", "6.1.0"]),
        "tags": st.sampled_from(["ssd", "hdd", "gpu,ssd", ""]),
    }
)
group_st = st.fixed_dictionaries(
    {
        "count": st.integers(0, 10),
        "cpu": st.integers(50, 1500),
        "mem": st.integers(32, 1500),
        "constraints": st.lists(st.integers(0, len(CONSTRAINTS) - 1), max_size=2, unique=True),
        "distinct": st.sampled_from(["", "hosts", "property"]),
        "ports": st.integers(0, 2),
    }
)


def _cluster(h: SchedulerHarness, nodes: list[dict[str, object]]) -> list[pb.Node]:
    out = []
    for spec in nodes:
        meta = {"tags": str(spec["tags"])}
        if spec["rack"] is not None:
            meta["rack"] = str(spec["rack"])
        n = f.placement_node(
            node_class=str(spec["cls"]),
            meta=meta,
            attributes={"cpu.numcores": str(spec["cores"]), "kernel.version": str(spec["kernel"])},
            cpu=int(spec["cpu"]),  # type: ignore[call-overload]
            memory=int(spec["mem"]),  # type: ignore[call-overload]
        )
        out.append(h.add_node(n))
    return out


def _job(i: int, spec: dict[str, object]) -> pb.Job:
    ports = ("http", "admin")[: int(spec["ports"])]  # type: ignore[call-overload]
    job = f.job(
        job_id=f"job{i}",
        count=int(spec["count"]),  # type: ignore[call-overload]
        cpu=int(spec["cpu"]),  # type: ignore[call-overload]
        memory=int(spec["mem"]),  # type: ignore[call-overload]
        ports=ports,
    )
    for k in spec["constraints"]:  # type: ignore[attr-defined]
        job.constraints.add().CopyFrom(CONSTRAINTS[k])
    if spec["distinct"] == "hosts":
        job.constraints.add(operand="distinct_hosts")
    elif spec["distinct"] == "property":
        job.constraints.add(operand="distinct_property", l_target="${node.class}", r_target="2")
    return job


def _usage(h: SchedulerHarness, node: pb.Node) -> tuple[int, int, list[int]]:
    live = [a for a in h.state.allocs_by_node(node.id) if not structs.is_alloc_terminal(a)]
    cpu = sum(t.cpu.cpu_shares for a in live for t in a.allocated_resources.tasks.values())
    mem = sum(t.memory.memory_mb for a in live for t in a.allocated_resources.tasks.values())
    ports = [p.value for a in live for p in a.allocated_resources.shared.ports]
    return cpu, mem, ports


def _static_ok(job: pb.Job, node: pb.Node) -> bool:
    return all(
        check(c.operand, resolve(c.l_target, node), resolve(c.r_target, node))
        for c in job.constraints
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes=st.lists(node_st, min_size=1, max_size=8),
    groups=st.lists(group_st, min_size=1, max_size=4),
    seed=st.integers(0, 2**32),
    algorithm=st.sampled_from(["binpack", "spread"]),
)
def test_placements_fit_hold_constraints_and_honour_counts(
    nodes: list[dict[str, object]], groups: list[dict[str, object]], seed: int, algorithm: str
) -> None:
    h = SchedulerHarness()
    cluster = _cluster(h, nodes)
    for i, spec in enumerate(groups):
        job = _job(i, spec)
        result = h.run(job, seed=seed, algorithm=algorithm)
        live = h.live(job.id)
        count = job.task_groups[0].count
        assert len(live) + sum(result.queued.values()) == count
        assert bool(result.failed_tg_allocs) == (len(live) < count)
        # Constraints hold wherever something was placed.
        on_node: dict[str, int] = {}
        for alloc in live:
            node = h.state.node(alloc.node_id)
            assert _static_ok(job, node), (alloc.node_id, list(job.constraints))
            on_node[node.id] = on_node.get(node.id, 0) + 1
        if spec["distinct"] == "hosts":
            assert all(n == 1 for n in on_node.values())
        if spec["distinct"] == "property":
            per_class: dict[str, int] = {}
            for node_id, n in on_node.items():
                cls = h.state.node(node_id).node_class
                per_class[cls] = per_class.get(cls, 0) + n
            assert all(n <= 2 for n in per_class.values())
        # Failure means no node could have taken one more allocation.
        if len(live) < count and spec["distinct"] == "":
            want_cpu = job.task_groups[0].tasks[0].resources.cpu
            want_mem = job.task_groups[0].tasks[0].resources.memory_mb
            for node in cluster:
                cpu, mem, _ = _usage(h, node)
                room = (
                    cpu + want_cpu <= node.node_resources.cpu.cpu_shares
                    and mem + want_mem <= node.node_resources.memory.memory_mb
                )
                assert not (room and _static_ok(job, node)), node.id
    for node in cluster:
        cpu, mem, ports = _usage(h, node)
        assert cpu <= node.node_resources.cpu.cpu_shares
        assert mem <= node.node_resources.memory.memory_mb
        assert len(ports) == len(set(ports))


@settings(max_examples=25, deadline=None)
@given(
    nodes=st.lists(node_st, min_size=1, max_size=10),
    group=group_st,
    seed=st.integers(0, 2**32),
)
def test_plan_is_deterministic_for_a_seed(
    nodes: list[dict[str, object]], group: dict[str, object], seed: int
) -> None:
    h = SchedulerHarness()
    _cluster(h, nodes)
    job = _job(0, group)
    job.affinities.add(l_target="${node.class}", operand="=", r_target="a", weight=40)
    job.spreads.add(attribute="${meta.rack}", weight=50)
    ev = h.register(job)
    snap = h.state.snapshot()

    def plan() -> bytes:
        ids = iter(range(10_000))
        result = compute_plan(snap, ev, seed, lambda: f"alloc-{next(ids)}")
        return result.plan.SerializeToString(deterministic=True)

    assert plan() == plan()
