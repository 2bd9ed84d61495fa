"""The client agent: register the node, heartbeat, watch allocations, run them.

Threads, each with one job:
* heartbeat: keeps the node alive within the TTL the server hands out;
* watch: one gRPC server stream of the node's allocations; reconciles runners;
* reporter: batches allocation status changes to the server every 200 ms;
* service-sync: reports service registrations (``client/services.py``), batched and
  only on change; check-timers (+ a small pool) runs every service check;
* ClientService gRPC server: logs for ``corral alloc logs`` (proxied by servers).

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
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from corral import structs
from corral.client.allocrunner import AllocRunner
from corral.client.drivers import load_drivers
from corral.client.drivers.base import Driver
from corral.client.fingerprint import fingerprint_node
from corral.client.logs import ClientLogService
from corral.client.services import Scheduler, ServiceRegistry, ServiceRuntime
from corral.proto import pb, rpc

log = logging.getLogger(__name__)


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


class ClientAgent:
    def __init__(self, config: ClientConfig, drivers: dict[str, Driver] | None = None) -> None:
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
        self._server_index = 0
        self._channel: grpc.Channel | None = None
        self._grpc_server: grpc.Server | None = None
        self._threads: list[threading.Thread] = []
        self.heartbeat_ttl = 10.0
        self.registered = threading.Event()
        self.services = ServiceRuntime(ServiceRegistry(self._send_services), Scheduler())

    # ------------------------------------------------------------ identity
    def _load_identity(self) -> pb.Node:
        path = os.path.join(self.state_dir, "node.json")
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
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
        if self._channel is not None:
            self._channel.close()

    def _start_rpc_server(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        rpc.add_ClientServiceServicer_to_server(_ClientRPC(self), server)
        port = server.add_insecure_port(f"{self.config.advertise_ip}:{self.config.rpc_port}")
        server.start()
        self._grpc_server = server
        self.node.rpc_addr = f"{self.config.advertise_ip}:{port}"

    def _alloc_root_of(self, alloc_id: str) -> str | None:
        root = os.path.join(self.alloc_dir, alloc_id)
        return root if os.path.isdir(root) else None

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
    def _stub_channel(self) -> grpc.Channel:
        if self._channel is None:
            addr = self.config.servers[self._server_index % len(self.config.servers)]
            self._channel = grpc.insecure_channel(addr)
        return self._channel

    def _failover(self) -> None:
        """Try the next server on the next call."""
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._server_index += 1

    def _register_and_heartbeat(self) -> None:
        backoff = 0.2
        registrations = 0
        while not self._stop.is_set():
            stub = rpc.NodeServiceStub(self._stub_channel())
            try:
                if not self.registered.is_set():
                    resp = stub.Register(pb.NodeRegisterRequest(node=self.node), timeout=10)
                    if registrations:
                        # Registered again (the servers forgot this node): they may
                        # have lost its service registrations too.
                        self.services.registry.resync()
                    registrations += 1
                    self.registered.set()
                    log.info("node %s registered", self.node.id)
                else:
                    resp = stub.Heartbeat(
                        pb.NodeHeartbeatRequest(
                            node_id=self.node.id, secret_id=self.node.secret_id
                        ),
                        timeout=10,
                    )
                self.heartbeat_ttl = resp.heartbeat_ttl / 1e9 or 10.0
                backoff = 0.2
                # Heartbeat at half the TTL, so one lost heartbeat is not fatal.
                self._stop.wait(max(self.heartbeat_ttl / 2, 0.1))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    self.registered.clear()  # the server forgot us: register again
                    continue
                log.warning("heartbeat failed: %s", exc.details())
                self._failover()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def _watch_loop(self) -> None:
        self.registered.wait()
        backoff = 0.2
        while not self._stop.is_set():
            stub = rpc.NodeServiceStub(self._stub_channel())
            call = stub.WatchAllocations(
                pb.NodeWatchRequest(node_id=self.node.id, secret_id=self.node.secret_id)
            )
            self._call = call
            try:
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
                    self._failover()
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
        try:
            rpc.NodeServiceStub(self._stub_channel()).UpdateAllocations(
                pb.NodeUpdateAllocsRequest(allocs=updates), timeout=15
            )
        except grpc.RpcError as exc:
            log.warning("reporting allocation status failed: %s", exc.details())
            with self._dirty_cond:
                self._dirty |= ids  # nothing reported is lost: retry
            self._failover()

    def _send_services(
        self,
        upserts: list[pb.ServiceRegistration],
        delete_ids: list[str],
        delete_alloc_ids: list[str],
    ) -> None:
        """One ``UpdateServices`` call (the registry retries when it raises)."""
        self.registered.wait(10)
        rpc.NodeServiceStub(self._stub_channel()).UpdateServices(
            pb.NodeServicesRequest(
                node_id=self.node.id,
                secret_id=self.node.secret_id,
                upserts=upserts,
                delete_ids=delete_ids,
                delete_alloc_ids=delete_alloc_ids,
            ),
            timeout=10,
        )

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
        if runner is None or runner.killed:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"allocation {request.alloc_id} is not running here"
            )
        assert runner is not None
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
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _hostname_name(node_id: str) -> str:
    import socket

    return f"{socket.gethostname()}-{node_id[:8]}"


__all__ = ["ClientAgent", "ClientConfig", "time"]
