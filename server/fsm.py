"""The replicated state machine: applies raft log entries to the state store.

Deterministic by construction: every input is in the command (IDs, timestamps via
``Command.now``) or in the state that every replica holds identically. No clock, no
random, no I/O here. The consensus engine hands ``apply`` the entry's bytes and
knows nothing else about it; this module knows nothing of the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral import structs
from corral.proto import pb
from corral.server.fsm_deployments import count_health, plan_deployment, set_deployment_status
from corral.server.state import StateSnapshot, StateStore, Tables, _WriteTxn

log = logging.getLogger(__name__)

COMMAND_SCHEMA = 1
SNAPSHOT_SCHEMA = 1


@dataclass(frozen=True)
class ApplyResult:
    """What apply returns to the proposer: the state index of the change, and an
    error message when the command was refused (deterministically, on all replicas)."""

    index: int
    error: str = ""


class FSM:
    def __init__(self, state: StateStore) -> None:
        self.state = state
        # Called after each applied command with (index, command); used by the
        # leader's loops (eval broker) to learn of new evals. Must not block.
        self.listeners: list[Callable[[int, pb.Command], None]] = []
        self._handlers: dict[str, Callable[[_WriteTxn, pb.Command], str]] = {
            "job_register": self._job_register,
            "job_deregister": self._job_deregister,
            "node_register": self._node_register,
            "node_status": self._node_status,
            "node_eligibility": self._node_eligibility,
            "node_drain": self._node_drain,
            "alloc_client_update": self._alloc_client_update,
            "eval_update": self._eval_update,
            "eval_delete": self._eval_delete,
            "apply_plan": self._apply_plan,
            "alloc_desired_transition": self._alloc_desired_transition,
            "service_upsert": self._service_upsert,
            "service_delete": self._service_delete,
            "noop": lambda txn, cmd: "",
            "server_register": self._server_register,
            "job_scale": self._job_scale,
            "deployment_status": self._deployment_status,
            "deployment_promote": self._deployment_promote,
        }

    # ------------------------------------------------------------ entry points
    def apply(self, data: bytes) -> ApplyResult | list[ApplyResult]:
        """Apply one raft entry: a command, or a batch of them (one result each)."""
        cmd = pb.Command.FromString(data)
        if cmd.WhichOneof("kind") == "batch":
            return [self._apply_one(pb.Command.FromString(c)) for c in cmd.batch.commands]
        return self._apply_one(cmd)

    def _apply_one(self, cmd: pb.Command) -> ApplyResult:
        if cmd.schema > COMMAND_SCHEMA:
            # A newer server wrote this; refusing loudly beats misapplying it.
            raise RuntimeError(f"command schema {cmd.schema} is newer than {COMMAND_SCHEMA}")
        kind = cmd.WhichOneof("kind")
        if kind is None:
            raise RuntimeError("empty command")
        handler = self._handlers[kind]
        with self.state.write() as txn:
            error = handler(txn, cmd)
            index = txn.index
        for listener in self.listeners:
            try:
                listener(index, cmd)
            except Exception:  # a listener bug must not stop replication
                log.exception("FSM listener failed")
        return ApplyResult(index=index, error=error)

    def snapshot(self) -> bytes:
        return snapshot_bytes(self.state.snapshot())

    def restore(self, data: bytes) -> None:
        snap = pb.StateSnapshot.FromString(data)
        if snap.schema > SNAPSHOT_SCHEMA:
            raise RuntimeError(f"snapshot schema {snap.schema} is newer than {SNAPSHOT_SCHEMA}")
        fresh = StateStore()
        with fresh.write() as txn:
            txn.restore_jobs(snap.jobs, snap.job_versions)
            for node in snap.nodes:
                txn.put_node(node)
            txn.put_allocs(snap.allocs)
            for ev in snap.evals:
                txn.put_eval(ev)
            for d in snap.deployments:
                txn.put_deployment(d)
            for s in snap.services:
                txn.put_service(s)
            for member in snap.servers:
                txn.put_server(member)
        tables: Tables = fresh.tables
        tables.index = snap.index
        tables.table_index = dict(snap.table_index)
        self.state.replace_tables(tables)

    def digest(self) -> str:
        """A hash of the whole state: equal on replicas that applied the same log."""
        import hashlib

        return hashlib.sha256(self.snapshot()).hexdigest()

    # ------------------------------------------------------------ handlers
    def _put_evals(self, txn: _WriteTxn, evals: list[pb.Evaluation], now: int) -> None:
        for ev in evals:
            stored = pb.Evaluation()
            stored.CopyFrom(ev)
            old = txn.t.evals.get(ev.id)
            stored.create_index = old.create_index if old is not None else txn.index
            stored.create_time = old.create_time if old is not None else (ev.create_time or now)
            stored.modify_index = txn.index
            stored.modify_time = now
            txn.put_eval(stored)

    def _job_register(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        req = cmd.job_register
        job = pb.Job()
        job.CopyFrom(req.job)
        key = (job.namespace, job.id)
        old = txn.t.jobs.get(key)
        job.modify_index = txn.index
        if old is None:
            job.create_index = txn.index
            job.version = 0
            job.job_modify_index = txn.index
        else:
            job.create_index = old.create_index
            if spec_changed(old, job):
                job.version = old.version + 1
                job.job_modify_index = txn.index
                job.stable = False
            else:
                job.version = old.version
                job.job_modify_index = old.job_modify_index
                job.stable = old.stable
        if not job.submit_time:
            job.submit_time = cmd.now
        txn.put_job(job, structs.JOB_TRACKED_VERSIONS)
        if req.HasField("eval"):
            ev = pb.Evaluation()
            ev.CopyFrom(req.eval)
            ev.job_modify_index = job.job_modify_index
            self._put_evals(txn, [ev], cmd.now)
        return ""

    def _job_deregister(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        req = cmd.job_deregister
        key = (req.namespace, req.job_id)
        old = txn.t.jobs.get(key)
        if old is None:
            return f"job {req.job_id!r} not found"
        if req.purge:
            txn.delete_job(req.namespace, req.job_id)
            # As Nomad's DeleteJobTxn: the job's allocations and deployments go with
            # it (a job registered again under the same ID starts its versions from
            # 0, and must not take the old ones for its own). Clients stop the
            # allocations they no longer see.
            gone = list(txn.t.allocs_by_job.get(key, ()))
            txn.delete_allocs(gone)
            self._drop_services_of(txn, set(gone))
            txn.delete_deployments(
                [
                    d.id
                    for d in txn.t.deployments.values()
                    if d.namespace == req.namespace and d.job_id == req.job_id
                ]
            )
        elif not old.stop:
            job = pb.Job()
            job.CopyFrom(old)
            job.stop = True
            job.version = old.version + 1
            job.stable = False
            job.modify_index = txn.index
            job.job_modify_index = txn.index
            job.submit_time = cmd.now
            txn.put_job(job, structs.JOB_TRACKED_VERSIONS)
        if req.HasField("eval"):
            self._put_evals(txn, [req.eval], cmd.now)
        return ""

    def _node_register(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        node = pb.Node()
        node.CopyFrom(cmd.node_register.node)
        old = txn.t.nodes.get(node.id)
        if old is not None:
            if old.secret_id and node.secret_id != old.secret_id:
                return f"node {node.id} re-registered with a different secret"
            node.create_index = old.create_index
            # Operator decisions survive a client restart.
            node.scheduling_eligibility = old.scheduling_eligibility
            if old.HasField("drain_strategy"):
                node.drain_strategy.CopyFrom(old.drain_strategy)
            node.drain = old.drain
        else:
            node.create_index = txn.index
            if not node.scheduling_eligibility:
                node.scheduling_eligibility = structs.NODE_ELIGIBLE
        if not node.status:
            node.status = structs.NODE_STATUS_READY
        node.status_updated_at = cmd.now
        node.modify_index = txn.index
        txn.put_node(node)
        self._put_evals(txn, list(cmd.node_register.evals), cmd.now)
        return ""

    def _update_node(
        self, txn: _WriteTxn, node_id: str, now: int, change: Callable[[pb.Node], None]
    ) -> str:
        old = txn.t.nodes.get(node_id)
        if old is None:
            return f"node {node_id} not found"
        node = pb.Node()
        node.CopyFrom(old)
        change(node)
        node.modify_index = txn.index
        txn.put_node(node)
        return ""

    def _node_status(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        req = cmd.node_status

        def change(node: pb.Node) -> None:
            node.status = req.status
            node.status_description = req.status_description
            node.status_updated_at = cmd.now

        err = self._update_node(txn, req.node_id, cmd.now, change)
        if not err:
            self._put_evals(txn, list(req.evals), cmd.now)
        return err

    def _node_eligibility(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        req = cmd.node_eligibility

        def change(node: pb.Node) -> None:
            node.scheduling_eligibility = req.eligibility

        err = self._update_node(txn, req.node_id, cmd.now, change)
        if not err:
            self._put_evals(txn, list(req.evals), cmd.now)
        return err

    def _node_drain(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        req = cmd.node_drain

        def change(node: pb.Node) -> None:
            if req.HasField("drain_strategy"):
                node.drain_strategy.CopyFrom(req.drain_strategy)
                node.drain = True
                node.scheduling_eligibility = structs.NODE_INELIGIBLE
            else:
                node.ClearField("drain_strategy")
                node.drain = False
                if req.mark_eligible:
                    node.scheduling_eligibility = structs.NODE_ELIGIBLE

        err = self._update_node(txn, req.node_id, cmd.now, change)
        if not err:
            self._put_evals(txn, list(req.evals), cmd.now)
        return err

    def _alloc_client_update(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        updated = []
        for upd in cmd.alloc_client_update.allocs:
            old = txn.t.allocs.get(upd.id)
            if old is None:
                continue  # garbage-collected meanwhile; nothing to update
            alloc = pb.Allocation()
            alloc.CopyFrom(old)
            alloc.client_status = upd.client_status
            alloc.client_description = upd.client_description
            alloc.task_states.clear()
            for name, ts in upd.task_states.items():
                alloc.task_states[name].CopyFrom(ts)
            if upd.HasField("deployment_status"):
                canary = old.deployment_status.canary
                alloc.deployment_status.CopyFrom(upd.deployment_status)
                alloc.deployment_status.canary = canary  # the server decides canaries
                alloc.deployment_status.modify_index = txn.index
                count_health(txn, old, alloc, cmd.now)
            alloc.modify_index = txn.index
            alloc.modify_time = cmd.now
            updated.append(alloc)
        txn.put_allocs(updated)
        ended = {a.id for a in updated if a.client_status in structs.ALLOC_TERMINAL_CLIENT}
        self._drop_services_of(txn, ended)
        self._put_evals(txn, list(cmd.alloc_client_update.evals), cmd.now)
        return ""

    def _eval_update(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        self._put_evals(txn, list(cmd.eval_update.evals), cmd.now)
        return ""

    def _eval_delete(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        """Garbage collection: delete exactly the evaluations, allocations and
        deployments named."""
        req = cmd.eval_delete
        txn.delete_evals(req.eval_ids)
        if req.alloc_ids:
            txn.delete_allocs(req.alloc_ids)
            self._drop_services_of(txn, set(req.alloc_ids))
        if req.deployment_ids:
            txn.delete_deployments(req.deployment_ids)
        return ""

    def _apply_plan(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        plan = cmd.apply_plan.plan
        work: dict[str, pb.Allocation] = {}
        # Existing allocations that an in-place update moves into another deployment.
        joined: dict[str, str] = {}

        def working(alloc_id: str) -> pb.Allocation | None:
            """The allocation as changed so far by this plan (a private copy)."""
            if alloc_id in work:
                return work[alloc_id]
            old = txn.t.allocs.get(alloc_id)
            if old is None:
                return None
            copy = pb.Allocation()
            copy.CopyFrom(old)
            work[alloc_id] = copy
            return copy

        for alloc_list in plan.node_update.values():
            for stop in alloc_list.allocs:
                alloc = working(stop.id)
                if alloc is None:
                    continue
                alloc.desired_status = stop.desired_status
                alloc.desired_description = stop.desired_description
                if stop.client_status:
                    alloc.client_status = stop.client_status
                if stop.followup_eval_id:
                    alloc.followup_eval_id = stop.followup_eval_id
                alloc.alloc_modify_index = txn.index
        for alloc_list in plan.node_allocation.values():
            for new in alloc_list.allocs:
                alloc = pb.Allocation()
                alloc.CopyFrom(new)
                alloc.ClearField("job")
                old = txn.t.allocs.get(new.id)
                if old is None:
                    alloc.create_index = txn.index
                    alloc.create_time = cmd.now
                else:
                    # In-place update: keep what the client reported.
                    alloc.create_index = old.create_index
                    alloc.create_time = old.create_time
                    alloc.client_status = old.client_status
                    alloc.client_description = old.client_description
                    for name, ts in old.task_states.items():
                        alloc.task_states[name].CopyFrom(ts)
                    same_deployment = old.deployment_id == new.deployment_id
                    if (
                        same_deployment
                        and old.HasField("deployment_status")
                        and not new.HasField("deployment_status")
                    ):
                        alloc.deployment_status.CopyFrom(old.deployment_status)
                    if not same_deployment:
                        # Moved into the new version's deployment: health afresh.
                        joined[alloc.id] = new.deployment_id
                if not alloc.client_status:
                    alloc.client_status = structs.ALLOC_CLIENT_PENDING
                alloc.alloc_modify_index = txn.index
                work[alloc.id] = alloc
                if alloc.previous_allocation:
                    prev = working(alloc.previous_allocation)
                    if prev is not None:
                        prev.next_allocation = alloc.id
        for alloc in work.values():
            alloc.modify_index = txn.index
            alloc.modify_time = cmd.now
        txn.put_allocs(work.values())
        plan_deployment(txn, plan, cmd.now, joined)
        # A lost allocation's client cannot deregister its services: do it here.
        lost = {a.id for a in work.values() if a.client_status == structs.ALLOC_CLIENT_LOST}
        self._drop_services_of(txn, lost)
        self._put_evals(txn, list(cmd.apply_plan.evals), cmd.now)
        return ""

    def _alloc_desired_transition(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        changed = []
        for alloc_id, transition in cmd.alloc_desired_transition.transitions.items():
            old = txn.t.allocs.get(alloc_id)
            if old is None:
                continue
            alloc = pb.Allocation()
            alloc.CopyFrom(old)
            alloc.desired_transition.CopyFrom(transition)
            alloc.modify_index = txn.index
            changed.append(alloc)
        txn.put_allocs(changed)
        self._put_evals(txn, list(cmd.alloc_desired_transition.evals), cmd.now)
        return ""

    def _server_register(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        member = pb.ServerMember()
        member.CopyFrom(cmd.server_register.member)
        # Liveness and leadership are read live from raft, never stored.
        member.leader = False
        member.raft_state = ""
        member.last_index = 0
        member.healthy = False
        txn.put_server(member)
        return ""

    def _job_scale(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        req = cmd.job_scale
        old = txn.t.jobs.get((req.namespace, req.job_id))
        if old is None:
            return f"job {req.job_id!r} not found"
        job = pb.Job()
        job.CopyFrom(old)
        group = structs.group_by_name(job, req.group)
        if group is None:
            return f"job {req.job_id!r} has no group {req.group!r}"
        group.count = req.count
        job.stop = False
        register = pb.Command(now=cmd.now)
        register.job_register.job.CopyFrom(job)
        if req.HasField("eval"):
            register.job_register.eval.CopyFrom(req.eval)
        return self._job_register(txn, register)

    def _deployment_status(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        req = cmd.deployment_status
        d = txn.t.deployments.get(req.update.deployment_id)
        if d is None:
            return f"deployment {req.update.deployment_id} not found"
        set_deployment_status(txn, req.update, cmd.now)
        if req.mark_stable:
            versions = txn.t.job_versions.get((d.namespace, d.job_id), ())
            for v in versions:
                if v.version == d.job_version and not v.stable:
                    stable = pb.Job()
                    stable.CopyFrom(v)
                    stable.stable = True
                    txn.replace_job_version(stable)
        if req.HasField("revert_job"):
            register = pb.Command(now=cmd.now)
            register.job_register.job.CopyFrom(req.revert_job)
            err = self._job_register(txn, register)
            if err:
                return err
        self._put_evals(txn, list(req.evals), cmd.now)
        return ""

    def _deployment_promote(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        req = cmd.deployment_promote
        old = txn.t.deployments.get(req.deployment_id)
        if old is None:
            return f"deployment {req.deployment_id} not found"
        if old.status != structs.DeploymentStatus.RUNNING:
            return f"deployment {req.deployment_id} is {old.status}, not running"
        d = pb.Deployment()
        d.CopyFrom(old)
        for name, group in d.task_groups.items():
            if not req.groups or name in req.groups:
                group.promoted = True
        d.status_description = structs.running_deployment_description(d)
        d.modify_index = txn.index
        txn.put_deployment(d)
        # Canaries become part of the deployment's steady state.
        changed = []
        for alloc_id in (a for g in d.task_groups.values() for a in g.placed_canaries):
            alloc = txn.t.allocs.get(alloc_id)
            if alloc is not None and alloc.deployment_status.canary:
                a = pb.Allocation()
                a.CopyFrom(alloc)
                a.deployment_status.canary = False
                a.modify_index = txn.index
                changed.append(a)
        txn.put_allocs(changed)
        self._put_evals(txn, list(req.evals), cmd.now)
        return ""

    @staticmethod
    def _drop_services_of(txn: _WriteTxn, alloc_ids: set[str]) -> None:
        if not alloc_ids or not txn.t.services:
            return
        doomed = [s.id for s in txn.t.services.values() if s.alloc_id in alloc_ids]
        if doomed:
            txn.delete_services(doomed)

    def _service_upsert(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        for svc in cmd.service_upsert.services:
            stored = pb.ServiceRegistration()
            stored.CopyFrom(svc)
            old = txn.t.services.get(svc.id)
            stored.create_index = old.create_index if old is not None else txn.index
            stored.modify_index = txn.index
            txn.put_service(stored)
        return ""

    def _service_delete(self, txn: _WriteTxn, cmd: pb.Command) -> str:
        req = cmd.service_delete
        ids = set(req.ids)
        if req.alloc_ids:
            wanted = set(req.alloc_ids)
            ids.update(s.id for s in txn.t.services.values() if s.alloc_id in wanted)
        txn.delete_services(ids)
        return ""


_SERVER_FIELDS = (
    "status",
    "status_description",
    "version",
    "stable",
    "submit_time",
    "create_index",
    "modify_index",
    "job_modify_index",
)


def spec_changed(old: pb.Job, new: pb.Job) -> bool:
    """Whether the user-visible spec differs (server-set fields ignored): only then
    does a registration make a new job version, as in Nomad."""
    a = pb.Job()
    a.CopyFrom(old)
    b = pb.Job()
    b.CopyFrom(new)
    for f in _SERVER_FIELDS:
        a.ClearField(f)  # type: ignore[arg-type]
        b.ClearField(f)  # type: ignore[arg-type]
    return a.SerializeToString(deterministic=True) != b.SerializeToString(deterministic=True)


SNAPSHOT_CHUNK = 2_000


def snapshot_bytes(view: StateSnapshot) -> bytes:
    """The serialized ``pb.StateSnapshot`` of ``view``.

    Written in chunks: protobuf's encoding of a message is the concatenation of its
    fields' encodings, so many small ``StateSnapshot`` messages, each holding one
    slice of one repeated field, emitted in field-number order, concatenate to the
    very bytes one big message would give. Each chunk is one short C call, so a
    snapshot serialized on a background thread never holds the GIL for long (one
    ``SerializeToString`` of 20 MB holds it for ~0.1 s, a stall for raft's ticks).
    Sorted, so that replicas with equal state write equal bytes (digests)."""
    t = view._t
    head = pb.StateSnapshot(schema=SNAPSHOT_SCHEMA, index=t.index)
    head.table_index.update(t.table_index)
    parts = [head.SerializeToString(deterministic=True)]

    def emit(field: str, items: list[Any]) -> None:
        for i in range(0, len(items), SNAPSHOT_CHUNK):
            chunk = pb.StateSnapshot()
            getattr(chunk, field).extend(items[i : i + SNAPSHOT_CHUNK])
            parts.append(chunk.SerializeToString(deterministic=True))

    emit("jobs", [t.jobs[k] for k in sorted(t.jobs)])
    versions: list[pb.Job] = []
    for key in sorted(t.job_versions):
        current = t.jobs.get(key)
        versions.extend(v for v in t.job_versions[key] if v is not current)
    emit("job_versions", versions)
    emit("nodes", [t.nodes[k] for k in sorted(t.nodes)])
    emit("allocs", [t.allocs[k] for k in sorted(t.allocs)])
    emit("evals", [t.evals[k] for k in sorted(t.evals)])
    emit("deployments", [t.deployments[k] for k in sorted(t.deployments)])
    emit("services", [t.services[k] for k in sorted(t.services)])
    emit("servers", [t.servers[k] for k in sorted(t.servers)])
    return b"".join(parts)
