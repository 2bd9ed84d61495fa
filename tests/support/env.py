"""What the test machine offers, and the rule for when a test may skip.

On a developer machine a test that needs Docker or Traefik skips with one clear
reason when the piece is missing. Under CI (``CI=true``) it must run: the fixture
fails instead of skipping, so that a broken install shows up red, not silently green.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_IMAGE = "corral-busybox:latest"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    venv_bin = Path(sys.executable).parent / "traefik"
    if venv_bin.exists():
        return str(venv_bin)
    return shutil.which("traefik")
