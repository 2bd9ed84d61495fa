"""The state store: in-memory tables with indexes, written only by the FSM.

Rules that keep readers safe without copying the world:

* Stored messages are never mutated after insertion. A writer builds a new message
  (``CopyFrom`` of the old one) and replaces the entry.
* Secondary indexes (allocations by node, by job...) map to ``frozenset``s that a
  writer replaces rather than mutates.
* ``snapshot()`` copies only the top-level dicts under the lock. The copy shares
  every message and index set with the live store, which is safe by the two rules
  above, and costs one dict copy per table.

Every write carries the state index (one per applied command); readers can block
until an index passes (``wait_for_index``), which gives Nomad's blocking queries.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from corral import structs
from corral.proto import pb
from corral.scheduler.rank import footprint

JobKey = tuple[str, str]  # (namespace, job id)

_K = TypeVar("_K", str, tuple[str, str])
_NO_USAGE: tuple[int, int, frozenset[int]] = (0, 0, frozenset())

TABLES = ("jobs", "nodes", "allocs", "evals", "deployments", "services", "servers")


@dataclass
class Tables:
    """The raw tables. Shared by the live store and its snapshots."""

    index: int = 0
    table_index: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    jobs: dict[JobKey, pb.Job] = field(default_factory=dict)
    # Every tracked version of a job, oldest first (the newest is jobs[key]).
    job_versions: dict[JobKey, tuple[pb.Job, ...]] = field(default_factory=dict)
    nodes: dict[str, pb.Node] = field(default_factory=dict)
    allocs: dict[str, pb.Allocation] = field(default_factory=dict)
    allocs_by_node: dict[str, frozenset[str]] = field(default_factory=dict)
    allocs_by_job: dict[JobKey, frozenset[str]] = field(default_factory=dict)
    evals: dict[str, pb.Evaluation] = field(default_factory=dict)
    evals_by_job: dict[JobKey, frozenset[str]] = field(default_factory=dict)
    deployments: dict[str, pb.Deployment] = field(default_factory=dict)
    services: dict[str, pb.ServiceRegistration] = field(default_factory=dict)
    services_by_name: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    # Server agents by raft address: how to reach each one's gRPC and HTTP.
    servers: dict[str, pb.ServerMember] = field(default_factory=dict)
    # What the live allocations of each node use: (cpu MHz, memory MB, host ports).
    # Maintained on every allocation write, so that the scheduler and the plan
    # applier read a node's usage in O(1) instead of summing its allocations.
    node_usage: dict[str, tuple[int, int, frozenset[int]]] = field(default_factory=dict)

    def copy(self) -> Tables:
        return Tables(
            index=self.index,
            table_index=dict(self.table_index),
            jobs=dict(self.jobs),
            job_versions=dict(self.job_versions),
            nodes=dict(self.nodes),
            allocs=dict(self.allocs),
            allocs_by_node=dict(self.allocs_by_node),
            allocs_by_job=dict(self.allocs_by_job),
            evals=dict(self.evals),
            evals_by_job=dict(self.evals_by_job),
            deployments=dict(self.deployments),
            services=dict(self.services),
            services_by_name=dict(self.services_by_name),
            servers=dict(self.servers),
            node_usage=dict(self.node_usage),
        )


class StateReader:
    """Read methods shared by the live store and snapshots."""

    _t: Tables

    @property
    def index(self) -> int:
        return self._t.index

    def table_index(self, *tables: str) -> int:
        return max(self._t.table_index[t] for t in tables)

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

    def allocs_by_node(self, node_id: str) -> list[pb.Allocation]:
        allocs = self._t.allocs
        return [allocs[a] for a in self._t.allocs_by_node.get(node_id, ())]

    def allocs_by_job(self, namespace: str, job_id: str) -> list[pb.Allocation]:
        allocs = self._t.allocs
        return [allocs[a] for a in self._t.allocs_by_job.get((namespace, job_id), ())]

    # evaluations
    def eval(self, eval_id: str) -> pb.Evaluation | None:
        return self._t.evals.get(eval_id)

    def evals(self) -> list[pb.Evaluation]:
        return list(self._t.evals.values())

    def evals_by_job(self, namespace: str, job_id: str) -> list[pb.Evaluation]:
        evals = self._t.evals
        return [evals[e] for e in self._t.evals_by_job.get((namespace, job_id), ())]

    # deployments
    def deployment(self, deployment_id: str) -> pb.Deployment | None:
        return self._t.deployments.get(deployment_id)

    def deployments(self) -> list[pb.Deployment]:
        return list(self._t.deployments.values())

    # services
    def services(self) -> list[pb.ServiceRegistration]:
        return list(self._t.services.values())

    def services_by_name(self, namespace: str, name: str) -> list[pb.ServiceRegistration]:
        services = self._t.services
        return [services[s] for s in self._t.services_by_name.get((namespace, name), ())]

    def servers(self) -> list[pb.ServerMember]:
        return list(self._t.servers.values())

    def node_usage(self, node_id: str) -> tuple[int, int, frozenset[int]]:
        """(cpu MHz, memory MB, host ports) used by the node's live allocations."""
        return self._t.node_usage.get(node_id, _NO_USAGE)

    def server(self, raft_address: str) -> pb.ServerMember | None:
        return self._t.servers.get(raft_address)

    def find_by_prefix(self, table: str, prefix: str) -> list[str]:
        """IDs of ``table`` (allocs, nodes, evals, deployments) starting with prefix."""
        source: Iterable[str] = getattr(self._t, table).keys()
        if prefix in getattr(self._t, table):
            return [prefix]
        return sorted(k for k in source if k.startswith(prefix))


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
        with self._lock:
            return StateSnapshot(self._t.copy())

    def wait_for_index(self, min_index: int, timeout: float, *tables: str) -> int:
        """Block until the index of ``tables`` (all if none) exceeds ``min_index`` or
        ``timeout`` seconds pass; return the current index of those tables."""
        names = tables or TABLES
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                current = max(self._t.table_index[t] for t in names)
                if current > min_index:
                    return current
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return current
                self._changed.wait(remaining)

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
    """Applies one command's changes under the store lock, stamping the index."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._touched: set[str] = set()
        self._allocs: set[str] = set()
        self.index = 0

    def __enter__(self) -> _WriteTxn:
        self._store._lock.acquire()
        self.index = self._store._t.index + 1
        return self

    def __exit__(self, *exc: object) -> None:
        t = self._store._t
        t.index = self.index
        for name in self._touched:
            t.table_index[name] = self.index
        if self._allocs:
            self._store._log_alloc_change(self.index, frozenset(self._allocs))
        self._store._changed.notify_all()
        self._store._lock.release()

    @property
    def t(self) -> Tables:
        return self._store._t

    def touch(self, table: str) -> None:
        self._touched.add(table)

    # jobs --------------------------------------------------------------
    def put_job(self, job: pb.Job, max_versions: int) -> None:
        key = (job.namespace, job.id)
        self.t.jobs[key] = job
        versions = [v for v in self.t.job_versions.get(key, ()) if v.version != job.version]
        versions.append(job)
        self.t.job_versions[key] = tuple(versions[-max_versions:])
        self.touch("jobs")

    def replace_job_version(self, job: pb.Job) -> None:
        """Update a stored version in place (e.g. Stable flag) without a new version."""
        key = (job.namespace, job.id)
        versions = tuple(
            job if v.version == job.version else v for v in self.t.job_versions.get(key, ())
        )
        self.t.job_versions[key] = versions
        current = self.t.jobs.get(key)
        if current is not None and current.version == job.version:
            self.t.jobs[key] = job
        self.touch("jobs")

    def delete_job(self, namespace: str, job_id: str) -> None:
        key = (namespace, job_id)
        self.t.jobs.pop(key, None)
        self.t.job_versions.pop(key, None)
        self.touch("jobs")

    # nodes -------------------------------------------------------------
    def put_node(self, node: pb.Node) -> None:
        self.t.nodes[node.id] = node
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

    def _account(self, old: pb.Allocation | None, new: pb.Allocation | None) -> None:
        """Move an allocation's footprint in or out of its node's usage totals."""
        for alloc, sign in ((old, -1), (new, 1)):
            if alloc is None or structs.is_alloc_terminal(alloc):
                continue
            cpu, mem, ports = self._footprint(alloc)
            c, m, p = self.t.node_usage.get(alloc.node_id, _NO_USAGE)
            p = p | frozenset(ports) if sign > 0 else p - frozenset(ports)
            self.t.node_usage[alloc.node_id] = (c + sign * cpu, m + sign * mem, p)
        if old is not None and (new is None or structs.is_alloc_terminal(new)):
            self._store.footprints.pop(old.id, None)  # no longer counted anywhere

    def put_alloc(self, alloc: pb.Allocation) -> None:
        self._allocs.add(alloc.id)
        old = self.t.allocs.get(alloc.id)
        self._account(old, alloc)
        self.t.allocs[alloc.id] = alloc
        if old is None or old.node_id != alloc.node_id:
            if old is not None:
                _remove(self.t.allocs_by_node, old.node_id, alloc.id)
            _add(self.t.allocs_by_node, alloc.node_id, alloc.id)
        if old is None:
            _add(self.t.allocs_by_job, (alloc.namespace, alloc.job_id), alloc.id)
        self.touch("allocs")

    def put_allocs(self, allocs: Iterable[pb.Allocation]) -> None:
        """Batch insert: index sets are rebuilt once per key, not once per alloc."""
        by_node: dict[str, set[str]] = {}
        by_job: dict[JobKey, set[str]] = {}
        removed_node: dict[str, set[str]] = {}
        for alloc in allocs:
            self._allocs.add(alloc.id)
            old = self.t.allocs.get(alloc.id)
            self._account(old, alloc)
            self.t.allocs[alloc.id] = alloc
            if old is None or old.node_id != alloc.node_id:
                if old is not None:
                    removed_node.setdefault(old.node_id, set()).add(alloc.id)
                by_node.setdefault(alloc.node_id, set()).add(alloc.id)
            if old is None:
                by_job.setdefault((alloc.namespace, alloc.job_id), set()).add(alloc.id)
        for node_id, ids in removed_node.items():
            self.t.allocs_by_node[node_id] = self.t.allocs_by_node.get(node_id, frozenset()) - ids
        for node_id, ids in by_node.items():
            self.t.allocs_by_node[node_id] = self.t.allocs_by_node.get(node_id, frozenset()) | ids
        for key, ids in by_job.items():
            self.t.allocs_by_job[key] = self.t.allocs_by_job.get(key, frozenset()) | ids
        self.touch("allocs")

    def delete_allocs(self, alloc_ids: Iterable[str]) -> None:
        for alloc_id in alloc_ids:
            old = self.t.allocs.pop(alloc_id, None)
            if old is None:
                continue
            self._account(old, None)
            _remove(self.t.allocs_by_node, old.node_id, alloc_id)
            _remove(self.t.allocs_by_job, (old.namespace, old.job_id), alloc_id)
        self.touch("allocs")

    # evaluations -------------------------------------------------------
    def put_eval(self, ev: pb.Evaluation) -> None:
        if ev.id not in self.t.evals:
            _add(self.t.evals_by_job, (ev.namespace, ev.job_id), ev.id)
        self.t.evals[ev.id] = ev
        self.touch("evals")

    def delete_evals(self, eval_ids: Iterable[str]) -> None:
        for eval_id in eval_ids:
            old = self.t.evals.pop(eval_id, None)
            if old is not None:
                _remove(self.t.evals_by_job, (old.namespace, old.job_id), eval_id)
        self.touch("evals")

    # deployments -------------------------------------------------------
    def put_deployment(self, d: pb.Deployment) -> None:
        self.t.deployments[d.id] = d
        self.touch("deployments")

    def delete_deployments(self, ids: Iterable[str]) -> None:
        for d in ids:
            self.t.deployments.pop(d, None)
        self.touch("deployments")

    # services ----------------------------------------------------------
    def put_service(self, s: pb.ServiceRegistration) -> None:
        if s.id not in self.t.services:
            _add(self.t.services_by_name, (s.namespace, s.service_name), s.id)
        self.t.services[s.id] = s
        self.touch("services")

    def put_server(self, member: pb.ServerMember) -> None:
        self.t.servers[member.raft_address] = member
        self.touch("servers")

    def delete_server(self, raft_address: str) -> None:
        self.t.servers.pop(raft_address, None)
        self.touch("servers")

    def delete_services(self, ids: Iterable[str]) -> None:
        for sid in ids:
            old = self.t.services.pop(sid, None)
            if old is not None:
                _remove(self.t.services_by_name, (old.namespace, old.service_name), sid)
        self.touch("services")


def _add(index: dict[_K, frozenset[str]], key: _K, value: str) -> None:
    index[key] = index.get(key, frozenset()) | {value}


def _remove(index: dict[_K, frozenset[str]], key: _K, value: str) -> None:
    current = index.get(key)
    if current is None:
        return
    rest = current - {value}
    if rest:
        index[key] = rest
    else:
        del index[key]
