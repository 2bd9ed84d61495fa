"""The state store: in-memory tables with indexes, written only by the FSM.

Every table is a persistent (immutable) hash map, ``immutables.Map``, a HAMT as
CPython's contextvars use: a write returns a new map that shares all but a few
nodes with the old one. So:

* ``snapshot()`` is O(1) whatever the size of the state: it keeps a reference to
  the current maps. A scheduler worker takes one per evaluation and the plan
  applier one per plan; copying dicts instead cost O(allocations) each time, which
  bounded placements/s as the cluster filled up (C1M shape).
* A command writes into a private working copy of the tables and publishes it in
  one reference swap when it completes: readers never see half a command.
* Stored messages are never mutated after insertion: a writer builds a new message
  (``CopyFrom`` of the old one) and replaces the entry. Secondary indexes
  (allocations by node, by job...) map to persistent sets of IDs (``IdSet``).

Every write carries the state index (one per applied command); readers can block
until an index passes (``wait_for_index``), which gives Nomad's blocking queries.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TypeVar

from immutables import Map, MapMutation

from corral import structs
from corral.proto import pb
from corral.scheduler.rank import footprint

JobKey = tuple[str, str]  # (namespace, job id)

_K = TypeVar("_K", str, tuple[str, str])
_NO_USAGE: tuple[int, int, frozenset[int]] = (0, 0, frozenset())

IdSet = Map[str, bool]  # a persistent set of IDs
_NO_IDS: IdSet = Map()

TABLES = ("jobs", "nodes", "allocs", "evals", "deployments", "services", "servers")


@dataclass
class Tables:
    """The raw tables: persistent maps, shared by the live store and its snapshots."""

    index: int = 0
    table_index: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    jobs: Map[JobKey, pb.Job] = field(default_factory=Map)
    # Every tracked version of a job, oldest first (the newest is jobs[key]).
    job_versions: Map[JobKey, tuple[pb.Job, ...]] = field(default_factory=Map)
    nodes: Map[str, pb.Node] = field(default_factory=Map)
    allocs: Map[str, pb.Allocation] = field(default_factory=Map)
    # Indexes: persistent sets of IDs (maps to True), so adding one ID is O(log n)
    # whatever the node or job holds. Frozensets cost a copy of the whole set per
    # write: ~10 ms per 1,000-placement plan at 300,000 allocations, every server.
    allocs_by_node: Map[str, IdSet] = field(default_factory=Map)
    allocs_by_job: Map[JobKey, IdSet] = field(default_factory=Map)
    evals: Map[str, pb.Evaluation] = field(default_factory=Map)
    evals_by_job: Map[JobKey, IdSet] = field(default_factory=Map)
    deployments: Map[str, pb.Deployment] = field(default_factory=Map)
    services: Map[str, pb.ServiceRegistration] = field(default_factory=Map)
    services_by_name: Map[tuple[str, str], IdSet] = field(default_factory=Map)
    # Server agents by raft address: how to reach each one's gRPC and HTTP.
    servers: Map[str, pb.ServerMember] = field(default_factory=Map)
    # What the live allocations of each node use: (cpu MHz, memory MB, host ports).
    # Maintained on every allocation write, so that the scheduler and the plan
    # applier read a node's usage in O(1) instead of summing its allocations.
    node_usage: Map[str, tuple[int, int, frozenset[int]]] = field(default_factory=Map)

    def copy(self) -> Tables:
        """O(1): the maps are immutable, only the small index dict is copied."""
        return replace(self, table_index=dict(self.table_index))


class StateReader:
    """Read methods shared by the live store and snapshots."""

    _t: Tables

    @property
    def index(self) -> int:
        return self._t.index

    def table_index(self, *tables: str) -> int:
        index = self._t.table_index
        return max(index[t] for t in tables)

    # jobs
    def job(self, namespace: str, job_id: str) -> pb.Job | None:
        return self._t.jobs.get((namespace, job_id))

    def jobs(self) -> list[pb.Job]:
        return list(self._t.jobs.values())

    def job_versions(self, namespace: str, job_id: str) -> list[pb.Job]:
        """Newest first, as Nomad lists them."""
        return list(reversed(self._t.job_versions.get((namespace, job_id), ())))

    def job_version(self, namespace: str, job_id: str, version: int) -> pb.Job | None:
        for job in self._t.job_versions.get((namespace, job_id), ()):
            if job.version == version:
                return job
        return None

    # nodes
    def node(self, node_id: str) -> pb.Node | None:
        return self._t.nodes.get(node_id)

    def nodes(self) -> list[pb.Node]:
        return list(self._t.nodes.values())

    # allocations
    def alloc(self, alloc_id: str) -> pb.Allocation | None:
        return self._t.allocs.get(alloc_id)

    def allocs(self) -> list[pb.Allocation]:
        return list(self._t.allocs.values())

    # Each reader binds the tables once: the live store may publish newer tables
    # between two attribute reads, and an index of one version must be resolved
    # against the same version.
    def allocs_by_node(self, node_id: str) -> list[pb.Allocation]:
        t = self._t
        return [t.allocs[a] for a in t.allocs_by_node.get(node_id, ())]

    def allocs_by_job(self, namespace: str, job_id: str) -> list[pb.Allocation]:
        t = self._t
        return [t.allocs[a] for a in t.allocs_by_job.get((namespace, job_id), ())]

    # evaluations
    def eval(self, eval_id: str) -> pb.Evaluation | None:
        return self._t.evals.get(eval_id)

    def evals(self) -> list[pb.Evaluation]:
        return list(self._t.evals.values())

    def evals_by_job(self, namespace: str, job_id: str) -> list[pb.Evaluation]:
        t = self._t
        return [t.evals[e] for e in t.evals_by_job.get((namespace, job_id), ())]

    # deployments
    def deployment(self, deployment_id: str) -> pb.Deployment | None:
        return self._t.deployments.get(deployment_id)

    def deployments(self) -> list[pb.Deployment]:
        return list(self._t.deployments.values())

    # services
    def services(self) -> list[pb.ServiceRegistration]:
        return list(self._t.services.values())

    def services_by_name(self, namespace: str, name: str) -> list[pb.ServiceRegistration]:
        t = self._t
        return [t.services[s] for s in t.services_by_name.get((namespace, name), ())]

    def servers(self) -> list[pb.ServerMember]:
        return list(self._t.servers.values())

    def node_usage(self, node_id: str) -> tuple[int, int, frozenset[int]]:
        """(cpu MHz, memory MB, host ports) used by the node's live allocations."""
        return self._t.node_usage.get(node_id, _NO_USAGE)

    def server(self, raft_address: str) -> pb.ServerMember | None:
        return self._t.servers.get(raft_address)

    def find_by_prefix(self, table: str, prefix: str) -> list[str]:
        """IDs of ``table`` (allocs, nodes, evals, deployments) starting with prefix."""
        rows = getattr(self._t, table)
        if prefix in rows:
            return [prefix]
        return sorted(k for k in rows if k.startswith(prefix))


