"""Client-side services without a cluster: the registration builder, the check
runner against tiny local servers, the shared scheduler, the batching registry, the
deployment health tracker, the per-allocation hook with fakes, a task runner's
restart hook (mock driver), and the HTTP API's event diff and filter parser.

Time is a ``FakeClock`` wherever the code takes a clock (the scheduler, the health
tracker, the per-allocation hook): tests move it by hand and ``settle`` the
scheduler instead of sleeping through intervals, grace periods and deadlines."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from corral.client.drivers.mock import MockDriver
from corral.client.services import (
    HEALTH_CRITICAL,
    HEALTH_NONE,
    HEALTH_PASSING,
    AllocServices,
    CheckSpec,
    HealthTracker,
    ServiceRegistry,
    ServiceRuntime,
    TimerWheel,
    build_services,
    interpolate_name,
    run_check,
    service_id,
)
from corral.client.taskrunner import TaskRunner
from corral.proto import pb
from corral.server.http_api import (
    HTTPError,
    compile_filter,
    diff_services,
    event_matches,
    listed_view,
    parse_topics,
)
from tests.support.wait import wait_for

SECOND = 1_000_000_000


# ---------------------------------------------------------------- fixtures


def make_alloc(
    *,
    group_services: list[pb.Service] | None = None,
    task_services: list[pb.Service] | None = None,
    ports: list[tuple[str, int]] | None = None,
    update: pb.UpdateStrategy | None = None,
    canary: bool = False,
    tasks: int = 1,
) -> pb.Allocation:
    job = pb.Job(id="shop", name="shop", namespace="default", type="service")
    group = job.task_groups.add(name="web", count=1)
    group.services.extend(group_services or [])
    if update is not None:
        group.update.CopyFrom(update)
    for i in range(tasks):
        task = group.tasks.add(name="server" if i == 0 else f"side{i}", driver="mock")
        if i == 0:
            task.services.extend(task_services or [])
    alloc = pb.Allocation(
        id="0b5c2a11-1111-2222-3333-444455556666",
        namespace="default",
        name="shop.web[0]",
        job_id="shop",
        task_group="web",
        job=job,
    )
    for label, port in ports or [("http", 23456)]:
        alloc.allocated_resources.shared.ports.add(label=label, value=port, host_ip="10.0.0.7")
    alloc.deployment_status.canary = canary
    return alloc


def make_node() -> pb.Node:
    node = pb.Node(id="node-1", name="n1", datacenter="dc9")
    node.attributes["unique.network.ip-address"] = "10.0.0.7"
    return node


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, float]] = {}
    hits: dict[str, int] = {}

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        self.hits[self.path] = self.hits.get(self.path, 0) + 1
        status, delay = self.routes.get(self.path, (404, 0.0))
        if delay:
            time.sleep(delay)  # a slow endpoint, on purpose (check timeouts)
        body = b"x"
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the check timed out and hung up first: what the slow route is for

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()


@dataclass
class Web:
    port: int
    routes: dict[str, tuple[int, float]]  # path -> (status, delay)
    hits: dict[str, int]  # path -> requests served

    def __iter__(self) -> Iterator[Any]:
        return iter((self.port, self.routes))


@pytest.fixture
def web() -> Iterator[Web]:
    """A tiny local HTTP server."""
    routes: dict[str, tuple[int, float]] = {}
    hits: dict[str, int] = {}
    handler = type("H", (_Handler,), {"routes": routes, "hits": hits})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Web(server.server_address[1], routes, hits)
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeClock:
    """The two clocks the client reads, moved only by ``advance``: monotonic
    seconds (scheduler, health timers) and wall-clock ns (task start times,
    timestamps). Times are binary fractions (0.25 s...) so sums stay exact."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mono = 1000.0
        self._wall_ns = 1_700_000_000 * SECOND

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def time_ns(self) -> int:
        with self._lock:
            return self._wall_ns

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._mono += seconds
            self._wall_ns += int(seconds * SECOND)


def settle(sched: TimerWheel, clock: FakeClock, seconds: float = 0.0) -> None:
    """Advance ``clock`` (the scheduler's), then return once the scheduler ran
    everything due by then: a one-shot timer due now comes after them in the
    heap, and with one worker the pool runs them first (FIFO)."""
    clock.advance(seconds)
    done = threading.Event()
    sched.call_later(0, done.set)
    assert done.wait(10), "the scheduler did not catch up"


