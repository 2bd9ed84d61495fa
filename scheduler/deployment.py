"""Rolling updates: which destructive updates may happen now, and canaries. Pure.

A service group with an ``update`` block (``max_parallel`` > 0) does not replace
all its old allocations at once. A Deployment for the job version tracks the
rollout; at any moment at most ``max_parallel`` new allocations may be placed
but not yet healthy. Clients report health, the FSM counts it, the deployment
watcher asks for a new evaluation on progress, and this module lets the next
replacements through. With ``canary = N`` the first N new allocations run beside
the old ones (nothing is stopped) until the deployment is promoted.

Nomad's reconciler does the same; see ``server/deployment_watcher.py`` for the
other half (success, failure, auto-revert, auto-promote).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from corral import structs
from corral.proto import pb
from corral.scheduler.reconcile import PLACE_NEW, PLACE_UPDATE, GroupResult, Place

RUNNING = structs.DeploymentStatus.RUNNING


def rolling(job: pb.Job, group: pb.TaskGroup) -> bool:
    """Whether the group's updates go through a deployment."""
    return bool(
        job.type == structs.JOB_TYPE_SERVICE
        and group.HasField("update")
        and group.update.max_parallel > 0
    )


def is_canary(alloc: pb.Allocation) -> bool:
    return bool(alloc.HasField("deployment_status") and alloc.deployment_status.canary)


def find_deployment(deployments: list[pb.Deployment], job: pb.Job) -> pb.Deployment | None:
    """The deployment of the job's current version, newest first.

    Only this incarnation's: a job purged and registered again starts its versions
    from 0, so a deployment of the purged job can carry the same version number
    (Nomad tells them apart by ``JobCreateIndex`` the same way)."""
    mine = [
        d
        for d in deployments
        if d.namespace == job.namespace
        and d.job_id == job.id
        and d.job_version == job.version
        and d.job_create_index == job.create_index
    ]
    mine.sort(key=lambda d: d.create_index, reverse=True)
    return mine[0] if mine else None


@dataclass
class GroupRollout:
    """What the deployment allows for one group in this evaluation."""

    canaries_to_place: int = 0
    updates_allowed: int = 0


def new_deployment(
    job: pb.Job, deployment_id: str, updating: Collection[str] = ()
) -> pb.Deployment:
    """The deployment of a new job version. Canaries only for the groups in
    ``updating`` (those replacing allocations of an older version): a job's first
    version, or a group with nothing of an older version left running, has nothing
    to compare a canary with, so Nomad places none there (``requiresCanaries``
    needs destructive updates) and places every allocation at once."""
    d = pb.Deployment(
        id=deployment_id,
        namespace=job.namespace,
        job_id=job.id,
        job_version=job.version,
        job_modify_index=job.job_modify_index,
        job_create_index=job.create_index,
        status=RUNNING,
        status_description=structs.DEPLOYMENT_DESC_RUNNING,
    )
    for group in job.task_groups:
        if not rolling(job, group):
            continue
        u = group.update
        state = d.task_groups[group.name]
        state.desired_total = group.count
        canaries = u.canary if group.name in updating else 0
        state.desired_canaries = canaries
        state.auto_revert = u.auto_revert
        state.auto_promote = u.auto_promote
        state.progress_deadline = u.progress_deadline
        state.promoted = canaries == 0
    d.status_description = structs.running_deployment_description(d)
    return d


def updating_groups(recs: list[tuple[str, GroupResult]]) -> set[str]:
    """The groups whose placements replace allocations of an older version."""
    return {name for name, rec in recs if any(p.kind == PLACE_UPDATE for p in rec.place)}


def shape_group(
    job: pb.Job,
    group: pb.TaskGroup,
    rec: GroupResult,
    allocs: list[pb.Allocation],
    deployment: pb.Deployment,
) -> None:
    """Trim and mark ``rec.place`` for a rolling group, in place.

    * Deployment not running (failed, cancelled, successful): no destructive update
      starts (a failed rollout stops where it is; auto-revert comes as a new job).
    * Canary phase (not promoted): place the missing canaries beside the old
      allocations, at the indexes they will take over; no destructive update.
    * Rolling phase: at most ``max_parallel`` new allocations placed and not yet
      healthy; an unhealthy one stops the rollout (the watcher fails it).
    New placements that replace nothing (scale up, lost, rescheduled) go ahead.
    """
    state = deployment.task_groups.get(group.name)
    updates = [p for p in rec.place if p.kind == PLACE_UPDATE]
    others = [p for p in rec.place if p.kind != PLACE_UPDATE]
    if deployment.status != RUNNING or state is None:
        rec.place = others
        rec.ignore += len(updates)
        return
    current = [
        a
        for a in allocs
        if a.job_version == job.version
        and a.deployment_id == deployment.id
        and a.desired_status == structs.ALLOC_DESIRED_RUN
        and a.client_status not in structs.ALLOC_TERMINAL_CLIENT
    ]
    if state.desired_canaries and not state.promoted:
        existing = sum(1 for a in current if is_canary(a))
        missing = max(state.desired_canaries - existing, 0)
        taken = {a.alloc_index for a in current if is_canary(a)}
        canaries: list[Place] = []
        for p in updates:
            if len(canaries) >= missing:
                break
            if p.index in taken:
                continue
            canaries.append(Place(p.group, p.index, None, PLACE_NEW, canary=True))
        rec.place = sorted(others + canaries, key=lambda p: p.index)
        rec.ignore += len(updates)
        return
    if any(
        a.HasField("deployment_status")
        and a.deployment_status.HasField("healthy")
        and not a.deployment_status.healthy
        for a in current
    ):
        rec.place = others
        rec.ignore += len(updates)
        return
    inflight = sum(
        1
        for a in current
        if not (a.HasField("deployment_status") and a.deployment_status.HasField("healthy"))
    )
    budget = max(group.update.max_parallel - inflight, 0)
    # New placements also count against max_parallel, as in Nomad.
    budget = max(budget - sum(1 for p in others if p.kind == PLACE_NEW), 0)
    rec.place = sorted(others + updates[:budget], key=lambda p: p.index)
    rec.ignore += max(len(updates) - budget, 0)


def needs_deployment(job: pb.Job, recs: list[tuple[str, GroupResult]]) -> bool:
    """A new job version that places or updates anything in a rolling group gets a
    deployment (in-place updates too: their allocations must prove healthy again)."""
    for name, rec in recs:
        group = structs.group_by_name(job, name)
        if group is None or not rolling(job, group):
            continue
        if any(p.kind in (PLACE_NEW, PLACE_UPDATE) for p in rec.place) or rec.inplace:
            return True
    return False
