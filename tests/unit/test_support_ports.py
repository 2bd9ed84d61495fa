"""The test harness's port allocator: one agent's three ports collided in CI when
ports came from binding port 0 and closing the socket."""

from __future__ import annotations

import socket

from corral.structs import MIN_DYNAMIC_PORT
from tests.support import env
from tests.support.env import MAX_TEST_PORT, MIN_TEST_PORT, free_port


def test_consecutive_ports_are_distinct_and_bindable() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    for port in ports[:20]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


def test_ports_stay_below_dynamic_and_ephemeral_ranges() -> None:
    ports = [free_port() for _ in range(50)]
    assert all(MIN_TEST_PORT <= p <= MAX_TEST_PORT < MIN_DYNAMIC_PORT for p in ports)


def test_a_port_in_use_is_skipped() -> None:
    next_port = env._port_slice_start() + env._next_offset
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", next_port))
        held.listen()
        assert free_port() != next_port


def test_xdist_workers_get_disjoint_slices(monkeypatch) -> None:
    starts = set()
    for n in range(8):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{n}")
        starts.add(env._port_slice_start())
    assert len(starts) == 8
    assert max(starts) + env._PORT_SLICE <= MIN_DYNAMIC_PORT
