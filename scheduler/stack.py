"""The placement stack: pick a node for one allocation, the way Nomad's does.

Nomad chains iterators (feasibility checks, then rankers, then a limit and a max);
here the chain is one loop over compact per-node state, because the loop runs for
every placement and Python pays for every call and every message traversal:

- ``Placer`` (one per evaluation) holds the candidate nodes (ready, in the job's
  datacenters) in a seeded random order, each node's ``NodeUsage`` (built lazily
  from the state, then updated by the plan's own stops and placements), and the
  job's footprint per node (for ``distinct_hosts`` and job anti-affinity).
- ``GroupStack`` (one per task group) caches which nodes pass the group's static
  checks (constraints, drivers) and its affinity score per node, tracks property
  counts for ``distinct_property`` and ``spread`` (``PropertySet``, in
  ``propertyset.py``), and scores candidates: binpack (or worst fit with the
  ``spread`` algorithm), job anti-affinity, the rescheduling penalty, affinity and
  spread, averaged over the components present.

Like Nomad's LimitIterator, ``select`` stops after ``limit`` nodes that fit
(max(2, ceil(log2 n)) for services, 2 for batch, max(count, 100) with affinities or
spreads), skipping up to 3 nodes scoring <= 0 on the way, and continues from where
the previous placement stopped. A placement failure is explained by a second, full
pass (``explain``) that fills an ``AllocMetric``; the fast path records nothing.
"""

from __future__ import annotations

import heapq
import math
import random
import weakref
from collections.abc import Iterable

from corral import structs
from corral.proto import pb

from .common import SchedulerState
from .constraints import DISTINCT_PROPERTY, compile_affinity
from .feasible import (
    StaticChecker,
    datacenter_matches,
    distinct_hosts_scope,
    group_constraints,
)
from .propertyset import IMPLICIT_TARGET, PropertySet, SpreadInfo, even_spread_boost
from .rank import GroupAsk, NodeUsage

# Nomad skips up to this many nodes whose score is at or below the threshold.
MAX_SKIP = 3
# Nomad's MaxRetainedNodeScores: how many nodes' scores an allocation keeps.
MAX_SCORE_META = 5
SKIP_SCORE_THRESHOLD = 0.0
# With affinities or spreads, Nomad scores at least this many nodes.
AFFINITY_SPREAD_MIN_LIMIT = 100

FILTER_DISTINCT_HOSTS = "distinct_hosts"

ALGORITHM_BINPACK = "binpack"
ALGORITHM_SPREAD = "spread"


def _first(item: tuple[str, pb.Node]) -> str:
    return item[0]


def sample_limit(job_type: str, pool_size: int) -> int:
    """How many fitting nodes to score per placement (Nomad's LimitIterator)."""
    if job_type == structs.JOB_TYPE_BATCH:
        return 2
    return max(2, math.ceil(math.log2(pool_size))) if pool_size > 0 else 2


