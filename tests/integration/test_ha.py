"""Highly available servers under real faults: SIGKILL, SIGSTOP, whole-cluster
restarts. Every acknowledged write survives; refused writes never appear; all
state machines end identical. Loopback only; every loop is bounded in time."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import grpc
import pytest

from corral.proto import pb, rpc
from tests.support.cluster import Cluster, ServerProcess, make_cluster
from tests.support.wait import wait_for

pytestmark = pytest.mark.ha


def job(job_id: str) -> pb.Job:
    j = pb.Job(id=job_id, type="batch")
    g = j.task_groups.add(name="g", count=0)
    t = g.tasks.add(name="t", driver="mock")
    t.config.update({"run_for": "1s"})
    return j


class Writer:
    """Registers jobs in a loop against any server, recording each outcome."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.ok: list[str] = []
        self.failed: list[str] = []
        self.unknown: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._n = 0

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        deadline = time.monotonic() + 240
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._n += 1
            job_id = f"w{self._n:05d}"
            servers = self.cluster.running()
            if not servers:
                continue
            target = servers[self._n % len(servers)]
            try:
                with grpc.insecure_channel(target.rpc_addr) as ch:
                    rpc.JobServiceStub(ch).Register(
                        pb.JobRegisterRequest(job=job(job_id)), timeout=5
                    )
                self.ok.append(job_id)
            except grpc.RpcError as exc:
                details = exc.details() or ""
                if exc.code() == grpc.StatusCode.UNAVAILABLE and (
                    "not the leader" in details or "no cluster leader" in details
                ):
                    self.failed.append(job_id)  # refused before it was proposed
                else:
                    self.unknown.append(job_id)  # may or may not have committed

    def wait_oks(self, n: int, timeout: float = 60) -> None:
        start = len(self.ok)
        wait_for(
            lambda: len(self.ok) >= start + n,
            timeout=timeout,
            message=f"{n} more acknowledged writes",
        )


def assert_nothing_lost(cluster: Cluster, writer: Writer) -> None:
    cluster.wait_leader()
    cluster.wait_converged()
    for server in cluster.running():
        held = server.jobs(stale=True)
        missing = set(writer.ok) - held
        assert not missing, (
            f"server {server.index} lost acknowledged writes: {sorted(missing)[:10]}"
        )
        assert not (set(writer.failed) & held), "a refused write was applied"


def test_leader_sigkill_repeatedly_loses_nothing(tmp_path: Path) -> None:
    with make_cluster(3, tmp_path) as cluster:
        with Writer(cluster) as writer:
            writer.wait_oks(20)
            for _ in range(3):
                leader = cluster.wait_leader()
                leader.kill()
                writer.wait_oks(10)  # the others elect a leader and keep acknowledging
                leader.start()  # same data dir
                writer.wait_oks(5)
        assert writer.ok
        assert_nothing_lost(cluster, writer)


def test_whole_cluster_killed_at_once_restarts_with_every_write(tmp_path: Path) -> None:
    with make_cluster(3, tmp_path) as cluster:
        with Writer(cluster) as writer:
            writer.wait_oks(30)
        for s in cluster.servers:
            s.kill()
        for s in cluster.servers:
            s.spawn()
        for s in cluster.servers:
            s.wait_ready()
        assert_nothing_lost(cluster, writer)


def test_paused_leader_steps_down_without_split_brain(tmp_path: Path) -> None:
    with make_cluster(3, tmp_path) as cluster:
        with Writer(cluster) as writer:
            writer.wait_oks(10)
            old = paused_leader_round(cluster, writer)
        leaders = [s for s in cluster.running() if s.status().leader == s.raft_addr]
        assert len(leaders) == 1 and leaders[0] is not old
        assert_nothing_lost(cluster, writer)


def paused_leader_round(cluster: Cluster, writer: Writer) -> ServerProcess:
    """Pause the leader past the election timeout, let the others take over,
    resume it; returns the old leader once it follows the new one."""
    old = cluster.wait_leader()
    assert old.pid is not None
    os.kill(old.pid, signal.SIGSTOP)
    try:
        new = wait_for(
            lambda: (lambda ld: ld if ld is not None and ld is not old else None)(cluster.leader()),
            timeout=30,
            message="a new leader while the old one is paused",
        )
        writer.wait_oks(10)
    finally:
        os.kill(old.pid, signal.SIGCONT)
    wait_for(
        lambda: old.status().leader == new.raft_addr,
        timeout=30,
        message="the resumed server follows the new leader",
        ignore=(grpc.RpcError,),
    )
    return old


def test_five_servers_survive_two_failures(tmp_path: Path) -> None:
    with make_cluster(5, tmp_path) as cluster:
        with Writer(cluster) as writer:
            writer.wait_oks(10)
            leader = cluster.wait_leader()
            follower = next(s for s in cluster.servers if s is not leader)
            leader.kill()
            follower.kill()
            writer.wait_oks(20)
        assert_nothing_lost(cluster, writer)


