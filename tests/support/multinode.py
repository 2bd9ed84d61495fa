"""A server and several client agents as separate processes on 127.0.0.1: the
shape of Nomad's e2e cluster, for tests that need more than one node.

``ServerOnly`` is ``corral agent --server`` (short heartbeat TTLs unless told
otherwise); ``Client`` is ``corral agent --client`` joined to it. ``nomad_e2e_cluster``
starts the four clients of Nomad's e2e suite (``e2e/terraform/.../client-linux-{0..3}``):

    node    datacenter  meta.rack
    c0      dc1         r1
    c1      dc1         r2
    c2      dc2         r1
    c3      dc2         r2
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from corral.proto import pb, rpc
from tests.support.agent import AgentProcess, run_cli
from tests.support.env import free_port
from tests.support.wait import wait_for

E2E_NODES = (("c0", "dc1", "r1"), ("c1", "dc1", "r2"), ("c2", "dc2", "r1"), ("c3", "dc2", "r2"))


class ServerOnly(AgentProcess):
    name = "server"

    def __init__(self, base_dir: Path, *extra: str, heartbeat: str = "1s") -> None:
        super().__init__(extra, base_dir=base_dir / "server")
        self.rpc_port, self.http_port, self.raft_port = free_port(), free_port(), free_port()
        self.heartbeat = heartbeat

    @property
    def rpc_addr(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def build_args(self) -> list[str]:
        return [
            "--server",
            "--data-dir",
            str(self.base_dir / "data"),
            "--rpc-port",
            str(self.rpc_port),
            "--http-port",
            str(self.http_port),
            "--raft-port",
            str(self.raft_port),
            "--min-heartbeat-ttl",
            self.heartbeat,
            "--heartbeat-grace",
            self.heartbeat,
            *self._args,
        ]

    def is_ready(self) -> bool:
        try:
            with grpc.insecure_channel(self.rpc_addr) as ch:
                st = rpc.StatusServiceStub(ch).Status(pb.StatusRequest(), timeout=2)
            return bool(st.leader)
        except grpc.RpcError:
            return False

    def cli(self, *args: str, timeout: float = 60) -> Any:
        return run_cli(*args, addr=self.rpc_addr, timeout=timeout)

    def cli_json(self, *args: str, timeout: float = 60) -> Any:
        out = self.cli(*args, "--json", timeout=timeout)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)


class Client(AgentProcess):
    name = "client"

    def __init__(self, base_dir: Path, server: ServerOnly, node_name: str, *extra: str) -> None:
        super().__init__(extra, base_dir=base_dir / node_name)
        self.server = server
        self.node_name = node_name

    def build_args(self) -> list[str]:
        return [
            "--client",
            "--data-dir",
            str(self.base_dir / "data"),
            "--servers",
            self.server.rpc_addr,
            "--node-name",
            self.node_name,
            *self._args,
        ]

    def node(self) -> pb.Node | None:
        with grpc.insecure_channel(self.server.rpc_addr) as ch:
            nodes = rpc.NodeServiceStub(ch).List(pb.NodeListRequest(), timeout=5).nodes
        return next((n for n in nodes if n.name == self.node_name), None)

    def is_ready(self) -> bool:
        try:
            node = self.node()
        except grpc.RpcError:
            return False
        return node is not None and node.status == "ready"


class MultiNode:
    """A started server with its clients (``clients`` by node name)."""

    def __init__(self, server: ServerOnly, clients: dict[str, Client]) -> None:
        self.server = server
        self.clients = clients

    def node_ids(self) -> dict[str, str]:
        """Node name -> node ID."""
        out = {}
        for name, c in self.clients.items():
            node = c.node()
            assert node is not None, name
            out[name] = node.id
        return out


@contextlib.contextmanager
def nomad_e2e_cluster(base_dir: Path, *client_args: str) -> Iterator[MultiNode]:
    """One server and the four clients of Nomad's e2e cluster (see the module
    docstring), started together; stopped on exit."""
    with ServerOnly(base_dir) as server:
        clients = {
            name: Client(
                base_dir,
                server,
                name,
                "--datacenter",
                dc,
                "--meta",
                f"rack={rack}",
                "--enable-raw-exec",  # as Nomad's e2e clients
                *client_args,
            )
            for name, dc, rack in E2E_NODES
        }
        try:
            for c in clients.values():
                c.spawn()
            for c in clients.values():
                c.wait_ready()
            wait_for(
                lambda: len(server.cli_json("node", "status")) == len(clients),
                timeout=30,
                message="every client registered",
            )
            yield MultiNode(server, clients)
        finally:
            for c in clients.values():
                with contextlib.suppress(Exception):
                    c.stop()
