"""The service/batch scheduler: one evaluation in, one plan out. Pure.

``compute_plan(state, eval, seed)`` reconciles each task group, then places the
missing allocations: shuffle the nodes (seeded), keep the feasible ones, stop after
a few that fit (Nomad's LimitIterator: max(2, ceil(log2 n)) for services, 2 for
batch) and take the best binpack score. The result is optimistic; the plan applier
re-checks it against the latest state.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from corral import structs
from corral.proto import pb
from corral.scheduler.feasible import filter_reason, group_drivers, node_ready
from corral.scheduler.rank import GroupAsk, NodeUsage
from corral.scheduler.reconcile import reconcile_group

# Nomad skips up to this many nodes whose score is too low before settling.
MAX_SKIP = 3


class SchedulerState(Protocol):
    """What the scheduler reads: a consistent snapshot of the state store."""

    @property
    def index(self) -> int: ...

    def job(self, namespace: str, job_id: str) -> pb.Job | None: ...

    def job_version(self, namespace: str, job_id: str, version: int) -> pb.Job | None: ...

    def nodes(self) -> list[pb.Node]: ...

    def node(self, node_id: str) -> pb.Node | None: ...

    def allocs_by_job(self, namespace: str, job_id: str) -> list[pb.Allocation]: ...

    def allocs_by_node(self, node_id: str) -> list[pb.Allocation]: ...


@dataclass
class SchedulerResult:
    plan: pb.Plan
    # Per group: why placements failed (empty when everything was placed).
    failed_tg_allocs: dict[str, pb.AllocMetric] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    # IDs the caller must use for new allocations are drawn from ``new_id``.
    placed: int = 0

    @property
    def needs_blocked_eval(self) -> bool:
        return bool(self.failed_tg_allocs)


class _IdSource(Protocol):
    def __call__(self) -> str: ...


def sample_limit(job_type: str, feasible_nodes: int) -> int:
    if job_type == structs.JOB_TYPE_BATCH:
        return 2
    return max(2, math.ceil(math.log2(max(feasible_nodes, 1))))


def compute_plan(
    state: SchedulerState,
    ev: pb.Evaluation,
    seed: int,
    new_id: _IdSource = structs.new_id,
) -> SchedulerResult:
    """Reconcile the evaluation's job against its allocations and build a plan."""
    rng = random.Random(seed)
    job = state.job(ev.namespace, ev.job_id)
    plan = pb.Plan(
        eval_id=ev.id,
        priority=ev.priority,
        job_id=ev.job_id,
        namespace=ev.namespace,
        snapshot_index=state.index,
    )
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

    def node_down(node_id: str) -> bool:
        node = state.node(node_id)
        return node is None or node.status == structs.NODE_STATUS_DOWN

    def old_group(version: int) -> pb.TaskGroup | None:
        if job is None:
            return None
        old = state.job_version(job.namespace, job.id, version)
        return None if old is None else structs.group_by_name(old, group_name)

    usage: dict[str, NodeUsage] = {}
    nodes_cache: list[pb.Node] | None = None

    def get_usage(node: pb.Node) -> NodeUsage:
        u = usage.get(node.id)
        if u is None:
            u = NodeUsage.of(node, state.allocs_by_node(node.id))
            usage[node.id] = u
        return u

    for group_name in group_names:
        rec = reconcile_group(job, group_name, by_group.get(group_name, []), node_down, old_group)
        for stop in rec.stop:
            upd = pb.Allocation(
                id=stop.alloc.id,
                desired_status=structs.ALLOC_DESIRED_STOP,
                desired_description=stop.description,
                client_status=stop.client_status,
            )
            plan.node_update[stop.alloc.node_id].allocs.append(upd)
            node = state.node(stop.alloc.node_id)
            if node is not None:
                get_usage(node).remove(stop.alloc)
        if job is None:
            continue
        group = structs.group_by_name(job, group_name)
        if group is None:
            continue
        for alloc in rec.inplace:
            updated = pb.Allocation()
            updated.CopyFrom(alloc)
            updated.job_version = job.version
            updated.eval_id = ev.id
            plan.node_allocation[alloc.node_id].allocs.append(updated)
        if not rec.place:
            continue
        if nodes_cache is None:
            nodes_cache = [n for n in state.nodes() if node_ready(n)]
            nodes_cache.sort(key=lambda n: n.id)  # shuffle from a stable order
        metric = pb.AllocMetric()
        ask = GroupAsk.of(group)
        drivers = group_drivers(group)
        feasible: list[pb.Node] = []
        for node in nodes_cache:
            reason = filter_reason(node, job, drivers)
            if reason:
                metric.nodes_filtered += 1
                metric.constraint_filtered[reason] = metric.constraint_filtered.get(reason, 0) + 1
            else:
                feasible.append(node)
        metric.nodes_evaluated = len(nodes_cache)
        limit = sample_limit(job.type, len(feasible))
        failed = 0
        for place in rec.place:
            chosen = _select(feasible, ask, limit, rng, get_usage, metric)
            if chosen is None:
                failed += 1
                continue
            alloc = _new_alloc(job, group, place.index, chosen, ask, rng, ev, new_id)
            if place.previous is not None:
                alloc.previous_allocation = place.previous.id
            chosen.add(alloc)
            plan.node_allocation[chosen.node.id].allocs.append(alloc)
            result.placed += 1
        if failed:
            metric.coalesced_failures = failed - 1
            result.failed_tg_allocs[group_name] = metric
            result.queued[group_name] = failed
    return result


