"""Simulated fleets: ``corral agent --client --simulate N`` hosts N virtual nodes.

Each virtual node registers with its own ID, resources and heartbeats, like a real
client; its allocations "run" at once (the mock driver's simplest behaviour, with
no threads or processes per task) and complete when the server stops them. One
fleet-wide allocation stream (``WatchFleet``), batched heartbeats and batched
status updates keep thousands of nodes cheap enough for one process, so scale runs
(bench/) exercise the real servers on one machine.
"""

from __future__ import annotations

import logging
import threading
import uuid

import grpc

from corral import structs
from corral.proto import pb, rpc

log = logging.getLogger(__name__)

BATCH = 2000


class SimulatedFleet:
    def __init__(
        self,
        servers: list[str],
        count: int,
        datacenter: str = "dc1",
        node_class: str = "",
        cpu: int = 4000,
        memory: int = 8192,
        name_prefix: str = "sim",
        meta: dict[str, str] | None = None,
    ) -> None:
        self.servers = servers
        self.nodes: list[pb.Node] = []
        for i in range(count):
            node = pb.Node(
                id=str(uuid.uuid4()),
                secret_id=str(uuid.uuid4()),
                name=f"{name_prefix}-{i:05d}",
                datacenter=datacenter,
                node_class=node_class,
                meta=meta or {},
            )
            node.node_resources.cpu.cpu_shares = cpu
            node.node_resources.cpu.total_cpu_cores = 4
            node.node_resources.memory.memory_mb = memory
            node.node_resources.min_dynamic_port = structs.MIN_DYNAMIC_PORT
            node.node_resources.max_dynamic_port = structs.MAX_DYNAMIC_PORT
            node.attributes.update(
                {
                    "kernel.name": "linux",
                    "os.name": "linux",
                    "cpu.arch": "amd64",
                    "unique.hostname": node.name,
                    "unique.network.ip-address": "127.0.0.1",
                    "driver.mock": "1",
                }
            )
            node.drivers["mock"].detected = True
            node.drivers["mock"].healthy = True
            self.nodes.append(node)
        self._known: dict[str, str] = {}  # alloc id -> last reported client status
        self.running = 0  # allocations reported running and not stopped since
        self._stop = threading.Event()
        self._server = 0
        self._channel: grpc.Channel | None = None
        self._stub_of: rpc.NodeServiceStub | None = None
        self._channel_lock = threading.RLock()
        self.ttl = 10.0
        self._threads: list[threading.Thread] = []

    def _stub(self) -> rpc.NodeServiceStub:
        with self._channel_lock:
            if self._channel is None or self._stub_of is None:
                self._channel = grpc.insecure_channel(
                    self.servers[self._server % len(self.servers)],
                    options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)],
                )
                self._stub_of = rpc.NodeServiceStub(self._channel)
            return self._stub_of

    def _failover(self) -> None:
        with self._channel_lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = None
            self._stub_of = None
            self._server += 1

    def _failover_from(self, stub: rpc.NodeServiceStub) -> None:
        """Fail over unless another thread already did since ``stub`` was taken."""
        with self._channel_lock:
            if self._stub_of is not stub:
                return
        self._failover()

    def start(self) -> None:
        self._register_all()
        for target, name in (
            (self._heartbeat_loop, "sim-heartbeat"),
            (self._watch_loop, "sim-watch"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        if self._channel is not None:
            self._channel.close()

    REGISTER_CONCURRENCY = 64

    def _register_all(self) -> None:
        """Register every node, many at once: the server commits concurrent writes
        together in one raft entry (group commit), one at a time they cost a raft
        round each (5,000 nodes took 97 s that way)."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.REGISTER_CONCURRENCY, "sim-register") as pool:
            list(pool.map(self._register, self.nodes))
        log.info("simulated fleet: %d nodes registered", len(self.nodes))

    def _register(self, node: pb.Node) -> None:
        while not self._stop.is_set():
            stub = self._stub()
            try:
                resp = stub.Register(pb.NodeRegisterRequest(node=node), timeout=30)
                self.ttl = resp.heartbeat_ttl / 1e9 or self.ttl
                return
            except grpc.RpcError as exc:
                log.warning("registering %s failed: %s", node.name, exc.details())
                self._failover_from(stub)
                self._stop.wait(0.5)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(max(self.ttl / 3, 0.5)):
            beats = [
                pb.NodeHeartbeatRequest(node_id=n.id, secret_id=n.secret_id) for n in self.nodes
            ]
            for i in range(0, len(beats), BATCH):
                stub = self._stub()
                try:
                    resp = stub.HeartbeatMany(
                        pb.NodeHeartbeatManyRequest(heartbeats=beats[i : i + BATCH]), timeout=30
                    )
                    self.ttl = resp.heartbeat_ttl / 1e9 or self.ttl
                except grpc.RpcError as exc:
                    log.warning("fleet heartbeat failed: %s", exc.details())
                    self._failover_from(stub)

    def _watch_loop(self) -> None:
        index = 0
        ids = [n.id for n in self.nodes]
        while not self._stop.is_set():
            stub = self._stub()
            try:
                for update in stub.WatchFleet(pb.FleetWatchRequest(node_ids=ids, min_index=index)):
                    index = update.index
                    self._act(list(update.allocs))
                    if self._stop.is_set():
                        return
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                log.warning("fleet watch ended: %s", exc.details())
                self._failover_from(stub)
                self._stop.wait(0.5)

    def _act(self, allocs: list[pb.Allocation]) -> None:
        """Run what should run, complete what should stop; report in batches."""
        updates = []
        for alloc in allocs:
            if alloc.desired_status == structs.ALLOC_DESIRED_RUN:
                want = structs.ALLOC_CLIENT_RUNNING
            else:
                want = structs.ALLOC_CLIENT_COMPLETE
            if alloc.client_status == want or self._known.get(alloc.id) == want:
                continue
            if alloc.client_status in structs.ALLOC_TERMINAL_CLIENT:
                continue
            before = self._known.get(alloc.id)
            self._known[alloc.id] = want
            if want == structs.ALLOC_CLIENT_RUNNING:
                self.running += 1
            elif before == structs.ALLOC_CLIENT_RUNNING:
                self.running -= 1
            upd = pb.Allocation(id=alloc.id, client_status=want)
            state = (
                structs.TASK_STATE_RUNNING
                if want == structs.ALLOC_CLIENT_RUNNING
                else structs.TASK_STATE_DEAD
            )
            for task in alloc.allocated_resources.tasks:
                upd.task_states[task].state = state
            updates.append(upd)
        for i in range(0, len(updates), BATCH):
            chunk = updates[i : i + BATCH]
            while not self._stop.is_set():
                stub = self._stub()
                try:
                    stub.UpdateAllocations(pb.NodeUpdateAllocsRequest(allocs=chunk), timeout=60)
                    break
                except grpc.RpcError as exc:
                    log.warning("fleet status update failed: %s", exc.details())
                    self._failover_from(stub)
                    self._stop.wait(0.2)
