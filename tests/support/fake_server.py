"""An in-process fake corral server: real gRPC, in-memory state, a toy scheduler.

Why a fake and not the real server: the CLI and its API client are tested on their
own, against the wire contract (``proto/corral.proto``) and the server semantics the
contract promises (prefix lookups, NOT_FOUND / FAILED_PRECONDITION /
INVALID_ARGUMENT, evaluations going ``pending`` -> ``complete`` with
``FailedTGAllocs``), without raft, workers or clients. It is a real ``grpc.server``
on a free port, so the client's channel, deadlines and error mapping are exercised
for real; no mock objects.

The toy scheduler places ``count`` allocations per group on ready nodes, checking
datacenters, ``=``/``!=`` constraints on ``${attr.*}``, ``${meta.*}``,
``${node.class}``, ``${node.datacenter}`` and memory/cpu capacity, and reports what
failed the way Nomad's AllocMetric does. An evaluation stays ``pending`` for
``pending_reads`` reads, so that a monitor sees the status change.

The operator calls are modelled too: ``Plan`` (a dry run of the toy scheduler with
``corral.api.jobdiff`` for the diff), ``Validate``, ``Scale``, ``Revert``, alloc
``Restart``, node eligibility and drain (a drain advances one step each time the
node's allocations are listed: marked for migration, stopped, complete; then the
drain ends), and the server membership (``state.members``) behind ``Status`` and the
raft peer calls.

Deployments (``DeploymentService``) are scripted rather than simulated: a test adds
one (``add_deployment``) or queues scripts for the deployments that the next
registrations of a service job with an ``update`` block create
(``queued_deployments``), each script being a list of :class:`DeploymentStep`
applied one per ``DeploymentService.Get`` read, so that a CLI following a rollout
sees its counters move and its end (success, failure, auto-revert) in a known
order. ``Promote`` and ``Fail`` follow the real server's rules.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from corral import structs
from corral.api.jobdiff import format_job_diff, job_diff
from corral.proto import pb, rpc
from tests.support.env import free_port


def _now() -> int:
    return time.time_ns()


@dataclass
class DeploymentStep:
    """One scripted change of a deployment, applied on one ``Get`` read.

    ``groups`` sets fields of the groups' DeploymentState (``placed_allocs``,
    ``healthy_allocs``, ...); ``status``/``description`` set the deployment's. A
    ``successful`` status marks the job version stable, as the real watcher does;
    ``revert_to`` registers that job version again and appends the watcher's
    " - rolling back to job version N" to the description.
    """

    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: str = ""
    description: str = ""
    revert_to: int | None = None


class FakeState:
    """The fake cluster's tables, guarded by one lock."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.index = 1
        self.jobs: dict[str, list[pb.Job]] = {}  # id -> versions, oldest first
        self.allocs: dict[str, pb.Allocation] = {}
        self.evals: dict[str, pb.Evaluation] = {}
        self.nodes: dict[str, pb.Node] = {}
        # (alloc id, task, "stdout"|"stderr") -> bytes already written
        self.logs: dict[tuple[str, str, str], bytes] = {}
        # chunks that "arrive" while a follower is attached, then the stream ends
        self.follow_chunks: dict[tuple[str, str, str], list[bytes]] = {}
        # Evals stay pending for this many EvalService.Get calls.
        self.pending_reads = 1
        self._reads: dict[str, int] = {}
        # ClientStatus given to new allocations.
        self.new_alloc_client_status = structs.ALLOC_CLIENT_RUNNING
        self.requests: list[tuple[str, Any]] = []
        # Method name -> (code, details) answered instead of the method's result.
        self.inject_errors: dict[str, tuple[grpc.StatusCode, str]] = {}
        # The servers (Status, raft peers); FakeServer puts itself here.
        self.members: list[pb.ServerMember] = []
        # A draining node's allocations move one step per listing when True.
        self.drain_progress = True
        # (alloc id, task) of every AllocService.Restart.
        self.restarts: list[tuple[str, str]] = []
        # Warnings answered by Validate.
        self.validate_warnings = ""
        # Deployments by ID, and the steps still to apply to each (one per Get).
        self.deployments: dict[str, pb.Deployment] = {}
        self.deployment_steps: dict[str, list[DeploymentStep]] = {}
        # Scripts of the deployments the next registrations create, oldest first; a
        # service job with an update block gets a deployment only if one is queued.
        self.queued_deployments: list[list[DeploymentStep]] = []

    def next_index(self) -> int:
        self.index += 1
        return self.index

    # ---------------------------------------------------------------- helpers

    def add_node(
        self,
        name: str,
        *,
        node_id: str | None = None,
        datacenter: str = "dc1",
        node_class: str = "",
        cpu: int = 4000,
        memory_mb: int = 4096,
        attributes: dict[str, str] | None = None,
        status: str = structs.NODE_STATUS_READY,
    ) -> pb.Node:
        with self.lock:
            idx = self.next_index()
            node = pb.Node(
                id=node_id or str(uuid.uuid4()),
                secret_id=str(uuid.uuid4()),
                name=name,
                datacenter=datacenter,
                node_class=node_class,
                http_addr="127.0.0.1:4646",
                rpc_addr="127.0.0.1:0",
                attributes={
                    "kernel.name": "linux",
                    "cpu.arch": "amd64",
                    "unique.hostname": name,
                    "unique.network.ip-address": "127.0.0.1",
                    **(attributes or {}),
                },
                status=status,
                status_updated_at=_now(),
                scheduling_eligibility=structs.NODE_ELIGIBLE,
                create_index=idx,
                modify_index=idx,
            )
            node.drivers["docker"].CopyFrom(
                pb.DriverInfo(detected=True, healthy=True, health_description="Healthy")
            )
            node.drivers["mock"].CopyFrom(
                pb.DriverInfo(detected=True, healthy=True, health_description="Healthy")
            )
            node.node_resources.cpu.cpu_shares = cpu
            node.node_resources.cpu.total_cpu_cores = 4
            node.node_resources.memory.memory_mb = memory_mb
            node.node_resources.min_dynamic_port = structs.MIN_DYNAMIC_PORT
            node.node_resources.max_dynamic_port = structs.MAX_DYNAMIC_PORT
            self.nodes[node.id] = node
            return node

    def register(
        self,
        job: pb.Job,
        *,
        enforce: bool = False,
        index: int = 0,
        trigger: str = structs.TRIGGER_JOB_REGISTER,
    ) -> pb.Evaluation:
        with self.lock:
            problems = validate(job)
            if problems:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "\n".join(problems))
            versions = self.jobs.get(job.id, [])
            current = versions[-1] if versions else None
            if enforce:
                have = current.job_modify_index if current is not None else 0
                if have != index:
                    raise _Abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"enforcing job modify index {index}: job exists with conflicting "
                        f"job modify index: {have}",
                    )
            idx = self.next_index()
            stored = pb.Job()
            stored.CopyFrom(job)
            structs.canonicalize(stored)
            stored.version = (current.version + 1) if current is not None else 0
            stored.stable = False  # a new version is stable once its deployment succeeds
            stored.status = structs.JOB_STATUS_PENDING
            stored.submit_time = _now()
            stored.create_index = current.create_index if current is not None else idx
            stored.modify_index = idx
            stored.job_modify_index = idx
            self.jobs[job.id] = [*versions, stored][-structs.JOB_TRACKED_VERSIONS :]
            return self._new_eval(stored, trigger, idx)

    def _new_eval(self, job: pb.Job, trigger: str, idx: int) -> pb.Evaluation:
        ev = pb.Evaluation(
            id=str(uuid.uuid4()),
            namespace=job.namespace or structs.DEFAULT_NAMESPACE,
            priority=job.priority,
            type=job.type,
            triggered_by=trigger,
            job_id=job.id,
            job_modify_index=job.job_modify_index,
            status=structs.EVAL_STATUS_PENDING,
            create_index=idx,
            modify_index=idx,
            create_time=_now(),
            modify_time=_now(),
        )
        self.evals[ev.id] = ev
        self._reads[ev.id] = 0
        return ev

    def job(self, job_id: str) -> pb.Job:
        versions = self.jobs.get(job_id)
        if not versions:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f'job "{job_id}" not found')
        return versions[-1]

    def read_eval(self, ev: pb.Evaluation) -> pb.Evaluation:
        """Advance a pending eval once it has been read ``pending_reads`` times."""
        if ev.status != structs.EVAL_STATUS_PENDING:
            return ev
        self._reads[ev.id] = self._reads.get(ev.id, 0) + 1
        if self._reads[ev.id] > self.pending_reads:
            self.process(ev.id)
        return self.evals[ev.id]

    def process(self, eval_id: str) -> None:
        """Run the toy scheduler for one evaluation."""
        with self.lock:
            ev = self.evals[eval_id]
            if ev.status != structs.EVAL_STATUS_PENDING:
                return
            job = self.jobs.get(ev.job_id, [None])[-1] if ev.job_id in self.jobs else None
            idx = self.next_index()
            live = [
                a
                for a in self.allocs.values()
                if a.job_id == ev.job_id and not structs.is_alloc_terminal(a)
            ]
            if job is None or job.stop:
                for a in live:
                    self._stop(a, "alloc not needed due to job update", idx)
                if job is not None:
                    job.status = structs.JOB_STATUS_DEAD
            else:
                placed: dict[str, list[pb.Allocation]] = {}
                for group in job.task_groups:
                    have = [a for a in live if a.task_group == group.name]
                    for a in have[group.count :]:
                        self._stop(a, "alloc not needed due to job update", idx)
                    used = {int(a.alloc_index) for a in have[: group.count]}
                    missing = [i for i in range(group.count) if i not in used]
                    failed = 0
                    metric = pb.AllocMetric()
                    placed[group.name] = []
                    for i in missing:
                        node = self._select(job, group, metric)
                        if node is None:
                            failed += 1
                            continue
                        placed[group.name].append(self._place(job, group, i, node, ev, idx))
                    if failed:
                        metric.coalesced_failures = failed - 1
                        ev.failed_tg_allocs[group.name].CopyFrom(metric)
                        ev.queued_allocations[group.name] = failed
                    else:
                        ev.queued_allocations[group.name] = 0
                job.status = structs.JOB_STATUS_RUNNING
                if (
                    ev.triggered_by == structs.TRIGGER_JOB_REGISTER
                    and self.queued_deployments
                    and job.type == structs.JOB_TYPE_SERVICE
                    and any(g.HasField("update") for g in job.task_groups)
                ):
                    d = self.add_deployment(job.id, steps=self.queued_deployments.pop(0))
                    for name, allocs in placed.items():
                        d.task_groups[name].placed_allocs = len(allocs)
                        for a in allocs:
                            a.deployment_id = d.id
            ev.status = structs.EVAL_STATUS_COMPLETE
            ev.modify_index = idx
            ev.modify_time = _now()
            if ev.failed_tg_allocs:
                blocked = pb.Evaluation()
                blocked.CopyFrom(ev)
                blocked.id = str(uuid.uuid4())
                blocked.status = structs.EVAL_STATUS_BLOCKED
                blocked.triggered_by = structs.TRIGGER_QUEUED_ALLOCS
                blocked.previous_eval = ev.id
                blocked.ClearField("failed_tg_allocs")
                self.evals[blocked.id] = blocked
                ev.blocked_eval = blocked.id

    def _stop(self, alloc: pb.Allocation, why: str, idx: int) -> None:
        alloc.desired_status = structs.ALLOC_DESIRED_STOP
        alloc.desired_description = why
        alloc.client_status = structs.ALLOC_CLIENT_COMPLETE
        alloc.modify_index = idx
        alloc.modify_time = _now()

    def _select(self, job: pb.Job, group: pb.TaskGroup, metric: pb.AllocMetric) -> pb.Node | None:
        """Pick the feasible node with the most free memory, filling ``metric``."""
        nodes = [n for n in self.nodes.values() if n.status == structs.NODE_STATUS_READY]
        metric.nodes_evaluated = 0
        metric.nodes_filtered = 0
        metric.nodes_exhausted = 0
        metric.ClearField("constraint_filtered")
        metric.ClearField("dimension_exhausted")
        dcs = list(job.datacenters)
        for dc in sorted({n.datacenter for n in nodes}):
            if "*" in dcs or dc in dcs:
                metric.nodes_available[dc] = len([n for n in nodes if n.datacenter == dc])
        want_cpu = sum(t.resources.cpu for t in group.tasks)
        want_mem = sum(t.resources.memory_mb for t in group.tasks)
        best: tuple[int, pb.Node] | None = None
        constraints = [*job.constraints, *group.constraints]
        for task in group.tasks:
            constraints.extend(task.constraints)
        for node in sorted(nodes, key=lambda n: n.name):
            if "*" not in dcs and node.datacenter not in dcs:
                continue
            metric.nodes_evaluated += 1
            bad = next((c for c in constraints if not _satisfies(node, c)), None)
            if bad is not None:
                key = f"{bad.l_target} {bad.operand or '='} {bad.r_target}"
                metric.constraint_filtered[key] += 1
                metric.nodes_filtered += 1
                continue
            used_cpu = used_mem = 0
            for a in self.allocs.values():
                if a.node_id == node.id and not structs.is_alloc_terminal(a):
                    for tr in a.allocated_resources.tasks.values():
                        used_cpu += tr.cpu.cpu_shares
                        used_mem += tr.memory.memory_mb
            free_cpu = node.node_resources.cpu.cpu_shares - used_cpu
            free_mem = node.node_resources.memory.memory_mb - used_mem
            if free_mem < want_mem:
                metric.nodes_exhausted += 1
                metric.dimension_exhausted["memory"] += 1
                continue
            if free_cpu < want_cpu:
                metric.nodes_exhausted += 1
                metric.dimension_exhausted["cpu"] += 1
                continue
            if best is None or free_mem > best[0]:
                best = (free_mem, node)
        return best[1] if best else None

    def _place(
        self,
        job: pb.Job,
        group: pb.TaskGroup,
        index: int,
        node: pb.Node,
        ev: pb.Evaluation,
        idx: int,
    ) -> pb.Allocation:
        now = _now()
        alloc = pb.Allocation(
            id=str(uuid.uuid4()),
            namespace=job.namespace,
            eval_id=ev.id,
            name=structs.alloc_name(job.id, group.name, index),
            node_id=node.id,
            node_name=node.name,
            job_id=job.id,
            job_version=job.version,
            task_group=group.name,
            desired_status=structs.ALLOC_DESIRED_RUN,
            client_status=self.new_alloc_client_status,
            client_description="Tasks are running",
            create_index=idx,
            modify_index=idx,
            alloc_modify_index=idx,
            create_time=now,
            modify_time=now,
            alloc_index=index,
        )
        next_port = structs.MIN_DYNAMIC_PORT + len(self.allocs) * 10
        for net in group.networks:
            for port in net.reserved_ports:
                alloc.allocated_resources.shared.ports.add(
                    label=port.label, value=port.value, to=port.to, host_ip="127.0.0.1"
                )
            for port in net.dynamic_ports:
                alloc.allocated_resources.shared.ports.add(
                    label=port.label, value=next_port, to=port.to, host_ip="127.0.0.1"
                )
                next_port += 1
        for task in group.tasks:
            tr = alloc.allocated_resources.tasks[task.name]
            tr.cpu.cpu_shares = task.resources.cpu
            tr.memory.memory_mb = task.resources.memory_mb
            state = alloc.task_states[task.name]
            state.state = structs.TASK_STATE_RUNNING
            state.started_at = now
            state.events.add(
                type=structs.EVENT_RECEIVED, time=now, display_message="Task received by client"
            )
            state.events.add(
                type=structs.EVENT_SETUP,
                time=now,
                message="Building Task Directory",
                display_message="Building Task Directory",
            )
            state.events.add(
                type=structs.EVENT_STARTED, time=now, display_message="Task started by client"
            )
        self.allocs[alloc.id] = alloc
        return alloc

    # ---------------------------------------------------------------- operator verbs

    def plan(self, job: pb.Job) -> pb.JobPlanResponse:
        """What registering ``job`` would do, without doing it."""
        with self.lock:
            new = pb.Job()
            new.CopyFrom(job)
            structs.canonicalize(new)
            problems = validate(new)
            if problems:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "\n".join(problems))
            versions = self.jobs.get(job.id, [])
            current = versions[-1] if versions else None
            diff = job_diff(current, new)
            resp = pb.JobPlanResponse(
                diff="\n".join(format_job_diff(diff)) if current is not None else "",
                changed=diff.changed,
                job_modify_index=current.job_modify_index if current is not None else 0,
            )
            live = [
                a
                for a in self.allocs.values()
                if a.job_id == job.id and not structs.is_alloc_terminal(a)
            ]
            old_groups = {g.name: g for g in current.task_groups} if current is not None else {}
            for group in new.task_groups:
                have = [a for a in live if a.task_group == group.name]
                ann = resp.annotations[group.name]
                keep = min(len(have), group.count)
                ann.place = group.count - keep
                ann.stop = len(have) - keep
                old = old_groups.get(group.name)
                if keep and old is not None and _without_count(old) != _without_count(group):
                    ann.destructive_update = keep
                else:
                    ann.ignore = keep
                if ann.place:
                    metric = pb.AllocMetric()
                    if self._select(new, group, metric) is None:
                        metric.coalesced_failures = ann.place - 1
                        resp.failed_tg_allocs[group.name].CopyFrom(metric)
            for name in old_groups:
                if name not in resp.annotations:
                    gone = [a for a in live if a.task_group == name]
                    if gone:
                        resp.annotations[name].stop = len(gone)
            return resp

    def scale(self, job_id: str, group: str, count: int) -> pb.Evaluation:
        with self.lock:
            job = pb.Job()
            job.CopyFrom(self.job(job_id))
            target = structs.group_by_name(job, group)
            if target is None:
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND, f'job "{job_id}" has no task group "{group}"'
                )
            if count < 0:
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "count must be >= 0")
            target.count = count
            return self.register(job, trigger=structs.TRIGGER_SCALING)

    def revert(self, job_id: str, version: int) -> pb.Evaluation:
        with self.lock:
            current = self.job(job_id)
            if current.version == version:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "can't revert to current version")
            match = next((v for v in self.jobs[job_id] if v.version == version), None)
            if match is None:
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND, f'job "{job_id}" at version {version} not found'
                )
            job = pb.Job()
            job.CopyFrom(match)
            job.stop = False
            return self.register(job)

    def set_drain(self, request: pb.NodeDrainRequest) -> int:
        with self.lock:
            node = _prefix_lookup(self.nodes, request.node_id, "node")
            idx = self.next_index()
            if request.enable:
                node.drain = True
                node.drain_strategy.CopyFrom(
                    pb.DrainStrategy(
                        deadline=request.deadline,
                        ignore_system_jobs=request.ignore_system_jobs,
                        started_at=_now(),
                        force_deadline=_now() + max(request.deadline, 0),
                    )
                )
                node.scheduling_eligibility = structs.NODE_INELIGIBLE
            else:
                node.drain = False
                node.ClearField("drain_strategy")
                if request.mark_eligible:
                    node.scheduling_eligibility = structs.NODE_ELIGIBLE
            node.modify_index = idx
            return idx

    def advance_drain(self, node_id: str) -> None:
        """One step of a drain: mark for migration, stop, complete; then end it."""
        with self.lock:
            node = self.nodes.get(node_id)
            if node is None or not node.drain or not self.drain_progress:
                return
            idx = self.next_index()
            ignore_system = node.drain_strategy.ignore_system_jobs
            left = 0
            for a in self.allocs.values():
                if a.node_id != node_id or structs.is_client_terminal(a):
                    continue
                job = self.jobs.get(a.job_id, [None])[-1] if a.job_id in self.jobs else None
                if ignore_system and job is not None and job.type == structs.JOB_TYPE_SYSTEM:
                    continue
                if not a.desired_transition.migrate:
                    a.desired_transition.migrate = True
                    left += 1
                elif a.desired_status == structs.ALLOC_DESIRED_RUN:
                    a.desired_status = structs.ALLOC_DESIRED_STOP
                    a.desired_description = "alloc is being migrated"
                    left += 1
                else:
                    a.client_status = structs.ALLOC_CLIENT_COMPLETE
                a.modify_index = idx
                a.modify_time = _now()
            if not left:
                node.drain = False
                node.ClearField("drain_strategy")
                node.modify_index = idx

    # ---------------------------------------------------------------- deployments

    def add_deployment(
        self,
        job_id: str,
        *,
        version: int | None = None,
        groups: dict[str, dict[str, Any]] | None = None,
        status: str = "running",
        description: str = "Deployment is running",
        steps: list[DeploymentStep] | tuple[DeploymentStep, ...] = (),
    ) -> pb.Deployment:
        """A deployment of ``job_id`` (its current version unless ``version``).

        Each group starts from the job's group (desired = count, the update block's
        auto_revert, auto_promote, canary and progress deadline), then ``groups``
        overrides fields; ``steps`` are applied one per ``Get``.
        """
        with self.lock:
            job = self.job(job_id)
            if version is not None:
                job = next(v for v in self.jobs[job_id] if v.version == version)
            idx = self.next_index()
            d = pb.Deployment(
                id=str(uuid.uuid4()),
                namespace=job.namespace or structs.DEFAULT_NAMESPACE,
                job_id=job.id,
                job_version=job.version,
                job_modify_index=job.job_modify_index,
                job_create_index=job.create_index,
                status=status,
                status_description=description,
                create_index=idx,
                modify_index=idx,
            )
            for g in job.task_groups:
                state = d.task_groups[g.name]
                state.desired_total = g.count
                if g.HasField("update"):
                    state.auto_revert = g.update.auto_revert
                    state.auto_promote = g.update.auto_promote
                    state.desired_canaries = g.update.canary
                    state.progress_deadline = g.update.progress_deadline
                    if g.update.progress_deadline:
                        state.require_progress_by = _now() + g.update.progress_deadline
            for name, values in (groups or {}).items():
                _set_fields(d.task_groups[name], values)
            self.deployments[d.id] = d
            self.deployment_steps[d.id] = list(steps)
            return d

    def read_deployment(self, d: pb.Deployment) -> pb.Deployment:
        """Apply the deployment's next scripted step, if any (one per read)."""
        with self.lock:
            steps = self.deployment_steps.get(d.id)
            if not steps:
                return d
            step = steps.pop(0)
            idx = self.next_index()
            for name, values in step.groups.items():
                _set_fields(d.task_groups[name], values)
            if step.status:
                d.status = step.status
            if step.description:
                d.status_description = step.description
            if step.status == "successful":
                self.mark_stable(d.job_id, d.job_version)
            if step.revert_to is not None:
                d.status_description += f" - rolling back to job version {step.revert_to}"
                self.revert(d.job_id, step.revert_to)
            d.modify_index = idx
            return d

    def mark_stable(self, job_id: str, version: int) -> None:
        with self.lock:
            for v in self.jobs.get(job_id, []):
                if v.version == version:
                    v.stable = True

    def promote_deployment(
        self, deployment_id: str, groups: list[str]
    ) -> pb.DeploymentWriteResponse:
        with self.lock:
            d = _prefix_lookup(self.deployments, deployment_id, "deployment")
            if d.status != "running":
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"deployment {d.id[:8]} is {d.status}: only running ones promote",
                )
            if not any(g.desired_canaries for g in d.task_groups.values()):
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"deployment {d.id[:8]} has no canaries to promote",
                )
            idx = self.next_index()
            for name, state in d.task_groups.items():
                if not groups or name in groups:
                    state.promoted = True
            d.modify_index = idx
            ev = self._new_eval(self.job(d.job_id), "deployment-promotion", idx)
            ev.deployment_id = d.id
            return pb.DeploymentWriteResponse(eval_id=ev.id, index=idx)

    def fail_deployment(self, deployment_id: str) -> pb.DeploymentWriteResponse:
        """As the server: failed, and with auto_revert the newest other stable
        version registered again."""
        with self.lock:
            d = _prefix_lookup(self.deployments, deployment_id, "deployment")
            if d.status != "running":
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"deployment {d.id[:8]} is already {d.status}",
                )
            idx = self.next_index()
            d.status = "failed"
            d.status_description = "Deployment marked as failed"
            d.modify_index = idx
            self.deployment_steps.pop(d.id, None)
            job = self.job(d.job_id)
            reverted = ""
            target = None
            if any(g.auto_revert for g in d.task_groups.values()):
                target = next(
                    (
                        v
                        for v in reversed(self.jobs[d.job_id])
                        if v.stable and v.version != job.version
                    ),
                    None,
                )
            if target is not None:
                reverted = str(target.version)
                d.status_description += f" - rolling back to job version {reverted}"
                ev = self.revert(d.job_id, target.version)
            else:
                ev = self._new_eval(job, "deployment-watcher", idx)
            return pb.DeploymentWriteResponse(
                eval_id=ev.id, index=idx, reverted_job_version=reverted
            )

    def deregister(self, job_id: str, purge: bool) -> pb.Evaluation:
        with self.lock:
            job = self.job(job_id)
            idx = self.next_index()
            job.stop = True
            job.modify_index = idx
            ev = self._new_eval(job, structs.TRIGGER_JOB_DEREGISTER, idx)
            if purge:
                del self.jobs[job_id]
            return ev


