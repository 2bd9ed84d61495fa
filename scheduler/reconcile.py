"""Reconcile: compare a job's desired state with its allocations, per task group.

Output is intent only (which allocations to stop, which to update in place, which
names to place); where they go is the placement step's business. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corral import structs
from corral.proto import pb


@dataclass(frozen=True)
class Stop:
    alloc: pb.Allocation
    description: str
    client_status: str = ""  # "lost" for allocations on down nodes


@dataclass(frozen=True)
class Place:
    group: str
    index: int
    previous: pb.Allocation | None = None


@dataclass
class GroupResult:
    stop: list[Stop] = field(default_factory=list)
    place: list[Place] = field(default_factory=list)
    inplace: list[pb.Allocation] = field(default_factory=list)
    ignore: int = 0


def tasks_changed(old: pb.TaskGroup | None, new: pb.TaskGroup) -> bool:
    """A destructive change: anything but count, update/migrate/reschedule policies.
    Nomad updates an allocation in place when only those differ."""
    if old is None:
        return True
    a = pb.TaskGroup()
    a.CopyFrom(old)
    b = pb.TaskGroup()
    b.CopyFrom(new)
    for g in (a, b):
        g.count = 0
        g.ClearField("update")
        g.ClearField("migrate")
        g.ClearField("reschedule_policy")
    return a.SerializeToString(deterministic=True) != b.SerializeToString(deterministic=True)


def reconcile_group(
    job: pb.Job | None,
    group_name: str,
    allocs: list[pb.Allocation],
    node_down: Callable[[str], bool],
    old_group: Callable[[int], pb.TaskGroup | None],
) -> GroupResult:
    """Decide the fate of one group's allocations.

    ``node_down(node_id)`` says whether a node is gone; ``old_group(version)`` gives
    the group as it was in an older job version (to tell in-place from destructive
    updates).
    """
    result = GroupResult()
    group = structs.group_by_name(job, group_name) if job is not None else None
    live: list[pb.Allocation] = []
    occupied: dict[int, pb.Allocation] = {}
    for alloc in allocs:
        if alloc.desired_status != structs.ALLOC_DESIRED_RUN:
            continue
        if alloc.client_status == structs.ALLOC_CLIENT_LOST:
            continue
        if structs.is_client_terminal(alloc):
            # Complete batch work is done; failed allocations keep their slot until
            # rescheduling replaces them (not placed again blindly: no crash loops).
            if group is not None and alloc.alloc_index < group.count:
                occupied.setdefault(alloc.alloc_index, alloc)
            result.ignore += 1
            continue
        live.append(alloc)

    if job is None or job.stop or group is None:
        for alloc in live:
            result.stop.append(Stop(alloc, "alloc not needed since job was stopped"))
        return result

    live.sort(key=lambda a: (a.alloc_index, a.create_index))
    keep: dict[int, pb.Allocation] = {}
    for alloc in live:
        if node_down(alloc.node_id):
            result.stop.append(Stop(alloc, "alloc is lost since its node is down", "lost"))
            if alloc.alloc_index < group.count and alloc.alloc_index not in keep:
                result.place.append(Place(group_name, alloc.alloc_index, alloc))
                keep[alloc.alloc_index] = alloc
            continue
        if alloc.alloc_index >= group.count or alloc.alloc_index in keep:
            result.stop.append(Stop(alloc, "alloc not needed due to job update"))
            continue
        keep[alloc.alloc_index] = alloc
        if alloc.desired_transition.migrate:
            result.stop.append(Stop(alloc, "alloc is being migrated"))
            result.place.append(Place(group_name, alloc.alloc_index, alloc))
            continue
        if alloc.job_version != job.version:
            if tasks_changed(old_group(alloc.job_version), group):
                result.stop.append(Stop(alloc, "alloc is being updated due to job update"))
                result.place.append(Place(group_name, alloc.alloc_index, alloc))
            else:
                result.inplace.append(alloc)
    for index in range(group.count):
        if index not in keep and index not in occupied:
            result.place.append(Place(group_name, index))
    result.place.sort(key=lambda p: p.index)
    return result