class StateSnapshot(StateReader):
    """A consistent, read-only view at one index (what a scheduler works on)."""

    def __init__(self, tables: Tables) -> None:
        self._t = tables


class StateStore(StateReader):
    """The live store. Only the FSM calls the ``put_*``/``delete_*`` methods, always
    inside ``write()``, so a command's changes appear to readers at once."""

    CHANGE_LOG = 50_000

    def __init__(self) -> None:
        self._t = Tables()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        # (index, changed allocation IDs) per write, newest last: lets watchers of
        # many nodes find what changed without scanning every allocation. Local and
        # derived (not in snapshots); a watcher that falls behind rescans.
        self.alloc_changes: deque[tuple[int, frozenset[str]]] = deque()
        self._change_floor = 0  # changes at or below this index are forgotten
        # Footprint of each stored live allocation, keyed by ID, with the create
        # index it was read at. An allocation's resources never change under its ID
        # (in-place updates keep them), so every client update of an allocation
        # subtracts and adds the remembered sums instead of re-reading protobuf
        # maps. Per store, never process-wide: another store (a test harness, a
        # restored snapshot) may reuse an ID with other resources.
        self.footprints: dict[str, tuple[int, tuple[int, int, tuple[int, ...]]]] = {}

    def _log_alloc_change(self, index: int, ids: frozenset[str]) -> None:
        if len(self.alloc_changes) >= self.CHANGE_LOG:
            self._change_floor = self.alloc_changes.popleft()[0]
        self.alloc_changes.append((index, ids))

    def allocs_changed_since(self, index: int) -> set[str] | None:
        """IDs of allocations written after ``index``, or None when the log no
        longer reaches back that far (the caller must rescan)."""
        with self._lock:
            log = self.alloc_changes
            if index < self._change_floor:
                return None
            out: set[str] = set()
            for idx, ids in reversed(log):
                if idx <= index:
                    break
                out |= ids
            return out

    # ------------------------------------------------------------ reading
    def snapshot(self) -> StateSnapshot:
        """O(1): published tables are never written again (see ``_WriteTxn``)."""
        return StateSnapshot(self._t)

    def wait_for_index(
        self,
        min_index: int,
        timeout: float,
        *tables: str,
        cancel: threading.Event | None = None,
    ) -> int:
        """Block until the index of ``tables`` (all if none) exceeds ``min_index``,
        ``timeout`` seconds pass, or ``cancel`` is set (with a ``wake()``); return the
        current index of those tables."""
        names = tables or TABLES
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                current = max(self._t.table_index[t] for t in names)
                if current > min_index or (cancel is not None and cancel.is_set()):
                    return current
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return current
                self._changed.wait(remaining)

    def wake(self) -> None:
        """Wake every blocked ``wait_for_index`` to look at its ``cancel`` event (a
        leadership term ending wakes its loops this way)."""
        with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------ writing
    def write(self) -> _WriteTxn:
        return _WriteTxn(self)

    def replace_tables(self, tables: Tables) -> None:
        """Install restored tables (snapshot restore)."""
        with self._changed:
            self._t = tables
            self.footprints.clear()  # keyed by the old tables' allocations
            self.alloc_changes.clear()
            self._change_floor = tables.index
            self._changed.notify_all()

    @property
    def tables(self) -> Tables:
        return self._t