class _Abort(Exception):
    """An error to answer with a gRPC status (raised inside the state's methods)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def _set_fields(state: pb.DeploymentState, values: dict[str, Any]) -> None:
    for key, value in values.items():
        if key == "placed_canaries":
            del state.placed_canaries[:]
            state.placed_canaries.extend(value)
        else:
            setattr(state, key, value)


def _without_count(group: pb.TaskGroup) -> bytes:
    copy = pb.TaskGroup()
    copy.CopyFrom(group)
    copy.count = 0
    data: bytes = copy.SerializeToString(deterministic=True)
    return data


def validate(job: pb.Job) -> list[str]:
    """A few of the server's validation rules, each problem on its own line."""
    problems: list[str] = []
    if not job.id:
        problems.append("Missing job ID")
    elif " " in job.id:
        problems.append("Job ID contains a space")
    if job.type and job.type not in structs.JOB_TYPES:
        problems.append(f'Invalid job type "{job.type}"')
    if not job.task_groups:
        problems.append("Missing job task groups")
    for group in job.task_groups:
        if group.count < 0:
            problems.append(f'Task group "{group.name}": count must be >= 0')
        if not group.tasks:
            problems.append(f'Task group "{group.name}": missing tasks')
    return problems


def _resolve_target(node: pb.Node, target: str) -> str | None:
    if not (target.startswith("${") and target.endswith("}")):
        return target
    name = target[2:-1]
    if name.startswith("attr."):
        return node.attributes.get(name[5:])
    if name.startswith("meta."):
        return node.meta.get(name[5:])
    return {
        "node.class": node.node_class,
        "node.datacenter": node.datacenter,
        "node.unique.name": node.name,
        "node.unique.id": node.id,
    }.get(name)


