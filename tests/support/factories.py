"""Factories of valid domain objects for unit tests (Nomad's ``nomad/mock``).

Each returns a fresh, valid, canonicalized message that a test then bends to its
case, so tests state only what matters to them.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from corral import structs
from corral.proto import pb

if TYPE_CHECKING:
    from corral.scheduler import SchedulerResult
    from corral.server.state import StateStore

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
) -> pb.Job:
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
# Additions for the scheduler's tests: nodes with placement properties, and a
# harness that runs the pure scheduler against a real in-memory FSM (Nomad's
# scheduler Harness), so multi-step scenarios (fail, drain, join) read naturally.

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


class SchedulerHarness:
    """A state store driven through the FSM, plus the scheduler; each ``process``
    commits the plan and its follow-up evaluations, as the server's worker does."""

    def __init__(self) -> None:
        from corral.server.fsm import FSM
        from corral.server.state import StateStore

        self.fsm = FSM(StateStore())
        self.results: list[SchedulerResult] = []

    @property
    def state(self) -> StateStore:
        return self.fsm.state

    def apply(self, **kind: object) -> None:
        result = self.fsm.apply(command(**kind))
        error = getattr(result, "error", "")
        assert not error, error

    # nodes
    def add_node(self, n: pb.Node | None = None) -> pb.Node:
        n = n or node()
        self.apply(node_register=pb.NodeRegisterCommand(node=n))
        return n

    def set_node_status(self, node_id: str, status: str) -> None:
        self.apply(node_status=pb.NodeStatusCommand(node_id=node_id, status=status))

    def set_eligibility(self, node_id: str, eligible: bool) -> None:
        value = structs.NODE_ELIGIBLE if eligible else structs.NODE_INELIGIBLE
        self.apply(node_eligibility=pb.NodeEligibilityCommand(node_id=node_id, eligibility=value))

    def drain(self, node_id: str, deadline: int = 0, ignore_system_jobs: bool = False) -> None:
        strategy = pb.DrainStrategy(
            deadline=deadline, ignore_system_jobs=ignore_system_jobs, started_at=FAKE_NOW
        )
        self.apply(node_drain=pb.NodeDrainCommand(node_id=node_id, drain_strategy=strategy))

    # jobs and evaluations
    def register(self, j: pb.Job) -> pb.Evaluation:
        ev = evaluation(j)
        self.apply(job_register=pb.JobRegisterCommand(job=j, eval=ev))
        return ev

    def job(self, job_id: str = "web") -> pb.Job:
        j = self.state.job(structs.DEFAULT_NAMESPACE, job_id)
        assert j is not None
        return j

    def evaluate(
        self, job_id: str = "web", trigger: str = structs.TRIGGER_NODE_UPDATE
    ) -> pb.Evaluation:
        return evaluation(self.job(job_id), trigger)

    def process(
        self, ev: pb.Evaluation, seed: int = 1, now_ns: int = 0, algorithm: str = "binpack"
    ) -> SchedulerResult:
        from corral.scheduler import compute_plan

        result = compute_plan(
            self.state.snapshot(),
            ev,
            seed,
            lambda: uid("c"),
            now_ns=now_ns,
            algorithm=algorithm,
        )
        self.results.append(result)
        self.apply(
            apply_plan=pb.ApplyPlanCommand(plan=result.plan, evals=list(result.followup_evals))
        )
        return result

    def run(
        self, j: pb.Job, seed: int = 1, now_ns: int = 0, algorithm: str = "binpack"
    ) -> SchedulerResult:
        return self.process(self.register(j), seed, now_ns, algorithm)

    def reevaluate(
        self, job_id: str = "web", seed: int = 1, now_ns: int = 0, algorithm: str = "binpack"
    ) -> SchedulerResult:
        return self.process(self.evaluate(job_id), seed, now_ns, algorithm)

    # allocations
    def allocs(self, job_id: str = "web") -> list[pb.Allocation]:
        return sorted(
            self.state.allocs_by_job(structs.DEFAULT_NAMESPACE, job_id),
            key=lambda a: (a.alloc_index, a.create_index, a.id),
        )

    def live(self, job_id: str = "web") -> list[pb.Allocation]:
        return [
            a
            for a in self.allocs(job_id)
            if a.desired_status == structs.ALLOC_DESIRED_RUN and not structs.is_client_terminal(a)
        ]

    def set_client_status(
        self, allocs: list[pb.Allocation], status: str, finished_at: int = 0
    ) -> None:
        """What a client reports; ``finished_at`` dates a failure (task finish time)."""
        ups = []
        for a in allocs:
            up = pb.Allocation(id=a.id, client_status=status)
            if finished_at:
                up.task_states["server"].state = structs.TASK_STATE_DEAD
                up.task_states["server"].failed = status == structs.ALLOC_CLIENT_FAILED
                up.task_states["server"].finished_at = finished_at
            ups.append(up)
        self.apply(alloc_client_update=pb.AllocClientUpdateCommand(allocs=ups))

    def mark_running(self, job_id: str = "web") -> None:
        pending = [a for a in self.live(job_id) if a.client_status == structs.ALLOC_CLIENT_PENDING]
        if pending:
            self.set_client_status(pending, structs.ALLOC_CLIENT_RUNNING)

    def set_transition(self, alloc_ids: list[str], **transition: bool) -> None:
        t = {a: pb.DesiredTransition(**transition) for a in alloc_ids}
        self.apply(alloc_desired_transition=pb.AllocDesiredTransitionCommand(transitions=t))
