"""Ranking: binpack vs the spread algorithm, job anti-affinity, affinities, spread
blocks, node sampling, and placement failure metrics. Statistical checks use
fixed seeds, so they are deterministic."""

from __future__ import annotations

from collections import Counter

from corral import structs
from corral.proto import pb
from corral.scheduler import compute_plan
from corral.scheduler.stack import Placer, sample_limit
from tests.support import factories as f
from tests.support.scheduler_harness import SchedulerHarness


def _nodes_of(h: SchedulerHarness, job_id: str = "web") -> list[str]:
    return [a.node_id for a in h.live(job_id)]


def test_sample_limit_is_nomads() -> None:
    assert sample_limit(structs.JOB_TYPE_BATCH, 10_000) == 2
    assert sample_limit(structs.JOB_TYPE_SERVICE, 1) == 2
    assert sample_limit(structs.JOB_TYPE_SERVICE, 4) == 2
    assert sample_limit(structs.JOB_TYPE_SERVICE, 1000) == 10
    assert sample_limit(structs.JOB_TYPE_SERVICE, 10_000) == 14


def test_affinities_and_spreads_widen_the_sample() -> None:
    h = SchedulerHarness()
    for _ in range(8):
        h.add_node()
    job = f.job(count=150)
    job.affinities.add(l_target="${node.datacenter}", operand="=", r_target="dc1", weight=50)
    h.register(job)
    stored = h.job()
    placer = Placer(h.state.snapshot(), stored, [], set(), __import__("random").Random(1))
    assert placer.group(stored, stored.task_groups[0]).limit == 150
    job.task_groups[0].count = 3
    placer = Placer(h.state.snapshot(), job, [], set(), __import__("random").Random(1))
    assert placer.group(job, job.task_groups[0]).limit == 100


def test_job_anti_affinity_spreads_a_group_over_nodes() -> None:
    h = SchedulerHarness()
    for _ in range(10):
        h.add_node()
    h.run(f.job(count=4, cpu=500, memory=512))
    assert len(set(_nodes_of(h))) == 4


def test_binpack_packs_and_the_spread_algorithm_spreads() -> None:
    def used_nodes(algorithm: str) -> int:
        h = SchedulerHarness()
        for _ in range(2):
            h.add_node()
        for i in range(4):
            h.run(f.job(job_id=f"j{i}", count=1, cpu=500), algorithm=algorithm)
        return len({n for i in range(4) for n in _nodes_of(h, f"j{i}")})

    assert used_nodes("binpack") == 1
    assert used_nodes("spread") == 2


def test_affinity_attracts_and_negative_affinity_repels() -> None:
    def zone_a_share(weight: int, seed: int) -> float:
        h = SchedulerHarness()
        for i in range(20):
            h.add_node(f.placement_node(meta={"zone": "a" if i % 2 else "b"}))
        job = f.job(count=10, cpu=100)
        job.task_groups[0].affinities.add(
            l_target="${meta.zone}", operand="=", r_target="a", weight=weight
        )
        h.run(job, seed=seed)
        zones = Counter(h.state.node(n).meta["zone"] for n in _nodes_of(h))
        return zones["a"] / 10

    for seed in (1, 2, 3):
        assert zone_a_share(100, seed) == 1.0
        assert zone_a_share(-100, seed) == 0.0


def test_affinity_score_is_matching_weight_over_total_weight() -> None:
    h = SchedulerHarness()
    n = h.add_node(f.placement_node(node_class="fast", meta={"zone": "a"}))
    job = f.job(count=1)
    job.affinities.add(l_target="${meta.zone}", operand="=", r_target="a", weight=60)
    job.task_groups[0].affinities.add(
        l_target="${node.class}", operand="=", r_target="slow", weight=20
    )
    job.task_groups[0].tasks[0].affinities.add(
        l_target="${node.class}", operand="=", r_target="fast", weight=-20
    )
    placer = Placer(h.state.snapshot(), job, [], set(), __import__("random").Random(1))
    gs = placer.group(job, job.task_groups[0])
    assert placer.pool[0].id == n.id
    assert gs.affinity_score(0) == (60 - 20) / 100


def test_spread_with_targets_follows_the_percentages() -> None:
    h = SchedulerHarness()
    for dc in ("dc1", "dc2"):
        for _ in range(10):
            h.add_node(f.placement_node(datacenter=dc))
    job = f.job(count=10)
    sp = job.task_groups[0].spreads.add(attribute="${node.datacenter}", weight=100)
    sp.spread_target.add(value="dc1", percent=70)
    sp.spread_target.add(value="dc2", percent=30)
    h.run(job)
    dcs = Counter(h.state.node(n).datacenter for n in _nodes_of(h))
    assert dcs == {"dc1": 7, "dc2": 3}


def test_spread_without_targets_is_even() -> None:
    h = SchedulerHarness()
    for dc in ("dc1", "dc2", "dc3"):
        for _ in range(5):
            h.add_node(f.placement_node(meta={"rack": dc}))
    job = f.job(count=9)
    job.spreads.add(attribute="${meta.rack}", weight=50)
    h.run(job)
    racks = Counter(h.state.node(n).meta["rack"] for n in _nodes_of(h))
    assert sorted(racks.values()) == [3, 3, 3]


def test_spread_implicit_target_takes_the_rest() -> None:
    h = SchedulerHarness()
    for rack in ("r1", "r2", "r3"):
        for _ in range(6):
            h.add_node(f.placement_node(meta={"rack": rack}))
    job = f.job(count=10)
    sp = job.task_groups[0].spreads.add(attribute="${meta.rack}", weight=100)
    sp.spread_target.add(value="r1", percent=50)
    h.run(job)
    racks = Counter(h.state.node(n).meta["rack"] for n in _nodes_of(h))
    assert racks["r1"] == 5
    assert racks["r2"] + racks["r3"] == 5


