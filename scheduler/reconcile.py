"""Reconcile: compare a job's desired state with its allocations, per task group.

Output is intent only (which allocations to stop, which to update in place, which
names to place and why, which failed allocations to reschedule later); where they
go is the placement step's business. Pure.

The rules are Nomad's (``scheduler/reconcile.go``):

- allocations on a down (or vanished) node are *lost*: stopped, and replaced;
- allocations on a draining node, or marked ``desired_transition.migrate``, are
  *migrated*: stopped and replaced elsewhere, at most ``migrate.max_parallel`` at a
  time per group, counting replacements that are not running yet (past the node's
  drain deadline, all at once); batch allocations are left to finish until the
  deadline, as Nomad's drainer does;
- a *failed* allocation is replaced by its group's ``reschedule`` policy: now, later
  (a follow-up evaluation), or never (attempts exhausted: it stays failed and keeps
  its slot); a *complete* batch allocation keeps its slot (its work is done), a
  complete service allocation does not (services are meant to run);
- beyond the group's count, or a second allocation for one index: stopped;
- an older job version: updated in place when only count or policies changed,
  otherwise replaced (destructive update).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corral import structs
from corral.proto import pb

from . import reschedule

DESC_JOB_STOPPED = "alloc not needed since job was stopped"
DESC_NOT_NEEDED = "alloc not needed due to job update"
DESC_UPDATING = "alloc is being updated due to job update"
DESC_MIGRATING = "alloc is being migrated"
DESC_LOST = "alloc is lost since its node is down"
DESC_RESCHEDULED = "alloc was rescheduled because it failed"
DESC_NODE_INFEASIBLE = "alloc not needed as node no longer meets the job's constraints"

# Why a placement is made: the placement step treats each kind a little differently
# (a destructive update frees the old allocation's resources first and keeps it when
# the new one cannot be placed; a reschedule avoids the nodes that failed).
PLACE_NEW = "new"
PLACE_LOST = "lost"
PLACE_MIGRATE = "migrate"
PLACE_UPDATE = "update"
PLACE_RESCHEDULE = "reschedule"

# Node states, as far as reconciling is concerned.
NODE_OK = ""
NODE_DOWN = "down"
NODE_DRAIN = "drain"
NODE_DRAIN_FORCED = "drain-forced"


@dataclass(frozen=True, slots=True)
class Stop:
    alloc: pb.Allocation
    description: str
    client_status: str = ""  # "lost" for allocations on down nodes


@dataclass(frozen=True, slots=True)
class Place:
    group: str
    index: int
    previous: pb.Allocation | None = None
    kind: str = PLACE_NEW
    # A canary runs beside the allocation it will replace (rolling updates).
    canary: bool = False


@dataclass(frozen=True, slots=True)
class Later:
    """A failed allocation to replace at ``due`` (nanoseconds) by a follow-up eval."""

    alloc: pb.Allocation
    due: int


@dataclass
class GroupResult:
    stop: list[Stop] = field(default_factory=list)
    place: list[Place] = field(default_factory=list)
    inplace: list[pb.Allocation] = field(default_factory=list)
    later: list[Later] = field(default_factory=list)
    ignore: int = 0
    # Allocations that should migrate but wait for max_parallel.
    deferred_migrations: int = 0


@dataclass
class ReconcileEnv:
    """What reconciling needs to know beyond the job and its allocations."""

    # NODE_OK, NODE_DOWN, NODE_DRAIN or NODE_DRAIN_FORCED for a node ID.
    node_state: Callable[[str], str]
    # The group as it was in an older job version (to tell in-place from destructive).
    old_group: Callable[[int], pb.TaskGroup | None]
    now: int = 0
    eval_id: str = ""


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
        # Service registrations (tags, checks) change without restarting tasks.
        g.ClearField("services")
        for t in g.tasks:
            t.ClearField("services")
    return bool(a.SerializeToString(deterministic=True) != b.SerializeToString(deterministic=True))


def reconcile_group(
    job: pb.Job | None,
    group_name: str,
    allocs: list[pb.Allocation],
    env: ReconcileEnv,
) -> GroupResult:
    """Decide the fate of one group's allocations (service and batch jobs)."""
    result = GroupResult()
    group = structs.group_by_name(job, group_name) if job is not None else None
    stopping = job is None or job.stop or group is None
    batch = job is not None and job.type == structs.JOB_TYPE_BATCH

    live: list[pb.Allocation] = []
    terminal: list[pb.Allocation] = []
    for alloc in allocs:
        if alloc.desired_status != structs.ALLOC_DESIRED_RUN:
            # Batch work that finished stays done, even once stopped.
            if batch and alloc.client_status == structs.ALLOC_CLIENT_COMPLETE:
                terminal.append(alloc)
            continue
        if alloc.client_status in structs.ALLOC_TERMINAL_CLIENT:
            terminal.append(alloc)
        else:
            live.append(alloc)

    if stopping or job is None or group is None:
        desc = DESC_JOB_STOPPED if job is None or job.stop else DESC_NOT_NEEDED
        for alloc in live:
            result.stop.append(Stop(alloc, desc))
        return result

    changed_cache: dict[int, bool] = {}

    def destructive(version: int) -> bool:
        hit = changed_cache.get(version)
        if hit is None:
            hit = changed_cache[version] = tasks_changed(env.old_group(version), group)
        return hit

    count = group.count
    version = job.version
    # Within an index the current version wins: a promoted canary displaces the
    # old allocation it ran beside.
    live.sort(key=lambda a: (a.alloc_index, a.job_version != version, a.create_index))
    keep: dict[int, pb.Allocation] = {}
    candidates: list[tuple[pb.Allocation, bool]] = []  # (alloc, forced) to migrate
    settled: list[pb.Allocation] = []  # kept, subject to update checks
    for alloc in live:
        index = alloc.alloc_index
        state = env.node_state(alloc.node_id)
        if state == NODE_DOWN:
            result.stop.append(Stop(alloc, DESC_LOST, structs.ALLOC_CLIENT_LOST))
            if index < count and index not in keep:
                result.place.append(Place(group_name, index, alloc, PLACE_LOST))
                keep[index] = alloc
            continue
        if index >= count or index in keep:
            result.stop.append(Stop(alloc, DESC_NOT_NEEDED))
            continue
        keep[index] = alloc
        # Batch work on a draining node may finish until the drain's deadline.
        draining = state == NODE_DRAIN_FORCED or (state == NODE_DRAIN and not batch)
        if alloc.desired_transition.migrate or draining:
            candidates.append((alloc, state == NODE_DRAIN_FORCED))
        else:
            settled.append(alloc)

    if candidates:
        budget = _migrate_budget(group, allocs)
        for alloc, forced in candidates:
            if forced or budget > 0:
                if not forced:
                    budget -= 1
                result.stop.append(Stop(alloc, DESC_MIGRATING))
                result.place.append(Place(group_name, alloc.alloc_index, alloc, PLACE_MIGRATE))
            else:
                result.deferred_migrations += 1
                settled.append(alloc)

    for alloc in settled:
        if alloc.job_version == version:
            result.ignore += 1
        elif destructive(alloc.job_version):
            result.place.append(Place(group_name, alloc.alloc_index, alloc, PLACE_UPDATE))
        else:
            result.inplace.append(alloc)

    policy = reschedule.policy_of(group, job.type)
    terminal.sort(key=lambda a: (a.alloc_index, -a.create_index))
    for alloc in terminal:
        index = alloc.alloc_index
        if index >= count or index in keep:
            continue
        status = alloc.client_status
        if status == structs.ALLOC_CLIENT_COMPLETE:
            # Finished batch work keeps its slot unless the job's tasks changed since.
            if batch and (alloc.job_version == version or not destructive(alloc.job_version)):
                keep[index] = alloc
                result.ignore += 1
            continue
        if status != structs.ALLOC_CLIENT_FAILED or alloc.next_allocation:
            continue  # lost (replaced when it was lost), or already rescheduled
        if batch and alloc.job_version != version and destructive(alloc.job_version):
            continue  # an old version's failure: its slot gets the new version
        keep[index] = alloc
        decision = reschedule.decide(alloc, policy, env.now, env.eval_id)
        if decision.now:
            result.place.append(Place(group_name, index, alloc, PLACE_RESCHEDULE))
        elif decision.later:
            result.later.append(Later(alloc, decision.due))
            result.ignore += 1
        else:
            result.ignore += 1  # no attempts left: it stays failed

    for index in range(count):
        if index not in keep:
            result.place.append(Place(group_name, index))
    result.place.sort(key=lambda p: p.index)
    return result


def _migrate_budget(group: pb.TaskGroup, allocs: list[pb.Allocation]) -> int:
    """How many more allocations may start migrating now: ``max_parallel`` minus the
    replacements of migrated allocations that are not running yet."""
    max_parallel = group.migrate.max_parallel if group.HasField("migrate") else 0
    if max_parallel <= 0:
        max_parallel = 1
    by_id = {a.id: a for a in allocs}
    inflight = 0
    for alloc in allocs:
        if not alloc.previous_allocation or alloc.desired_status != structs.ALLOC_DESIRED_RUN:
            continue
        if alloc.client_status != structs.ALLOC_CLIENT_PENDING:
            continue  # running is done; terminal ones no longer wait
        prev = by_id.get(alloc.previous_allocation)
        if prev is not None and prev.desired_description == DESC_MIGRATING:
            inflight += 1
    return max(0, max_parallel - inflight)
