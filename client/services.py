"""Service registrations, health checks and allocation health on a client.

Pieces, from pure to threaded:

* ``build_services(alloc, node)``: the registrations an allocation makes (group- and
  task-level ``service`` blocks), with Nomad's IDs
  (``_nomad-task-<alloc>-<task or group-<group>>-<service>-<port label>``), names
  interpolated on the client (``${NOMAD_JOB_NAME}``, ``${JOB}``, ``${TASK}``...) and
  the address and port of the port label (the host IP and host port that the
  driver publishes). Pure.
* ``run_check(spec)``: one http (2xx = passing) or tcp (connect) check. Never
  raises: a target that does not answer is ``critical``.
* ``HealthTracker``: the allocation's deployment health (Nomad's rules: every task
  running and every check passing, continuously for ``min_healthy_time``; a failed
  task is unhealthy at once; not healthy within ``healthy_deadline`` is unhealthy).
  Pure, with the clock passed in: it never reads a clock itself.
* ``Scheduler``: one timer thread for every check of every allocation on the client,
  running the checks on a small thread pool (a slow check does not delay others).
* ``ServiceRegistry``: the client's registrations as the servers should see them,
  sent with ``NodeService.UpdateServices`` in batches and only when something
  changed; a deregistration can be waited for (the alloc runner kills tasks only
  after it reached the servers).
* ``AllocServices``: the per-allocation hook that the alloc runner drives: register
  once every task runs, run the checks, report ``Health`` changes, restart a task
  after ``check_restart.limit`` failures, deregister when the allocation stops.

Only instances whose checks pass are listed by the servers (``Health`` ``passing``,
or ``""`` when a service has no checks), which is what keeps Traefik away from a
failing instance.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from corral import structs
from corral.client import taskenv
from corral.proto import pb

log = logging.getLogger(__name__)

HEALTH_PASSING = "passing"
HEALTH_CRITICAL = "critical"
# A registration without checks: counts as passing (listed).
HEALTH_NONE = ""

ID_PREFIX = "_nomad-task-"
DEFAULT_CHECK_INTERVAL = 10.0
DEFAULT_CHECK_TIMEOUT = 2.0
# Until a check passes for the first time, it runs at least this often: a task
# that needs 200 ms to listen is registered 200 ms after it starts, not one whole
# interval later (that delay would add to every rollout step).
STARTUP_RETRY = 0.25
MAX_CHECK_OUTPUT = 512


# ---------------------------------------------------------------- registrations (pure)


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


# ---------------------------------------------------------------- checks


def _dial_host(address: str) -> str:
    """Where to connect for a check: a wildcard bind is checked on loopback."""
    if address in ("", "0.0.0.0"):
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address.strip("[]")


def run_check(spec: CheckSpec) -> tuple[str, str]:
    """Run one check: (``passing``|``critical``, output). Never raises."""
    host = _dial_host(spec.address)
    try:
        if spec.port <= 0:
            return HEALTH_CRITICAL, f"no port to check for {spec.service_id}"
        if spec.type == "tcp":
            with socket.create_connection((host, spec.port), timeout=spec.timeout):
                pass
            return HEALTH_PASSING, f"TCP connect {host}:{spec.port}: Success"
        if spec.type == "http":
            return _http_check(spec, host)
        return HEALTH_CRITICAL, f"unsupported check type {spec.type!r}"
    except Exception as exc:  # refused, timed out, reset, bad response...
        return HEALTH_CRITICAL, _clip(f"{spec.type} check of {host}:{spec.port} failed: {exc}")


def _http_check(spec: CheckSpec, host: str) -> tuple[str, str]:
    deadline = time.monotonic() + spec.timeout
    conn: http.client.HTTPConnection
    if spec.protocol == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, spec.port, timeout=spec.timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, spec.port, timeout=spec.timeout)
    try:
        conn.request(
            spec.method,
            spec.path,
            headers={"User-Agent": "corral health check", "Connection": "close"},
        )
        resp = conn.getresponse()
        resp.read(64 * 1024)
        if time.monotonic() > deadline:
            return HEALTH_CRITICAL, f"HTTP {spec.method} {spec.path}: timed out"
        verdict = HEALTH_PASSING if 200 <= resp.status < 300 else HEALTH_CRITICAL
        return verdict, f"HTTP {spec.method} {spec.path}: {resp.status} {resp.reason}"
    finally:
        conn.close()


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CHECK_OUTPUT else text[: MAX_CHECK_OUTPUT - 3] + "..."


# ---------------------------------------------------------------- deployment health (pure)


@dataclass
class HealthTracker:
    """An allocation's deployment health, decided once (per deployment).

    ``mode`` is the group's ``update.health_check``: ``checks`` (tasks running and
    checks passing), ``task_states`` (tasks running), or ``manual`` (never decided
    here). Times are seconds on any monotonic clock; ``observe`` also takes the
    wall clock (ns), written as ``decided_at_ns`` when it decides (the timestamp
    reported to the servers). Pure: both clocks are the caller's, so tests run it
    on plain numbers.
    """

    mode: str
    min_healthy: float
    healthy_deadline: float  # 0 = none
    started: float
    healthy: bool | None = None
    decided_at_ns: int = 0
    _since: float | None = None

    @classmethod
    def for_alloc(cls, alloc: pb.Allocation, now: float) -> HealthTracker:
        group = structs.group_by_name(alloc.job, alloc.task_group)
        update = group.update if group is not None else pb.UpdateStrategy()
        return cls(
            mode=update.health_check or "checks",
            min_healthy=update.min_healthy_time / 1e9,
            healthy_deadline=update.healthy_deadline / 1e9,
            started=now,
        )

    def observe(
        self,
        now: float,
        tasks_running: bool,
        task_failed: bool,
        checks_passing: bool,
        *,
        wall_ns: int,
    ) -> float | None:
        """Feed the current facts (``now`` monotonic seconds, ``wall_ns`` the wall
        clock at the same moment); returns the seconds after which to observe again
        (a timer: min_healthy_time or the deadline may pass with no other change),
        or None when nothing is pending."""
        if self.healthy is not None or self.mode == "manual":
            return None
        if task_failed:
            self._decide(False, wall_ns)
            return None
        ok = tasks_running and (checks_passing or self.mode == "task_states")
        if not ok:
            self._since = None
        elif self._since is None:
            self._since = now
        if ok and self._since is not None and now - self._since >= self.min_healthy:
            self._decide(True, wall_ns)
            return None
        if self.healthy_deadline > 0 and now - self.started >= self.healthy_deadline:
            self._decide(False, wall_ns)
            return None
        waits = []
        if ok and self._since is not None:
            waits.append(self._since + self.min_healthy - now)
        if self.healthy_deadline > 0:
            waits.append(self.started + self.healthy_deadline - now)
        return max(min(waits), 0.0) if waits else None

    def _decide(self, healthy: bool, wall_ns: int) -> None:
        self.healthy = healthy
        self.decided_at_ns = wall_ns


# ---------------------------------------------------------------- scheduler


class Timer:
    __slots__ = ("fn", "interval", "cancelled", "running")

    def __init__(self, fn: Callable[[], None], interval: float | None) -> None:
        self.fn = fn
        self.interval = interval
        self.cancelled = False
        self.running = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """Timers for every check on the client: one thread keeps a heap of due
    times; the work runs on a small pool. A periodic timer runs again
    ``interval`` after its previous run started (or at once when the run took
    longer), never twice at the same time."""

    def __init__(self, workers: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="checks")
        self._thread: threading.Thread | None = None
        self._stopped = False

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(fn, None)
        self._push(self._clock() + max(delay, 0.0), timer)
        return timer

    def every(self, interval: float, fn: Callable[[], None], first_delay: float = 0.0) -> Timer:
        timer = Timer(fn, max(interval, 0.01))
        self._push(self._clock() + max(first_delay, 0.0), timer)
        return timer

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _push(self, due: float, timer: Timer) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (due, next(self._seq), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="check-timers", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > self._clock()):
                    timeout = self._heap[0][0] - self._clock() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            timer.running = True
            try:
                self._pool.submit(self._run, timer, self._clock())
            except RuntimeError:  # pool shut down
                return

    def _run(self, timer: Timer, started: float) -> None:
        try:
            if not timer.cancelled:
                timer.fn()
        except Exception:
            log.exception("scheduled check failed")
        finally:
            timer.running = False
            if timer.interval is not None and not timer.cancelled:
                self._push(max(started + timer.interval, self._clock()), timer)


# ---------------------------------------------------------------- registry


SendFn = Callable[[list[pb.ServiceRegistration], list[str], list[str]], None]


class ServiceRegistry:
    """The client's registrations as the servers should see them.

    ``set_alloc`` replaces an allocation's registrations; a flusher thread sends
    what differs from what the servers acknowledged (upserts, and deletes of
    registrations that disappeared) in one ``UpdateServices`` call, retrying with
    backoff when it fails. Changes made while a call is in flight go in the next
    one, so bursts (three checks turning green at once) become one raft write.
    ``remove_alloc`` deletes every registration of an allocation by its ID and can
    wait until the servers acknowledged it.
    """

    def __init__(self, send: SendFn, coalesce: float = 0.02) -> None:
        self._send = send
        self._coalesce = coalesce
        self._cond = threading.Condition()
        self._desired: dict[str, dict[str, pb.ServiceRegistration]] = {}
        self._reported: dict[str, tuple[str, bytes]] = {}  # id -> (alloc id, bytes)
        self._alloc_deletes: set[str] = set()
        self._removed: set[str] = set()
        self._gen = 0  # bumped on every change
        self._acked = 0  # the last generation the servers acknowledged in full
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.sends = 0  # calls made (for tests and metrics)

    # ------------------------------------------------------------ API
    def set_alloc(self, alloc_id: str, regs: Iterable[pb.ServiceRegistration]) -> None:
        with self._cond:
            if alloc_id in self._removed:
                return
            self._desired[alloc_id] = {r.id: r for r in regs}
            self._changed()

    def remove_alloc(self, alloc_id: str, wait: float = 0.0) -> bool:
        """Delete the allocation's registrations; with ``wait``, block up to that
        many seconds until the servers acknowledged it. True when acknowledged."""
        with self._cond:
            self._removed.add(alloc_id)
            self._desired.pop(alloc_id, None)
            self._alloc_deletes.add(alloc_id)
            self._changed()
            target = self._gen
            if wait <= 0:
                return False
            deadline = time.monotonic() + wait
            while self._acked < target and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._acked >= target

    def wait_flushed(self, timeout: float) -> bool:
        """Block until everything changed so far was acknowledged (or ``timeout``)."""
        with self._cond:
            target = self._gen
            deadline = time.monotonic() + timeout
            while self._acked < target and not self._stopped:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return self._acked >= target

    def forget_alloc(self, alloc_id: str) -> None:
        """The allocation is gone for good (garbage-collected): drop bookkeeping."""
        with self._cond:
            self._removed.discard(alloc_id)

    def resync(self) -> None:
        """Send everything again (the servers may have lost it: a node re-registered)."""
        with self._cond:
            self._reported.clear()
            self._changed()

    def registrations(self) -> list[pb.ServiceRegistration]:
        with self._cond:
            return [r for regs in self._desired.values() for r in regs.values()]

    def flushed(self) -> bool:
        with self._cond:
            return self._acked >= self._gen

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # ------------------------------------------------------------ flushing
    def _changed(self) -> None:
        self._gen += 1
        if self._thread is None and not self._stopped:
            self._thread = threading.Thread(target=self._loop, name="service-sync", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _pending(self) -> tuple[list[pb.ServiceRegistration], list[str], list[str], int]:
        upserts = []
        wanted: dict[str, str] = {}
        for alloc_id, regs in self._desired.items():
            for rid, reg in regs.items():
                wanted[rid] = alloc_id
                data = reg.SerializeToString(deterministic=True)
                if self._reported.get(rid, ("", b""))[1] != data:
                    upserts.append(reg)
        alloc_deletes = sorted(self._alloc_deletes)
        deletes = sorted(
            rid
            for rid, (alloc_id, _) in self._reported.items()
            if rid not in wanted and alloc_id not in self._alloc_deletes
        )
        return upserts, deletes, alloc_deletes, self._gen

    def _loop(self) -> None:
        backoff = 0.2
        while True:
            with self._cond:
                while not self._stopped and self._acked >= self._gen:
                    self._cond.wait()
                if self._stopped:
                    return
            if self._coalesce > 0:
                time.sleep(self._coalesce)
            with self._cond:
                upserts, deletes, alloc_deletes, gen = self._pending()
            try:
                if upserts or deletes or alloc_deletes:
                    self.sends += 1
                    self._send(list(upserts), deletes, alloc_deletes)
            except Exception as exc:
                log.warning("reporting service registrations failed: %s", exc)
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.2
            with self._cond:
                for reg in upserts:
                    self._reported[reg.id] = (
                        reg.alloc_id,
                        reg.SerializeToString(deterministic=True),
                    )
                for rid in deletes:
                    self._reported.pop(rid, None)
                for alloc_id in alloc_deletes:
                    self._alloc_deletes.discard(alloc_id)
                    for rid in [r for r, (a, _) in self._reported.items() if a == alloc_id]:
                        del self._reported[rid]
                self._acked = max(self._acked, gen)
                self._cond.notify_all()


# ---------------------------------------------------------------- per allocation


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
    scheduler: Scheduler
    # How long an allocation's stop waits for its deregistration to reach the
    # servers before killing the tasks anyway (servers unreachable).
    deregister_wait: float = 5.0

    @classmethod
    def detached(cls) -> ServiceRuntime:
        """A runtime that reports nowhere (tests, tools)."""
        return cls(ServiceRegistry(lambda u, d, a: None, coalesce=0), Scheduler(workers=2))

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


__all__ = [
    "AllocServices",
    "CheckSpec",
    "HealthTracker",
    "PlannedService",
    "Scheduler",
    "ServiceRegistry",
    "ServiceRuntime",
    "build_services",
    "interpolate_name",
    "run_check",
    "service_id",
]