class _WriteTxn:
    """Applies one command's changes to a working copy of the tables, under the
    store lock, and publishes it stamped with the new index when the command
    completes (a command that raises publishes nothing)."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._touched: set[str] = set()
        self._allocs: set[str] = set()
        self.index = 0
        self.t = store._t  # replaced by a working copy on entry

    def __enter__(self) -> _WriteTxn:
        self._store._lock.acquire()
        self.t = self._store._t.copy()
        self.index = self.t.index + 1
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        store = self._store
        try:
            if exc_type is not None:
                return
            t = self.t
            t.index = self.index
            for name in self._touched:
                t.table_index[name] = self.index
            store._t = t  # one reference swap: readers see all of the command or none
            if self._allocs:
                store._log_alloc_change(self.index, frozenset(self._allocs))
            store._changed.notify_all()
        finally:
            store._lock.release()

    def touch(self, table: str) -> None:
        self._touched.add(table)

    # jobs --------------------------------------------------------------
    def put_job(self, job: pb.Job, max_versions: int) -> None:
        key = (job.namespace, job.id)
        t = self.t
        t.jobs = t.jobs.set(key, job)
        versions = [v for v in t.job_versions.get(key, ()) if v.version != job.version]
        versions.append(job)
        t.job_versions = t.job_versions.set(key, tuple(versions[-max_versions:]))
        self.touch("jobs")

    def restore_jobs(self, jobs: Iterable[pb.Job], versions: Iterable[pb.Job]) -> None:
        """Install jobs and their tracked versions as a snapshot holds them."""
        by_key: dict[JobKey, list[pb.Job]] = {}
        for job in list(versions) + list(jobs):
            by_key.setdefault((job.namespace, job.id), []).append(job)
        t = self.t
        t.job_versions = t.job_versions.update(
            {key: tuple(sorted(js, key=lambda j: j.version)) for key, js in by_key.items()}
        )
        t.jobs = t.jobs.update({(job.namespace, job.id): job for job in jobs})
        self.touch("jobs")

    def replace_job_version(self, job: pb.Job) -> None:
        """Update a stored version in place (e.g. Stable flag) without a new version."""
        key = (job.namespace, job.id)
        t = self.t
        versions = tuple(
            job if v.version == job.version else v for v in t.job_versions.get(key, ())
        )
        t.job_versions = t.job_versions.set(key, versions)
        current = t.jobs.get(key)
        if current is not None and current.version == job.version:
            t.jobs = t.jobs.set(key, job)
        self.touch("jobs")

    def delete_job(self, namespace: str, job_id: str) -> None:
        key = (namespace, job_id)
        self.t.jobs = _without(self.t.jobs, key)
        self.t.job_versions = _without(self.t.job_versions, key)
        self.touch("jobs")

    # nodes -------------------------------------------------------------
    def put_node(self, node: pb.Node) -> None:
        self.t.nodes = self.t.nodes.set(node.id, node)
        self.touch("nodes")

    # allocations -------------------------------------------------------
    def _footprint(self, alloc: pb.Allocation) -> tuple[int, int, tuple[int, ...]]:
        memo = self._store.footprints
        hit = memo.get(alloc.id)
        if hit is not None and hit[0] == alloc.create_index:
            return hit[1]
        fp = footprint(alloc)
        memo[alloc.id] = (alloc.create_index, fp)
        return fp

    def _account(
        self,
        usage: dict[str, tuple[int, int, frozenset[int]]],
        old: pb.Allocation | None,
        new: pb.Allocation | None,
    ) -> None:
        """Move an allocation's footprint in or out of its node's usage totals
        (``usage`` holds the totals changed so far by this write)."""
        for alloc, sign in ((old, -1), (new, 1)):
            if alloc is None or not structs.holds_resources(alloc):
                continue
            cpu, mem, ports = self._footprint(alloc)
            node_id = alloc.node_id
            current = usage.get(node_id)
            if current is None:
                current = self.t.node_usage.get(node_id) or _NO_USAGE
            c, m, p = current
            if ports:
                p = p | frozenset(ports) if sign > 0 else p - frozenset(ports)
            usage[node_id] = (c + sign * cpu, m + sign * mem, p)
        if old is not None and (new is None or not structs.holds_resources(new)):
            self._store.footprints.pop(old.id, None)  # no longer counted anywhere

    def put_alloc(self, alloc: pb.Allocation) -> None:
        self.put_allocs((alloc,))

    def put_allocs(self, allocs: Iterable[pb.Allocation]) -> None:
        """Batch insert: each index set is rebuilt once per key, not once per alloc."""
        t = self.t
        by_node: dict[str, set[str]] = {}
        by_job: dict[JobKey, set[str]] = {}
        removed_node: dict[str, set[str]] = {}
        usage: dict[str, tuple[int, int, frozenset[int]]] = {}
        with t.allocs.mutate() as table:
            for alloc in allocs:
                self._allocs.add(alloc.id)
                old = table.get(alloc.id)
                self._account(usage, old, alloc)
                table[alloc.id] = alloc
                if old is None or old.node_id != alloc.node_id:
                    if old is not None:
                        removed_node.setdefault(old.node_id, set()).add(alloc.id)
                    by_node.setdefault(alloc.node_id, set()).add(alloc.id)
                if old is None:
                    by_job.setdefault((alloc.namespace, alloc.job_id), set()).add(alloc.id)
            t.allocs = table.finish()
        if usage:
            t.node_usage = t.node_usage.update(usage)
        if removed_node or by_node:
            with t.allocs_by_node.mutate() as index:
                for node_id, ids in removed_node.items():
                    _id_set_update(index, node_id, remove=ids)
                for node_id, ids in by_node.items():
                    _id_set_update(index, node_id, add=ids)
                t.allocs_by_node = index.finish()
        if by_job:
            with t.allocs_by_job.mutate() as jindex:
                for key, ids in by_job.items():
                    _id_set_update(jindex, key, add=ids)
                t.allocs_by_job = jindex.finish()
        self.touch("allocs")

    def delete_allocs(self, alloc_ids: Iterable[str]) -> None:
        t = self.t
        usage: dict[str, tuple[int, int, frozenset[int]]] = {}
        for alloc_id in alloc_ids:
            old = t.allocs.get(alloc_id)
            if old is None:
                continue
            t.allocs = t.allocs.delete(alloc_id)
            self._account(usage, old, None)
            t.allocs_by_node = _id_set_remove(t.allocs_by_node, old.node_id, alloc_id)
            t.allocs_by_job = _id_set_remove(t.allocs_by_job, (old.namespace, old.job_id), alloc_id)
        if usage:
            t.node_usage = t.node_usage.update(usage)
        self.touch("allocs")

    # evaluations -------------------------------------------------------
    def put_eval(self, ev: pb.Evaluation) -> None:
        t = self.t
        if ev.id not in t.evals:
            t.evals_by_job = _id_set_add(t.evals_by_job, (ev.namespace, ev.job_id), ev.id)
        t.evals = t.evals.set(ev.id, ev)
        self.touch("evals")

    def delete_evals(self, eval_ids: Iterable[str]) -> None:
        t = self.t
        for eval_id in eval_ids:
            old = t.evals.get(eval_id)
            if old is not None:
                t.evals = t.evals.delete(eval_id)
                t.evals_by_job = _id_set_remove(
                    t.evals_by_job, (old.namespace, old.job_id), eval_id
                )
        self.touch("evals")

    # deployments -------------------------------------------------------
    def put_deployment(self, d: pb.Deployment) -> None:
        self.t.deployments = self.t.deployments.set(d.id, d)
        self.touch("deployments")

    def delete_deployments(self, ids: Iterable[str]) -> None:
        for d in ids:
            self.t.deployments = _without(self.t.deployments, d)
        self.touch("deployments")

    # services ----------------------------------------------------------
    def put_service(self, s: pb.ServiceRegistration) -> None:
        t = self.t
        if s.id not in t.services:
            t.services_by_name = _id_set_add(
                t.services_by_name, (s.namespace, s.service_name), s.id
            )
        t.services = t.services.set(s.id, s)
        self.touch("services")

    def delete_services(self, ids: Iterable[str]) -> None:
        t = self.t
        for sid in ids:
            old = t.services.get(sid)
            if old is not None:
                t.services = t.services.delete(sid)
                t.services_by_name = _id_set_remove(
                    t.services_by_name, (old.namespace, old.service_name), sid
                )
        self.touch("services")

    # servers -----------------------------------------------------------
    def put_server(self, member: pb.ServerMember) -> None:
        self.t.servers = self.t.servers.set(member.raft_address, member)
        self.touch("servers")

    def delete_server(self, raft_address: str) -> None:
        self.t.servers = _without(self.t.servers, raft_address)
        self.touch("servers")


_KT = TypeVar("_KT")
_VT = TypeVar("_VT")


def _without(table: Map[_KT, _VT], key: _KT) -> Map[_KT, _VT]:
    return table.delete(key) if key in table else table


def _id_set_update(
    index: MapMutation[_K, IdSet],
    key: _K,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
) -> None:
    """Add and remove IDs in the persistent set ``index[key]`` (dropped when empty)."""
    with index.get(key, _NO_IDS).mutate() as ids:
        for i in remove:
            ids.pop(i, None)
        for i in add:
            ids[i] = True
        result = ids.finish()
    if result:
        index[key] = result
    else:
        index.pop(key, None)


def _id_set_add(index: Map[_K, IdSet], key: _K, value: str) -> Map[_K, IdSet]:
    return index.set(key, index.get(key, _NO_IDS).set(value, True))


def _id_set_remove(index: Map[_K, IdSet], key: _K, value: str) -> Map[_K, IdSet]:
    current = index.get(key)
    if current is None or value not in current:
        return index
    rest = current.delete(value)
    return index.set(key, rest) if rest else index.delete(key)