class Placer:
    """Per evaluation: candidate nodes, their usage, and the job's footprint."""

    def __init__(
        self,
        state: SchedulerState,
        job: pb.Job,
        job_allocs: Iterable[pb.Allocation],
        stopped: set[str],
        rng: random.Random,
        algorithm: str = ALGORITHM_BINPACK,
    ) -> None:
        self.state = state
        self.job = job
        self.rng = rng
        self.spread_fit = algorithm == ALGORITHM_SPREAD
        datacenters = list(job.datacenters) or ["*"]
        self.datacenters = datacenters
        every_dc = "*" in datacenters
        ready = structs.NODE_STATUS_READY
        ineligible = structs.NODE_INELIGIBLE
        candidates: list[tuple[str, pb.Node]] = []
        for node in state.nodes():
            # node_ready() and datacenter_matches(), inlined: this runs per node per eval.
            if node.status != ready or node.scheduling_eligibility == ineligible or node.drain:
                continue
            if every_dc or datacenter_matches(node, datacenters):
                candidates.append((node.id, node))
        candidates.sort(key=_first)  # shuffle from a stable order: reproducible
        rng.shuffle(candidates)
        self.pool: list[pb.Node] = [node for _, node in candidates]
        self.pool_ids: list[str] = [node_id for node_id, _ in candidates]
        self._pos: dict[str, int] | None = None
        self.usages: list[NodeUsage | None] = [None] * len(candidates)
        self.offset = 0
        self.stopped = stopped
        self._nodes: dict[str, pb.Node | None] = {}
        # The job's proposed allocations: live ones not stopped, plus placements.
        self.live: list[tuple[str, str, str]] = []  # (group, node ID, alloc ID)
        self.job_on_node: dict[str, int] = {}
        self.group_on_node: dict[str, dict[str, int]] = {}
        # Allocations this plan stops, by node: subtracted from the state's usage totals.
        self._stopped_on: dict[str, dict[str, pb.Allocation]] = {}
        for alloc in job_allocs:
            if alloc.id in stopped:
                self._stopped_on.setdefault(alloc.node_id, {})[alloc.id] = alloc
            if structs.is_alloc_terminal(alloc) or alloc.id in stopped:
                continue
            self.live.append((alloc.task_group, alloc.node_id, alloc.id))
            self._count(alloc.task_group, alloc.node_id, 1)
        self.placed: list[tuple[str, str]] = []  # (group, node ID)
        self.psets: list[PropertySet] = []
        self.groups: dict[str, GroupStack] = {}

    # ------------------------------------------------------------ lookups
    @property
    def pos(self) -> dict[str, int]:
        """Pool position by node ID (built on first use: most evaluations never ask)."""
        if self._pos is None:
            self._pos = {node_id: i for i, node_id in enumerate(self.pool_ids)}
        return self._pos

    @property
    def nodes_available(self) -> dict[str, int]:
        """Candidate nodes per datacenter, with 0 for a named datacenter without any
        (Nomad's ``NodesAvailable``); only failures report it."""
        out = {dc: 0 for dc in self.datacenters if not any(ch in dc for ch in "*?[")}
        for node in self.pool:
            out[node.datacenter] = out.get(node.datacenter, 0) + 1
        return out

    def node(self, node_id: str) -> pb.Node | None:
        if node_id in self._nodes:
            return self._nodes[node_id]
        node = self._nodes[node_id] = self.state.node(node_id)
        return node

    def usage_at(self, i: int) -> NodeUsage:
        u = self.usages[i]
        if u is None:
            node = self.pool[i]
            totals = getattr(self.state, "node_usage", None)
            if totals is not None:
                stopped = self._stopped_on.get(node.id, {}).values()
                u = NodeUsage.from_totals(node, totals(node.id), stopped)
            else:
                u = NodeUsage.of(node, self.state.allocs_by_node(node.id), self.stopped)
            self.usages[i] = u
        return u

    def group(self, job: pb.Job, group: pb.TaskGroup) -> GroupStack:
        gs = self.groups.get(group.name)
        if gs is None:
            gs = self.groups[group.name] = GroupStack(self, job, group)
        return gs

    # ------------------------------------------------------------ plan changes
    def _count(self, group: str, node_id: str, delta: int) -> None:
        self.job_on_node[node_id] = self.job_on_node.get(node_id, 0) + delta
        per = self.group_on_node.setdefault(group, {})
        per[node_id] = per.get(node_id, 0) + delta

    def stop(self, alloc: pb.Allocation) -> None:
        """The plan stops ``alloc``: free its resources and its footprint."""
        if alloc.id in self.stopped:
            return
        self.stopped.add(alloc.id)
        self._stopped_on.setdefault(alloc.node_id, {})[alloc.id] = alloc
        if structs.is_alloc_terminal(alloc):
            return
        i = self.pos.get(alloc.node_id)
        if i is not None:
            u = self.usages[i]
            if u is not None:
                u.remove(alloc)
        if alloc.job_id == self.job.id and alloc.namespace == self.job.namespace:
            self._count(alloc.task_group, alloc.node_id, -1)
            node = self.node(alloc.node_id)
            for ps in self.psets:
                ps.update(alloc.task_group, node, -1)

    def unstop(self, alloc: pb.Allocation) -> None:
        """Undo ``stop`` (a destructive update whose replacement found no node)."""
        if alloc.id not in self.stopped:
            return
        self.stopped.discard(alloc.id)
        self._stopped_on.get(alloc.node_id, {}).pop(alloc.id, None)
        if structs.is_alloc_terminal(alloc):
            return
        i = self.pos.get(alloc.node_id)
        if i is not None:
            u = self.usages[i]
            if u is not None:
                u.add(alloc)
        if alloc.job_id == self.job.id and alloc.namespace == self.job.namespace:
            self._count(alloc.task_group, alloc.node_id, 1)
            node = self.node(alloc.node_id)
            for ps in self.psets:
                ps.update(alloc.task_group, node, 1)

    def new_pset(self, attribute: str, group: str, targets: frozenset[str]) -> PropertySet:
        """A property set filled from the job's proposed allocations, kept current."""
        ps = PropertySet(attribute, group, targets)
        stopped = self.stopped
        for g, node_id, alloc_id in self.live:
            if alloc_id not in stopped:
                ps.update(g, self.node(node_id), 1)
        for g, node_id in self.placed:
            ps.update(g, self.node(node_id), 1)
        self.psets.append(ps)
        return ps


