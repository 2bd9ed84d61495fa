"""The task driver interface: what a task runner needs from docker, raw_exec or mock.

A driver is stateless between calls except for what its ``TaskHandle.state`` carries:
that dict is persisted by the client (JSON) so that a restarted client agent can
``recover_task`` and reattach to a task that kept running (Nomad's reattach).

Drivers import nothing from the server or the CLI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol


class DriverError(Exception):
    """The driver could not do what was asked; the message is shown to users in
    task events (``Driver Failure``), so it must say what went wrong in plain words."""

    def __init__(self, message: str, *, recoverable: bool = False) -> None:
        super().__init__(message)
        self.recoverable = recoverable


@dataclass(frozen=True)
class PortMapping:
    label: str
    host_port: int
    to: int  # container port; 0 = same as host_port
    host_ip: str


@dataclass
class TaskConfig:
    """Everything a driver needs to start one task. Config and env are already
    interpolated (``${NOMAD_PORT_http}`` and the like are resolved)."""

    alloc_id: str
    task_name: str
    job_name: str
    group_name: str
    node_id: str
    config: dict[str, Any]
    env: dict[str, str]
    cpu_mhz: int
    memory_mb: int
    ports: list[PortMapping]
    alloc_dir: str  # the allocation's directory (shared by its tasks)
    task_dir: str  # this task's own directory
    stdout_path: str  # the driver appends the task's stdout here
    stderr_path: str
    labels: dict[str, str] = field(default_factory=dict)
    user: str = ""
    memory_max_mb: int = 0


@dataclass
class TaskHandle:
    """A started task. ``state`` must be JSON-serializable: it is all a restarted
    client has to find the task again."""

    driver: str
    task_id: str  # unique per task run: "<alloc_id>/<task>/<attempt>"
    state: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskHandle:
        return cls(driver=d["driver"], task_id=d["task_id"], state=dict(d.get("state", {})))


@dataclass(frozen=True)
class ExitResult:
    exit_code: int
    signal: int = 0
    oom_killed: bool = False
    err: str = ""

    @property
    def successful(self) -> bool:
        return self.exit_code == 0 and self.signal == 0 and not self.err


@dataclass(frozen=True)
class Fingerprint:
    detected: bool
    healthy: bool
    description: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


class Driver(Protocol):
    """One implementation per driver name. All methods may block; the task runner
    calls them from its own thread."""

    name: str

    def fingerprint(self) -> Fingerprint:
        """Whether this driver can run tasks on this node (docker: an engine answers)."""
        ...

    def validate_config(self, config: dict[str, Any]) -> list[str]:
        """Problems with a task's ``config`` block, as readable sentences; [] if fine.
        Pure: used by job validation too."""
        ...

    def start_task(self, cfg: TaskConfig) -> TaskHandle:
        """Start the task and return once it is running. Raises DriverError with a
        clear message (image missing, command not found, port in use...)."""
        ...

    def wait_task(self, handle: TaskHandle, timeout: float | None = None) -> ExitResult | None:
        """Block until the task exits (ExitResult) or ``timeout`` seconds pass (None)."""
        ...

    def stop_task(self, handle: TaskHandle, timeout: float, signal: str) -> None:
        """Send ``signal``; after ``timeout`` seconds still running, kill it. Returns
        once it has exited. Must be safe on a task that already exited."""
        ...

    def destroy_task(self, handle: TaskHandle) -> None:
        """Release what the task holds (remove the container). Idempotent."""
        ...

    def recover_task(self, handle: TaskHandle) -> bool:
        """Reattach after a client restart: True if the task still exists (running
        or exited but not yet destroyed), so wait/stop/destroy work on it again."""
        ...
