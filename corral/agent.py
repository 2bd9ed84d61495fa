"""``corral agent``: the process that hosts a server, a client, or both (--dev).

This is the composition root: the only place that wires server and client
together, and the only module the CLI imports from them.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import tempfile
import threading
from concurrent import futures
from typing import TYPE_CHECKING

import grpc

from corral.agentconfig import AgentConfig

if TYPE_CHECKING:
    from corral.client.agent import ClientAgent
    from corral.client.simulate import SimulatedFleet
    from corral.server.http_api import HTTPAPI
    from corral.server.server import Server

log = logging.getLogger("corral.agent")


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        if cfg.dev:
            cfg.server = cfg.client = True
        if not cfg.server and not cfg.client:
            raise ValueError("an agent must run a server, a client, or both (--dev)")
        if not cfg.data_dir:
            cfg.data_dir = tempfile.mkdtemp(prefix="corral-")
        self.cfg = cfg
        self.server: Server | None = None
        self.grpc_server: grpc.Server | None = None
        self.http: HTTPAPI | None = None
        self.client: ClientAgent | None = None
        self.fleet: SimulatedFleet | None = None

    @property
    def rpc_addr(self) -> str:
        return f"{self.cfg.bind}:{self.cfg.rpc_port}"

    def start(self) -> None:
        cfg = self.cfg
        os.makedirs(cfg.data_dir, exist_ok=True)
        if cfg.server:
            from corral.server.endpoints import add_to_grpc
            from corral.server.forward import GRPC_MESSAGE_OPTIONS
            from corral.server.http_api import HTTPAPI
            from corral.server.server import Server, ServerConfig

            raft_addr = f"{cfg.bind}:{cfg.raft_port}"
            peers = tuple(cfg.servers) if cfg.servers else ()
            server = self.server = Server(
                ServerConfig(
                    data_dir=os.path.join(cfg.data_dir, "server"),
                    raft_address=raft_addr,
                    raft_bind=raft_addr,
                    raft_peers=peers,
                    encrypt=cfg.encrypt,
                    min_heartbeat_ttl=cfg.min_heartbeat_ttl,
                    heartbeat_grace=cfg.heartbeat_grace,
                    failover_heartbeat_ttl=max(cfg.min_heartbeat_ttl * 3, 30.0)
                    if cfg.dev
                    else 300.0,
                    name=cfg.node_name or raft_addr,
                    rpc_address=self.rpc_addr,
                    http_address=f"{cfg.bind}:{cfg.http_port}",
                )
            )
            self.grpc_server = grpc.server(
                futures.ThreadPoolExecutor(max_workers=256, thread_name_prefix="grpc"),
                options=[*GRPC_MESSAGE_OPTIONS, ("grpc.so_reuseport", 0)],
            )
            add_to_grpc(server, self.grpc_server)
            bound = self.grpc_server.add_insecure_port(self.rpc_addr)
            if bound == 0:
                raise OSError(f"cannot listen for gRPC on {self.rpc_addr}")
            server.start()
            self.grpc_server.start()
            self.http = HTTPAPI(server, cfg.bind, cfg.http_port)
            self.http.start()
            log.info(
                "server started: gRPC %s, HTTP %s:%d, raft %s",
                self.rpc_addr,
                cfg.bind,
                cfg.http_port,
                raft_addr,
            )
        if cfg.client and cfg.simulate:
            from corral.client.simulate import SimulatedFleet

            servers = list(cfg.servers) if (cfg.servers and not cfg.server) else [self.rpc_addr]
            self.fleet = SimulatedFleet(
                servers,
                cfg.simulate,
                datacenter=cfg.datacenter,
                node_class=cfg.node_class,
                cpu=cfg.cpu_total or 4000,
                memory=cfg.memory_total or 8192,
                name_prefix=cfg.node_name or "sim",
                meta=dict(cfg.meta),
            )
            self.fleet.start()
            log.info("client started: %d simulated nodes", cfg.simulate)
        elif cfg.client:
            from corral.client.agent import ClientAgent, ClientConfig
            from corral.client.drivers import KNOWN_DRIVERS

            servers = list(cfg.servers) if (cfg.servers and not cfg.server) else [self.rpc_addr]
            client = self.client = ClientAgent(
                ClientConfig(
                    data_dir=cfg.data_dir,
                    servers=servers,
                    advertise_ip=cfg.bind,
                    rpc_port=cfg.client_rpc_port,
                    datacenter=cfg.datacenter,
                    node_class=cfg.node_class,
                    node_name=cfg.node_name,
                    meta=dict(cfg.meta),
                    cpu_total=cfg.cpu_total,
                    memory_total=cfg.memory_total,
                    stop_allocs_on_shutdown=cfg.dev,
                    drivers=[d for d in KNOWN_DRIVERS if d != "raw_exec" or cfg.enable_raw_exec],
                )
            )
            client.start()
            log.info("client started: node %s (%s)", client.node.name, client.node.id)

    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.stop()
        if self.client is not None:
            self.client.stop()
        if self.http is not None:
            self.http.stop()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=1)
        if self.server is not None:
            self.server.stop()


# The cyclic garbage collector, tuned for a process that holds the cluster state.
GC_YOUNG_THRESHOLD = 20_000  # allocations between young collections (CPython: 700)
GC_MIDDLE_THRESHOLD = 5  # young collections per middle collection (CPython: 10)


def tune_gc() -> None:
    """Keep the cyclic garbage collector's pauses short and rare with a big state.

    A server holds every allocation as a GC-tracked protobuf message plus the
    state store's HAMT nodes: ~2.5 tracked objects per allocation. With CPython's
    defaults the collector cost ~40% of applying allocation updates, and a larger
    young generation alone made middle-generation pauses reach ~1 s at 300,000
    allocations, longer than the raft election timeout: leaders flapped under load
    (measured with the C1M benchmark, docs/BENCHMARKS.md). So:

    * collect the young generation every 20,000 allocations, the middle one every
      5 young collections (pauses measured <= 0.1 s and <= 0.26 s);
    * after each middle (or full) collection, freeze what survived (``gc.freeze``):
      long-lived objects are never traversed again, so full collections, whose
      pause grows with the whole state (1 s at 400,000 allocations), do not happen.

    The state itself is acyclic (messages, maps, tuples): replaced objects are
    freed by reference counting, frozen or not. The cost: a reference cycle that
    lived through two young collections and dies later is never reclaimed.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_MIDDLE_THRESHOLD, 1000)
    gc.callbacks.append(_freeze_survivors)


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] >= 1:
        gc.freeze()


def run_agent(cfg: AgentConfig) -> int:
    """Run until SIGINT/SIGTERM; return the process exit code."""
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper(), logging.INFO),
        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s",
    )
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)
    tune_gc()
    agent = Agent(cfg)
    done = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        log.info("caught signal %d, shutting down", signum)
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        agent.start()
    except Exception as exc:
        log.error("agent failed to start: %s", exc)
        agent.stop()
        return 1
    done.wait()
    agent.stop()
    log.info("agent stopped")
    return 0
