"""The service/batch scheduler: one evaluation in, one plan out. Pure.

``compute_generic_plan(state, eval, seed)`` reconciles every task group of the job
first (what to stop, update in place, place, reschedule later), applies the stops,
then places the missing allocations group by group through the placement stack
(``stack.py``). It serves service and batch jobs (Nomad's generic scheduler);
``dispatch.compute_plan`` sends each evaluation to its job type's scheduler.

Everything random comes from ``random.Random(seed)`` and "now" is an argument, so a
plan is reproducible from (snapshot, evaluation, seed, now). The result is
optimistic; the plan applier re-checks it against the latest state.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from corral import structs
from corral.proto import pb

from . import deployment as deploy
from . import reschedule
from .common import IdSource, SchedulerResult, SchedulerState
from .feasible import node_ready
from .plan import PlanBuilder, new_plan
from .reconcile import (
    DESC_RESCHEDULED,
    DESC_UPDATING,
    NODE_DOWN,
    NODE_DRAIN,
    NODE_DRAIN_FORCED,
    NODE_OK,
    PLACE_RESCHEDULE,
    PLACE_UPDATE,
    GroupResult,
    Later,
    ReconcileEnv,
    reconcile_group,
)
from .stack import ALGORITHM_BINPACK, Placer, sample_limit

__all__ = [
    "SchedulerResult",
    "SchedulerState",
    "compute_generic_plan",
    "eval_now",
    "node_drain_state",
    "sample_limit",
]


def eval_now(ev: pb.Evaluation, now_ns: int) -> int:
    """ "Now" for reschedule decisions: the caller's clock, else the evaluation's
    own timestamps (the newest the scheduler knows of)."""
    return now_ns or max(ev.modify_time, ev.create_time, ev.wait_until)


def node_drain_state(node: pb.Node | None, now: int) -> str:
    """How reconciling sees a node: gone or down, draining (past its deadline or
    not), or fine."""
    if node is None or node.status == structs.NODE_STATUS_DOWN:
        return NODE_DOWN
    if node.drain:
        ds = node.drain_strategy
        force_at = ds.force_deadline
        if not force_at and ds.deadline > 0 and ds.started_at:
            force_at = ds.started_at + ds.deadline
        if ds.deadline < 0 or (force_at and now >= force_at):
            return NODE_DRAIN_FORCED
        return NODE_DRAIN
    return NODE_OK


def compute_generic_plan(
    state: SchedulerState,
    ev: pb.Evaluation,
    seed: int,
    new_id: IdSource = structs.new_id,
    *,
    now_ns: int = 0,
    algorithm: str = ALGORITHM_BINPACK,
) -> SchedulerResult:
    """Reconcile the evaluation's (service or batch) job against its allocations
    and build a plan.

    ``now_ns`` is the wall clock for reschedule delays and drain deadlines (the
    evaluation's timestamps stand in when 0); ``algorithm`` is the cluster's
    scheduler algorithm, "binpack" (default) or "spread" (worst fit).
    """
    job = state.job(ev.namespace, ev.job_id)
    rng = random.Random(seed)
    now = eval_now(ev, now_ns)
    plan = new_plan(ev, state.index)
    result = SchedulerResult(plan=plan)
    if job is not None:
        plan.job_version = job.version
        plan.all_at_once = job.all_at_once
    allocs = state.allocs_by_job(ev.namespace, ev.job_id)
    by_group: dict[str, list[pb.Allocation]] = {}
    for alloc in allocs:
        by_group.setdefault(alloc.task_group, []).append(alloc)
    group_names = list(by_group)
    if job is not None:
        group_names = [g.name for g in job.task_groups] + [
            g for g in by_group if structs.group_by_name(job, g) is None
        ]

    node_states: dict[str, str] = {}

    def node_state(node_id: str) -> str:
        s = node_states.get(node_id)
        if s is None:
            s = node_states[node_id] = node_drain_state(state.node(node_id), now)
        return s

    versions: dict[int, pb.Job | None] = {}

    def old_group_of(group_name: str) -> Callable[[int], pb.TaskGroup | None]:
        def old_group(version: int) -> pb.TaskGroup | None:
            if job is None:
                return None
            if version not in versions:
                versions[version] = state.job_version(job.namespace, job.id, version)
            old = versions[version]
            return None if old is None else structs.group_by_name(old, group_name)

        return old_group

    builder = PlanBuilder(plan)
    stopped: set[str] = set()
    recs: list[tuple[str, GroupResult]] = []
    later: list[Later] = []
    # Rolling updates: the current version's deployment; unpromoted canaries are
    # kept out of reconciling (they share indexes with the allocations they shadow).
    dep = deploy.find_deployment(state.deployments(), job) if job is not None else None
    for group_name in group_names:
        env = ReconcileEnv(node_state, old_group_of(group_name), now, ev.id)
        group_allocs = by_group.get(group_name, [])
        promoted = dep is not None and (
            group_name not in dep.task_groups or dep.task_groups[group_name].promoted
        )
        if not promoted and not (job is None or job.stop):
            group_allocs = [a for a in group_allocs if not deploy.is_canary(a)]
        rec = reconcile_group(job, group_name, group_allocs, env)
        recs.append((group_name, rec))
        for stop in rec.stop:
            builder.stop(stop.alloc, stop.description, stop.client_status)
            stopped.add(stop.alloc.id)
        later.extend(rec.later)
        if rec.deferred_migrations:
            result.deferred_migrations[group_name] = rec.deferred_migrations
    if job is None:
        return result

    if later:
        _followups(later, job, ev, builder, result, new_id)

    if dep is None and not job.stop and deploy.needs_deployment(job, recs):
        dep = deploy.new_deployment(job, new_id(), deploy.updating_groups(recs))
        plan.deployment.CopyFrom(dep)

    ready: dict[str, bool] = {}
    for group_name, rec in recs:
        group = structs.group_by_name(job, group_name)
        in_deployment = dep is not None and group is not None and deploy.rolling(job, group)
        for alloc in rec.inplace:
            ok = ready.get(alloc.node_id)
            if ok is None:
                node = state.node(alloc.node_id)
                ok = ready[alloc.node_id] = node is not None and node_ready(node)
            # The plan applier refuses new or updated allocations on a node that is
            # not ready; an in-place update changes no resources, so it can wait.
            if ok:
                builder.update_in_place(alloc, job, ev.id, dep.id if in_deployment and dep else "")

    for group_name, rec in recs:
        group = structs.group_by_name(job, group_name)
        if dep is not None and group is not None and deploy.rolling(job, group):
            deploy.shape_group(job, group, rec, by_group.get(group_name, []), dep)

    if not any(rec.place for _, rec in recs):
        return result
    placer = Placer(state, job, allocs, stopped, rng, algorithm)
    for group_name, rec in recs:
        group = structs.group_by_name(job, group_name)
        if group is None or not rec.place:
            continue
        dep_id = dep.id if dep is not None and deploy.rolling(job, group) else ""
        _place_group(placer, job, group, rec, ev, now, builder, result, new_id, dep_id)
    return result


def _place_group(
    placer: Placer,
    job: pb.Job,
    group: pb.TaskGroup,
    rec: GroupResult,
    ev: pb.Evaluation,
    now: int,
    builder: PlanBuilder,
    result: SchedulerResult,
    new_id: IdSource,
    deployment_id: str = "",
) -> None:
    gs = placer.group(job, group)
    policy = reschedule.policy_of(group, job.type)
    pool = placer.pool
    metric: pb.AllocMetric | None = None
    failed = 0
    no_penalty: frozenset[str] = frozenset()
    for place in rec.place:
        if metric is not None:
            # Once a placement of the group failed, the others fail the same way
            # (the plan only grows): count them, as Nomad coalesces failures.
            failed += 1
            continue
        prev = place.previous
        if place.kind == PLACE_UPDATE and prev is not None:
            placer.stop(prev)  # free its resources for the replacement
        penalty = no_penalty
        if place.kind == PLACE_RESCHEDULE and prev is not None:
            penalty = reschedule.penalty_nodes(prev)
        i = gs.select(penalty)
        if i is None:
            if place.kind == PLACE_UPDATE and prev is not None:
                placer.unstop(prev)  # the old version keeps running
            metric = gs.explain()
            failed += 1
            continue
        alloc = builder.new_alloc(pool[i].id)
        gs.place(i, place.index, new_id(), ev.id, alloc)
        if deployment_id:
            alloc.deployment_id = deployment_id
            if place.canary:
                alloc.deployment_status.canary = True
        if prev is not None:
            alloc.previous_allocation = prev.id
            if place.kind == PLACE_RESCHEDULE:
                alloc.reschedule_tracker.CopyFrom(reschedule.new_tracker(prev, policy, now))
                builder.stop(prev, DESC_RESCHEDULED)
            elif place.kind == PLACE_UPDATE:
                builder.stop(prev, DESC_UPDATING)
        result.placed += 1
    result.queued[group.name] = failed
    if metric is not None:
        metric.coalesced_failures = failed - 1
        result.failed_tg_allocs[group.name] = metric


def _followups(
    later: list[Later],
    job: pb.Job,
    ev: pb.Evaluation,
    builder: PlanBuilder,
    result: SchedulerResult,
    new_id: IdSource,
) -> None:
    """One delayed evaluation per batch of failed allocations due within a few
    seconds of each other (Nomad's ``createRescheduleLaterEvals``)."""
    later = sorted(later, key=lambda item: (item.due, item.alloc.id))
    current: pb.Evaluation | None = None
    for item in later:
        if current is None or item.due - current.wait_until >= reschedule.FOLLOWUP_BATCH_WINDOW_NS:
            current = pb.Evaluation(
                id=new_id(),
                namespace=job.namespace,
                priority=ev.priority or job.priority,
                type=job.type,
                triggered_by=structs.TRIGGER_RETRY_FAILED_ALLOC,
                job_id=job.id,
                job_modify_index=job.job_modify_index,
                status=structs.EVAL_STATUS_PENDING,
                status_description=reschedule.FOLLOWUP_DESCRIPTION,
                wait_until=item.due,
                previous_eval=ev.id,
            )
            result.followup_evals.append(current)
        builder.mark_followup(item.alloc, current.id)
        result.followups[item.alloc.id] = item.due