# ---------------------------------------------------------------- registrations


def test_registrations_have_nomads_ids_addresses_and_interpolated_names() -> None:
    alloc = make_alloc(
        group_services=[
            pb.Service(name="${NOMAD_JOB_NAME}-front", port_label="http", tags=["a", "b"])
        ],
        task_services=[
            pb.Service(name="${JOB}-${TASK}", port_label="admin"),
            pb.Service(name="${BASE}"),
            pb.Service(name="${NOMAD_GROUP_NAME}-${NOMAD_TASK_NAME}-${node.datacenter}"),
        ],
        ports=[("http", 23456), ("admin", 23457)],
    )
    planned = build_services(alloc, make_node())
    regs = [p.registration for p in planned]
    assert [r.service_name for r in regs] == [
        "shop-front",
        "shop-server",
        "shop-web-server",
        "web-server-dc9",
    ]
    front = regs[0]
    assert front.id == f"_nomad-task-{alloc.id}-group-web-shop-front-http"
    assert front.id == service_id(alloc.id, "group-web", "shop-front", "http")
    assert (front.address, front.port) == ("10.0.0.7", 23456)
    assert list(front.tags) == ["a", "b"]
    assert (front.namespace, front.node_id, front.datacenter) == ("default", "node-1", "dc9")
    assert (front.job_id, front.alloc_id) == ("shop", alloc.id)
    assert regs[1].id == f"_nomad-task-{alloc.id}-server-shop-server-admin"
    assert regs[1].port == 23457
    assert regs[2].port == 0  # no port label: the node's address, port 0
    assert planned[0].task == "" and planned[1].task == "server"


def test_canaries_use_canary_tags_when_set() -> None:
    svc = pb.Service(name="w", port_label="http", tags=["stable"], canary_tags=["canary"])
    plain = pb.Service(name="p", port_label="http", tags=["only"])
    regs = [
        p.registration
        for p in build_services(make_alloc(group_services=[svc, plain], canary=True), make_node())
    ]
    assert [list(r.tags) for r in regs] == [["canary"], ["only"]]


def test_unnamed_service_gets_nomads_default_name() -> None:
    alloc = make_alloc(group_services=[pb.Service(port_label="http")])
    assert build_services(alloc, make_node())[0].registration.service_name == "shop-web"
    assert interpolate_name("plain", alloc, None, make_node()) == "plain"


def test_checks_resolve_their_port_defaults_and_restart_target() -> None:
    chk = pb.ServiceCheck(
        type="http",
        path="health",
        interval=2 * SECOND,
        timeout=SECOND,
        check_restart=pb.CheckRestart(limit=3, grace=5 * SECOND),
    )
    tcp = pb.ServiceCheck(type="tcp", port_label="admin", interval=SECOND, timeout=SECOND)
    alloc = make_alloc(
        task_services=[pb.Service(name="w", port_label="http", checks=[chk, tcp])],
        ports=[("http", 23456), ("admin", 23457)],
    )
    [planned] = build_services(alloc, make_node())
    http_check, tcp_check = planned.checks
    assert (http_check.path, http_check.method, http_check.port) == ("/health", "GET", 23456)
    assert (http_check.interval, http_check.timeout) == (2.0, 1.0)
    assert (http_check.restart_limit, http_check.restart_grace, http_check.task) == (
        3,
        5.0,
        "server",
    )
    assert (tcp_check.type, tcp_check.port) == ("tcp", 23457)
    assert http_check.key != tcp_check.key


# ---------------------------------------------------------------- checks


def spec(port: int, **kw: object) -> CheckSpec:
    base: dict[str, object] = dict(
        key="k", service_id="s", name="c", type="http", address="127.0.0.1", port=port
    )
    base.update(kw)
    return CheckSpec(**base)  # type: ignore[arg-type]