class GroupStack:
    """Feasibility and ranking of nodes for one task group."""

    def __init__(self, placer: Placer, job: pb.Job, group: pb.TaskGroup) -> None:
        # A weak reference: the placer holds its group stacks, and a cycle would
        # leave every evaluation's working set (thousands of NodeUsage objects)
        # to the cyclic garbage collector instead of reference counting.
        self.placer: Placer = weakref.proxy(placer)
        self.job = job
        self.name = group.name
        self.count = group.count
        self.ask = GroupAsk.of(group)
        self.static = StaticChecker(job, group)
        n = len(placer.pool)
        self.reasons: list[str | None] = [None] * n
        self.dh_job, self.dh_group = distinct_hosts_scope(job, group)
        self.group_on_node = placer.group_on_node.setdefault(group.name, {})

        # distinct_property: job-level constraints count every group's allocations.
        job_cons, tg_cons = group_constraints(job, group)
        self.props: list[tuple[PropertySet, int, str]] = []
        self.prop_error = ""
        for scope, cons in (("", job_cons), (group.name, tg_cons)):
            for c in cons:
                if c.operand != DISTINCT_PROPERTY:
                    continue
                allowed = 1
                if c.r_target:
                    try:
                        allowed = int(c.r_target)
                    except ValueError:
                        self.prop_error = f"failed to convert RTarget {c.r_target!r} to uint64"
                        continue
                ps = placer.new_pset(c.l_target, scope, frozenset())
                self.props.append((ps, allowed, c.l_target))
        self.has_dynamic = bool(self.dh_job or self.dh_group or self.props or self.prop_error)

        affinities = list(job.affinities) + list(group.affinities)
        for task in group.tasks:
            affinities.extend(task.affinities)
        self.affinities = [compile_affinity(a) for a in affinities]
        self.aff_weight = sum(abs(a.weight) for a in self.affinities)
        self.aff_scores: list[float | None] = [None] * n
        # The last select()'s best nodes, for place(): (node ID, scores, normalized).
        self.score_meta: list[tuple[str, dict[str, float], float]] = []

        self.spreads: list[SpreadInfo] = []
        for sp in list(group.spreads) + list(job.spreads):
            targets = frozenset(t.value for t in sp.spread_target)
            desired: dict[str, float] = {}
            total = 0.0
            for t in sp.spread_target:
                want = t.percent / 100.0 * group.count
                desired[t.value] = want
                total += want
            if 0 < total < group.count:
                desired[IMPLICIT_TARGET] = group.count - total
            ps = placer.new_pset(sp.attribute, group.name, targets)
            self.spreads.append(SpreadInfo(ps, sp.weight, desired))
        self.spread_weight = sum(s.weight for s in self.spreads)
        self.lowest_boost = -1.0

        limit = sample_limit(job.type, n)
        if self.affinities or self.spreads:
            limit = max(group.count, AFFINITY_SPREAD_MIN_LIMIT)
        self.limit = limit
        self._template = _template(job, group)
        self._name_prefix = f"{job.id}.{group.name}["
        self._port_labels = [(label, to) for label, _, to in self.ask.static_ports]
        self._port_labels.extend(self.ask.dynamic_ports)

    # ------------------------------------------------------------ checks
    def static_reason(self, i: int) -> str:
        r = self.reasons[i]
        if r is None:
            r = self.reasons[i] = self.static.reason(self.placer.pool[i])
        return r

    def dynamic_reason(self, node: pb.Node) -> str:
        """``distinct_hosts`` and ``distinct_property``, given the plan so far."""
        node_id = node.id
        if self.dh_job and self.placer.job_on_node.get(node_id, 0) > 0:
            return FILTER_DISTINCT_HOSTS
        if self.dh_group and self.group_on_node.get(node_id, 0) > 0:
            return FILTER_DISTINCT_HOSTS
        if self.prop_error:
            return self.prop_error
        for ps, allowed, attribute in self.props:
            value, found = ps.value_of(node)
            if not found:
                return f'missing property "{attribute}"'
            used = ps.counts.get(value, 0)
            if used >= allowed:
                return f"{DISTINCT_PROPERTY}: {attribute}={value} used by {used} allocs"
        return ""

    # ------------------------------------------------------------ scores
    def affinity_score(self, i: int) -> float:
        """Sum of matching affinity weights over the sum of their absolute values."""
        a = self.aff_scores[i]
        if a is None:
            node = self.placer.pool[i]
            total = sum(aff.weight for aff in self.affinities if aff.test(node))
            a = self.aff_scores[i] = total / self.aff_weight if self.aff_weight else 0.0
        return a

    def spread_score(self, node: pb.Node) -> float:
        """Nomad's spread boost: positive where the node's attribute value holds fewer
        allocations than its target share, negative where it holds more."""
        total = 0.0
        for sp in self.spreads:
            value, found = sp.pset.value_of(node)
            if not found:
                total -= 1.0
                continue
            if not sp.desired:
                total += even_spread_boost(sp.pset, value)
                continue
            desired = sp.desired.get(value)
            if desired is None:
                desired = sp.desired.get(IMPLICIT_TARGET)
                if desired is None:
                    total -= 1.0
                    continue
            if desired == 0:
                total += self.lowest_boost
                continue
            used = sp.pset.counts.get(value, 0) + 1
            weight = sp.weight / self.spread_weight if self.spread_weight else 0.0
            boost = (desired - used) / desired * weight
            total += boost
            if boost < self.lowest_boost:
                self.lowest_boost = boost
        return total

    # ------------------------------------------------------------ selection
    def select(self, penalty: frozenset[str] = frozenset()) -> int | None:
        """The pool index of the best of the first ``limit`` fitting nodes, or None
        when no node can take the allocation."""
        placer = self.placer
        pool = placer.pool
        n = len(pool)
        if n == 0:
            return None
        usages = placer.usages
        reasons = self.reasons
        static_reason = self.static.reason
        ask = self.ask
        cpu = ask.cpu
        mem = ask.memory_mb
        static_ports = [value for _, value, _ in ask.static_ports]
        dyn_need = len(ask.dynamic_ports)
        dynamic = self.has_dynamic
        per_node = self.group_on_node
        desired = float(self.count or 1)
        spread_fit = placer.spread_fit
        affinities = bool(self.affinities)
        spreads = bool(self.spreads)
        limit = self.limit
        offset = placer.offset
        seen = 0
        skipped: list[tuple[float, int]] = []
        best: int | None = None
        best_score = -math.inf
        # Nomad's AllocMetric.ScoreMetaData (the top 5 nodes with each scorer's
        # part), kept where the ranking has something to explain: groups with
        # affinities or spreads. Plain binpack skips it (the C1M hot loop).
        record = affinities or spreads
        top: list[tuple[float, int, int, dict[str, float]]] = []
        for _ in range(n):
            i = offset
            offset += 1
            if offset == n:
                offset = 0
            r = reasons[i]
            if r is None:
                r = reasons[i] = static_reason(pool[i])
            if r:
                continue
            u = usages[i]
            if u is None:
                u = placer.usage_at(i)
            ct = u.cpu_total
            mt = u.mem_total
            cu = u.cpu_used + cpu
            mu = u.mem_used + mem
            if cu > ct or mu > mt:
                continue
            if dyn_need and u.dyn_hi - u.dyn_lo + 1 - u.dyn_used < dyn_need:
                continue
            if static_ports:
                used = u.ports_used
                if any(value in used for value in static_ports):
                    continue
            if dynamic and self.dynamic_reason(pool[i]):
                continue
            # Binpack (or worst fit) normalized to [0, 1].
            if ct > 0 and mt > 0:
                fit = 10.0 ** (1.0 - cu / ct) + 10.0 ** (1.0 - mu / mt)
                fit = fit - 2.0 if spread_fit else 20.0 - fit
                fit = 0.0 if fit < 0.0 else (1.0 if fit > 18.0 else fit / 18.0)
            else:
                fit = 0.0
            score = fit
            parts = 1
            node_id = u.node_id
            collisions = per_node.get(node_id)
            if collisions:
                score -= (collisions + 1) / desired
                parts += 1
            if penalty and node_id in penalty:
                score -= 1.0
                parts += 1
            a = s = 0.0
            if affinities:
                # Counted even when 0, as Nomad's NodeAffinityIterator does.
                a = self.affinity_score(i)
                score += a
                parts += 1
            if spreads:
                s = self.spread_score(pool[i])
                if s:
                    score += s
                    parts += 1
            if parts > 1:
                score /= parts
            if record:
                reschedule = bool(penalty) and node_id in penalty
                self._record(top, i, score, fit, collisions, reschedule, desired, a, s)
            if score <= SKIP_SCORE_THRESHOLD and len(skipped) < MAX_SKIP:
                skipped.append((score, i))
                continue
            seen += 1
            if score > best_score:
                best_score = score
                best = i
            if seen >= limit:
                break
        placer.offset = offset
        if seen < limit:
            for score, i in skipped[: limit - seen]:
                if score > best_score:
                    best_score = score
                    best = i
        if record:
            self.score_meta = [
                (pool[i].id, scores, norm) for norm, _, i, scores in sorted(top, reverse=True)
            ]
        return best

    def _record(
        self,
        top: list[tuple[float, int, int, dict[str, float]]],
        i: int,
        score: float,
        fit: float,
        collisions: int | None,
        reschedule: bool,
        desired: float,
        affinity: float,
        spread: float,
    ) -> None:
        """Keep node ``i``'s scores (the parts ``select`` just computed) if it is among
        the best ``MAX_SCORE_META`` so far."""
        scores = {"binpack": fit}
        if collisions:
            scores["job-anti-affinity"] = -(collisions + 1) / desired
        if reschedule:
            scores["node-reschedule-penalty"] = -1.0
        if self.affinities:
            scores["node-affinity"] = affinity
        if spread:
            scores["allocation-spread"] = spread
        item = (score, -i, i, scores)
        if len(top) < MAX_SCORE_META:
            heapq.heappush(top, item)
        elif item > top[0]:
            heapq.heapreplace(top, item)

    def fit_reason(self, i: int) -> tuple[str, str]:
        """Why pool node ``i`` cannot take an allocation now: (filter reason,
        exhausted dimension), both "" when it can."""
        r = self.static_reason(i)
        if r:
            return r, ""
        node = self.placer.pool[i]
        if self.has_dynamic:
            r = self.dynamic_reason(node)
            if r:
                return r, ""
        return "", self.placer.usage_at(i).exhausted_dimension(self.ask)

    def explain(self, metric: pb.AllocMetric | None = None) -> pb.AllocMetric:
        """Evaluate every candidate node and say why none fits (Nomad's AllocMetric)."""
        m = metric if metric is not None else pb.AllocMetric()
        for i in range(len(self.placer.pool)):
            self.explain_node(m, i)
        self.finish_metric(m)
        return m

    def explain_node(self, m: pb.AllocMetric, i: int) -> bool:
        """Record node ``i`` in ``m``; True when it could take the allocation."""
        node = self.placer.pool[i]
        m.nodes_evaluated += 1
        reason, dim = self.fit_reason(i)
        if reason:
            m.nodes_filtered += 1
            m.constraint_filtered[reason] = m.constraint_filtered.get(reason, 0) + 1
            if node.node_class:
                cls = node.node_class
                m.class_filtered[cls] = m.class_filtered.get(cls, 0) + 1
            return False
        if dim:
            m.nodes_exhausted += 1
            m.dimension_exhausted[dim] = m.dimension_exhausted.get(dim, 0) + 1
            if node.node_class:
                cls = node.node_class
                m.class_exhausted[cls] = m.class_exhausted.get(cls, 0) + 1
            return False
        return True

    def finish_metric(self, m: pb.AllocMetric) -> None:
        m.nodes_in_pool = len(self.placer.pool)
        m.nodes_available.update(self.placer.nodes_available)

    # ------------------------------------------------------------ placing
    def place(self, i: int, index: int, alloc_id: str, eval_id: str, alloc: pb.Allocation) -> None:
        """Fill ``alloc`` (empty, usually already in the plan) as the group's
        allocation ``index`` on pool node ``i``, and account for it."""
        placer = self.placer
        u = placer.usage_at(i)
        node = u.node
        ask = self.ask
        template = self._template
        if template.eval_id != eval_id:
            template.eval_id = eval_id
        alloc.CopyFrom(template)
        node_id = u.node_id
        alloc.id = alloc_id
        alloc.name = f"{self._name_prefix}{index}]"
        alloc.node_id = node_id
        alloc.node_name = node.name
        alloc.alloc_index = index
        labels = self._port_labels
        if labels:
            values = u.pick_ports(ask, placer.rng)
            ip = u.host_ip
            ports = alloc.allocated_resources.shared.ports
            for (label, to), value in zip(labels, values, strict=True):
                ports.add(label=label, value=value, to=to, host_ip=ip)
            u.add_ask(ask, values)
        else:
            u.cpu_used += ask.cpu
            u.mem_used += ask.memory_mb
        job_on_node = placer.job_on_node
        job_on_node[node_id] = job_on_node.get(node_id, 0) + 1
        per_node = self.group_on_node
        per_node[node_id] = per_node.get(node_id, 0) + 1
        placer.placed.append((self.name, node_id))
        for ps in placer.psets:
            ps.update(self.name, node, 1)
        if self.score_meta:
            metas = alloc.metrics.score_meta_data
            for meta_node, scores, norm in self.score_meta:
                metas.add(node_id=meta_node, scores=scores, norm_score=norm)


def _template(job: pb.Job, group: pb.TaskGroup) -> pb.Allocation:
    """What every new allocation of the group shares; copied per placement."""
    alloc = pb.Allocation(
        namespace=job.namespace,
        job_id=job.id,
        job_version=job.version,
        task_group=group.name,
        desired_status=structs.ALLOC_DESIRED_RUN,
        client_status=structs.ALLOC_CLIENT_PENDING,
    )
    for task in group.tasks:
        tr = alloc.allocated_resources.tasks[task.name]
        tr.cpu.cpu_shares = task.resources.cpu
        tr.memory.memory_mb = task.resources.memory_mb
        if task.resources.memory_max_mb:
            tr.memory.memory_max_mb = task.resources.memory_max_mb
    return alloc
