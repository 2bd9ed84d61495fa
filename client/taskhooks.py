"""Task hooks: one concern each, run by the task runner at fixed points of a task's
life, as Nomad's ``client/allocrunner/taskrunner/*_hook.go`` (``task_lifecycle.go``
names the points).

    prestart   before each start through the driver (a failure is a start failure)
    poststart  after each successful start
    exited     after each exit or stop, once the driver released the task
    stop       once, when the task is dead for good

A hook implements the points it needs (every method is optional: the runner calls
what it finds). New concerns (templates, volumes, artifacts, lifecycle tasks)
arrive as new hooks here, not as branches in the runner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from corral.client.drivers.base import DriverError


@dataclass(frozen=True)
class TaskPaths:
    alloc_dir: str
    task_dir: str
    stdout: str
    stderr: str


def task_paths(alloc_root: str, task_name: str) -> TaskPaths:
    """Nomad's alloc dir layout: ``alloc/logs/<task>.stdout.0`` and ``<task>/local``."""
    logs = os.path.join(alloc_root, "alloc", "logs")
    return TaskPaths(
        alloc_dir=os.path.join(alloc_root, "alloc"),
        task_dir=os.path.join(alloc_root, task_name),
        stdout=os.path.join(logs, f"{task_name}.stdout.0"),
        stderr=os.path.join(logs, f"{task_name}.stderr.0"),
    )


class TaskHook(Protocol):
    """The points a hook may implement (each optional; see the module docstring)."""

    name: str


class TaskDirHook:
    """prestart: the task's directories (``local/``, ``secrets/``) and the alloc's
    log folder, as Nomad's ``task_dir_hook``."""

    name = "task_dir"

    def __init__(self, paths: TaskPaths) -> None:
        self.paths = paths

    def prestart(self) -> None:
        try:
            os.makedirs(os.path.join(self.paths.task_dir, "local"), exist_ok=True)
            os.makedirs(os.path.join(self.paths.task_dir, "secrets"), mode=0o700, exist_ok=True)
            os.makedirs(os.path.dirname(self.paths.stdout), exist_ok=True)
        except OSError as exc:
            raise DriverError(f"task directory: {exc}", recoverable=True) from exc


def run_hooks(hooks: list[object], point: str) -> None:
    """Call ``point`` on every hook that implements it, in order."""
    for hook in hooks:
        fn = getattr(hook, point, None)
        if fn is not None:
            fn()
