"""The client agent: register the node, heartbeat, watch allocations, run them.

Threads, each with one job:
* heartbeat: keeps the node alive within the TTL the server hands out;
* watch: one gRPC server stream of the node's allocations; reconciles runners;
* reporter: batches allocation status changes to the server every 200 ms;
* service-sync: reports service registrations (``client/services/``), batched and
  only on change; check-timers (+ a small pool) runs every service check;
* ClientService gRPC server: logs for ``corral alloc logs`` (proxied by servers).

The heartbeat, watch, reporter and service-sync threads share one gRPC channel to
one server (``_start_call``); when a call fails, ``_failover`` moves to the next
server in the list, once per failed channel however many threads saw it fail.

When the agent stops it closes every driver that has a ``close`` (the docker driver
stops its log followers; tasks keep running, for a restarted client to reattach).

State (node identity and every alloc runner's task handles) is saved under the
data dir so that a restarted client reattaches to tasks that kept running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from corral import structs
from corral.client.allocrunner import AllocRunner
from corral.client.drivers import load_drivers
from corral.client.drivers.base import Driver
from corral.client.fingerprint import fingerprint_node
from corral.client.logs import ClientLogService, safe_name
from corral.client.services import ServiceRegistry, ServiceRuntime, TimerWheel
from corral.proto import pb, rpc

log = logging.getLogger(__name__)

T = TypeVar("T")

ChannelFactory = Callable[[str], grpc.Channel]


@dataclass
class ClientConfig:
    data_dir: str
    servers: list[str]  # gRPC addresses of servers
    advertise_ip: str = "127.0.0.1"
    rpc_port: int = 0
    datacenter: str = "dc1"
    node_class: str = ""
    node_name: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    cpu_total: int = 0
    memory_total: int = 0
    drivers: list[str] | None = None
    # Dev mode: stop every allocation when the agent shuts down.
    stop_allocs_on_shutdown: bool = False


class _AgentStopped(grpc.RpcError):  # type: ignore[misc]  # grpc has no type hints
    """Raised instead of starting a call once the agent stopped: the calling loop
    handles it like any failed call (and then sees the stop), and no channel is
    created after ``stop`` closed the last one."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "client agent stopped"


