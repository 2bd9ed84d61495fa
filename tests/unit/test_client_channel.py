"""The client agent without servers: its shared channel to the servers (one
failover per failed channel, whichever threads saw the failure; round-robin order;
no channel leaked; no call started on a closed channel) and its stop (every
driver's ``close``).

Channels are fakes (``FakeChannels``) handed to the agent as its
``channel_factory``, except in the one test that runs the real heartbeat thread
against addresses where nothing listens."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from corral.client.agent import ClientAgent, ClientConfig
from corral.client.drivers.base import (
    Driver,
    DriverError,
    ExitResult,
    Fingerprint,
    TaskConfig,
    TaskHandle,
)
from corral.client.drivers.mock import MockDriver
from corral.proto import pb
from tests.support.wait import wait_for

SERVERS = ["10.0.0.1:4647", "10.0.0.2:4647", "10.0.0.3:4647"]


# ---------------------------------------------------------------- fakes


class FakeChannel:
    """Enough of ``grpc.Channel`` for the generated stubs: it records calls and
    closes, and refuses a call once closed as gRPC does (ValueError)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.closes = 0
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _FakeMultiCallable:
        return _FakeMultiCallable(self, method)

    unary_stream = stream_unary = stream_stream = unary_unary

    def close(self) -> None:
        with self._lock:
            self.closes += 1

    def invoked(self, method: str) -> None:
        with self._lock:
            if self.closes:
                raise ValueError(f"Cannot invoke RPC on closed channel! ({method})")
            self.calls.append(method)


class _FakeMultiCallable:
    def __init__(self, channel: FakeChannel, method: str) -> None:
        self.channel = channel
        self.method = method

    def __call__(self, request: object, **kwargs: Any) -> str:
        return self.future(request, **kwargs)

    def future(self, request: object, **kwargs: Any) -> str:
        time.sleep(0)  # not a wait: yields the GIL where a real call would start
        self.channel.invoked(self.method)
        return self.method


class FakeChannels:
    """The agent's channel factory: every channel it made, in order."""

    def __init__(self) -> None:
        self.created: list[FakeChannel] = []
        self._lock = threading.Lock()

    def __call__(self, address: str) -> Any:
        channel = FakeChannel(address)
        time.sleep(0)  # not a wait: yields the GIL, as creating a real channel may
        with self._lock:
            self.created.append(channel)
        return channel

    def open(self) -> list[FakeChannel]:
        return [c for c in self.created if not c.closes]


def make_agent(
    tmp_path: Path,
    servers: list[str],
    drivers: dict[str, Driver] | None = None,
    channel_factory: Callable[[str], Any] | None = None,
) -> ClientAgent:
    config = ClientConfig(data_dir=str(tmp_path), servers=servers, node_name="test-node")
    if channel_factory is None:
        return ClientAgent(config, drivers=drivers if drivers is not None else {})
    return ClientAgent(
        config, drivers=drivers if drivers is not None else {}, channel_factory=channel_factory
    )


def run_threads(count: int, target: Callable[[int], None]) -> list[BaseException]:
    """Run ``target(i)`` on ``count`` threads; the exceptions they raised."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"
    return errors


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads as often as possible while the test runs."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


# ---------------------------------------------------------------- channel and failover


def test_threads_that_see_one_failure_fail_over_once_in_round_robin_order(
    tmp_path: Path,
) -> None:
    """Every round, all threads hold the same channel (one server failing under the
    heartbeat, the watch and the reporter at once), then all fail over from it:
    the agent moves to the next server once, closes the failed channel once."""
    channels = FakeChannels()
    agent = make_agent(tmp_path, SERVERS, channel_factory=channels)
    threads, rounds = 4, 7
    barrier = threading.Barrier(threads, timeout=10)
    held: list[list[object]] = [[None] * threads for _ in range(rounds)]

    def worker(i: int) -> None:
        for r in range(rounds):
            channel = agent._stub_channel()
            held[r][i] = channel
            barrier.wait()  # everyone took the channel before anyone fails over
            agent._failover(channel)
            barrier.wait()

    try:
        errors = run_threads(threads, worker)
        assert errors == []
        current = agent._stub_channel()
        addresses = [c.address for c in channels.created]
        # One channel per round (+ the current one): no server skipped.
        assert addresses == [SERVERS[i % len(SERVERS)] for i in range(rounds + 1)]
        for r in range(rounds):
            assert all(ch is channels.created[r] for ch in held[r]), f"round {r}"
        assert [c.closes for c in channels.created] == [1] * rounds + [0]
        assert channels.open() == [current]
    finally:
        agent.stop()


def test_hammering_calls_and_failovers_keeps_order_and_leaks_nothing(
    tmp_path: Path, fast_switching: None
) -> None:
    """Free-running threads start calls and fail over from the channel they used,
    as the client's loops do when calls fail. Whatever the interleaving: servers
    in round-robin order, every replaced channel closed exactly once, exactly one
    open channel at the end, and no call ever started on a closed channel (the
    fake raises ValueError then, as gRPC does)."""
    channels = FakeChannels()
    agent = make_agent(tmp_path, SERVERS, channel_factory=channels)
    request = pb.NodeHeartbeatRequest(node_id="n")
    calls: list[tuple[str, object]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for n in range(300):
            call, channel = agent._start_call(lambda stub: stub.Heartbeat.future(request))
            with lock:
                calls.append((call, channel))
            if (n + i) % 3 == 0:  # this call "failed"
                agent._failover(channel)
            elif n % 5 == 0:
                agent._stub_channel()

    try:
        errors = run_threads(6, worker)
        assert errors == []
        current = agent._stub_channel()
        created = channels.created
        assert len(created) > 10, "the threads hardly failed over"
        assert [c.address for c in created] == [SERVERS[i % 3] for i in range(len(created))]
        assert [c.closes for c in created] == [1] * (len(created) - 1) + [0]
        assert channels.open() == [current]
        assert len(calls) == 6 * 300
        assert sum(len(c.calls) for c in created) == len(calls)
        assert all(call == "/corral.v1.NodeService/Heartbeat" for call, _ in calls)
    finally:
        agent.stop()


def test_no_channel_is_made_after_stop(tmp_path: Path) -> None:
    channels = FakeChannels()
    agent = make_agent(tmp_path, SERVERS, channel_factory=channels)
    first = agent._stub_channel()
    agent.stop()
    assert first.closes == 1  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as err:
        agent._start_call(lambda stub: stub.Heartbeat.future(pb.NodeHeartbeatRequest()))
    assert err.value.code() == grpc.StatusCode.CANCELLED
    assert channels.created == [first]


class RecordingChannels:
    """Real channels, recorded (address and closes) through a thin proxy."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.proxies: list[_ChannelProxy] = []
        self._lock = threading.Lock()

    def __call__(self, address: str) -> Any:
        proxy = _ChannelProxy(grpc.insecure_channel(address))
        with self._lock:
            self.addresses.append(address)
            self.proxies.append(proxy)
        return proxy


