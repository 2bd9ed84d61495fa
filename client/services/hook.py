"""The per-allocation service hook that the alloc runner drives (``AllocServices``).

It registers the allocation's services once every task runs, runs their checks on
the client's ``TimerWheel``, publishes ``Health`` changes to the client's
``ServiceRegistry``, feeds the ``HealthTracker`` (deployment health), restarts a
task after ``check_restart.limit`` failures, and deregisters when the allocation
stops. ``ServiceRuntime`` is what every allocation's hook shares on one client.
This is the only module of the package that holds per-allocation state and
locks; the others are pure or generic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from corral import structs
from corral.client.services.build import CheckSpec, PlannedService, build_services
from corral.client.services.checks import (
    HEALTH_CRITICAL,
    HEALTH_NONE,
    HEALTH_PASSING,
    run_check,
)
from corral.client.services.health import HealthTracker
from corral.client.services.registry import ServiceRegistry
from corral.client.services.timers import Timer, TimerWheel
from corral.proto import pb

log = logging.getLogger(__name__)

# Until a check passes for the first time, it runs at least this often: a task
# that needs 200 ms to listen is registered 200 ms after it starts, not one whole
# interval later (that delay would add to every rollout step).
STARTUP_RETRY = 0.25


@dataclass
class CheckState:
    status: str = HEALTH_CRITICAL  # until the first result
    output: str = "pending"
    ran: bool = False
    passed_once: bool = False  # until then the check runs every STARTUP_RETRY
    failures: int = 0  # consecutive failures counted for check_restart
    last_counted: float = float("-inf")


@dataclass
class ServiceRuntime:
    """What every allocation's hook shares on one client."""

    registry: ServiceRegistry
    scheduler: TimerWheel
    # How long an allocation's stop waits for its deregistration to reach the
    # servers before killing the tasks anyway (servers unreachable).
    deregister_wait: float = 5.0

    @classmethod
    def detached(cls) -> ServiceRuntime:
        """A runtime that reports nowhere (tests, tools)."""
        return cls(ServiceRegistry(lambda u, d, a: None, coalesce=0), TimerWheel(workers=2))

    def stop(self) -> None:
        self.scheduler.stop()
        self.registry.stop()


RestartFn = Callable[[str, str], None]  # (task name or "" for all, reason)


@dataclass
class _Plan:
    service: PlannedService
    timers: dict[str, Timer] = field(default_factory=dict)  # check key -> timer


