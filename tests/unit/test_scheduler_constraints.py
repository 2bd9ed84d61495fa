"""Constraints: interpolation, every operator, distinct_hosts, distinct_property, and
how filtered nodes are reported (Nomad's ``constraint_filtered`` keys)."""

from __future__ import annotations

import pytest

from corral.proto import pb
from corral.scheduler.constraints import (
    check,
    constraint_text,
    resolve,
    version_matches,
)
from tests.support import factories as f
from tests.support.scheduler_harness import SchedulerHarness


def _node() -> pb.Node:
    n = f.placement_node(
        node_class="gpu",
        meta={"rack": "r1", "tags": "a, b,c"},
        attributes={"kernel.version": "5.15.0", "cpu.numcores": "8", "os.version": "22.04"},
        datacenter="eu-1",
    )
    n.name = "worker-1"
    return n


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("linux", ("linux", True)),
        ("${attr.kernel.name}", ("linux", True)),
        ("${attr.nope}", ("", False)),
        ("${meta.rack}", ("r1", True)),
        ("${meta.nope}", ("", False)),
        ("${node.class}", ("gpu", True)),
        ("${node.datacenter}", ("eu-1", True)),
        ("${node.unique.name}", ("worker-1", True)),
        ("${node.bogus}", ("", False)),
    ],
)
def test_interpolation(target: str, expected: tuple[str, bool]) -> None:
    assert resolve(target, _node()) == expected


def test_interpolation_of_node_id() -> None:
    n = _node()
    assert resolve("${node.unique.id}", n) == (n.id, True)


def _holds(left: str, op: str, right: str) -> bool:
    n = _node()
    return check(op, resolve(left, n), resolve(right, n))


@pytest.mark.parametrize(
    ("left", "op", "right", "holds"),
    [
        ("${attr.kernel.name}", "=", "linux", True),
        ("${attr.kernel.name}", "==", "linux", True),
        ("${attr.kernel.name}", "is", "windows", False),
        ("${attr.nope}", "=", "", False),  # missing never equals
        ("${attr.kernel.name}", "!=", "windows", True),
        ("${attr.kernel.name}", "not", "linux", False),
        ("${attr.nope}", "!=", "linux", True),  # missing differs
        ("${attr.cpu.numcores}", ">", "10", False),  # numeric: 8 > 10 is false
        ("${attr.cpu.numcores}", "<", "10", True),  # lexically "8" > "10"
        ("${attr.cpu.numcores}", ">=", "8", True),
        ("${attr.cpu.numcores}", "<=", "7.5", False),  # float comparison
        ("${node.class}", ">", "abc", True),  # lexical
        ("${node.class}", "<=", "gpu", True),
        ("${attr.nope}", "<", "10", False),
        ("${attr.kernel.version}", "regexp", r"^5\.1[0-9]", True),
        ("${attr.kernel.version}", "regexp", "^6", False),
        ("${attr.kernel.version}", "regexp", "([", False),  # invalid pattern
        ("${attr.kernel.version}", "version", ">= 5.10, < 6.0", True),
        ("${attr.kernel.version}", "version", "~> 5.14", True),
        ("${attr.kernel.version}", "version", "~> 5.14.1", False),
        ("${attr.kernel.version}", "version", "> 5.15", False),
        ("${attr.kernel.version}", "version", "not a constraint", False),
        ("${attr.kernel.version}", "semver", ">= 5.15.0", True),
        ("${meta.tags}", "set_contains", "a,c", True),
        ("${meta.tags}", "set_contains_all", "a, d", False),
        ("${meta.tags}", "set_contains_any", "d, b", True),
        ("${meta.tags}", "set_contains_any", "d,e", False),
        ("${meta.rack}", "is_set", "", True),
        ("${meta.nope}", "is_set", "", False),
        ("${meta.nope}", "is_not_set", "", True),
        ("${meta.rack}", "is_not_set", "", False),
        ("${meta.rack}", "distinct_hosts", "", True),  # handled by the stack
        ("${meta.rack}", "frobnicate", "r1", False),  # unknown operators fail
    ],
)
def test_operators(left: str, op: str, right: str, holds: bool) -> None:
    assert _holds(left, op, right) is holds


