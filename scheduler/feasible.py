"""Feasibility: may this node run this task group at all (ignoring free resources)?

Checks are cheap predicates over the node; each names the reason it filters a node,
so that a placement failure can say "missing drivers filtered 3 nodes" or
"Constraint ${attr.kernel.name} = linux filtered 2 nodes", as Nomad's
``eval status`` does. The checks that only read the node ("static") are computed
once per node and group; those that depend on the plan being built
(``distinct_hosts``, ``distinct_property``) live in the placement stack.
"""

from __future__ import annotations

import fnmatch

from corral import structs
from corral.proto import pb

from .constraints import (
    DISTINCT_HOSTS,
    DISTINCT_PROPERTY,
    CompiledConstraint,
    compile_constraint,
)

FILTER_DRIVERS = "missing drivers"
FILTER_DATACENTER = "datacenter"


def node_ready(node: pb.Node) -> bool:
    """Ready for new work: up, eligible, not draining (Nomad's ``Node.Ready``)."""
    return (
        node.status == structs.NODE_STATUS_READY
        and node.scheduling_eligibility != structs.NODE_INELIGIBLE
        and not node.drain
    )


def datacenter_matches(node: pb.Node, datacenters: list[str]) -> bool:
    """Nomad accepts globs in ``datacenters`` ("*" is the default)."""
    dc = node.datacenter
    for pattern in datacenters:
        if pattern == dc or pattern == "*" or fnmatch.fnmatchcase(dc, pattern):
            return True
    return False


def group_drivers(group: pb.TaskGroup) -> set[str]:
    return {t.driver for t in group.tasks}


def has_drivers(node: pb.Node, drivers: tuple[str, ...] | set[str]) -> bool:
    for driver in drivers:
        info = node.drivers.get(driver)
        if info is None or not info.detected or not info.healthy:
            return False
    return True


def filter_reason(node: pb.Node, job: pb.Job, drivers: set[str]) -> str:
    """Why the node cannot run the group, or "" if it can (resources and constraints
    aside). Kept for callers that only need the datacenter and driver checks."""
    if not datacenter_matches(node, list(job.datacenters)):
        return FILTER_DATACENTER
    if not has_drivers(node, drivers):
        return FILTER_DRIVERS
    return ""


def group_constraints(
    job: pb.Job, group: pb.TaskGroup
) -> tuple[list[pb.Constraint], list[pb.Constraint]]:
    """(job-level, group- and task-level) constraints, as Nomad merges them."""
    tg = list(group.constraints)
    for task in group.tasks:
        tg.extend(task.constraints)
    return list(job.constraints), tg


def _is_enabled_distinct_hosts(c: pb.Constraint) -> bool:
    return bool(c.operand == DISTINCT_HOSTS and c.r_target.strip().lower() != "false")


class StaticChecker:
    """The node-only checks of one group: job constraints, drivers, group constraints."""

    __slots__ = ("job_checks", "drivers", "group_checks")

    def __init__(self, job: pb.Job, group: pb.TaskGroup) -> None:
        job_cons, tg_cons = group_constraints(job, group)
        self.job_checks: list[CompiledConstraint] = [
            compile_constraint(c)
            for c in job_cons
            if c.operand not in (DISTINCT_HOSTS, DISTINCT_PROPERTY)
        ]
        self.group_checks: list[CompiledConstraint] = [
            compile_constraint(c)
            for c in tg_cons
            if c.operand not in (DISTINCT_HOSTS, DISTINCT_PROPERTY)
        ]
        self.drivers = tuple(sorted(group_drivers(group)))

    def reason(self, node: pb.Node) -> str:
        """The first check the node fails, "" when it passes them all."""
        for c in self.job_checks:
            if not c.test(node):
                return c.text
        if not has_drivers(node, self.drivers):
            return FILTER_DRIVERS
        for c in self.group_checks:
            if not c.test(node):
                return c.text
        return ""


def distinct_hosts_scope(job: pb.Job, group: pb.TaskGroup) -> tuple[bool, bool]:
    """(job-level, group-level) ``distinct_hosts``: no two allocations of the job, or
    of the group, on one node."""
    job_level = any(_is_enabled_distinct_hosts(c) for c in job.constraints)
    _, tg_cons = group_constraints(job, group)
    group_level = any(_is_enabled_distinct_hosts(c) for c in tg_cons)
    return job_level, group_level