def test_http_check_passes_on_2xx_only(web: Web) -> None:
    port, routes = web
    routes["/ok"] = (200, 0.0)
    routes["/created"] = (204, 0.0)
    routes["/boom"] = (500, 0.0)
    routes["/moved"] = (301, 0.0)
    assert run_check(spec(port, path="/ok"))[0] == HEALTH_PASSING
    assert run_check(spec(port, path="/created"))[0] == HEALTH_PASSING
    assert run_check(spec(port, path="/ok", method="HEAD"))[0] == HEALTH_PASSING
    status, output = run_check(spec(port, path="/boom"))
    assert status == HEALTH_CRITICAL and "500" in output
    assert run_check(spec(port, path="/moved"))[0] == HEALTH_CRITICAL
    assert run_check(spec(port, path="/missing"))[0] == HEALTH_CRITICAL


def test_http_check_times_out(web: Web) -> None:
    port, routes = web
    routes["/slow"] = (200, 1.0)
    started = time.monotonic()
    status, _ = run_check(spec(port, path="/slow", timeout=0.2))
    assert status == HEALTH_CRITICAL
    assert time.monotonic() - started < 0.9


def test_a_target_that_does_not_answer_is_critical_never_an_error(
    web: Web,
) -> None:
    port, _ = web
    dead = closed_port()
    assert run_check(spec(dead))[0] == HEALTH_CRITICAL
    assert run_check(spec(dead, type="tcp"))[0] == HEALTH_CRITICAL
    assert run_check(spec(port, type="tcp"))[0] == HEALTH_PASSING
    assert run_check(spec(0))[0] == HEALTH_CRITICAL
    assert run_check(spec(port, address="no-such-host.invalid"))[0] == HEALTH_CRITICAL
    assert run_check(spec(port, type="grpc"))[0] == HEALTH_CRITICAL


# ---------------------------------------------------------------- scheduler


def test_scheduler_runs_periodic_and_one_shot_timers_on_one_thread() -> None:
    clock = FakeClock()
    sched = TimerWheel(workers=1, clock=clock.monotonic)
    runs: list[float] = []
    once: list[float] = []
    try:
        timer = sched.every(0.5, lambda: runs.append(clock.monotonic()))
        sched.call_later(0.5, lambda: once.append(clock.monotonic()))
        settle(sched, clock)  # the periodic timer's first run is due at once
        assert len(runs) == 1 and once == []
        settle(sched, clock, 0.25)  # neither is due yet
        assert len(runs) == 1 and once == []
        settle(sched, clock, 0.25)
        assert len(runs) == 2 and len(once) == 1
        for _ in range(3):
            settle(sched, clock, 0.5)
        assert len(runs) == 5 and len(once) == 1  # a one-shot timer runs once
        assert [b - a for a, b in zip(runs, runs[1:], strict=False)] == [0.5] * 4
        timer.cancel()
        settle(sched, clock, 5.0)
        assert len(runs) == 5, "a cancelled timer ran again"
        assert sum(t.name == "check-timers" for t in threading.enumerate()) >= 1
    finally:
        sched.stop()


def test_a_slow_check_never_runs_twice_at_once() -> None:
    clock = FakeClock()
    sched = TimerWheel(workers=4, clock=clock.monotonic)
    lock = threading.Lock()
    release = threading.Event()
    runs = active = most = 0

    def slow() -> None:
        nonlocal runs, active, most
        with lock:
            runs += 1
            active += 1
            most = max(most, active)
        release.wait(10)  # the check is slow: held until the test releases it
        with lock:
            active -= 1

    try:
        sched.every(0.25, slow)
        wait_for(lambda: runs == 1, timeout=5, message="the first run")
        # Its interval passes 20 times while it runs; the scheduler keeps serving
        # other timers (on the other workers) but does not start the check again.
        for _ in range(20):
            clock.advance(0.25)
            done = threading.Event()
            sched.call_later(0, done.set)
            assert done.wait(5)
        assert runs == 1
        release.set()
        # Done long after its interval: it runs again at once, once.
        wait_for(lambda: runs == 2 and active == 0, timeout=5, message="the second run")
    finally:
        release.set()
        sched.stop()
    assert most == 1


# ---------------------------------------------------------------- registry


class FakeSend:
    def __init__(self) -> None:
        self.calls: list[tuple[list[pb.ServiceRegistration], list[str], list[str]]] = []
        self.fail = 0
        self.attempts = 0  # calls begun (counted before the gate)
        self.gate = threading.Event()
        self.gate.set()

    def __call__(
        self, upserts: list[pb.ServiceRegistration], deletes: list[str], allocs: list[str]
    ) -> None:
        self.attempts += 1
        self.gate.wait(5)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("server unreachable")
        self.calls.append((list(upserts), list(deletes), list(allocs)))


