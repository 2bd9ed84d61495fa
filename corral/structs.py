"""Shared vocabulary of the domain model: status names, IDs, Nomad's defaults.

The objects themselves are the protobuf messages of ``corral.proto`` (one model for
server, scheduler, client and CLI). This module holds what every side must agree on
and that a message cannot say by itself: the status strings, the defaults Nomad
fills in (``canonicalize``), and small derived values (allocation names).
Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import enum
import uuid

from corral.proto import pb

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

DEFAULT_NAMESPACE = "default"
DEFAULT_REGION = "global"
DEFAULT_PRIORITY = 50
DEFAULT_CPU_MHZ = 100
DEFAULT_MEMORY_MB = 300
MIN_DYNAMIC_PORT = 20000
MAX_DYNAMIC_PORT = 32000
JOB_MAX_COUNT = 50_000
JOB_TRACKED_VERSIONS = 6

JOB_TYPE_SERVICE = "service"
JOB_TYPE_BATCH = "batch"
JOB_TYPE_SYSTEM = "system"
JOB_TYPES = (JOB_TYPE_SERVICE, JOB_TYPE_BATCH, JOB_TYPE_SYSTEM)

# Statuses: each family is one StrEnum (members are str, so they compare with and
# assign to protobuf string fields as they are). The UPPER_CASE names below are
# the same members under the names the code grew up with; there is no second
# spelling of any status anywhere else.


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DEAD = "dead"


class NodeStatus(enum.StrEnum):
    INIT = "initializing"
    READY = "ready"
    DOWN = "down"


class NodeEligibility(enum.StrEnum):
    ELIGIBLE = "eligible"
    INELIGIBLE = "ineligible"


class AllocDesiredStatus(enum.StrEnum):
    RUN = "run"
    STOP = "stop"
    EVICT = "evict"


class AllocClientStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "failed"
    LOST = "lost"


class TaskState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DEAD = "dead"


class EvalStatus(enum.StrEnum):
    PENDING = "pending"
    COMPLETE = "complete"
    FAILED = "failed"
    BLOCKED = "blocked"
    CANCELED = "canceled"


class DeploymentStatus(enum.StrEnum):
    """Nomad's deployment statuses (``paused`` is not used yet)."""

    RUNNING = "running"
    SUCCESSFUL = "successful"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_STATUS_PENDING = JobStatus.PENDING
JOB_STATUS_RUNNING = JobStatus.RUNNING
JOB_STATUS_DEAD = JobStatus.DEAD

NODE_STATUS_INIT = NodeStatus.INIT
NODE_STATUS_READY = NodeStatus.READY
NODE_STATUS_DOWN = NodeStatus.DOWN
NODE_ELIGIBLE = NodeEligibility.ELIGIBLE
NODE_INELIGIBLE = NodeEligibility.INELIGIBLE

ALLOC_DESIRED_RUN = AllocDesiredStatus.RUN
ALLOC_DESIRED_STOP = AllocDesiredStatus.STOP
ALLOC_DESIRED_EVICT = AllocDesiredStatus.EVICT

ALLOC_CLIENT_PENDING = AllocClientStatus.PENDING
ALLOC_CLIENT_RUNNING = AllocClientStatus.RUNNING
ALLOC_CLIENT_COMPLETE = AllocClientStatus.COMPLETE
ALLOC_CLIENT_FAILED = AllocClientStatus.FAILED
ALLOC_CLIENT_LOST = AllocClientStatus.LOST
ALLOC_TERMINAL_CLIENT = (ALLOC_CLIENT_COMPLETE, ALLOC_CLIENT_FAILED, ALLOC_CLIENT_LOST)

TASK_STATE_PENDING = TaskState.PENDING
TASK_STATE_RUNNING = TaskState.RUNNING
TASK_STATE_DEAD = TaskState.DEAD