def _select(
    feasible: list[pb.Node],
    ask: GroupAsk,
    limit: int,
    rng: random.Random,
    get_usage: _UsageSource,
    metric: pb.AllocMetric,
) -> NodeUsage | None:
    """Walk the feasible nodes in a random order; score the first ``limit`` that fit."""
    if not feasible:
        return None
    start = rng.randrange(len(feasible))
    best: NodeUsage | None = None
    best_score = -1.0
    seen = 0
    skipped = 0
    n = len(feasible)
    for i in range(n):
        node = feasible[(start + i) % n]
        u = get_usage(node)
        dim = u.exhausted_dimension(ask)
        if dim:
            metric.nodes_exhausted += 1
            metric.dimension_exhausted[dim] = metric.dimension_exhausted.get(dim, 0) + 1
            continue
        score = u.binpack_score(ask)
        if score <= 0 and skipped < MAX_SKIP:
            skipped += 1
            if best is None:
                best, best_score = u, score
            continue
        if score > best_score:
            best, best_score = u, score
        seen += 1
        if seen >= limit:
            break
    return best


class _UsageSource(Protocol):
    def __call__(self, node: pb.Node) -> NodeUsage: ...


def _new_alloc(
    job: pb.Job,
    group: pb.TaskGroup,
    index: int,
    usage: NodeUsage,
    ask: GroupAsk,
    rng: random.Random,
    ev: pb.Evaluation,
    new_id: _IdSource,
) -> pb.Allocation:
    alloc = pb.Allocation(
        id=new_id(),
        namespace=job.namespace,
        eval_id=ev.id,
        name=structs.alloc_name(job.id, group.name, index),
        node_id=usage.node.id,
        node_name=usage.node.name,
        job_id=job.id,
        job_version=job.version,
        task_group=group.name,
        desired_status=structs.ALLOC_DESIRED_RUN,
        client_status=structs.ALLOC_CLIENT_PENDING,
        alloc_index=index,
    )
    for task in group.tasks:
        tr = alloc.allocated_resources.tasks[task.name]
        tr.cpu.cpu_shares = task.resources.cpu
        tr.memory.memory_mb = task.resources.memory_mb
        if task.resources.memory_max_mb:
            tr.memory.memory_max_mb = task.resources.memory_max_mb
    alloc.allocated_resources.shared.ports.extend(usage.assign_ports(ask, rng))
    return alloc