@pytest.mark.parametrize(
    ("version", "constraint", "semver", "holds"),
    [
        ("1.2.3", "= 1.2.3", False, True),
        ("v1.2", "1.2.0", False, True),  # no operator means "="
        ("1.2.3", "!= 1.2.3", False, False),
        ("1.10.0", "> 1.9", False, True),
        ("1.2.3", "~> 1.2", False, True),
        ("1.9.0", "~> 1.2", False, True),
        ("2.0.0", "~> 1.2", False, False),
        ("1.2.9", "~> 1.2.3", False, True),
        ("1.3.0", "~> 1.2.3", False, False),
        ("1.2.3-beta1", ">= 1.0", False, False),  # go-version: pre-release needs one too
        ("1.2.3-beta2", ">= 1.2.3-beta1", False, True),
        ("1.2.4-beta1", ">= 1.2.3-beta1", False, False),  # other base segments
        ("1.2.3-beta1", ">= 1.0", True, True),  # semver orders pre-releases normally
        ("1.2.3-beta1", "< 1.2.3", True, True),
        ("1.2.3-alpha.2", "> 1.2.3-alpha.10", True, False),  # numeric identifiers
        ("1.2.3", "~> 1.2", True, False),  # no pessimistic operator in semver
        ("1.2.3+build5", "= 1.2.3", False, True),  # metadata is ignored
        ("garbage", ">= 1.0", False, False),
    ],
)
def test_version_constraints(version: str, constraint: str, semver: bool, holds: bool) -> None:
    assert version_matches(version, constraint, semver) is holds


def test_constraint_text_is_nomads() -> None:
    assert constraint_text("${attr.kernel.name}", "=", "linux") == "${attr.kernel.name} = linux"
    assert constraint_text("${meta.x}", "is_set", "") == "${meta.x} is_set"


# ------------------------------------------------------------------ placements


def _job_with(*constraints: pb.Constraint, count: int = 3, level: str = "job") -> pb.Job:
    job = f.job(count=count)
    target = {
        "job": job.constraints,
        "group": job.task_groups[0].constraints,
        "task": job.task_groups[0].tasks[0].constraints,
    }[level]
    target.extend(constraints)
    return job


@pytest.mark.parametrize("level", ["job", "group", "task"])
def test_constraints_at_every_level_filter_nodes_and_are_reported(level: str) -> None:
    h = SchedulerHarness()
    good = [h.add_node(f.placement_node(meta={"tier": "web"})) for _ in range(2)]
    for cls in ("db", "db", ""):
        h.add_node(f.placement_node(node_class=cls, meta={"tier": "db"}))
    job = _job_with(
        pb.Constraint(l_target="${meta.tier}", operand="=", r_target="web"), count=2, level=level
    )
    result = h.run(job)
    assert result.placed == 2
    assert {a.node_id for a in h.live()} <= {n.id for n in good}

    # Ask for more than the good nodes can hold: the failure names the constraint.
    job = _job_with(
        pb.Constraint(l_target="${meta.tier}", operand="=", r_target="web"),
        count=2,
        level=level,
    )
    job.task_groups[0].tasks[0].resources.cpu = 4000
    job.task_groups[0].count = 3
    result = h.run(job)
    metric = result.failed_tg_allocs["web"]
    assert metric.constraint_filtered == {"${meta.tier} = web": 3}
    assert metric.nodes_filtered == 3
    assert metric.class_filtered == {"db": 2}
    assert metric.nodes_evaluated == 5


