"""Client-side services without a cluster: the registration builder, the check
runner against tiny local servers, the shared scheduler, the batching registry, the
deployment health tracker, the per-allocation hook with fakes, a task runner's
restart hook (mock driver), and the HTTP API's event diff and filter parser."""

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
    Scheduler,
    ServiceRegistry,
    ServiceRuntime,
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
            time.sleep(delay)
        body = b"x"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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
    sched = Scheduler(workers=2)
    runs: list[float] = []
    once = threading.Event()
    try:
        timer = sched.every(0.05, lambda: runs.append(time.monotonic()))
        sched.call_later(0.05, once.set)
        wait_for(lambda: len(runs) >= 4, timeout=5, message="4 runs")
        assert once.wait(2)
        timer.cancel()
        time.sleep(0.15)
        count = len(runs)
        time.sleep(0.15)
        assert len(runs) == count, "a cancelled timer ran again"
        # Not faster than the interval on average (a late start may shorten one gap).
        assert (runs[-1] - runs[0]) / (len(runs) - 1) >= 0.045
        assert sum(t.name == "check-timers" for t in threading.enumerate()) >= 1
    finally:
        sched.stop()


def test_a_slow_check_never_runs_twice_at_once() -> None:
    sched = Scheduler(workers=4)
    active = 0
    most = 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.1)
        with lock:
            active -= 1

    try:
        sched.every(0.01, slow)
        time.sleep(0.5)
    finally:
        sched.stop()
    assert most == 1


# ---------------------------------------------------------------- registry


class FakeSend:
    def __init__(self) -> None:
        self.calls: list[tuple[list[pb.ServiceRegistration], list[str], list[str]]] = []
        self.fail = 0
        self.gate = threading.Event()
        self.gate.set()

    def __call__(
        self, upserts: list[pb.ServiceRegistration], deletes: list[str], allocs: list[str]
    ) -> None:
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
        time.sleep(0.15)
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
        started = time.monotonic()
        threading.Timer(0.3, send.gate.set).start()
        assert registry.remove_alloc("a1", wait=5) is True
        assert time.monotonic() - started >= 0.25
        assert send.calls[-1] == ([], [], ["a1"])
        registry.set_alloc("a1", [reg("r1")])  # a late check result: ignored
        time.sleep(0.1)
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


def test_healthy_after_min_healthy_time_of_continuous_health() -> None:
    t = tracker()
    assert t.observe(1, tasks_running=True, task_failed=False, checks_passing=False) == 299
    assert t.observe(2, True, False, True) == 10  # timer: 10s from now
    assert t.observe(7, True, False, False) == 293  # unhealthy moment: timer restarts
    assert t.observe(8, True, False, True) == 10
    assert t.healthy is None
    assert t.observe(18, True, False, True) is None
    assert t.healthy is True
    assert t.observe(19, True, True, False) is None and t.healthy is True  # decided once


def test_failed_task_or_deadline_is_unhealthy() -> None:
    t = tracker()
    t.observe(1, True, False, True)
    t.observe(2, False, True, False)
    assert t.healthy is False
    t = tracker(deadline=30)
    t.observe(1, True, False, False)
    assert t.observe(31, True, False, False) is None and t.healthy is False


def test_task_states_mode_ignores_checks_and_zero_min_is_immediate() -> None:
    t = tracker(mode="task_states", min_healthy=0)
    t.observe(1, True, False, False)
    assert t.healthy is True
    manual = tracker(mode="manual")
    assert manual.observe(1000, True, False, True) is None and manual.healthy is None


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
    def __init__(self, alloc: pb.Allocation) -> None:
        self.send = FakeSend()
        self.runtime = ServiceRuntime(
            ServiceRegistry(self.send, coalesce=0), Scheduler(workers=2), deregister_wait=2
        )
        self.restarts: list[tuple[str, str]] = []
        self.health_calls = 0
        self.hook = AllocServices(alloc, make_node(), self.runtime, self._restart, self._on_health)

    def _restart(self, task: str, reason: str) -> None:
        self.restarts.append((task, reason))

    def _on_health(self) -> None:
        self.health_calls += 1

    def reported(self) -> dict[str, str]:
        return {r.id: r.health for r in self.runtime.registry.registrations()}

    def states(self, state: str, failed: bool = False) -> dict[str, pb.TaskState]:
        return {
            "server": pb.TaskState(
                state=state, failed=failed, started_at=time.time_ns() - 3600 * SECOND
            )
        }

    def close(self) -> None:
        self.runtime.stop()


