"""Configuration of one ``corral agent`` process (server, client, or both in --dev)."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_HTTP_PORT = 4646
DEFAULT_RPC_PORT = 4647
DEFAULT_RAFT_PORT = 4648


@dataclass
class AgentConfig:
    server: bool = False
    client: bool = False
    dev: bool = False
    data_dir: str = ""
    bind: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    rpc_port: int = DEFAULT_RPC_PORT
    raft_port: int = DEFAULT_RAFT_PORT
    # On a server: raft addresses of all servers (itself included). On a client:
    # gRPC addresses of the servers. Empty: a single server / the local server.
    servers: list[str] = field(default_factory=list)
    encrypt: str = ""
    # Client placement attributes.
    datacenter: str = "dc1"
    node_class: str = ""
    node_name: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    cpu_total: int = 0
    memory_total: int = 0
    # Client: host this many simulated nodes (mock driver) instead of one real node.
    simulate: int = 0
    # Client: offer the raw_exec driver (tasks run as the agent's user, unisolated).
    # Off unless asked for; --dev turns it on when bound to loopback.
    enable_raw_exec: bool = False
    # Client: port on which the client agent serves ClientService (logs); 0 = any.
    client_rpc_port: int = 0
    # Heartbeat tuning (seconds); tests shorten them.
    min_heartbeat_ttl: float = 10.0
    heartbeat_grace: float = 10.0
    log_level: str = "INFO"
