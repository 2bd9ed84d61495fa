"""An in-process scripted corral server: real gRPC, in-memory tables, a toy scheduler.

Why a fake beside the real in-memory server (``inproc_server``): some of what the
CLI shows cannot be produced on demand by the real server without client agents
and time passing, and a test must see it in a known order:

* a rollout's progress and end (``DeploymentService`` is scripted: a test adds a
  deployment with ``add_deployment`` or queues scripts for the deployments the
  next registrations of a service job with an ``update`` block create,
  ``queued_deployments``; each script is a list of :class:`DeploymentStep` applied
  one per ``DeploymentService.Get`` read; ``Promote`` and ``Fail`` follow the real
  server's rules);
* a drain that advances one step each time the node's allocations are listed
  (marked for migration, stopped, complete; then the drain ends);
* what client agents report: task states and events, logs (``logs``,
  ``follow_chunks``), restarts;
* an evaluation that stays ``pending`` for ``pending_reads`` reads, as with no
  scheduler running;
* a cluster membership to taste (``state.members`` behind ``Status`` and the raft
  peer calls).

Everything else (validation, constraints, plans, scaling, job stop) is the real
server's business, and the CLI tests check it against the real server. The toy
scheduler here only places ``count`` allocations per group on ready nodes with
free memory and cpu, so that rollouts have allocations to count. Requests are
recorded and errors injected by the same interceptor as on the real server
(``log``: :class:`RequestLog`). :class:`FakeClock` is the other half of scripted
timing: the CLI's monitors wait on it instead of the real clock.

The last section keeps what ``tests/unit/test_api_client.py`` alone still uses
(the fake's validation, check-index, list endpoints...); it goes when that file
moves to the real server too.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from corral import structs
from corral.cli import monitor
from corral.proto import pb, rpc
from tests.support.env import free_port
from tests.support.inproc_server import RequestLog
from tests.support.inproc_server import sample_job as sample_job  # its old home


def _now() -> int:
    return time.time_ns()


class FakeClock:
    """A monotonic clock that moves only when a monitor sleeps on it.

    ``sleeps`` lists every wait asked for, so that a test checks the pacing (a poll
    interval, a retry delay) without spending it.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)