class AllocServices:
    """The service hook of one allocation (see the module docstring).

    Time comes from the two clocks it is given, never from ``time`` directly:
    ``clock`` (monotonic seconds: health timers, check_restart's one failure per
    interval) and ``wall_clock`` (ns, comparable with ``TaskState.started_at``:
    check_restart's grace, the health decision's timestamp). Tests pass fakes.
    """

    def __init__(
        self,
        alloc: pb.Allocation,
        node: pb.Node,
        runtime: ServiceRuntime,
        restart_task: RestartFn,
        on_health: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.alloc = alloc
        self.node = node
        self.runtime = runtime
        self._restart_task = restart_task
        self._on_health = on_health
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.RLock()
        self._plans: dict[str, _Plan] = {}
        self._published: dict[str, pb.ServiceRegistration] = {}
        self._results: dict[str, CheckState] = {}
        self._registered = False
        self._stopped = False
        self._tasks_running = False
        self._task_failed = False
        self._started_at: dict[str, int] = {}  # task -> started_at (ns) seen last
        self._health_timer: Timer | None = None
        self.tracker = HealthTracker.for_alloc(alloc, clock())
        self._deployment_id = alloc.deployment_id

    # ------------------------------------------------------------ facts
    @property
    def declared(self) -> bool:
        """Whether the job declares any service for this allocation."""
        group = structs.group_by_name(self.alloc.job, self.alloc.task_group)
        if group is None:
            return False
        return bool(group.services) or any(t.services for t in group.tasks)

    def checks_passing(self) -> bool:
        with self._lock:
            return all(r.status == HEALTH_PASSING for r in self._results.values())

    def check_states(self) -> dict[str, CheckState]:
        with self._lock:
            return dict(self._results)

    def deployment_status(self) -> pb.AllocDeploymentStatus | None:
        """The alloc's deployment status to report, once health is decided."""
        healthy = self.tracker.healthy
        if healthy is None:
            return None
        status = pb.AllocDeploymentStatus()
        status.CopyFrom(self.alloc.deployment_status)
        status.healthy = healthy
        status.timestamp = self.tracker.decided_at_ns
        return status

    # ------------------------------------------------------------ events from the alloc runner
    def tasks_changed(self, states: Mapping[str, pb.TaskState]) -> None:
        """Called on every task state change."""
        running = structs.TASK_STATE_RUNNING
        all_running = bool(states) and all(s.state == running for s in states.values())
        failed = any(s.state == structs.TASK_STATE_DEAD and s.failed for s in states.values())
        all_dead = bool(states) and all(s.state == structs.TASK_STATE_DEAD for s in states.values())
        with self._lock:
            for name, st in states.items():
                if st.state == running:
                    self._started_at[name] = st.started_at
            if self._stopped:
                return
            changed = all_running != self._tasks_running
            if changed and not all_running:
                self._forget_results()  # a restarted task must pass its checks again
            self._tasks_running = all_running
            self._task_failed = failed
            if all_running and not self._registered:
                self._register()
                changed = True
        if all_dead:
            self.deregister(wait=0)
        elif changed:
            self._publish()
        self._observe_health()

    def update_alloc(self, alloc: pb.Allocation) -> None:
        """The server changed the allocation (in-place update, canary promotion)."""
        with self._lock:
            self.alloc = alloc
            if alloc.deployment_id != self._deployment_id:
                self._deployment_id = alloc.deployment_id
                self.tracker = HealthTracker.for_alloc(alloc, self._clock())
            if self._registered and not self._stopped:
                new = {p.registration.id: p for p in build_services(alloc, self.node)}
                old = {sid: p.service for sid, p in self._plans.items()}
                if new.keys() != old.keys() or any(new[s].checks != old[s].checks for s in new):
                    self._cancel_timers()
                    self._plans.clear()
                    self._results.clear()
                    self._register(new.values())
                else:
                    for sid, planned in new.items():
                        self._plans[sid].service = planned
        self._publish()
        self._observe_health()

    def deregister(self, wait: float | None = None) -> bool:
        """Stop the checks and remove the registrations (idempotent). With ``wait``
        (default: the runtime's ``deregister_wait``), block until the servers
        acknowledged; True when they did (or nothing was ever declared)."""
        with self._lock:
            first = not self._stopped
            self._stopped = True
            self._cancel_timers()
            if self._health_timer is not None:
                self._health_timer.cancel()
        if not self.declared:
            return True
        timeout = self.runtime.deregister_wait if wait is None else wait
        registry = self.runtime.registry
        if first:
            acked = registry.remove_alloc(self.alloc.id, wait=timeout)
        elif timeout > 0:
            acked = registry.wait_flushed(timeout)
        else:
            return True
        if timeout > 0 and not acked:
            log.warning(
                "deregistering the services of allocation %s was not acknowledged within %gs",
                self.alloc.id,
                timeout,
            )
        return acked

    # ------------------------------------------------------------ internals
    def _register(self, plans: Iterable[PlannedService] | None = None) -> None:
        """Start the checks (first run at once). Called with the lock held."""
        self._registered = True
        planned = list(plans) if plans is not None else build_services(self.alloc, self.node)
        sched = self.runtime.scheduler
        for p in planned:
            entry = _Plan(p)
            self._plans[p.registration.id] = entry
            for spec in p.checks:
                self._results[spec.key] = CheckState()
                entry.timers[spec.key] = sched.every(
                    min(spec.interval, STARTUP_RETRY), _bound(self._run_check, spec)
                )

    def _forget_results(self) -> None:
        """Back to "no verdict yet", checking at the startup pace. Lock held."""
        sched = self.runtime.scheduler
        for entry in self._plans.values():
            for spec in entry.service.checks:
                self._results[spec.key] = CheckState()
                old = entry.timers.get(spec.key)
                if old is not None:
                    old.cancel()
                entry.timers[spec.key] = sched.every(
                    min(spec.interval, STARTUP_RETRY),
                    _bound(self._run_check, spec),
                    first_delay=STARTUP_RETRY,
                )

    def _cancel_timers(self) -> None:
        for entry in self._plans.values():
            for timer in entry.timers.values():
                timer.cancel()
            entry.timers.clear()

    def _run_check(self, spec: CheckSpec) -> None:
        status, output = run_check(spec)
        restart = False
        with self._lock:
            if self._stopped or spec.key not in self._results:
                return
            if not self._tasks_running:
                return  # a verdict on a task that is not running means nothing
            st = self._results[spec.key]
            changed = st.status != status or not st.ran
            st.status, st.output, st.ran = status, output, True
            if status == HEALTH_PASSING:
                st.failures = 0
                if not st.passed_once:
                    st.passed_once = True
                    timer = self._plans[spec.service_id].timers.get(spec.key)
                    if timer is not None:
                        timer.interval = spec.interval  # started: the check's own pace
            elif (
                spec.restart_limit > 0
                and self._past_grace(spec)
                # Startup retries are faster than the interval: count one failure
                # per interval, as Nomad's check_restart sees them.
                and self._clock() - st.last_counted >= spec.interval * 0.95
            ):
                st.last_counted = self._clock()
                st.failures += 1
                if st.failures >= spec.restart_limit:
                    st.failures = 0
                    restart = True
        if changed:
            log.info("check %r of %s: %s (%s)", spec.name, spec.service_id, status, output)
            self._publish()
            self._observe_health()
        if restart:
            reason = f"healthcheck: check {spec.name!r} unhealthy"
            log.info("restarting task %r of %s: %s", spec.task or "*", self.alloc.id, reason)
            self._restart_task(spec.task, reason)

    def _past_grace(self, spec: CheckSpec) -> bool:
        """Failures count only ``grace`` after the task (re)started."""
        names = [spec.task] if spec.task else list(self._started_at)
        started = max((self._started_at.get(n, 0) for n in names), default=0)
        if not started:
            return False
        return (self._wall_clock() - started) / 1e9 >= spec.restart_grace

    def _health_of(self, planned: PlannedService) -> str:
        if not self._tasks_running:
            return HEALTH_CRITICAL
        if not planned.checks:
            return HEALTH_NONE
        ok = all(self._results[c.key].status == HEALTH_PASSING for c in planned.checks)
        return HEALTH_PASSING if ok else HEALTH_CRITICAL

    def _publish(self) -> None:
        with self._lock:
            if self._stopped or not self._registered:
                return
            regs = []
            for entry in self._plans.values():
                checks = entry.service.checks
                sid = entry.service.registration.id
                if self._tasks_running and not all(self._results[c.key].ran for c in checks):
                    # No verdict yet: keep saying what was said (nothing, after a
                    # client restart: instances that were passing do not flap).
                    if sid in self._published:
                        regs.append(self._published[sid])
                    continue
                reg = pb.ServiceRegistration()
                reg.CopyFrom(entry.service.registration)
                reg.health = self._health_of(entry.service)
                regs.append(reg)
            self._published = {r.id: r for r in regs}
            # Under the lock, so that two publishes cannot reach the registry
            # in the opposite order of the facts they describe.
            self.runtime.registry.set_alloc(self.alloc.id, regs)

    def _observe_health(self) -> None:
        with self._lock:
            before = self.tracker.healthy
            wait = self.tracker.observe(
                self._clock(),
                self._tasks_running,
                self._task_failed,
                all(r.status == HEALTH_PASSING for r in self._results.values()),
                wall_ns=self._wall_clock(),
            )
            if self._health_timer is not None:
                self._health_timer.cancel()
                self._health_timer = None
            if wait is not None and not self._stopped:
                self._health_timer = self.runtime.scheduler.call_later(
                    wait + 0.001, self._observe_health
                )
            decided = self.tracker.healthy is not None and before is None
        if decided:
            self._on_health()


def _bound(fn: Callable[[CheckSpec], None], spec: CheckSpec) -> Callable[[], None]:
    def run() -> None:
        fn(spec)

    return run
