"""The system scheduler: one allocation of each group on every eligible node. Pure.

Nomad's rules (``scheduler_system.go``, ``diffSystemAllocs``):

- every ready, eligible, non-draining node in the job's datacenters that passes the
  group's drivers and constraints gets one allocation (``job.group[0]``), including
  nodes that join later; no sampling, no ranking: the node is the choice;
- a node whose allocation cannot fit is a placement failure (explained per node in
  the group's ``AllocMetric``); a node filtered by constraints is not, it simply
  does not run the job;
- a node that goes down loses its allocation (``lost``); a node that no longer
  satisfies the job (constraint, driver, datacenter) has it stopped; a node marked
  ineligible keeps what runs there (only a drain removes allocations), and a
  draining node has it stopped unless the drain ignores system jobs;
- a new job version updates allocations in place, or replaces them on the same
  node; a stopped job stops them all.
"""

from __future__ import annotations

import random

from corral import structs
from corral.proto import pb

from .common import IdSource, SchedulerResult, SchedulerState
from .feasible import node_ready
from .plan import PlanBuilder, new_plan
from .reconcile import (
    DESC_JOB_STOPPED,
    DESC_LOST,
    DESC_MIGRATING,
    DESC_NODE_INFEASIBLE,
    DESC_NOT_NEEDED,
    DESC_UPDATING,
    tasks_changed,
)
from .stack import ALGORITHM_BINPACK, GroupStack, Placer

SYSTEM_ALLOC_INDEX = 0


def compute_system_plan(
    state: SchedulerState,
    ev: pb.Evaluation,
    seed: int,
    new_id: IdSource = structs.new_id,
    *,
    now_ns: int = 0,
    algorithm: str = ALGORITHM_BINPACK,
) -> SchedulerResult:
    """Diff the system job against every node and build the plan."""
    rng = random.Random(seed)
    job = state.job(ev.namespace, ev.job_id)
    plan = new_plan(ev, state.index)
    result = SchedulerResult(plan=plan)
    builder = PlanBuilder(plan)
    allocs = state.allocs_by_job(ev.namespace, ev.job_id)
    live = [
        a
        for a in allocs
        if a.desired_status == structs.ALLOC_DESIRED_RUN
        and a.client_status not in structs.ALLOC_TERMINAL_CLIENT
    ]
    if job is None or job.stop:
        for alloc in live:
            builder.stop(alloc, DESC_JOB_STOPPED)
        return result
    plan.job_version = job.version
    plan.all_at_once = job.all_at_once

    stopped: set[str] = set()

    def stop(alloc: pb.Allocation, description: str, client_status: str = "") -> None:
        builder.stop(alloc, description, client_status)
        stopped.add(alloc.id)

    by_group: dict[str, list[pb.Allocation]] = {}
    for alloc in live:
        if structs.group_by_name(job, alloc.task_group) is None:
            stop(alloc, DESC_NOT_NEEDED)
        else:
            by_group.setdefault(alloc.task_group, []).append(alloc)

    # Decide the fate of existing allocations first (stops free resources), then
    # place. The placer sees the stops through ``stopped``.
    placer = Placer(state, job, allocs, stopped, rng, algorithm)
    nodes: dict[str, pb.Node | None] = {}

    def node_of(node_id: str) -> pb.Node | None:
        if node_id not in nodes:
            nodes[node_id] = state.node(node_id)
        return nodes[node_id]

    plans: list[tuple[GroupStack, set[str], list[pb.Allocation]]] = []
    for group in job.task_groups:
        gs = placer.group(job, group)
        kept: set[str] = set()
        destructive: list[pb.Allocation] = []
        group_live = sorted(by_group.get(group.name, []), key=lambda a: a.create_index)
        for alloc in group_live:
            node_id = alloc.node_id
            node = node_of(node_id)
            if node_id in kept:
                stop(alloc, DESC_NOT_NEEDED)  # a second allocation on one node
                continue
            if node is None or node.status == structs.NODE_STATUS_DOWN:
                stop(alloc, DESC_LOST, structs.ALLOC_CLIENT_LOST)
                continue
            if node.drain:
                if alloc.desired_transition.migrate or not node.drain_strategy.ignore_system_jobs:
                    stop(alloc, DESC_MIGRATING)
                else:
                    kept.add(node_id)
                continue
            if alloc.desired_transition.migrate:
                stop(alloc, DESC_MIGRATING)
                continue
            if not node_ready(node):
                kept.add(node_id)  # ineligible: keeps running, gets no updates
                continue
            i = placer.pos.get(node_id)
            if i is None or gs.static_reason(i):
                stop(alloc, DESC_NODE_INFEASIBLE)
                continue
            kept.add(node_id)
            if alloc.job_version == job.version:
                continue
            old = state.job_version(job.namespace, job.id, alloc.job_version)
            old_group = None if old is None else structs.group_by_name(old, group.name)
            if tasks_changed(old_group, group):
                destructive.append(alloc)
            else:
                builder.update_in_place(alloc, job, ev.id)
        plans.append((gs, kept, destructive))

    for gs, kept, destructive in plans:
        _place_group(placer, gs, kept, destructive, allocs, ev, builder, result, new_id)
    return result


def _place_group(
    placer: Placer,
    gs: GroupStack,
    kept: set[str],
    destructive: list[pb.Allocation],
    allocs: list[pb.Allocation],
    ev: pb.Evaluation,
    builder: PlanBuilder,
    result: SchedulerResult,
    new_id: IdSource,
) -> None:
    # The most recent finished allocation per node links to its replacement.
    previous: dict[str, pb.Allocation] = {}
    for alloc in allocs:
        if (
            alloc.task_group == gs.name
            and alloc.client_status in structs.ALLOC_TERMINAL_CLIENT
            and not alloc.next_allocation
        ):
            old = previous.get(alloc.node_id)
            if old is None or alloc.create_index > old.create_index:
                previous[alloc.node_id] = alloc

    metric: pb.AllocMetric | None = None
    failed = 0
    replacing = {a.node_id: a for a in destructive}
    pool = placer.pool
    for i, node in enumerate(pool):
        node_id = node.id
        prev = replacing.get(node_id)
        if node_id in kept and prev is None:
            continue
        if prev is not None:
            placer.stop(prev)
        reason, dim = gs.fit_reason(i)
        if reason or dim:
            if prev is not None:
                placer.unstop(prev)  # the old version keeps running
            if dim:
                # Filtered nodes simply do not run the job; full ones are failures.
                if metric is None:
                    metric = pb.AllocMetric()
                gs.explain_node(metric, i)
                failed += 1
            continue
        alloc = builder.new_alloc(node_id)
        gs.place(i, SYSTEM_ALLOC_INDEX, new_id(), ev.id, alloc)
        if prev is not None:
            alloc.previous_allocation = prev.id
            builder.stop(prev, DESC_UPDATING)
        elif node_id in previous:
            alloc.previous_allocation = previous[node_id].id
        result.placed += 1
    result.queued[gs.name] = failed
    if metric is not None:
        gs.finish_metric(metric)
        metric.coalesced_failures = failed - 1
        result.failed_tg_allocs[gs.name] = metric