def test_hook_registers_when_tasks_run_and_reports_health_changes(
    web: Web,
) -> None:
    port, routes = web
    routes["/health"] = (200, 0.0)
    check = pb.ServiceCheck(type="http", path="/health", interval=SECOND // 10, timeout=SECOND)
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
        checked = f"_nomad-task-{alloc.id}-group-web-w-http"
        plain = f"_nomad-task-{alloc.id}-server-plain-http"
        wait_for(
            lambda: h.reported() == {checked: HEALTH_PASSING, plain: HEALTH_NONE},
            timeout=5,
            message=lambda: f"passing, got {h.reported()}",
        )
        wait_for(lambda: h.hook.tracker.healthy is True, timeout=5, message="healthy")
        assert h.health_calls == 1
        assert h.hook.deployment_status() is not None
        assert h.hook.deployment_status().healthy is True  # type: ignore[union-attr]
        routes["/health"] = (503, 0.0)
        wait_for(
            lambda: h.reported().get(checked) == HEALTH_CRITICAL, timeout=5, message="critical"
        )
        assert h.reported()[plain] == HEALTH_NONE
        wait_for(h.runtime.registry.flushed, timeout=5, message="critical sent")
        sends = len(h.send.calls)
        time.sleep(0.35)  # three more failing runs: no change, nothing sent
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
        time.sleep(0.3)
        routes["/health"] = (200, 0.0)  # the task starts listening
        started = time.monotonic()
        wait_for(h.hook.checks_passing, timeout=5, message="passing")
        assert time.monotonic() - started < 1.0  # not after the 30s interval
        hits = web.hits["/health"]
        time.sleep(0.8)
        assert web.hits["/health"] == hits  # passing: back to the 30s interval
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
        wait_for(lambda: h.reported() == {sid: HEALTH_PASSING}, timeout=5, message="passing")
        h.hook.tasks_changed(h.states("pending"))  # the task restarts
        assert h.reported() == {sid: HEALTH_CRITICAL}
        routes["/health"] = (503, 0.0)  # not listening yet once it runs again
        h.hook.tasks_changed(h.states("running"))
        time.sleep(0.6)
        assert h.reported() == {sid: HEALTH_CRITICAL}  # the old "passing" does not count
        routes["/health"] = (200, 0.0)
        wait_for(lambda: h.reported() == {sid: HEALTH_PASSING}, timeout=2, message="again")
    finally:
        h.close()


def test_hook_restarts_a_task_after_limit_failures_past_grace() -> None:
    dead = closed_port()
    check = pb.ServiceCheck(
        type="tcp",
        interval=SECOND // 20,
        timeout=SECOND,
        check_restart=pb.CheckRestart(limit=3, grace=SECOND),
    )
    alloc = make_alloc(
        task_services=[pb.Service(name="w", port_label="http", checks=[check])],
        ports=[("http", dead)],
    )
    h = Harness(alloc)
    try:
        # Just started: within grace, failures do not count.
        fresh = {"server": pb.TaskState(state="running", started_at=time.time_ns())}
        h.hook.tasks_changed(fresh)
        time.sleep(0.5)
        assert h.restarts == []
        wait_for(lambda: h.restarts, timeout=5, message="a restart after grace")
        task, reason = h.restarts[0]
        assert task == "server" and "unhealthy" in reason
    finally:
        h.close()


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
        wait_for(
            lambda: h.send.calls and h.send.calls[-1][2] == [alloc.id],
            timeout=5,
            message="deregistered",
        )
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