class _ChannelProxy:
    def __init__(self, channel: grpc.Channel) -> None:
        self._channel = channel
        self.closes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def close(self) -> None:
        self.closes += 1
        self._channel.close()


def _refused_addresses(count: int) -> list[str]:
    """Loopback addresses where nothing listens (bound, then released)."""
    import socket

    out = []
    for _ in range(count):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            out.append(f"127.0.0.1:{s.getsockname()[1]}")
    return out


def test_heartbeat_thread_fails_over_through_unreachable_servers_in_order(
    tmp_path: Path,
) -> None:
    """The real heartbeat loop, real gRPC channels, servers that refuse: the loop
    keeps going, one server after the other, closing each failed channel."""
    servers = _refused_addresses(2)
    channels = RecordingChannels()
    agent = make_agent(tmp_path, servers, channel_factory=channels)
    agent.start()
    try:
        wait_for(lambda: len(channels.addresses) >= 4, timeout=15, message="4 channels")
        assert channels.addresses[:4] == [servers[0], servers[1], servers[0], servers[1]]
        assert [p.closes for p in channels.proxies[:3]] == [1, 1, 1]
        assert not agent.registered.is_set()
    finally:
        agent.stop()
    assert all(p.closes == 1 for p in channels.proxies)


# ---------------------------------------------------------------- stop closes the drivers


class ClosingDriver(MockDriver):
    """A mock driver under another name that records its ``close``."""

    def __init__(self, name: str, closed: list[str], fail: bool = False) -> None:
        super().__init__()
        self.name = name
        self._closed_log = closed
        self._fail = fail

    def close(self) -> None:
        self._closed_log.append(self.name)
        super().close()
        if self._fail:
            raise RuntimeError(f"{self.name} failed to close")


class NoCloseDriver:
    """A driver with no ``close`` at all (the interface does not require one)."""

    name = "noclose"

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(detected=True, healthy=True)

    def validate_config(self, config: dict[str, Any]) -> list[str]:
        return []

    def start_task(self, cfg: TaskConfig) -> TaskHandle:
        raise DriverError("not for running tasks")

    def wait_task(self, handle: TaskHandle, timeout: float | None = None) -> ExitResult | None:
        raise DriverError("not for running tasks")

    def stop_task(self, handle: TaskHandle, timeout: float, signal: str) -> None:
        raise DriverError("not for running tasks")

    def destroy_task(self, handle: TaskHandle) -> None:
        pass

    def recover_task(self, handle: TaskHandle) -> bool:
        return False


def test_stopping_the_agent_closes_every_driver(tmp_path: Path) -> None:
    closed: list[str] = []
    drivers: dict[str, Driver] = {
        "first": ClosingDriver("first", closed, fail=True),  # the others still close
        "noclose": NoCloseDriver(),
        "second": ClosingDriver("second", closed),
    }
    agent = make_agent(tmp_path, _refused_addresses(1), drivers=drivers)
    agent.start()
    assert closed == []
    agent.stop()
    assert closed == ["first", "second"]