def test_raft_port_refuses_peers_without_the_key(tmp_path: Path) -> None:
    with make_cluster(3, tmp_path) as cluster:
        target = cluster.servers[0]
        marker = tmp_path / "pwned"

        class Exploit:
            def __reduce__(self):  # type: ignore[no-untyped-def]
                return (os.system, (f"touch {marker}",))

        # PySyncObj's unencrypted framing: length prefix + zlib'd pickle.
        payload = zlib.compress(pickle.dumps(Exploit()))
        for frame in (struct.pack("i", len(payload)) + payload, b"\x00" * 64):
            with socket.create_connection(("127.0.0.1", target.raft_port), timeout=5) as sock:
                sock.sendall(frame)
                sock.settimeout(3)
                with contextlib.suppress(TimeoutError, ConnectionResetError, OSError):
                    sock.recv(1024)
        # recv() above returned once the server dropped each connection: it has
        # read and judged both frames by now.
        assert not marker.exists(), "an unauthenticated payload was unpickled"
        # The cluster is unharmed.
        cluster.wait_leader()
        with grpc.insecure_channel(cluster.rpc_addrs[1]) as ch:
            rpc.JobServiceStub(ch).Register(pb.JobRegisterRequest(job=job("after")), timeout=10)
        cluster.wait_converged()


def test_multi_server_without_key_refuses_to_start(tmp_path: Path) -> None:
    from tests.support.agent import AgentProcess

    proc = AgentProcess(
        [
            "--server",
            "--data-dir",
            str(tmp_path / "d"),
            "--raft-port",
            "1",  # its own address is among --servers; the missing key is the problem
            "--servers",
            "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
        ],
        base_dir=tmp_path,
    )
    proc.spawn()
    assert proc.proc is not None
    assert proc.proc.wait(timeout=30) != 0
    assert "cluster key" in proc.log_text()


def test_servers_join_and_leave_a_running_cluster(tmp_path: Path) -> None:
    from tests.support.cluster import ServerProcess
    from tests.support.env import free_port

    with make_cluster(3, tmp_path) as cluster:
        with Writer(cluster) as writer:
            writer.wait_oks(10)
            port = free_port()
            newcomer_addr = f"127.0.0.1:{port}"
            peers = [s.raft_addr for s in cluster.servers] + [newcomer_addr]
            newcomer = ServerProcess(3, tmp_path, peers, port)
            leader = cluster.wait_leader()
            with grpc.insecure_channel(leader.rpc_addr) as ch:
                rpc.OperatorServiceStub(ch).RaftAddPeer(
                    pb.RaftPeerRequest(address=newcomer_addr), timeout=30
                )
            cluster.servers.append(newcomer)
            newcomer.start()
            writer.wait_oks(10)
            # It catches up: it holds every write acknowledged so far. (Digests are
            # compared once the writer stops: under writes they differ by design.)
            acked = set(writer.ok)
            wait_for(
                lambda: acked <= newcomer.jobs(stale=True),
                timeout=60,
                message="the new server to catch up",
                ignore=(grpc.RpcError,),
            )
            listed = rpc.OperatorServiceStub(leader.channel()).RaftListPeers(
                pb.StatusRequest(), timeout=10
            )
            assert newcomer_addr in {s.address for s in listed.servers}

            # Remove a follower (not the leader) and stop it: writes continue.
            leader = cluster.wait_leader()
            leaving = next(s for s in cluster.servers if s is not leader and s is not newcomer)
            rpc.OperatorServiceStub(leader.channel()).RaftRemovePeer(
                pb.RaftPeerRequest(address=leaving.raft_addr), timeout=30
            )
            leaving.stop()
            cluster.servers.remove(leaving)
            writer.wait_oks(10)
            listed = rpc.OperatorServiceStub(cluster.wait_leader().channel()).RaftListPeers(
                pb.StatusRequest(), timeout=10
            )
            assert leaving.raft_addr not in {s.address for s in listed.servers}
            assert len(listed.servers) == 3
        assert_nothing_lost(cluster, writer)


def test_stale_reads_are_served_without_a_leader(tmp_path: Path) -> None:
    """With the quorum gone, default reads fail after waiting for a leader, while
    --stale reads answer from the surviving server's own state."""
    from tests.support.agent import run_cli

    with make_cluster(3, tmp_path) as cluster:
        with grpc.insecure_channel(cluster.rpc_addrs[0]) as ch:
            rpc.JobServiceStub(ch).Register(pb.JobRegisterRequest(job=job("kept")), timeout=10)
        cluster.wait_converged()
        survivor = cluster.servers[0]
        for s in cluster.servers[1:]:
            s.kill()
        wait_for(
            lambda: survivor.status().leader == "",
            timeout=30,
            message="the lone server to step down",
            ignore=(grpc.RpcError,),
        )
        stale = run_cli("--stale", "job", "status", "--json", addr=survivor.rpc_addr)
        assert stale.returncode == 0, stale.stderr
        assert "kept" in stale.stdout
        fresh = run_cli("job", "status", addr=survivor.rpc_addr, timeout=60)
        assert fresh.returncode == 1 and "leader" in fresh.stderr