def reg(rid: str, alloc: str = "a1", health: str = HEALTH_PASSING) -> pb.ServiceRegistration:
    return pb.ServiceRegistration(id=rid, service_name="w", alloc_id=alloc, health=health)


def test_registry_sends_only_changes_and_batches_bursts() -> None:
    send = FakeSend()
    registry = ServiceRegistry(send, coalesce=0.05)
    try:
        registry.set_alloc("a1", [reg("r1"), reg("r2")])
        registry.set_alloc("a2", [reg("r3", "a2")])
        wait_for(registry.flushed, timeout=5, message="flushed")
        assert len(send.calls) == 1
        assert sorted(r.id for r in send.calls[0][0]) == ["r1", "r2", "r3"]
        registry.set_alloc("a1", [reg("r1"), reg("r2")])  # no change: no call
        wait_for(registry.flushed, timeout=5, message="flushed")
        assert len(send.calls) == 1
        registry.set_alloc("a1", [reg("r1", health=HEALTH_CRITICAL)])  # r1 changed, r2 gone
        wait_for(registry.flushed, timeout=5, message="flushed")
        upserts, deletes, allocs = send.calls[-1]
        assert [r.id for r in upserts] == ["r1"] and deletes == ["r2"] and allocs == []
    finally:
        registry.stop()


def test_registry_retries_and_remove_waits_for_the_acknowledgement() -> None:
    send = FakeSend()
    registry = ServiceRegistry(send, coalesce=0)
    try:
        send.fail = 2
        registry.set_alloc("a1", [reg("r1")])
        wait_for(registry.flushed, timeout=10, message="flushed after retries")
        assert [r.id for r in send.calls[0][0]] == ["r1"]
        send.gate.clear()  # the server is slow: remove must wait for it
        attempts = send.attempts
        removed: list[bool] = []
        remover = threading.Thread(
            target=lambda: removed.append(registry.remove_alloc("a1", wait=10)), daemon=True
        )
        remover.start()
        wait_for(lambda: send.attempts > attempts, timeout=5, message="the delete sent")
        assert removed == [] and remover.is_alive()  # not acknowledged: still waiting
        send.gate.set()
        remover.join(10)
        assert removed == [True]
        assert send.calls[-1] == ([], [], ["a1"])
        registry.set_alloc("a1", [reg("r1")])  # a late check result: ignored
        assert registry.flushed() and registry.registrations() == []
        assert send.calls[-1] == ([], [], ["a1"])
        send.gate.clear()
        assert registry.remove_alloc("a2", wait=0.2) is False  # not acknowledged in time
        send.gate.set()
    finally:
        registry.stop()


def test_registry_resync_sends_everything_again() -> None:
    send = FakeSend()
    registry = ServiceRegistry(send, coalesce=0)
    try:
        registry.set_alloc("a1", [reg("r1")])
        wait_for(registry.flushed, timeout=5, message="flushed")
        registry.resync()
        wait_for(lambda: len(send.calls) == 2, timeout=5, message="resent")
        assert [r.id for r in send.calls[1][0]] == ["r1"]
    finally:
        registry.stop()


# ---------------------------------------------------------------- deployment health


def tracker(mode: str = "checks", min_healthy: float = 10, deadline: float = 300) -> HealthTracker:
    return HealthTracker(mode=mode, min_healthy=min_healthy, healthy_deadline=deadline, started=0)


WALL = 1_700_000_000 * SECOND  # a wall clock for the tracker's decision timestamps


def test_healthy_after_min_healthy_time_of_continuous_health() -> None:
    t = tracker()
    assert t.observe(1, True, False, False, wall_ns=WALL) == 299
    assert t.observe(2, True, False, True, wall_ns=WALL) == 10  # timer: 10s from now
    assert t.observe(7, True, False, False, wall_ns=WALL) == 293  # unhealthy: timer restarts
    assert t.observe(8, True, False, True, wall_ns=WALL) == 10
    assert t.healthy is None
    assert t.observe(18, True, False, True, wall_ns=WALL + 18 * SECOND) is None
    assert t.healthy is True
    assert t.decided_at_ns == WALL + 18 * SECOND
    # Decided once: later facts change neither the verdict nor its time.
    assert t.observe(19, True, True, False, wall_ns=WALL + 19 * SECOND) is None
    assert t.healthy is True and t.decided_at_ns == WALL + 18 * SECOND