def use_fake_clock(
    monkeypatch: pytest.MonkeyPatch, *, eval_timeout: float = monitor.MONITOR_TIMEOUT
) -> FakeClock:
    """Make the CLI's commands follow evaluations and deployments on a fake clock.

    The commands call the monitors through ``corral.cli.monitor`` with the real
    clock by default; this binds a :class:`FakeClock` (and ``eval_timeout``) into
    those entry points for the test's duration.
    """
    clock = FakeClock()
    timing = {"clock": clock.monotonic, "sleep": clock.sleep}
    for name in ("follow_deployment", "monitor_job_deployment", "monitor_deployment"):
        monkeypatch.setattr(monitor, name, functools.partial(getattr(monitor, name), **timing))
    for name in ("monitor_eval", "monitor_register"):
        entry = functools.partial(getattr(monitor, name), timeout=eval_timeout, **timing)
        monkeypatch.setattr(monitor, name, entry)
    return clock


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
        # The servers (Status, raft peers); FakeServer puts itself here.
        self.members: list[pb.ServerMember] = []
        # A draining node's allocations move one step per listing when True.
        self.drain_progress = True
        # (alloc id, task) of every AllocService.Restart.
        self.restarts: list[tuple[str, str]] = []
        # Deployments by ID, and the steps still to apply to each (one per Get).
        self.deployments: dict[str, pb.Deployment] = {}
        self.deployment_steps: dict[str, list[DeploymentStep]] = {}
        # Scripts of the deployments the next registrations create, oldest first; a
        # service job with an update block gets a deployment only if one is queued.
        self.queued_deployments: list[list[DeploymentStep]] = []
        # FakeServer points these at its RequestLog's (test_api_client.py's names).
        self.requests: list[tuple[str, Any]] = []
        self.inject_errors: dict[str, tuple[grpc.StatusCode, str]] = {}

    def next_index(self) -> int:
        self.index += 1
        return self.index

    # ---------------------------------------------------------------- helpers

    def add_node(
        self, name: str, *, cpu: int = 4000, memory_mb: int = 4096, node_id: str = ""
    ) -> pb.Node:
        """A ready node with the mock and docker drivers."""
        with self.lock:
            idx = self.next_index()
            node = pb.Node(
                id=node_id or str(uuid.uuid4()),
                secret_id=str(uuid.uuid4()),
                name=name,
                datacenter="dc1",
                http_addr="127.0.0.1:4646",
                attributes={"kernel.name": "linux", "unique.hostname": name},
                status=structs.NODE_STATUS_READY,
                status_updated_at=_now(),
                scheduling_eligibility=structs.NODE_ELIGIBLE,
                create_index=idx,
                modify_index=idx,
            )
            for driver in ("docker", "mock"):
                node.drivers[driver].CopyFrom(
                    pb.DriverInfo(detected=True, healthy=True, health_description="Healthy")
                )
            node.node_resources.cpu.cpu_shares = cpu
            node.node_resources.memory.memory_mb = memory_mb
            self.nodes[node.id] = node
            return node

    def register(self, job: pb.Job, *, enforce: bool = False, index: int = 0) -> pb.Evaluation:
        """Store a new version of ``job`` and a pending evaluation for it. Its checks
        (``check_job``, ``enforce``) serve test_api_client.py only."""
        with self.lock:
            versions = self.jobs.get(job.id, [])
            current = versions[-1] if versions else None
            check_job(job, current, enforce, index)
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
            return self._new_eval(stored, structs.TRIGGER_JOB_REGISTER, idx)

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
        """Run the toy scheduler for one evaluation: ``count`` allocations per group,
        each on the ready node with the most free memory."""
        with self.lock:
            ev = self.evals[eval_id]
            if ev.status != structs.EVAL_STATUS_PENDING:
                return
            job = self.job(ev.job_id)
            idx = self.next_index()
            live = [
                a
                for a in self.allocs.values()
                if a.job_id == ev.job_id and not structs.is_alloc_terminal(a)
            ]
            placed: dict[str, list[pb.Allocation]] = {}
            for group in job.task_groups:
                have = [a for a in live if a.task_group == group.name]
                for a in have[group.count :]:
                    self._stop(a, "alloc not needed due to job update", idx)
                used = {int(a.alloc_index) for a in have[: group.count]}
                placed[group.name] = []
                metric = pb.AllocMetric()
                for i in (i for i in range(group.count) if i not in used):
                    node = self._select(group, metric)
                    if node is None:
                        metric.coalesced_failures += 1
                        continue
                    placed[group.name].append(self._place(job, group, i, node, ev, idx))
                if metric.coalesced_failures:
                    metric.coalesced_failures -= 1
                    ev.failed_tg_allocs[group.name].CopyFrom(metric)
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

    def _stop(self, alloc: pb.Allocation, why: str, idx: int) -> None:
        alloc.desired_status = structs.ALLOC_DESIRED_STOP
        alloc.desired_description = why
        alloc.client_status = structs.ALLOC_CLIENT_COMPLETE
        alloc.modify_index = idx
        alloc.modify_time = _now()

    def _select(self, group: pb.TaskGroup, metric: pb.AllocMetric) -> pb.Node | None:
        """The ready node with the most free memory that fits the group, filling
        ``metric`` with the nodes that did not."""
        want_cpu = sum(t.resources.cpu for t in group.tasks)
        want_mem = sum(t.resources.memory_mb for t in group.tasks)
        best: tuple[int, pb.Node] | None = None
        metric.nodes_evaluated = metric.nodes_exhausted = 0
        metric.ClearField("dimension_exhausted")
        for node in sorted(self.nodes.values(), key=lambda n: n.name):
            if node.status != structs.NODE_STATUS_READY:
                continue
            metric.nodes_evaluated += 1
            held = [
                tr
                for a in self.allocs.values()
                if a.node_id == node.id and not structs.is_alloc_terminal(a)
                for tr in a.allocated_resources.tasks.values()
            ]
            free_cpu = node.node_resources.cpu.cpu_shares - sum(t.cpu.cpu_shares for t in held)
            free_mem = node.node_resources.memory.memory_mb - sum(t.memory.memory_mb for t in held)
            short = "memory" if free_mem < want_mem else "cpu" if free_cpu < want_cpu else ""
            if short:
                metric.nodes_exhausted += 1
                metric.dimension_exhausted[short] += 1
            elif best is None or free_mem > best[0]:
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
            client_status=structs.ALLOC_CLIENT_RUNNING,
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
                type=structs.EVENT_STARTED, time=now, display_message="Task started by client"
            )
        self.allocs[alloc.id] = alloc
        return alloc

    # ---------------------------------------------------------------- drains

    def revert(self, job_id: str, version: int) -> pb.Evaluation:
        """Register ``version`` of the job again (an auto-revert)."""
        with self.lock:
            return self.register(next(v for v in self.jobs[job_id] if v.version == version))

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
        groups: dict[str, dict[str, Any]] | None = None,
        status: str = "running",
        description: str = "Deployment is running",
        steps: list[DeploymentStep] | tuple[DeploymentStep, ...] = (),
    ) -> pb.Deployment:
        """A deployment of ``job_id``'s current version.

        Each group starts from the job's group (desired = count, the update block's
        auto_revert, auto_promote, canary and progress deadline), then ``groups``
        overrides fields; ``steps`` are applied one per ``Get``.
        """
        with self.lock:
            job = self.job(job_id)
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


