"""Feasibility: may this node run this task group at all (ignoring free resources)?

Checks are cheap predicates over the node; each names the reason it filters a node,
so that a placement failure can say "missing drivers filtered 3 nodes", as Nomad's
``eval status`` does.
"""

from __future__ import annotations

import fnmatch

from corral import structs
from corral.proto import pb


def node_ready(node: pb.Node) -> bool:
    return (
        node.status == structs.NODE_STATUS_READY
        and node.scheduling_eligibility != structs.NODE_INELIGIBLE
        and not node.drain
    )


def datacenter_matches(node: pb.Node, datacenters: list[str]) -> bool:
    """Nomad accepts globs in ``datacenters`` ("*" is the default)."""
    return any(fnmatch.fnmatchcase(node.datacenter, dc) for dc in datacenters)


def group_drivers(group: pb.TaskGroup) -> set[str]:
    return {t.driver for t in group.tasks}


def filter_reason(node: pb.Node, job: pb.Job, drivers: set[str]) -> str:
    """Why the node cannot run the group, or "" if it can (resources aside)."""
    if not datacenter_matches(node, list(job.datacenters)):
        return "datacenter"
    for driver in drivers:
        info = node.drivers.get(driver)
        if info is None or not info.detected or not info.healthy:
            return "missing drivers"
    return ""