def test_failed_task_or_deadline_is_unhealthy() -> None:
    t = tracker()
    t.observe(1, True, False, True, wall_ns=WALL)
    t.observe(2, False, True, False, wall_ns=WALL + 2 * SECOND)
    assert t.healthy is False and t.decided_at_ns == WALL + 2 * SECOND
    t = tracker(deadline=30)
    t.observe(1, True, False, False, wall_ns=WALL)
    assert t.observe(31, True, False, False, wall_ns=WALL + 31 * SECOND) is None
    assert t.healthy is False and t.decided_at_ns == WALL + 31 * SECOND


def test_task_states_mode_ignores_checks_and_zero_min_is_immediate() -> None:
    t = tracker(mode="task_states", min_healthy=0)
    t.observe(1, True, False, False, wall_ns=WALL)
    assert t.healthy is True and t.decided_at_ns == WALL
    manual = tracker(mode="manual")
    assert manual.observe(1000, True, False, True, wall_ns=WALL) is None
    assert manual.healthy is None and manual.decided_at_ns == 0


def test_tracker_reads_the_groups_update_block() -> None:
    alloc = make_alloc(
        update=pb.UpdateStrategy(
            health_check="task_states", min_healthy_time=3 * SECOND, healthy_deadline=60 * SECOND
        )
    )
    t = HealthTracker.for_alloc(alloc, now=5.0)
    assert (t.mode, t.min_healthy, t.healthy_deadline, t.started) == ("task_states", 3, 60, 5)
    plain = HealthTracker.for_alloc(make_alloc(), now=0)
    assert (plain.mode, plain.min_healthy, plain.healthy_deadline) == ("checks", 0, 0)


# ---------------------------------------------------------------- the per-allocation hook


class Harness:
    """The hook with a fake send, a fake clock (shared by the hook and its
    scheduler) and a one-worker scheduler, so that ``tick`` is deterministic."""

    def __init__(self, alloc: pb.Allocation) -> None:
        self.send = FakeSend()
        self.clock = FakeClock()
        self.runtime = ServiceRuntime(
            ServiceRegistry(self.send, coalesce=0),
            TimerWheel(workers=1, clock=self.clock.monotonic),
            deregister_wait=2,
        )
        self.restarts: list[tuple[str, str]] = []
        self.health_calls = 0
        self.hook = AllocServices(
            alloc,
            make_node(),
            self.runtime,
            self._restart,
            self._on_health,
            clock=self.clock.monotonic,
            wall_clock=self.clock.time_ns,
        )

    def _restart(self, task: str, reason: str) -> None:
        self.restarts.append((task, reason))

    def _on_health(self) -> None:
        self.health_calls += 1

    def tick(self, seconds: float = 0.0) -> None:
        """Advance the clock; return once every check due by then has run."""
        settle(self.runtime.scheduler, self.clock, seconds)

    def reported(self) -> dict[str, str]:
        return {r.id: r.health for r in self.runtime.registry.registrations()}

    def states(self, state: str, failed: bool = False) -> dict[str, pb.TaskState]:
        return {
            "server": pb.TaskState(
                state=state, failed=failed, started_at=self.clock.time_ns() - 3600 * SECOND
            )
        }

    def close(self) -> None:
        self.runtime.stop()


