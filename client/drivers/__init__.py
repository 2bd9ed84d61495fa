"""Task drivers: docker, raw_exec and mock behind one interface (``base.Driver``).

``load_drivers`` constructs drivers cheaply: none of them touches the outside
world in its constructor (the docker driver creates its engine client on first
use), so a client on a machine without Docker still starts and simply
fingerprints docker as undetected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from corral.client.drivers.base import (
    Driver,
    DriverError,
    ExitResult,
    Fingerprint,
    PortMapping,
    TaskConfig,
    TaskHandle,
)

KNOWN_DRIVERS: tuple[str, ...] = ("docker", "raw_exec", "mock")


def _docker() -> Driver:
    from corral.client.drivers.docker import DockerDriver

    return DockerDriver()


def _raw_exec() -> Driver:
    from corral.client.drivers.raw_exec import RawExecDriver

    return RawExecDriver()


def _mock() -> Driver:
    from corral.client.drivers.mock import MockDriver

    return MockDriver()


_FACTORIES: dict[str, Callable[[], Driver]] = {
    "docker": _docker,
    "raw_exec": _raw_exec,
    "mock": _mock,
}


def load_drivers(enabled: Iterable[str] | None = None) -> dict[str, Driver]:
    """The drivers named in ``enabled`` (all of ``KNOWN_DRIVERS`` when None), by name.

    Raises ValueError for an unknown name, so a typo in the agent's config
    fails at startup instead of silently disabling a driver.
    """
    names = list(KNOWN_DRIVERS if enabled is None else enabled)
    unknown = [n for n in names if n not in _FACTORIES]
    if unknown:
        raise ValueError(
            f"unknown driver(s) {', '.join(unknown)}; known: {', '.join(KNOWN_DRIVERS)}"
        )
    return {name: _FACTORIES[name]() for name in dict.fromkeys(names)}


__all__ = [
    "KNOWN_DRIVERS",
    "Driver",
    "DriverError",
    "ExitResult",
    "Fingerprint",
    "PortMapping",
    "TaskConfig",
    "TaskHandle",
    "load_drivers",
]