class ClientAgent:
    def __init__(
        self,
        config: ClientConfig,
        drivers: dict[str, Driver] | None = None,
        *,
        channel_factory: ChannelFactory = grpc.insecure_channel,
    ) -> None:
        self.config = config
        self.drivers = drivers if drivers is not None else load_drivers(config.drivers)
        self.state_dir = os.path.join(config.data_dir, "client")
        self.alloc_dir = os.path.join(config.data_dir, "alloc")
        os.makedirs(self.state_dir, exist_ok=True)
        os.makedirs(self.alloc_dir, exist_ok=True)
        self.node = self._load_identity()
        self.runners: dict[str, AllocRunner] = {}
        self._runners_lock = threading.Lock()
        self._dirty: set[str] = set()
        self._dirty_cond = threading.Condition()
        self._stop = threading.Event()
        # The shared channel to the current server (``_start_call``, ``_failover``):
        # every read or change of these three happens under ``_channel_lock``.
        self._channel_lock = threading.Lock()
        self._server_index = 0
        self._channel: grpc.Channel | None = None
        self._stub: rpc.NodeServiceStub | None = None
        self._channel_factory = channel_factory
        self._grpc_server: grpc.Server | None = None
        self._threads: list[threading.Thread] = []
        self.heartbeat_ttl = 10.0
        self.registered = threading.Event()
        self.services = ServiceRuntime(ServiceRegistry(self._send_services), TimerWheel())

    # ------------------------------------------------------------ identity
    def _load_identity(self) -> pb.Node:
        path = os.path.join(self.state_dir, "node.json")
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)  # written 0644 by older versions
        else:
            saved = {"id": str(uuid.uuid4()), "secret_id": str(uuid.uuid4())}
            _write_json(path, saved)
        name = self.config.node_name or saved.get("name") or _hostname_name(saved["id"])
        return pb.Node(
            id=saved["id"],
            secret_id=saved["secret_id"],
            name=name,
            datacenter=self.config.datacenter,
            node_class=self.config.node_class,
            meta=self.config.meta,
        )

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._start_rpc_server()
        fingerprint_node(
            self.node,
            self.drivers,
            self.config.advertise_ip,
            self.config.cpu_total,
            self.config.memory_total,
        )
        self.node.node_resources.min_dynamic_port = structs.MIN_DYNAMIC_PORT
        self.node.node_resources.max_dynamic_port = structs.MAX_DYNAMIC_PORT
        self._restore_allocs()
        for target, name in (
            (self._register_and_heartbeat, "client-heartbeat"),
            (self._watch_loop, "client-watch"),
            (self._report_loop, "client-report"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        if self.config.stop_allocs_on_shutdown:
            with self._runners_lock:
                runners = list(self.runners.values())
            for r in runners:
                r.kill()
            for r in runners:
                r.wait(timeout=35)
            self._flush_updates()
        self.services.stop()
        self._stop.set()
        with self._dirty_cond:
            self._dirty_cond.notify_all()
        self._save_all()
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=1)
        with self._channel_lock:
            channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()
        self._close_drivers()

    def _close_drivers(self) -> None:
        """Release what the drivers hold for the agent (the docker driver's log
        followers, the mock driver's timer thread). Tasks keep running. Last in
        ``stop``: nothing uses a driver once its runners were killed and saved.
        One driver failing to close does not keep the others open."""
        for name, driver in self.drivers.items():
            close = getattr(driver, "close", None)
            if not callable(close):
                continue
            try:
                close()
            except Exception:
                log.exception("closing the %s driver failed", name)

    def _start_rpc_server(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        rpc.add_ClientServiceServicer_to_server(_ClientRPC(self), server)
        port = server.add_insecure_port(f"{self.config.advertise_ip}:{self.config.rpc_port}")
        server.start()
        self._grpc_server = server
        self.node.rpc_addr = f"{self.config.advertise_ip}:{port}"

    def _alloc_root_of(self, alloc_id: str) -> str | None:
        """The allocation's directory, only for a name that is one path component
        directly in the alloc dir: the log service turns request fields into paths,
        and ``../`` must not walk out (it listed /root once)."""
        if not safe_name(alloc_id):
            return None
        base = os.path.realpath(self.alloc_dir)
        root = os.path.realpath(os.path.join(base, alloc_id))
        if os.path.dirname(root) != base or not os.path.isdir(root):
            return None
        return root

    def _task_names_of(self, alloc_id: str) -> list[str]:
        with self._runners_lock:
            runner = self.runners.get(alloc_id)
        if runner is not None:
            return list(runner.tasks)
        root = self._alloc_root_of(alloc_id)
        if root is None:
            return []
        return [d for d in os.listdir(root) if d != "alloc"]

    # ------------------------------------------------------------ server connection
    def _current_locked(self) -> tuple[grpc.Channel, rpc.NodeServiceStub]:
        """The current channel and its stub, created on first use. Lock held."""
        if self._stop.is_set():
            raise _AgentStopped()
        if self._channel is None or self._stub is None:
            addr = self.config.servers[self._server_index % len(self.config.servers)]
            self._channel = self._channel_factory(addr)
            self._stub = rpc.NodeServiceStub(self._channel)
        return self._channel, self._stub

    def _stub_channel(self) -> grpc.Channel:
        """The channel calls go through now (see ``_start_call``)."""
        with self._channel_lock:
            return self._current_locked()[0]

    def _start_call(self, start: Callable[[rpc.NodeServiceStub], T]) -> tuple[T, grpc.Channel]:
        """Start a call on the current channel; returns the call and the channel it
        went through (to pass to ``_failover`` if it fails).

        ``start`` must only start the call (``stub.X.future(...)``, or a server
        stream) and not wait for it: it runs under the channel lock, so that
        ``_failover`` cannot close the channel between picking it and starting the
        call (gRPC raises ValueError, not RpcError, for a call on a closed channel,
        which no loop here expects). A call already running when another thread
        fails over is cancelled by the close: it fails with an RpcError (CANCELLED),
        its loop's ``_failover`` of that channel does nothing, and its retry goes
        through the new channel.
        """
        with self._channel_lock:
            channel, stub = self._current_locked()
            return start(stub), channel

    def _failover(self, failed: grpc.Channel | None) -> None:
        """Move to the next server because a call through ``failed`` failed.

        Several threads see one server fail (the heartbeat, the watch and the
        reporter share the channel): only the first failover from a channel moves
        on; the others find another channel current and do nothing, so no server
        is skipped. The failed channel is closed (once), which cancels the calls
        still running on it: their loops retry on the new channel.
        """
        with self._channel_lock:
            current = self._channel
            # Another thread failed over from it already; or there is nothing to
            # fail over from (``failed`` is None when the call never started).
            if current is not failed or current is None:
                return
            self._channel = None
            self._stub = None
            self._server_index += 1
        current.close()

    def _register_and_heartbeat(self) -> None:
        backoff = 0.2
        registrations = 0
        while not self._stop.is_set():
            channel: grpc.Channel | None = None
            try:
                if not self.registered.is_set():
                    call, channel = self._start_call(
                        lambda stub: stub.Register.future(
                            pb.NodeRegisterRequest(node=self.node), timeout=10
                        )
                    )
                    resp = call.result()
                    if registrations:
                        # Registered again (the servers forgot this node): they may
                        # have lost its service registrations too.
                        self.services.registry.resync()
                    registrations += 1
                    self.registered.set()
                    log.info("node %s registered", self.node.id)
                else:
                    call, channel = self._start_call(
                        lambda stub: stub.Heartbeat.future(
                            pb.NodeHeartbeatRequest(
                                node_id=self.node.id, secret_id=self.node.secret_id
                            ),
                            timeout=10,
                        )
                    )
                    resp = call.result()
                self.heartbeat_ttl = resp.heartbeat_ttl / 1e9 or 10.0
                backoff = 0.2
                # Heartbeat at half the TTL, so one lost heartbeat is not fatal.
                self._stop.wait(max(self.heartbeat_ttl / 2, 0.1))
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    self.registered.clear()  # the server forgot us: register again
                    continue
                log.warning("heartbeat failed: %s", exc.details())
                self._failover(channel)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _watch_loop(self) -> None:
        self.registered.wait()
        backoff = 0.2
        request = pb.NodeWatchRequest(node_id=self.node.id, secret_id=self.node.secret_id)
        while not self._stop.is_set():
            channel: grpc.Channel | None = None
            try:
                call, channel = self._start_call(lambda stub: stub.WatchAllocations(request))
                for update in call:
                    if self._stop.is_set():
                        call.cancel()
                        return
                    self._sync(list(update.allocs))
                    backoff = 0.2
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                log.warning("allocation watch ended: %s", exc.details())
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    self.registered.clear()
                    self.registered.wait(5)
                else:
                    self._failover(channel)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    # ------------------------------------------------------------ reconciling
    def _sync(self, allocs: list[pb.Allocation]) -> None:
        """Make the runners match the server's view of this node's allocations."""
        seen = set()
        for alloc in allocs:
            seen.add(alloc.id)
            with self._runners_lock:
                runner = self.runners.get(alloc.id)
            if runner is not None:
                if (
                    alloc.alloc_modify_index != runner.alloc.alloc_modify_index
                    or alloc.desired_status != runner.alloc.desired_status
                    or alloc.job_version != runner.alloc.job_version
                    # A promoted canary turns into a regular instance (its tags change).
                    or alloc.deployment_status.canary != runner.alloc.deployment_status.canary
                ):
                    runner.update(alloc)
                    self._mark_dirty(runner)
                continue
            if alloc.desired_status != structs.ALLOC_DESIRED_RUN:
                continue
            if alloc.client_status in structs.ALLOC_TERMINAL_CLIENT:
                continue
            self._start_runner(alloc)
        with self._runners_lock:
            gone = [r for aid, r in self.runners.items() if aid not in seen]
        for runner in gone:  # garbage-collected by the server
            runner.kill()
            with self._runners_lock:
                self.runners.pop(runner.alloc.id, None)
            self._remove_state(runner.alloc.id)
            self.services.registry.forget_alloc(runner.alloc.id)

    def _start_runner(
        self, alloc: pb.Allocation, restored: dict[str, object] | None = None
    ) -> None:
        root = os.path.join(self.alloc_dir, alloc.id)
        runner = AllocRunner(
            alloc, self.node, self.drivers, root, self._mark_dirty, restored, services=self.services
        )
        with self._runners_lock:
            self.runners[alloc.id] = runner
        runner.start()

    def _restore_allocs(self) -> None:
        """Reattach to the allocations this client ran before it restarted."""
        allocs_dir = os.path.join(self.state_dir, "allocs")
        if not os.path.isdir(allocs_dir):
            return
        for name in os.listdir(allocs_dir):
            path = os.path.join(allocs_dir, name)
            try:
                with open(path) as f:
                    saved = json.load(f)
                alloc = pb.Allocation.FromString(bytes.fromhex(saved["alloc"]))
            except (OSError, ValueError, KeyError):
                log.warning("ignoring unreadable alloc state %s", path)
                continue
            log.info("restoring allocation %s", alloc.id)
            self._start_runner(alloc, restored=saved)

    # ------------------------------------------------------------ reporting
    def _mark_dirty(self, runner: AllocRunner) -> None:
        with self._dirty_cond:
            self._dirty.add(runner.alloc.id)
            self._dirty_cond.notify()

    def _report_loop(self) -> None:
        self.registered.wait()
        while not self._stop.is_set():
            with self._dirty_cond:
                if not self._dirty:
                    self._dirty_cond.wait(1.0)
            self._stop.wait(0.1)  # coalesce bursts into one batch
            self._flush_updates()

    def _flush_updates(self) -> None:
        with self._dirty_cond:
            ids, self._dirty = self._dirty, set()
        if not ids:
            return
        updates = []
        for alloc_id in ids:
            with self._runners_lock:
                runner = self.runners.get(alloc_id)
            if runner is None:
                continue
            updates.append(runner.client_update())
            self._save(runner)
        if not updates:
            return
        request = pb.NodeUpdateAllocsRequest(allocs=updates)
        channel: grpc.Channel | None = None
        try:
            call, channel = self._start_call(
                lambda stub: stub.UpdateAllocations.future(request, timeout=15)
            )
            call.result()
        except grpc.RpcError as exc:
            log.warning("reporting allocation status failed: %s", exc.details())
            with self._dirty_cond:
                self._dirty |= ids  # nothing reported is lost: retry
            self._failover(channel)

    def _send_services(
        self,
        upserts: list[pb.ServiceRegistration],
        delete_ids: list[str],
        delete_alloc_ids: list[str],
    ) -> None:
        """One ``UpdateServices`` call (the registry retries when it raises)."""
        self.registered.wait(10)
        request = pb.NodeServicesRequest(
            node_id=self.node.id,
            secret_id=self.node.secret_id,
            upserts=upserts,
            delete_ids=delete_ids,
            delete_alloc_ids=delete_alloc_ids,
        )
        call, _ = self._start_call(lambda stub: stub.UpdateServices.future(request, timeout=10))
        call.result()

    # ------------------------------------------------------------ persistence
    def _save(self, runner: AllocRunner) -> None:
        path = os.path.join(self.state_dir, "allocs", f"{runner.alloc.id}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_json(path, runner.persist_state())

    def _save_all(self) -> None:
        with self._runners_lock:
            runners = list(self.runners.values())
        for r in runners:
            self._save(r)

    def _remove_state(self, alloc_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.state_dir, "allocs", f"{alloc_id}.json"))


class _ClientRPC(ClientLogService):
    """ClientService, reached through the servers: logs (``client/logs.py``) and
    in-place restarts (``corral alloc restart``)."""

    def __init__(self, agent: ClientAgent) -> None:
        super().__init__(agent._alloc_root_of, agent._task_names_of)
        self._agent = agent

    def Restart(
        self, request: pb.AllocRestartRequest, context: grpc.ServicerContext
    ) -> pb.AllocRestartResponse:
        with self._agent._runners_lock:
            runner = self._agent.runners.get(request.alloc_id)
        if runner is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"allocation {request.alloc_id} is not running here"
            )
        assert runner is not None
        if runner.killed or runner.terminal:
            # Nomad's alloc runner (shouldRun): a stopped or finished allocation stays
            # down; restarting it would bring back a zombie half alive.
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "restart of an alloc that should not run"
            )
        if request.task and request.task not in runner.tasks:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'no task "{request.task}" in allocation {request.alloc_id[:8]}; its tasks: '
                + ", ".join(sorted(runner.tasks)),
            )
        names = [request.task] if request.task else list(runner.tasks)
        restarted = [n for n in names if runner.tasks[n].restart("User requested restart")]
        if not restarted:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"task {request.task or '(all)'} of allocation {request.alloc_id[:8]} is not"
                " running",
            )
        return pb.AllocRestartResponse()


def _write_json(path: str, data: object) -> None:
    """Atomically, readable by root only: node.json holds the node's secret, and
    allocation state files the task handles."""
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _hostname_name(node_id: str) -> str:
    import socket

    return f"{socket.gethostname()}-{node_id[:8]}"


__all__ = ["ClientAgent", "ClientConfig", "time"]