def _prefix_lookup(table: dict[str, Any], key: str, kind: str) -> Any:
    """Nomad's prefix semantics: exact, else unique prefix, else a clear error.

    The wording is the fake's own, not the real server's (``no allocation with ID
    prefix 'ffff'``, ``prefix 'ab' matched 2 allocations: ...``): test_api_client.py
    asserts it; the CLI prints either unchanged.
    """
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
    """Answer an ``_Abort`` raised by the tables with its gRPC status."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except _Abort as err:
            context.abort(err.code, err.details)

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

    def Logs(
        self, request: pb.AllocLogsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LogChunk]:
        try:
            with self.state.lock:
                alloc = _prefix_lookup(self.state.allocs, request.alloc_id, "allocation")
                if request.task not in alloc.task_states:
                    raise _Abort(grpc.StatusCode.NOT_FOUND, f'task "{request.task}" not found')
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


class _Nodes(rpc.NodeServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state

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
    def __init__(self, state: FakeState) -> None:
        self.state = state

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
    """A running fake: ``address`` to dial, ``state`` to arrange and inspect,
    ``log`` for the requests it got and the errors it should answer."""

    def __init__(self) -> None:
        self.state = FakeState()
        self.log = RequestLog()
        # The names test_api_client.py uses (the same list and dict as ``log``'s).
        self.state.requests = self.log.requests
        self.state.inject_errors = self.log.inject_errors
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
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16), interceptors=[self.log]
        )
        rpc.add_JobServiceServicer_to_server(_ClientJobs(self.state), self._server)
        rpc.add_AllocServiceServicer_to_server(_ClientAllocs(self.state), self._server)
        rpc.add_EvalServiceServicer_to_server(_ClientEvals(self.state), self._server)
        rpc.add_NodeServiceServicer_to_server(_ClientNodes(self.state), self._server)
        rpc.add_StatusServiceServicer_to_server(_Status(self.state), self._server)
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


# ---------------------------------------------------------------- for test_api_client.py
#
# What only tests/unit/test_api_client.py (CorralClient against a gRPC server, not a
# CLI test) still uses: the fake's validation, check-index and wording, the list
# endpoints, deregister and alloc stop. Once that file runs against
# ``inproc_server.InProcServer`` (as the CLI tests do), this section goes, with
# ``register``'s checks, ``add_node(node_id=)`` and ``state.requests``/``inject_errors``.


def check_job(job: pb.Job, current: pb.Job | None, enforce: bool, index: int) -> None:
    """A few of the server's validation rules, in the fake's wording, and
    ``--check-index`` (FAILED_PRECONDITION here; the real server says
    INVALID_ARGUMENT)."""
    problems: list[str] = []
    if not job.id:
        problems.append("Missing job ID")
    elif " " in job.id:
        problems.append("Job ID contains a space")
    if not job.task_groups:
        problems.append("Missing job task groups")
    if problems:
        raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, "\n".join(problems))
    have = current.job_modify_index if current is not None else 0
    if enforce and have != index:
        raise _Abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"enforcing job modify index {index}: job exists with conflicting job modify "
            f"index: {have}",
        )


class _ClientJobs(_Jobs):
    @_handles
    def List(self, request: pb.JobListRequest, context: Any) -> pb.JobListResponse:
        with self.state.lock:
            jobs = [
                v[-1] for k, v in sorted(self.state.jobs.items()) if k.startswith(request.prefix)
            ]
            return pb.JobListResponse(
                jobs=[pb.JobListStub(id=j.id, name=j.name, type=j.type) for j in jobs]
            )

    @_handles
    def Evaluations(self, request: pb.JobGetRequest, context: Any) -> pb.JobEvaluationsResponse:
        with self.state.lock:
            evals = [e for e in self.state.evals.values() if e.job_id == request.job_id]
            return pb.JobEvaluationsResponse(evals=evals)

    @_handles
    def Deregister(
        self, request: pb.JobDeregisterRequest, context: Any
    ) -> pb.JobDeregisterResponse:
        with self.state.lock:
            job = self.state.job(request.job_id)
            ev = self.state._new_eval(job, structs.TRIGGER_JOB_DEREGISTER, self.state.next_index())
            if request.purge:
                del self.state.jobs[request.job_id]
            return pb.JobDeregisterResponse(eval_id=ev.id, index=self.state.index)


class _ClientAllocs(_Allocs):
    @_handles
    def Stop(self, request: pb.AllocStopRequest, context: Any) -> pb.AllocStopResponse:
        with self.state.lock:
            alloc = _prefix_lookup(self.state.allocs, request.alloc_id, "allocation")
            idx = self.state.next_index()
            self.state._stop(alloc, "alloc was stopped by the operator", idx)
            ev = self.state._new_eval(self.state.job(alloc.job_id), structs.TRIGGER_ALLOC_STOP, idx)
            return pb.AllocStopResponse(eval_id=ev.id, index=idx)


class _ClientEvals(_Evals):
    @_handles
    def List(self, request: pb.EvalListRequest, context: Any) -> pb.EvalListResponse:
        with self.state.lock:
            evals = [e for e in self.state.evals.values() if e.job_id == request.job_id]
            return pb.EvalListResponse(evals=evals)


class _ClientNodes(_Nodes):
    @_handles
    def List(self, request: pb.NodeListRequest, context: Any) -> pb.NodeListResponse:
        with self.state.lock:
            nodes = sorted(self.state.nodes.values(), key=lambda n: n.name)
            return pb.NodeListResponse(nodes=[n for n in nodes if n.id.startswith(request.prefix)])
