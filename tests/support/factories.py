"""Factories of valid domain objects for unit tests (Nomad's ``nomad/mock``).

Each returns a fresh, valid, canonicalized message that a test then bends to its
case, so tests state only what matters to them.
"""

from __future__ import annotations

import itertools

from corral import structs
from corral.proto import pb

_ids = itertools.count(1)


def uid(prefix: str = "") -> str:
    """Readable, unique, UUID-shaped IDs: tests can tell objects apart at a glance."""
    n = next(_ids)
    return f"{prefix or '0'}{n:07x}-0000-4000-8000-{n:012x}"[-36:]


def node(
    cpu: int = 4000,
    memory: int = 8192,
    datacenter: str = "dc1",
    drivers: tuple[str, ...] = ("mock", "raw_exec", "docker"),
    status: str = structs.NODE_STATUS_READY,
) -> pb.Node:
    n = pb.Node(
        id=uid("a"),
        secret_id=uid("5"),
        datacenter=datacenter,
        status=status,
        scheduling_eligibility=structs.NODE_ELIGIBLE,
    )
    n.name = f"node-{n.id[:8]}"
    n.node_resources.cpu.cpu_shares = cpu
    n.node_resources.memory.memory_mb = memory
    n.attributes["unique.network.ip-address"] = "127.0.0.1"
    n.attributes["kernel.name"] = "linux"
    for d in drivers:
        n.drivers[d].detected = True
        n.drivers[d].healthy = True
    return n


def job(
    job_id: str = "web",
    count: int = 3,
    cpu: int = 100,
    memory: int = 64,
    driver: str = "mock",
    ports: tuple[str, ...] = ("http",),
    job_type: str = structs.JOB_TYPE_SERVICE,
    deployment: bool = False,
) -> pb.Job:
    """A canonical job. Without ``deployment`` a service group says
    ``update { max_parallel = 0 }`` (Nomad's "no deployment": updates all at once),
    which most scheduler tests are about; with it, Nomad's default update strategy
    (every service job gets one) applies."""
    j = pb.Job(id=job_id, type=job_type)
    g = j.task_groups.add(name="web", count=count)
    if ports:
        net = g.networks.add()
        for label in ports:
            net.dynamic_ports.add(label=label, to=8080)
    t = g.tasks.add(name="server", driver=driver)
    t.resources.cpu = cpu
    t.resources.memory_mb = memory
    if driver == "docker":
        t.config.update({"image": "corral-busybox:latest"})
    elif driver == "raw_exec":
        t.config.update({"command": "sleep", "args": ["600"]})
    else:
        t.config.update({"run_for": "1h"})
    structs.canonicalize(j)
    if job_type == structs.JOB_TYPE_SERVICE and not deployment:
        g.update.max_parallel = 0
    return j


def evaluation(j: pb.Job, trigger: str = structs.TRIGGER_JOB_REGISTER) -> pb.Evaluation:
    return pb.Evaluation(
        id=uid("e"),
        namespace=j.namespace,
        priority=j.priority,
        type=j.type,
        triggered_by=trigger,
        job_id=j.id,
        status=structs.EVAL_STATUS_PENDING,
    )


def command(**kind: object) -> bytes:
    """A serialized raft command, e.g. ``command(noop=pb.NoopCommand())``."""
    cmd = pb.Command(schema=1, now=1_700_000_000_000_000_000, **kind)  # type: ignore[arg-type]
    return cmd.SerializeToString()


# ---------------------------------------------------------------- scheduler tests
#
# Objects for the scheduler's tests: nodes with placement properties, reschedule
# policies. The harness that runs the scheduler is in ``scheduler_harness``.

FAKE_NOW = 1_700_000_000_000_000_000  # the ``now`` of every ``command()``


def placement_node(
    node_class: str = "",
    meta: dict[str, str] | None = None,
    attributes: dict[str, str] | None = None,
    datacenter: str = "dc1",
    cpu: int = 4000,
    memory: int = 8192,
    drivers: tuple[str, ...] = ("mock", "raw_exec", "docker"),
) -> pb.Node:
    """A ready node with a class, meta and extra attributes for constraint tests."""
    n = node(cpu=cpu, memory=memory, datacenter=datacenter, drivers=drivers)
    n.node_class = node_class
    n.meta.update(meta or {})
    n.attributes.update(attributes or {})
    return n


def reschedule_policy(
    attempts: int = 0,
    interval: int = 0,
    delay: int = 5 * structs.SECOND,
    delay_function: str = "constant",
    max_delay: int = 0,
    unlimited: bool = False,
) -> pb.ReschedulePolicy:
    return pb.ReschedulePolicy(
        attempts=attempts,
        interval=interval,
        delay=delay,
        delay_function=delay_function,
        max_delay=max_delay,
        unlimited=unlimited,
    )
