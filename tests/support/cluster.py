"""Real multi-server clusters for tests: ``make_cluster(n)`` with leader helpers.

Each server is a ``corral agent --server`` subprocess on free loopback ports with
its own data dir; faults are real (SIGKILL, SIGSTOP) and restarts reuse the data
dir, as an operator's would.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
from pathlib import Path

import grpc

from corral.proto import pb, rpc
from tests.support.agent import AgentProcess
from tests.support.env import free_port
from tests.support.wait import wait_for

# A key of the shape `corral operator keygen` prints (32 bytes, base64); not secret.
CLUSTER_KEY = base64.b64encode(b"corral-test-cluster-key-32-bytes").decode()


class ServerProcess(AgentProcess):
    name = "server"

    def __init__(
        self, index: int, base_dir: Path, peers: list[str], raft_port: int, *extra: str
    ) -> None:
        super().__init__(extra, base_dir=base_dir / f"s{index}")
        self.index = index
        self.http_port = free_port()
        self.rpc_port = free_port()
        self.raft_port = raft_port
        self.peers = peers
        self._channel: grpc.Channel | None = None

    @property
    def rpc_addr(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def raft_addr(self) -> str:
        return f"127.0.0.1:{self.raft_port}"

    def build_args(self) -> list[str]:
        return [
            "--server",
            "--data-dir",
            str(self.base_dir / "data"),
            "--bind",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--rpc-port",
            str(self.rpc_port),
            "--raft-port",
            str(self.raft_port),
            "--servers",
            ",".join(self.peers),
            "--encrypt",
            CLUSTER_KEY,
            *self._args,
        ]

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.rpc_addr)
        return self._channel

    def on_stopped(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def is_ready(self) -> bool:
        try:
            rpc.StatusServiceStub(self.channel()).Status(pb.StatusRequest(), timeout=2)
            return True
        except grpc.RpcError:
            return False

    def status(self, timeout: float = 2) -> pb.StatusResponse:
        return rpc.StatusServiceStub(self.channel()).Status(pb.StatusRequest(), timeout=timeout)

    def digest(self) -> pb.StateDigestResponse:
        return rpc.OperatorServiceStub(self.channel()).StateDigest(pb.StatusRequest(), timeout=5)

    def jobs(self, stale: bool = True) -> set[str]:
        resp = rpc.JobServiceStub(self.channel()).List(
            pb.JobListRequest(query=pb.QueryOptions(stale=stale)), timeout=10
        )
        return {j.id for j in resp.jobs}


class Cluster:
    def __init__(self, n: int, base_dir: Path, *extra: str) -> None:
        raft_ports = [free_port() for _ in range(n)]
        peers = [f"127.0.0.1:{p}" for p in raft_ports]
        self.servers = [ServerProcess(i, base_dir, peers, raft_ports[i], *extra) for i in range(n)]

    def start(self) -> Cluster:
        for s in self.servers:
            s.spawn()
        for s in self.servers:
            s.wait_ready()
        self.wait_leader()
        return self

    def stop(self) -> None:
        for s in self.servers:
            with contextlib.suppress(Exception):
                if s.proc is not None and s.proc.poll() is None:
                    os.kill(s.proc.pid, signal.SIGCONT)
                s.stop()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def rpc_addrs(self) -> list[str]:
        return [s.rpc_addr for s in self.servers]

    def running(self) -> list[ServerProcess]:
        return [s for s in self.servers if s.running]

    def leader(self) -> ServerProcess | None:
        """The server that says it leads (and whose leadership a peer confirms)."""
        for s in self.running():
            try:
                st = s.status(timeout=1)
            except grpc.RpcError:
                continue
            if st.leader == s.raft_addr:
                return s
        return None

    def wait_leader(self, timeout: float = 30) -> ServerProcess:
        return wait_for(self.leader, timeout=timeout, interval=0.05, message="a cluster leader")

    def wait_converged(self, timeout: float = 60) -> str:
        """All running servers hold identical state; returns the common digest."""

        def same() -> str | None:
            digests = set()
            for s in self.running():
                try:
                    digests.add(s.digest().digest)
                except grpc.RpcError:
                    return None
            return digests.pop() if len(digests) == 1 else None

        return wait_for(same, timeout=timeout, interval=0.2, message="identical state machines")


def make_cluster(n: int, base_dir: Path, *extra: str) -> Cluster:
    return Cluster(n, base_dir, *extra)