def test_hook_registers_when_tasks_run_and_reports_health_changes(
    web: Web,
) -> None:
    port, routes = web
    routes["/health"] = (200, 0.0)
    check = pb.ServiceCheck(type="http", path="/health", interval=SECOND // 4, timeout=SECOND)
    alloc = make_alloc(
        group_services=[pb.Service(name="w", port_label="http", checks=[check])],
        task_services=[pb.Service(name="plain", port_label="http")],
        ports=[("http", port)],
    )
    for p in alloc.allocated_resources.shared.ports:
        p.host_ip = "127.0.0.1"
    h = Harness(alloc)
    try:
        h.hook.tasks_changed(h.states("pending"))
        assert h.reported() == {}
        h.hook.tasks_changed(h.states("running"))
        h.tick()  # the checks' first run: at once
        checked = f"_nomad-task-{alloc.id}-group-web-w-http"
        plain = f"_nomad-task-{alloc.id}-server-plain-http"
        assert h.reported() == {checked: HEALTH_PASSING, plain: HEALTH_NONE}
        assert h.hook.tracker.healthy is True
        assert h.health_calls == 1
        status = h.hook.deployment_status()
        assert status is not None and status.healthy is True
        assert status.timestamp == h.clock.time_ns()  # the hook's wall clock
        routes["/health"] = (503, 0.0)
        h.tick(0.25)
        assert h.reported()[checked] == HEALTH_CRITICAL
        assert h.reported()[plain] == HEALTH_NONE
        wait_for(h.runtime.registry.flushed, timeout=5, message="critical sent")
        sends, hits = len(h.send.calls), web.hits["/health"]
        for _ in range(3):  # three more failing runs: no change, nothing sent
            h.tick(0.25)
        assert web.hits["/health"] == hits + 3
        wait_for(h.runtime.registry.flushed, timeout=5, message="flushed")
        assert len(h.send.calls) == sends
        assert h.hook.deregister() is True
        assert h.send.calls[-1][2] == [alloc.id]
        assert h.reported() == {}
    finally:
        h.close()


def test_a_starting_check_retries_fast_then_keeps_its_interval(
    web: Web,
) -> None:
    port, routes = web
    routes["/health"] = (503, 0.0)
    check = pb.ServiceCheck(type="http", path="/health", interval=30 * SECOND, timeout=SECOND)
    alloc = make_alloc(
        group_services=[pb.Service(name="w", port_label="http", checks=[check])],
        ports=[("http", port)],
    )
    for p in alloc.allocated_resources.shared.ports:
        p.host_ip = "127.0.0.1"
    h = Harness(alloc)
    try:
        h.hook.tasks_changed(h.states("running"))
        h.tick()
        assert web.hits["/health"] == 1 and not h.hook.checks_passing()
        h.tick(0.25)  # not passing yet: tried again at the startup pace, not in 30s
        assert web.hits["/health"] == 2
        routes["/health"] = (200, 0.0)  # the task starts listening
        h.tick(0.25)
        assert web.hits["/health"] == 3 and h.hook.checks_passing()
        for _ in range(4):  # passing: back to the 30s interval
            h.tick(0.25)
        assert web.hits["/health"] == 3
        h.tick(29.0)  # 30s after the passing run
        assert web.hits["/health"] == 4
    finally:
        h.close()


def test_after_a_task_restart_checks_must_pass_again_before_listing(web: Web) -> None:
    port, routes = web
    routes["/health"] = (200, 0.0)
    check = pb.ServiceCheck(type="http", path="/health", interval=30 * SECOND, timeout=SECOND)
    alloc = make_alloc(
        group_services=[pb.Service(name="w", port_label="http", checks=[check])],
        ports=[("http", port)],
    )
    for p in alloc.allocated_resources.shared.ports:
        p.host_ip = "127.0.0.1"
    h = Harness(alloc)
    sid = f"_nomad-task-{alloc.id}-group-web-w-http"
    try:
        h.hook.tasks_changed(h.states("running"))
        h.tick()
        assert h.reported() == {sid: HEALTH_PASSING}
        h.hook.tasks_changed(h.states("pending"))  # the task restarts
        assert h.reported() == {sid: HEALTH_CRITICAL}
        routes["/health"] = (503, 0.0)  # not listening yet once it runs again
        h.hook.tasks_changed(h.states("running"))
        hits = web.hits["/health"]
        h.tick(0.25)  # checked again (startup pace): failing
        h.tick(0.25)
        assert web.hits["/health"] == hits + 2
        assert h.reported() == {sid: HEALTH_CRITICAL}  # the old "passing" does not count
        routes["/health"] = (200, 0.0)
        h.tick(0.25)
        assert h.reported() == {sid: HEALTH_PASSING}
    finally:
        h.close()


def test_hook_restarts_a_task_after_limit_failures_past_grace() -> None:
    dead = closed_port()
    check = pb.ServiceCheck(
        type="tcp",
        interval=SECOND // 4,
        timeout=SECOND,
        check_restart=pb.CheckRestart(limit=3, grace=10 * SECOND),
    )
    alloc = make_alloc(
        task_services=[pb.Service(name="w", port_label="http", checks=[check])],
        ports=[("http", dead)],
    )
    h = Harness(alloc)
    try:
        # Just started: within grace (10s on the hook's wall clock), failures do
        # not count however many there are.
        fresh = {"server": pb.TaskState(state="running", started_at=h.clock.time_ns())}
        h.hook.tasks_changed(fresh)
        h.tick()
        for _ in range(8):
            h.tick(0.25)
        (state,) = h.hook.check_states().values()
        assert state.ran and state.status == HEALTH_CRITICAL
        assert state.failures == 0 and h.restarts == []
        h.tick(8.0)  # past grace: this run counts (1 of 3)
        assert h.hook.check_states()[state_key(h)].failures == 1
        h.tick(0.25)  # 2 of 3
        assert h.hook.check_states()[state_key(h)].failures == 2 and h.restarts == []
        h.tick(0.25)  # 3 of 3: restart
        assert len(h.restarts) == 1
        task, reason = h.restarts[0]
        assert task == "server" and "unhealthy" in reason
        assert h.hook.check_states()[state_key(h)].failures == 0  # counting starts over
    finally:
        h.close()


def state_key(h: Harness) -> str:
    (key,) = h.hook.check_states()
    return key


def test_hook_marks_instances_critical_while_a_task_is_not_running() -> None:
    alloc = make_alloc(
        group_services=[pb.Service(name="w", port_label="http")],
        update=pb.UpdateStrategy(min_healthy_time=10 * SECOND),
    )
    h = Harness(alloc)
    try:
        h.hook.tasks_changed(h.states("running"))
        sid = f"_nomad-task-{alloc.id}-group-web-w-http"
        wait_for(lambda: h.reported() == {sid: HEALTH_NONE}, timeout=5, message="listed")
        h.hook.tasks_changed(h.states("pending"))  # restarting
        assert h.reported() == {sid: HEALTH_CRITICAL}
        h.hook.tasks_changed(h.states("dead", failed=True))
        assert h.reported() == {}
        assert h.hook.tracker.healthy is False
        assert h.hook.tracker.decided_at_ns == h.clock.time_ns()
        wait_for(
            lambda: h.send.calls and h.send.calls[-1][2] == [alloc.id],
            timeout=5,
            message="deregistered",
        )
    finally:
        h.close()


def test_health_waits_min_healthy_time_on_the_hooks_clock() -> None:
    """min_healthy_time passes on the hook's (fake) clock: its timer fires then,
    not before, and the decision carries the hook's wall-clock time."""
    alloc = make_alloc(
        group_services=[pb.Service(name="w", port_label="http")],
        update=pb.UpdateStrategy(min_healthy_time=10 * SECOND),
    )
    h = Harness(alloc)
    try:
        h.hook.tasks_changed(h.states("running"))
        h.tick(9.75)
        assert h.hook.tracker.healthy is None and h.health_calls == 0
        h.tick(0.5)  # the timer is due just after min_healthy_time
        assert h.hook.tracker.healthy is True and h.health_calls == 1
        status = h.hook.deployment_status()
        assert status is not None and status.timestamp == h.clock.time_ns()
    finally:
        h.close()


def test_allocation_without_services_is_healthy_without_any_report() -> None:
    h = Harness(make_alloc())
    try:
        h.hook.tasks_changed(h.states("running"))
        assert h.hook.tracker.healthy is True
        assert h.hook.deregister() is True
        assert h.send.calls == []
    finally:
        h.close()


# ---------------------------------------------------------------- task runner restart hook


def test_task_runner_restart_stops_and_starts_again(tmp_path: object) -> None:
    job = pb.Job(id="j", name="j", type="service")
    group = job.task_groups.add(name="g")
    task = group.tasks.add(name="t", driver="mock")
    task.config.update({"run_for": "60s"})
    group.restart_policy.CopyFrom(pb.RestartPolicy(attempts=1, interval=3600 * SECOND, mode="fail"))
    alloc = pb.Allocation(id="alloc-1", job=job, job_id="j", task_group="g", name="j.g[0]")
    changes: list[str] = []
    tr = TaskRunner(
        alloc,
        task,
        make_node(),
        MockDriver(),
        str(tmp_path),
        lambda r: changes.append(r.state.state),
    )
    tr.start()
    try:
        wait_for(lambda: tr.state.state == "running", timeout=5, message="running")
        assert tr.restart("user requested") is True
        wait_for(
            lambda: tr.state.restarts == 1 and tr.state.state == "running",
            timeout=5,
            message="restarted",
        )
        types = [e.type for e in tr.state.events]
        assert "Restart Signaled" in types and types[-1] == "Started"
        # A failure restart goes through the policy: 1 attempt allowed, then it fails.
        assert tr.restart("check failed", failure=True) is True
        wait_for(
            lambda: tr.state.restarts == 2 and tr.state.state == "running",
            timeout=5,
            message="second restart",
        )
        assert tr.restart("check failed", failure=True) is True
        wait_for(lambda: tr.dead, timeout=5, message="failed for good")
        assert tr.state.failed
        assert tr.restart("too late") is False
    finally:
        tr.kill()
        tr.join(5)


# ---------------------------------------------------------------- HTTP API: events and filters


def sreg(
    rid: str, name: str = "web", health: str = "", tags: tuple[str, ...] = ()
) -> pb.ServiceRegistration:
    return pb.ServiceRegistration(
        id=rid, service_name=name, namespace="default", job_id="j", health=health, tags=tags
    )


def test_event_diff_follows_the_listed_view() -> None:
    before = listed_view([sreg("a"), sreg("b", health="passing"), sreg("c", health="critical")])
    assert sorted(before) == ["a", "b"]
    after = listed_view(
        [
            sreg("a", tags=("v2",)),  # changed
            sreg("b", health="critical"),  # turned critical: gone from listings
            sreg("c", health="passing"),  # turned passing: appears
            sreg("d"),  # new
        ]
    )
    events = diff_services(before, after, 42)
    kinds = [(e["Type"], e["Payload"]["Service"]["ID"]) for e in events]
    assert kinds == [
        ("ServiceDeregistration", "b"),
        ("ServiceRegistration", "a"),
        ("ServiceRegistration", "c"),
        ("ServiceRegistration", "d"),
    ]
    first = events[0]
    assert first["Topic"] == "Service" and first["Key"] == "web" and first["Index"] == 42
    assert first["FilterKeys"] == ["j", "web"] and first["Namespace"] == "default"
    assert diff_services(after, after, 43) == []


def test_event_topics_and_namespaces() -> None:
    ev = diff_services({}, listed_view([sreg("a")]), 1)[0]
    assert event_matches(ev, "default", parse_topics(["Service:*"]))
    assert event_matches(ev, "default", parse_topics([]))
    assert event_matches(ev, "*", parse_topics(["Service:web"]))
    assert event_matches(ev, "default", parse_topics(["Service:j"]))  # FilterKeys
    assert not event_matches(ev, "default", parse_topics(["Service:other"]))
    assert not event_matches(ev, "default", parse_topics(["Job:*"]))
    assert not event_matches(ev, "prod", parse_topics(["Service:*"]))


def test_filter_expressions_of_go_bexpr() -> None:
    data = {
        "ServiceName": "web",
        "Tags": ["traefik.enable=true", "v1"],
        "Port": 8080,
        "Address": "10.0.0.1",
        "Meta": {"team": "shop"},
    }
    yes = [
        'Tags contains "traefik.enable=true"',
        '"v1" in Tags',
        '"v2" not in Tags',
        'Tags not contains "v2"',
        'ServiceName == "web" and Port == 8080',
        'ServiceName == "api" or "v1" in Tags',
        'not (ServiceName == "api")',
        "Meta.team == shop",
        'Address matches "^10\\\\."',
        "Tags is not empty",
        "Meta.missing is empty",
        "ServiceName != `api`",
    ]
    no = [
        'Tags contains "traefik.enable=false"',
        'ServiceName == "web" and "v2" in Tags',
        'Port == "80"',
        "Tags is empty",
    ]
    for expr in yes:
        assert compile_filter(expr)(data), expr
    for expr in no:
        assert not compile_filter(expr)(data), expr
    assert compile_filter("")(data)
    for bad in ["Tags contains", '"x" in', "Tags ~ x", '(Tags contains "x"', 'Port matches "("']:
        with pytest.raises(HTTPError) as err:
            compile_filter(bad)
        assert err.value.status == 400