def _satisfies(node: pb.Node, c: pb.Constraint) -> bool:
    left = _resolve_target(node, c.l_target)
    right = _resolve_target(node, c.r_target)
    op = c.operand or "="
    if op in ("=", "==", "is"):
        return left is not None and left == right
    if op in ("!=", "not"):
        return left != right
    return True


def _prefix_lookup(table: dict[str, Any], key: str, kind: str) -> Any:
    """Nomad's prefix semantics: exact, else unique prefix, else a clear error."""
    if key in table:
        return table[key]
    matches = sorted(k for k in table if k.startswith(key)) if key else []
    if len(matches) == 1:
        return table[matches[0]]
    if len(matches) > 1:
        shown = ", ".join(m[:8] for m in matches)
        raise _Abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f'prefix "{key}" matches multiple {kind}s: {shown}',
        )
    raise _Abort(grpc.StatusCode.NOT_FOUND, f'{kind} "{key}" not found')


def _handles(fn: Any) -> Any:
    """Turn ``_Abort`` into the gRPC status, and record the request for assertions."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        self.state.requests.append((fn.__name__, request))
        injected = self.state.inject_errors.get(fn.__name__)
        if injected is not None:
            context.abort(*injected)
        try:
            return fn(self, request, context)
        except _Abort as err:
            context.abort(err.code, err.details)

    wrapper.__name__ = fn.__name__
    return wrapper


class _Jobs(rpc.JobServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    @_handles
    def Register(self, request: pb.JobRegisterRequest, context: Any) -> pb.JobRegisterResponse:
        ev = self.state.register(
            request.job, enforce=request.enforce_index, index=request.job_modify_index
        )
        job = self.state.job(request.job.id)
        return pb.JobRegisterResponse(
            eval_id=ev.id,
            eval_create_index=ev.create_index,
            job_modify_index=job.job_modify_index,
            index=self.state.index,
        )

    @_handles
    def Deregister(
        self, request: pb.JobDeregisterRequest, context: Any
    ) -> pb.JobDeregisterResponse:
        ev = self.state.deregister(request.job_id, request.purge)
        return pb.JobDeregisterResponse(eval_id=ev.id, index=self.state.index)

    @_handles
    def List(self, request: pb.JobListRequest, context: Any) -> pb.JobListResponse:
        with self.state.lock:
            resp = pb.JobListResponse()
            for job_id in sorted(self.state.jobs):
                if not job_id.startswith(request.prefix):
                    continue
                job = self.state.jobs[job_id][-1]
                resp.jobs.add(
                    id=job.id,
                    name=job.name,
                    namespace=job.namespace,
                    type=job.type,
                    priority=job.priority,
                    status=job.status,
                    stop=job.stop,
                    version=job.version,
                    submit_time=job.submit_time,
                    create_index=job.create_index,
                    modify_index=job.modify_index,
                    job_modify_index=job.job_modify_index,
                    datacenters=list(job.datacenters),
                )
            resp.meta.index = self.state.index
            return resp

    @_handles
    def Get(self, request: pb.JobGetRequest, context: Any) -> pb.JobGetResponse:
        with self.state.lock:
            return pb.JobGetResponse(job=self.state.job(request.job_id))

    @_handles
    def Allocations(
        self, request: pb.JobAllocationsRequest, context: Any
    ) -> pb.AllocationsResponse:
        with self.state.lock:
            self.state.job(request.job_id)
            allocs = [a for a in self.state.allocs.values() if a.job_id == request.job_id]
            return pb.AllocationsResponse(allocs=allocs)

    @_handles
    def Versions(self, request: pb.JobGetRequest, context: Any) -> pb.JobVersionsResponse:
        with self.state.lock:
            self.state.job(request.job_id)
            return pb.JobVersionsResponse(versions=reversed(self.state.jobs[request.job_id]))

    @_handles
    def Evaluations(self, request: pb.JobGetRequest, context: Any) -> pb.JobEvaluationsResponse:
        with self.state.lock:
            evals = [e for e in self.state.evals.values() if e.job_id == request.job_id]
            if not evals:
                self.state.job(request.job_id)
            return pb.JobEvaluationsResponse(evals=evals)

    @_handles
    def Plan(self, request: pb.JobPlanRequest, context: Any) -> pb.JobPlanResponse:
        return self.state.plan(request.job)

    @_handles
    def Validate(self, request: pb.JobValidateRequest, context: Any) -> pb.JobValidateResponse:
        problems = validate(request.job)
        return pb.JobValidateResponse(
            validation_errors=problems,
            error="\n".join(problems),
            warnings=self.state.validate_warnings,
            driver_config_validated=True,
        )

    @_handles
    def Scale(self, request: pb.JobScaleRequest, context: Any) -> pb.JobRegisterResponse:
        ev = self.state.scale(request.job_id, request.group, request.count)
        job = self.state.job(request.job_id)
        return pb.JobRegisterResponse(
            eval_id=ev.id,
            eval_create_index=ev.create_index,
            job_modify_index=job.job_modify_index,
            index=self.state.index,
        )

    @_handles
    def Revert(self, request: pb.JobRevertRequest, context: Any) -> pb.JobRegisterResponse:
        ev = self.state.revert(request.job_id, request.version)
        job = self.state.job(request.job_id)
        return pb.JobRegisterResponse(
            eval_id=ev.id,
            eval_create_index=ev.create_index,
            job_modify_index=job.job_modify_index,
            index=self.state.index,
        )


class _Allocs(rpc.AllocServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    @_handles
    def List(self, request: pb.AllocListRequest, context: Any) -> pb.AllocationsResponse:
        with self.state.lock:
            allocs = []
            for a in self.state.allocs.values():
                if a.id.startswith(request.prefix) and (
                    not request.node_id or a.node_id == request.node_id
                ):
                    copy = pb.Allocation()
                    copy.CopyFrom(a)
                    allocs.append(copy)
            if request.node_id:
                self.state.advance_drain(request.node_id)  # seen on the next listing
            return pb.AllocationsResponse(allocs=allocs)

    @_handles
    def Restart(self, request: pb.AllocRestartRequest, context: Any) -> pb.AllocRestartResponse:
        with self.state.lock:
            alloc = _prefix_lookup(self.state.allocs, request.alloc_id, "allocation")
            if structs.is_alloc_terminal(alloc):
                raise _Abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"allocation {alloc.id[:8]} is not running",
                )
            if request.task and request.task not in alloc.task_states:
                raise _Abort(
                    grpc.StatusCode.NOT_FOUND,
                    f'task "{request.task}" not found in allocation {alloc.id[:8]}',
                )
            idx = self.state.next_index()
            for name in [request.task] if request.task else sorted(alloc.task_states):
                state = alloc.task_states[name]
                state.restarts += 1
                state.last_restart = _now()
                state.events.add(
                    type=structs.EVENT_RESTART_SIGNAL,
                    time=_now(),
                    display_message="User requested task to restart",
                )
            self.state.restarts.append((alloc.id, request.task))
            return pb.AllocRestartResponse(index=idx)

    @_handles
    def Get(self, request: pb.AllocGetRequest, context: Any) -> pb.AllocGetResponse:
        with self.state.lock:
            alloc = _prefix_lookup(self.state.allocs, request.alloc_id, "allocation")
            return pb.AllocGetResponse(alloc=alloc)

    @_handles
    def Stop(self, request: pb.AllocStopRequest, context: Any) -> pb.AllocStopResponse:
        with self.state.lock:
            alloc = _prefix_lookup(self.state.allocs, request.alloc_id, "allocation")
            idx = self.state.next_index()
            alloc.desired_transition.migrate = True
            job = self.state.job(alloc.job_id)
            self.state._stop(alloc, "alloc was stopped by the operator", idx)
            ev = self.state._new_eval(job, structs.TRIGGER_ALLOC_STOP, idx)
            return pb.AllocStopResponse(eval_id=ev.id, index=idx)

    def Logs(
        self, request: pb.AllocLogsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LogChunk]:
        self.state.requests.append(("Logs", request))
        try:
            with self.state.lock:
                alloc = _prefix_lookup(self.state.allocs, request.alloc_id, "allocation")
                if request.task not in alloc.task_states:
                    raise _Abort(
                        grpc.StatusCode.NOT_FOUND,
                        f'task "{request.task}" not found in allocation {alloc.id[:8]}',
                    )
                key = (alloc.id, request.task, request.type or "stdout")
                data = self.state.logs.get(key, b"")
                more = list(self.state.follow_chunks.get(key, []))
        except _Abort as err:
            context.abort(err.code, err.details)
        if request.origin == "end":
            data = data[-request.offset :] if request.offset else b""
        else:
            data = data[request.offset :]
        if data:
            yield pb.LogChunk(data=data)
        if request.follow:
            for chunk in more:
                time.sleep(0.05)
                if not context.is_active():
                    return
                yield pb.LogChunk(data=chunk)


class _Evals(rpc.EvalServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    @_handles
    def Get(self, request: pb.EvalGetRequest, context: Any) -> pb.EvalGetResponse:
        with self.state.lock:
            ev = _prefix_lookup(self.state.evals, request.eval_id, "evaluation")
            return pb.EvalGetResponse(eval=self.state.read_eval(ev))

    @_handles
    def List(self, request: pb.EvalListRequest, context: Any) -> pb.EvalListResponse:
        with self.state.lock:
            evals = [
                e
                for e in self.state.evals.values()
                if e.id.startswith(request.prefix)
                and (not request.job_id or e.job_id == request.job_id)
            ]
            return pb.EvalListResponse(evals=evals)


class _Nodes(rpc.NodeServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    @_handles
    def List(self, request: pb.NodeListRequest, context: Any) -> pb.NodeListResponse:
        with self.state.lock:
            nodes = []
            for n in sorted(self.state.nodes.values(), key=lambda n: n.name):
                if n.id.startswith(request.prefix):
                    stub = pb.Node()
                    stub.CopyFrom(n)
                    stub.ClearField("secret_id")
                    nodes.append(stub)
            return pb.NodeListResponse(nodes=nodes)

    @_handles
    def Get(self, request: pb.NodeGetRequest, context: Any) -> pb.NodeGetResponse:
        with self.state.lock:
            node = pb.Node()
            node.CopyFrom(_prefix_lookup(self.state.nodes, request.node_id, "node"))
            node.ClearField("secret_id")
            return pb.NodeGetResponse(node=node)

    @_handles
    def SetEligibility(self, request: pb.NodeEligibilityRequest, context: Any) -> pb.WriteResponse:
        with self.state.lock:
            node = _prefix_lookup(self.state.nodes, request.node_id, "node")
            if request.eligible and node.drain:
                raise _Abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "can not set node's scheduling eligibility to eligible while it is draining",
                )
            idx = self.state.next_index()
            node.scheduling_eligibility = (
                structs.NODE_ELIGIBLE if request.eligible else structs.NODE_INELIGIBLE
            )
            node.modify_index = idx
            return pb.WriteResponse(index=idx)

    @_handles
    def SetDrain(self, request: pb.NodeDrainRequest, context: Any) -> pb.WriteResponse:
        return pb.WriteResponse(index=self.state.set_drain(request))


class _Deployments(rpc.DeploymentServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    @_handles
    def List(self, request: pb.DeploymentListRequest, context: Any) -> pb.DeploymentListResponse:
        with self.state.lock:
            deps = [
                _copy_deployment(d)
                for d in self.state.deployments.values()
                if not request.job_id or d.job_id == request.job_id
            ]
            deps.sort(key=lambda d: d.create_index, reverse=True)
            return pb.DeploymentListResponse(
                deployments=deps, meta=pb.QueryMeta(index=self.state.index, known_leader=True)
            )

    @_handles
    def Get(self, request: pb.DeploymentGetRequest, context: Any) -> pb.DeploymentGetResponse:
        with self.state.lock:
            d = _prefix_lookup(self.state.deployments, request.deployment_id, "deployment")
            d = self.state.read_deployment(d)
            return pb.DeploymentGetResponse(
                deployment=_copy_deployment(d),
                meta=pb.QueryMeta(index=self.state.index, known_leader=True),
            )

    @_handles
    def Promote(
        self, request: pb.DeploymentPromoteRequest, context: Any
    ) -> pb.DeploymentWriteResponse:
        return self.state.promote_deployment(request.deployment_id, list(request.groups))

    @_handles
    def Fail(self, request: pb.DeploymentFailRequest, context: Any) -> pb.DeploymentWriteResponse:
        return self.state.fail_deployment(request.deployment_id)


def _copy_deployment(d: pb.Deployment) -> pb.Deployment:
    copy = pb.Deployment()
    copy.CopyFrom(d)
    return copy


class _Status(rpc.StatusServiceServicer):
    def __init__(self, state: FakeState, address: str) -> None:
        self.state = state
        self.address = address

    @_handles
    def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        with self.state.lock:
            leader = next((m for m in self.state.members if m.leader), None)
            return pb.StatusResponse(
                leader=(leader.rpc_address or leader.address) if leader else "",
                members=self.state.members,
                index=self.state.index,
            )


class _Operator(rpc.OperatorServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

    @_handles
    def RaftListPeers(self, request: pb.StatusRequest, context: Any) -> pb.RaftPeersResponse:
        with self.state.lock:
            servers = [
                pb.RaftServer(
                    id=m.raft_address,
                    node=m.name,
                    address=m.raft_address,
                    leader=m.leader,
                    voter=m.voter,
                    raft_protocol="3",
                )
                for m in self.state.members
            ]
            return pb.RaftPeersResponse(servers=servers, index=self.state.index)

    @_handles
    def RaftAddPeer(self, request: pb.RaftPeerRequest, context: Any) -> pb.WriteResponse:
        with self.state.lock:
            address = request.address
            if ":" not in address:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"address {address!r} must be host:port of a raft peer",
                )
            if any(m.raft_address == address for m in self.state.members):
                raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, f"{address} is already a peer")
            self.state.members.append(
                pb.ServerMember(
                    id=address,
                    name=address,
                    address=address.rsplit(":", 1)[0],
                    raft_address=address,
                    raft_state="follower",
                    voter=True,
                    healthy=True,
                )
            )
            return pb.WriteResponse(index=self.state.next_index())

    @_handles
    def RaftRemovePeer(self, request: pb.RaftPeerRequest, context: Any) -> pb.WriteResponse:
        with self.state.lock:
            match = [m for m in self.state.members if m.raft_address == request.address]
            if not match:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"{request.address} is not a raft peer"
                )
            if match[0].leader:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "a server cannot remove itself; remove it from another server",
                )
            self.state.members.remove(match[0])
            return pb.WriteResponse(index=self.state.next_index())


class FakeServer:
    """A running fake: ``address`` to dial, ``state`` to arrange and inspect."""

    def __init__(self) -> None:
        self.state = FakeState()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.state.members.append(
            pb.ServerMember(
                id="fake",
                name="fake-server",
                address="127.0.0.1",
                raft_address=f"127.0.0.1:{self.port + 1}",
                rpc_address=self.address,
                raft_state="leader",
                leader=True,
                voter=True,
                healthy=True,
                last_index=1,
            )
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        rpc.add_JobServiceServicer_to_server(_Jobs(self.state), self._server)
        rpc.add_AllocServiceServicer_to_server(_Allocs(self.state), self._server)
        rpc.add_EvalServiceServicer_to_server(_Evals(self.state), self._server)
        rpc.add_NodeServiceServicer_to_server(_Nodes(self.state), self._server)
        rpc.add_StatusServiceServicer_to_server(_Status(self.state, self.address), self._server)
        rpc.add_OperatorServiceServicer_to_server(_Operator(self.state), self._server)
        rpc.add_DeploymentServiceServicer_to_server(_Deployments(self.state), self._server)
        self._server.add_insecure_port(self.address)

    def start(self) -> FakeServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_job(self, job: pb.Job) -> pb.Evaluation:
        """Register and schedule a job at once (arranging a test's starting state)."""
        ev = self.state.register(job)
        self.state.process(ev.id)
        return self.state.evals[ev.id]


def sample_job(
    job_id: str = "hello",
    *,
    count: int = 1,
    memory_mb: int = 256,
    tasks: tuple[str, ...] = ("server",),
    group: str = "web",
    constraints: tuple[tuple[str, str, str], ...] = (),
) -> pb.Job:
    """A small service job with one group, a dynamic "http" port and mock tasks."""
    job = pb.Job(id=job_id, name=job_id, type="service", datacenters=["dc1"])
    tg = job.task_groups.add(name=group, count=count)
    tg.networks.add(mode="host").dynamic_ports.add(label="http", to=8080)
    for name in tasks:
        task = tg.tasks.add(name=name, driver="mock")
        task.resources.cpu = 100
        task.resources.memory_mb = memory_mb
    for left, op, right in constraints:
        job.constraints.add(l_target=left, operand=op, r_target=right)
    return job