EVAL_STATUS_PENDING = EvalStatus.PENDING
EVAL_STATUS_COMPLETE = EvalStatus.COMPLETE
EVAL_STATUS_FAILED = EvalStatus.FAILED
EVAL_STATUS_BLOCKED = EvalStatus.BLOCKED
EVAL_STATUS_CANCELED = EvalStatus.CANCELED

DEPLOYMENT_DESC_RUNNING = "Deployment is running"
DEPLOYMENT_DESC_NEEDS_PROMOTION = "Deployment is running but requires manual promotion"
DEPLOYMENT_DESC_AUTO_PROMOTION = "Deployment is running pending automatic promotion"


def running_deployment_description(d: pb.Deployment) -> str:
    """Nomad's description of a running deployment: whether it waits for a
    promotion of its canaries, and whose (an operator's, or its own)."""
    waiting = [g for g in d.task_groups.values() if g.desired_canaries and not g.promoted]
    if not waiting:
        return DEPLOYMENT_DESC_RUNNING
    if all(g.auto_promote for g in waiting):
        return DEPLOYMENT_DESC_AUTO_PROMOTION
    return DEPLOYMENT_DESC_NEEDS_PROMOTION


DEPLOYMENT_TERMINAL = (
    DeploymentStatus.SUCCESSFUL,
    DeploymentStatus.FAILED,
    DeploymentStatus.CANCELLED,
)

TRIGGER_JOB_REGISTER = "job-register"
TRIGGER_JOB_DEREGISTER = "job-deregister"
TRIGGER_NODE_UPDATE = "node-update"
TRIGGER_NODE_DRAIN = "node-drain"
TRIGGER_ALLOC_STOP = "alloc-stop"
TRIGGER_RETRY_FAILED_ALLOC = "alloc-failure"
TRIGGER_QUEUED_ALLOCS = "queued-allocs"
TRIGGER_SCALING = "job-scaling"
TRIGGER_MAX_PLANS = "max-plan-attempts"

# Task event types (Nomad's names).
EVENT_RECEIVED = "Received"
EVENT_SETUP = "Task Setup"
EVENT_DRIVER_FAILURE = "Driver Failure"
EVENT_STARTED = "Started"
EVENT_TERMINATED = "Terminated"
EVENT_KILLING = "Killing"
EVENT_KILLED = "Killed"
EVENT_RESTARTING = "Restarting"
EVENT_NOT_RESTARTING = "Not Restarting"
EVENT_RESTART_SIGNAL = "Restart Signaled"
EVENT_LEADER_DEAD = "Leader Task Dead"
EVENT_SIBLING_FAILED = "Sibling Task Failed"


def new_id() -> str:
    """A random UUID, as Nomad's IDs. Never called inside FSM apply."""
    return str(uuid.uuid4())


def alloc_name(job_id: str, group: str, index: int) -> str:
    """``job.group[index]``: Nomad's allocation name."""
    return f"{job_id}.{group}[{index}]"


def is_alloc_terminal(alloc: pb.Allocation) -> bool:
    """True when the allocation no longer holds (or will soon release) resources.

    Nomad counts an allocation's resources until the server wants it stopped or the
    client says it ended.
    """
    return (
        alloc.desired_status in (ALLOC_DESIRED_STOP, ALLOC_DESIRED_EVICT)
        or alloc.client_status in ALLOC_TERMINAL_CLIENT
    )


def holds_resources(alloc: pb.Allocation) -> bool:
    """Whether the allocation's resources (cpu, memory, ports) count on its node.

    Until its client says it ended, as Nomad since 1.1 (``AllocsFit`` skips only
    client-terminal allocations): an allocation the server stopped may still run
    its shutdown delay or kill timeout and hold its ports meanwhile, so nothing else
    may be placed into them (Nomad's e2e ``overlap``). A plan's own stops are
    subtracted by the scheduler and the plan applier, so a destructive update still
    reuses what it frees."""
    return alloc.client_status not in ALLOC_TERMINAL_CLIENT


def is_client_terminal(alloc: pb.Allocation) -> bool:
    return alloc.client_status in ALLOC_TERMINAL_CLIENT


