"""The registrations an allocation makes, built from its job's ``service`` blocks.

Group- and task-level ``service`` blocks become ``pb.ServiceRegistration``
messages with Nomad's IDs
(``_nomad-task-<alloc>-<task or group-<group>>-<service>-<port label>``), names
interpolated on the client (``${NOMAD_JOB_NAME}``, ``${JOB}``, ``${TASK}``...) and
the address and port of the port label (the host IP and host port that the driver
publishes); each ``check`` block becomes a ``CheckSpec`` with its target resolved. Pure: no I/O, no clock, so the hook can rebuild and compare plans on
every allocation update. Nomad keeps this apart too (``serviceregistration``'s
workload builder); ``checks`` runs what this module plans.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral import structs
from corral.client import taskenv
from corral.proto import pb

ID_PREFIX = "_nomad-task-"
DEFAULT_CHECK_INTERVAL = 10.0
DEFAULT_CHECK_TIMEOUT = 2.0


@dataclass(frozen=True)
class CheckSpec:
    """One check of one registration, with its target resolved."""

    key: str  # unique within the allocation: "<service id>#<n>"
    service_id: str
    name: str
    type: str  # "http" | "tcp"
    address: str
    port: int
    path: str = "/"
    method: str = "GET"
    protocol: str = "http"
    interval: float = DEFAULT_CHECK_INTERVAL  # seconds
    timeout: float = DEFAULT_CHECK_TIMEOUT  # seconds
    restart_limit: int = 0  # check_restart.limit; 0 = never restart
    restart_grace: float = 0.0  # check_restart.grace, seconds
    task: str = ""  # the task check_restart restarts ("" = every task)


@dataclass
class PlannedService:
    """A registration (``health`` not set yet) and its checks."""

    registration: pb.ServiceRegistration
    checks: tuple[CheckSpec, ...]
    task: str  # owning task, "" for a group-level service


def service_id(alloc_id: str, owner: str, name: str, port_label: str) -> str:
    """Nomad's ``MakeAllocServiceID``; ``owner`` is the task name, or
    ``group-<group>`` for a group-level service."""
    return f"{ID_PREFIX}{alloc_id}-{owner}-{name}-{port_label}"


def _name_env(alloc: pb.Allocation, task: pb.Task | None, node: pb.Node) -> dict[str, str]:
    """Variables a service name may use: the task's ``NOMAD_*`` environment plus
    Nomad's legacy ``${JOB}``, ``${TASKGROUP}``, ``${TASK}`` and ``${BASE}``."""
    t = task if task is not None else pb.Task()
    env = taskenv.build_env(alloc, t, node, driver=t.driver)
    job = alloc.job.name or alloc.job_id or alloc.job.id
    group = alloc.task_group
    env.update(
        {
            "JOB": job,
            "TASKGROUP": group,
            "TASK": t.name,
            "BASE": f"{job}-{group}-{t.name}" if t.name else f"{job}-{group}",
        }
    )
    return env


def interpolate_name(name: str, alloc: pb.Allocation, task: pb.Task | None, node: pb.Node) -> str:
    """The service name with ``${...}`` filled in on the client."""
    if not name:
        # Nomad's default name: <job>-<group>[-<task>]. (Job validation should
        # refuse a nameless service; this keeps the client safe regardless.)
        name = "${BASE}"
    if "${" not in name:
        return name
    env = _name_env(alloc, task, node)
    out = taskenv.interpolate(name, env, taskenv.node_variables(node))
    return str(out)


def _node_ip(node: pb.Node) -> str:
    return node.attributes.get("unique.network.ip-address", "") or "127.0.0.1"


def resolve_port(alloc: pb.Allocation, node: pb.Node, label: str) -> tuple[str, int]:
    """(address, port) of a port label: the host IP and host port the driver
    publishes. A numeric label is a literal port on the node's IP; no label gives
    the node's IP and port 0."""
    default_ip = _node_ip(node)
    if not label:
        return default_ip, 0
    for port in alloc.allocated_resources.shared.ports:
        if port.label == label:
            return port.host_ip or default_ip, int(port.value)
    if label.isdigit():
        return default_ip, int(label)
    return default_ip, 0


def _seconds(ns: int, default: float) -> float:
    return ns / 1e9 if ns > 0 else default


def build_services(alloc: pb.Allocation, node: pb.Node) -> list[PlannedService]:
    """Every registration of ``alloc`` (group-level services first, then each
    task's), in job order. Canaries use ``canary_tags`` when set."""
    job = alloc.job
    group = structs.group_by_name(job, alloc.task_group)
    if group is None:
        return []
    canary = alloc.deployment_status.canary
    namespace = alloc.namespace or job.namespace or structs.DEFAULT_NAMESPACE
    owned: list[tuple[pb.Service, pb.Task | None]] = [(s, None) for s in group.services]
    for t in group.tasks:
        owned.extend((s, t) for s in t.services)
    out = []
    for svc, task in owned:
        owner = task.name if task is not None else f"group-{group.name}"
        name = interpolate_name(svc.name, alloc, task, node)
        sid = service_id(alloc.id, owner, name, svc.port_label)
        address, port = resolve_port(alloc, node, svc.port_label)
        tags = list(svc.canary_tags) if canary and svc.canary_tags else list(svc.tags)
        reg = pb.ServiceRegistration(
            id=sid,
            service_name=name,
            namespace=namespace,
            node_id=node.id,
            datacenter=node.datacenter,
            job_id=alloc.job_id or job.id,
            alloc_id=alloc.id,
            tags=tags,
            address=address,
            port=port,
        )
        checks = []
        for n, chk in enumerate(svc.checks):
            caddr, cport = resolve_port(alloc, node, chk.port_label or svc.port_label)
            restart_task = task.name if task is not None else (chk.task_name or svc.task_name)
            path = chk.path or "/"
            checks.append(
                CheckSpec(
                    key=f"{sid}#{n}",
                    service_id=sid,
                    name=chk.name or f"service: {name!r} check",
                    type=chk.type or "tcp",
                    address=caddr,
                    port=cport,
                    path=path if path.startswith("/") else f"/{path}",
                    method=(chk.method or "GET").upper(),
                    protocol=chk.protocol or "http",
                    interval=_seconds(chk.interval, DEFAULT_CHECK_INTERVAL),
                    timeout=_seconds(chk.timeout, DEFAULT_CHECK_TIMEOUT),
                    restart_limit=chk.check_restart.limit,
                    restart_grace=_seconds(chk.check_restart.grace, 0.0),
                    task=restart_task,
                )
            )
        out.append(
            PlannedService(registration=reg, checks=tuple(checks), task=owner if task else "")
        )
    return out