def test_node_properties_in_constraints() -> None:
    h = SchedulerHarness()
    a = h.add_node(f.placement_node(node_class="big", datacenter="dc1"))
    h.add_node(f.placement_node(node_class="small", datacenter="dc1"))
    job = _job_with(
        pb.Constraint(l_target="${node.class}", operand="=", r_target="big"),
        pb.Constraint(l_target="${node.datacenter}", operand="regexp", r_target="^dc"),
        pb.Constraint(l_target="${node.unique.name}", operand="=", r_target=a.name),
        pb.Constraint(l_target="${attr.kernel.name}", operand="!=", r_target="windows"),
        count=2,
    )
    assert h.run(job).placed == 2
    assert {x.node_id for x in h.live()} == {a.id}


def test_missing_driver_is_reported_like_nomad() -> None:
    h = SchedulerHarness()
    h.add_node(f.placement_node(drivers=("raw_exec",)))
    result = h.run(f.job(driver="docker"))
    assert result.failed_tg_allocs["web"].constraint_filtered == {"missing drivers": 1}


def test_distinct_hosts_at_job_level_counts_every_group_and_the_plan_itself() -> None:
    h = SchedulerHarness()
    nodes = [h.add_node() for _ in range(3)]
    job = f.job(count=2)
    second = job.task_groups.add()
    second.CopyFrom(job.task_groups[0])
    second.name = "api"
    job.constraints.add(operand="distinct_hosts", r_target="true")
    result = h.run(job)
    # Four allocations, three nodes: one cannot be placed anywhere.
    assert result.placed == 3
    assert sum(result.queued.values()) == 1
    used = [a.node_id for a in h.live()]
    assert sorted(used) == sorted(n.id for n in nodes)
    failed = next(iter(result.failed_tg_allocs.values()))
    assert failed.constraint_filtered["distinct_hosts"] == 3


def test_distinct_hosts_at_group_level_allows_other_groups_on_the_node() -> None:
    h = SchedulerHarness()
    h.add_node()
    h.add_node()
    job = f.job(count=2)
    job.task_groups[0].constraints.add(operand="distinct_hosts")
    second = job.task_groups.add()
    second.CopyFrom(job.task_groups[0])
    second.name = "api"
    assert h.run(job).placed == 4
    for group in ("web", "api"):
        nodes = [a.node_id for a in h.live() if a.task_group == group]
        assert len(nodes) == len(set(nodes)) == 2


def test_distinct_hosts_counts_running_allocations_on_scale_up() -> None:
    h = SchedulerHarness()
    for _ in range(3):
        h.add_node()
    job = f.job(count=2)
    job.constraints.add(operand="distinct_hosts")
    h.run(job)
    job.task_groups[0].count = 4
    result = h.run(job)
    assert result.placed == 1 and result.queued["web"] == 1
    nodes = [a.node_id for a in h.live()]
    assert len(nodes) == len(set(nodes)) == 3


def test_distinct_property_limits_allocations_per_value() -> None:
    h = SchedulerHarness()
    for rack in ("r1", "r1", "r2", "r2", "r3"):
        h.add_node(f.placement_node(meta={"rack": rack}))
    h.add_node(f.placement_node())  # no rack: filtered
    job = f.job(count=4)
    job.constraints.add(operand="distinct_property", l_target="${meta.rack}")
    result = h.run(job)
    assert result.placed == 3
    racks = [h.state.node(a.node_id).meta["rack"] for a in h.live()]
    assert sorted(racks) == ["r1", "r2", "r3"]
    metric = result.failed_tg_allocs["web"]
    assert metric.constraint_filtered['missing property "${meta.rack}"'] == 1
    assert any(
        k.startswith("distinct_property: ${meta.rack}=r") for k in metric.constraint_filtered
    )


def test_distinct_property_with_an_allowed_count() -> None:
    h = SchedulerHarness()
    for rack in ("r1", "r1", "r1", "r2", "r2", "r2"):
        h.add_node(f.placement_node(meta={"rack": rack}))
    job = f.job(count=5)
    job.task_groups[0].constraints.add(
        operand="distinct_property", l_target="${meta.rack}", r_target="2"
    )
    result = h.run(job)
    assert result.placed == 4 and result.queued["web"] == 1
    racks = sorted(h.state.node(a.node_id).meta["rack"] for a in h.live())
    assert racks == ["r1", "r1", "r2", "r2"]