def default_restart_policy(job_type: str) -> pb.RestartPolicy:
    if job_type == JOB_TYPE_BATCH:
        return pb.RestartPolicy(attempts=3, interval=24 * HOUR, delay=15 * SECOND, mode="fail")
    return pb.RestartPolicy(attempts=2, interval=30 * MINUTE, delay=15 * SECOND, mode="fail")


def default_reschedule_policy(job_type: str) -> pb.ReschedulePolicy:
    if job_type == JOB_TYPE_BATCH:
        return pb.ReschedulePolicy(
            attempts=1, interval=24 * HOUR, delay=5 * SECOND, delay_function="constant"
        )
    if job_type == JOB_TYPE_SYSTEM:
        return pb.ReschedulePolicy()
    return pb.ReschedulePolicy(
        delay=30 * SECOND, delay_function="exponential", max_delay=HOUR, unlimited=True
    )


def default_update_strategy() -> pb.UpdateStrategy:
    return pb.UpdateStrategy(
        max_parallel=1,
        health_check="checks",
        min_healthy_time=10 * SECOND,
        healthy_deadline=5 * MINUTE,
        progress_deadline=10 * MINUTE,
    )


def default_migrate_strategy() -> pb.MigrateStrategy:
    return pb.MigrateStrategy(
        max_parallel=1,
        health_check="checks",
        min_healthy_time=10 * SECOND,
        healthy_deadline=5 * MINUTE,
    )


def canonicalize(job: pb.Job) -> None:
    """Fill in Nomad's defaults, in place, so that every server stores the same job.

    Called by the API before validation and before the job is proposed to raft.
    """
    if not job.name:
        job.name = job.id
    if not job.namespace:
        job.namespace = DEFAULT_NAMESPACE
    if not job.region:
        job.region = DEFAULT_REGION
    if not job.type:
        job.type = JOB_TYPE_SERVICE
    if not job.priority:
        job.priority = DEFAULT_PRIORITY
    if not job.datacenters:
        job.datacenters.append("*")
    for group in job.task_groups:
        if not group.HasField("restart_policy"):
            group.restart_policy.CopyFrom(default_restart_policy(job.type))
        if not group.HasField("reschedule_policy"):
            group.reschedule_policy.CopyFrom(default_reschedule_policy(job.type))
        if job.type == JOB_TYPE_SERVICE and not group.HasField("migrate"):
            group.migrate.CopyFrom(default_migrate_strategy())
        if job.type == JOB_TYPE_SERVICE:
            # Every service group gets Nomad's default update strategy, with the
            # job's and the group's update blocks over it (Nomad's api
            # Job.Canonicalize): so every new version goes through a deployment,
            # unless max_parallel = 0 says otherwise.
            merged = default_update_strategy()
            if job.HasField("update"):
                _merge_nonzero(merged, job.update)
            if group.HasField("update"):
                _merge_nonzero(merged, group.update)
            group.update.CopyFrom(merged)
        for task in group.tasks:
            if not task.HasField("resources"):
                task.resources.SetInParent()
            if not task.resources.cpu and not task.resources.cores:
                task.resources.cpu = DEFAULT_CPU_MHZ
            if not task.resources.memory_mb:
                task.resources.memory_mb = DEFAULT_MEMORY_MB
            if not task.kill_timeout:
                task.kill_timeout = 5 * SECOND
            if not task.kill_signal:
                task.kill_signal = "SIGTERM" if task.driver == "docker" else "SIGINT"


def _merge_nonzero(dst: pb.UpdateStrategy, src: pb.UpdateStrategy) -> None:
    """Copy the fields of ``src`` that are set (non-zero) over ``dst``."""
    for field, value in src.ListFields():
        setattr(dst, field.name, value)


def alloc_ports(alloc: pb.Allocation) -> list[pb.AllocatedPortMapping]:
    return list(alloc.allocated_resources.shared.ports)


def group_by_name(job: pb.Job, name: str) -> pb.TaskGroup | None:
    for group in job.task_groups:
        if group.name == name:
            return group
    return None