def test_placement_failure_metrics_are_nomads() -> None:
    h = SchedulerHarness()
    h.add_node(f.placement_node(node_class="small", cpu=500, datacenter="dc1"))
    h.add_node(f.placement_node(node_class="small", cpu=500, datacenter="dc1"))
    h.add_node(f.placement_node(node_class="big", cpu=4000, memory=256, datacenter="dc2"))
    h.add_node(f.placement_node(datacenter="dc2", drivers=("raw_exec",)))
    h.add_node(f.placement_node(datacenter="dc3"))  # not asked for
    job = f.job(count=3, cpu=1000, memory=512)
    job.datacenters[:] = ["dc1", "dc2", "dc4"]
    result = h.run(job)
    assert result.placed == 0 and result.queued == {"web": 3}
    m = result.failed_tg_allocs["web"]
    assert m.nodes_evaluated == 4 and m.nodes_in_pool == 4
    assert dict(m.nodes_available) == {"dc1": 2, "dc2": 2, "dc4": 0}
    assert m.nodes_filtered == 1 and dict(m.constraint_filtered) == {"missing drivers": 1}
    assert m.nodes_exhausted == 3
    assert dict(m.dimension_exhausted) == {"cpu": 2, "memory": 1}
    assert dict(m.class_exhausted) == {"small": 2, "big": 1}
    assert m.coalesced_failures == 2


def test_no_nodes_at_all_is_explained() -> None:
    h = SchedulerHarness()
    result = h.run(f.job(count=2))
    m = result.failed_tg_allocs["web"]
    assert m.nodes_evaluated == 0 and m.coalesced_failures == 1
    assert dict(m.nodes_available) == {}


def test_failed_destructive_update_keeps_the_old_allocation() -> None:
    h = SchedulerHarness()
    h.add_node(f.placement_node(cpu=1000))
    job = f.job(count=1, cpu=500)
    h.run(job)
    old = h.live()[0]
    job.task_groups[0].tasks[0].resources.cpu = 2000  # cannot fit anywhere
    result = h.run(job)
    assert result.failed_tg_allocs["web"].dimension_exhausted["cpu"] == 1
    assert [a.id for a in h.live()] == [old.id]


def test_destructive_update_reuses_the_resources_it_frees() -> None:
    h = SchedulerHarness()
    h.add_node(f.placement_node(cpu=1000))
    job = f.job(count=2, cpu=500)
    h.run(job)
    job.task_groups[0].tasks[0].env["V"] = "2"
    result = h.run(job)
    assert result.placed == 2 and not result.failed_tg_allocs
    assert {a.job_version for a in h.live()} == {1}


def test_plan_is_identical_for_a_seed_and_differs_across_seeds() -> None:
    h = SchedulerHarness()
    for _ in range(30):
        h.add_node()
    ev = h.register(f.job(count=12))
    snap = h.state.snapshot()

    def plan(seed: int) -> bytes:
        ids = iter(range(1000))
        p = compute_plan(snap, ev, seed, lambda: f"id-{next(ids)}").plan
        return p.SerializeToString(deterministic=True)

    assert plan(5) == plan(5)
    assert len({plan(s) for s in range(5)}) > 1


def test_nodes_outside_the_datacenters_or_not_ready_get_nothing() -> None:
    h = SchedulerHarness()
    ok = h.add_node(f.placement_node(datacenter="eu-west"))
    h.add_node(f.placement_node(datacenter="us-east"))
    init = h.add_node(f.placement_node(datacenter="eu-west"))
    h.set_node_status(init.id, structs.NODE_STATUS_INIT)
    job = f.job(count=2)
    job.datacenters[:] = ["eu-*"]
    h.run(job)
    assert set(_nodes_of(h)) == {ok.id}


def test_node_meta_and_class_affinity_with_spread_algorithm_still_fits() -> None:
    # Every scoring component present at once: the mean decides, nothing breaks.
    h = SchedulerHarness()
    for i in range(6):
        h.add_node(f.placement_node(node_class="c" + str(i % 2), meta={"rack": f"r{i % 3}"}))
    job = f.job(count=6)
    job.affinities.add(l_target="${node.class}", operand="=", r_target="c1", weight=30)
    job.spreads.add(attribute="${meta.rack}", weight=50)
    result = h.run(job, algorithm="spread")
    assert result.placed == 6
    racks = Counter(h.state.node(n).meta["rack"] for n in _nodes_of(h))
    assert sorted(racks.values()) == [2, 2, 2]


def test_placements_go_into_the_plan_with_ports_and_resources() -> None:
    h = SchedulerHarness()
    h.add_node()
    job = f.job(count=2, ports=("http", "admin"))
    job.task_groups[0].networks[0].reserved_ports.add(label="metrics", value=9100)
    job.task_groups[0].count = 1
    result = h.run(job)
    (alloc,) = [a for lst in result.plan.node_allocation.values() for a in lst.allocs]
    assert [p.label for p in alloc.allocated_resources.shared.ports] == ["metrics", "http", "admin"]
    assert alloc.allocated_resources.shared.ports[0].value == 9100
    assert all(p.host_ip == "127.0.0.1" for p in alloc.allocated_resources.shared.ports)
    assert alloc.name == "web.web[0]" and alloc.client_status == "pending"
    assert isinstance(alloc, pb.Allocation)
