"""The raft port runs no code for strangers (security issue, row 1; and row 7).

A dev agent and a single ``--server`` without ``--encrypt`` used to unpickle any
frame sent to their raft port, which listened on every interface. Now: a key
always (a single server makes its own and keeps it, 0600, in its data dir), the
port listens on ``--bind`` only, a frame is unpickled only after it verified under
the key, oversized length prefixes close the connection before anything is
buffered, and every drop is logged.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import stat
import struct
import time
import zlib
from pathlib import Path

import pytest

from corral import clusterkey
from corral.server import raft as raft_module
from corral.server.fsm import FSM
from corral.server.raft import PREAUTH_MAX_FRAME, PySyncObjConsensus
from corral.server.state import StateStore
from tests.support.agent import DevAgent
from tests.support.cluster import CLUSTER_KEY
from tests.support.env import free_port
from tests.support.multinode import ServerOnly
from tests.support.wait import wait_for

JOB = Path(__file__).resolve().parents[2] / "examples" / "hello-exec.hcl"


class _Exploit:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def plain_frame(obj: object) -> bytes:
    """PySyncObj's unencrypted framing: 4-byte length + zlib(pickle)."""
    payload = zlib.compress(pickle.dumps(obj))
    return struct.pack("i", len(payload)) + payload


def send_and_wait_close(addr: tuple[str, int], data: bytes, timeout: float = 5) -> bytes:
    """Send ``data`` and read until the server closes the connection (or timeout);
    return what it answered."""
    got = b""
    with socket.create_connection(addr, timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        deadline = time.monotonic() + timeout
        sock.settimeout(timeout)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(4096)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            got += chunk
    return got


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        hex_ip, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(hex_ip)[::-1]))
    return found


def probe_with_hostile_frames(addr: tuple[str, int], marker: Path) -> None:
    """Every way in that used to work, or cost the server, without the key."""
    send_and_wait_close(addr, plain_frame(_Exploit(marker)))
    # PySyncObj's utility command (its own status/add/remove), unkeyed.
    assert send_and_wait_close(addr, plain_frame(["status"])) == b""
    send_and_wait_close(addr, b"\x00" * 64)
    send_and_wait_close(addr, struct.pack("i", -1) + b"x" * 16)
    assert not marker.exists(), "an unauthenticated frame was unpickled"


def test_dev_agent_raft_port_is_keyed_and_bound(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with DevAgent(base_dir=tmp_path, bind="127.0.0.2") as agent:
        assert listening_addresses(agent.raft_port) == {"127.0.0.2"}
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", agent.raft_port), timeout=2).close()
        probe_with_hostile_frames(("127.0.0.2", agent.raft_port), marker)
        key_dir = agent.data_dir / "server" / "raft"
        key_file = key_dir / clusterkey.KEY_FILE
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
        clusterkey.validate(key_file.read_text())
        wait_for(
            lambda: "raft: closed a connection from 127.0.0.1:" in agent.log_text(), timeout=10
        )
        # Still a working agent.
        out = agent.cli("node", "status")
        assert out.returncode == 0, out.stderr


def test_single_server_makes_a_key_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    server = ServerOnly(tmp_path)  # --server, no peers, no --encrypt
    with server:
        probe_with_hostile_frames(("127.0.0.1", server.raft_port), marker)
        key_file = server.base_dir / "data" / "server" / "raft" / clusterkey.KEY_FILE
        key = key_file.read_text()
        run = server.cli("job", "run", "-detach", str(JOB))
        assert run.returncode == 0, run.stderr
        server.restart()
        assert key_file.read_text() == key
        status = server.cli("job", "status", "hello-exec")
        assert status.returncode == 0, status.stderr


def test_single_server_refuses_a_damaged_key_file(tmp_path: Path) -> None:
    server = ServerOnly(tmp_path)  # --server, no peers, no --encrypt
    with server:
        pass
    key_file = server.base_dir / "data" / "server" / "raft" / clusterkey.KEY_FILE
    key_file.write_text("not a key")
    try:
        with pytest.raises(Exception):  # noqa: B017 - the harness's start error
            server.start()
    finally:
        server.stop()  # should it have started after all, leave no process behind
    assert f"{key_file} is damaged" in server.log_text()


# ---------------------------------------------------------------- in-process engine


@pytest.fixture
def lone_raft(tmp_path: Path) -> tuple[PySyncObjConsensus, int]:
    port = free_port()
    raft = PySyncObjConsensus(
        FSM(StateStore()), f"127.0.0.1:{port}", [], str(tmp_path / "raft"), password=CLUSTER_KEY
    )
    raft.start()
    wait_for(raft.is_leader, timeout=10)
    yield raft, port
    raft.stop()


def test_huge_length_prefix_is_dropped_before_buffering(
    lone_raft: tuple[PySyncObjConsensus, int],
) -> None:
    _, port = lone_raft
    before = raft_module.dropped_frames
    t0 = time.monotonic()
    # Declares 2^31-1 bytes, then streams 8 MB of it: the server must close at once.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(struct.pack("i", 2**31 - 1))
        sent = 0
        with contextlib.suppress(OSError):
            chunk = b"\x00" * 65536
            while sent < 8 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
    assert sent < 8 * 1024 * 1024, "the server kept reading a frame it should have refused"
    assert time.monotonic() - t0 < 5
    assert raft_module.dropped_frames > before


def test_frame_over_the_preauth_limit_is_dropped(
    lone_raft: tuple[PySyncObjConsensus, int],
) -> None:
    raft, port = lone_raft
    before = raft_module.dropped_frames
    frame = struct.pack("i", PREAUTH_MAX_FRAME + 1) + b"\x00" * (PREAUTH_MAX_FRAME + 1)
    send_and_wait_close(("127.0.0.1", port), frame)
    assert raft_module.dropped_frames == before + 1
    assert raft.is_leader()


def test_peers_with_the_key_still_form_a_cluster(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    peers = [f"127.0.0.1:{p}" for p in ports]
    members = [
        PySyncObjConsensus(
            FSM(StateStore()),
            peers[i],
            peers,
            str(tmp_path / f"s{i}"),
            password=CLUSTER_KEY,
            append_entries_period=0.005,
        )
        for i in range(3)
    ]
    for m in members:
        m.start()
    try:
        wait_for(lambda: sum(m.is_leader() for m in members) == 1, timeout=20)
    finally:
        for m in members:
            m.stop()
