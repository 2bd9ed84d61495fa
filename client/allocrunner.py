"""One allocation on a client: its directory, its task runners, its client status.

The client status is derived from the tasks (Nomad's rules): pending until every
task runs, running while they do, failed as soon as one failed, complete when all
ended well. A server-side stop kills the tasks; the allocation then ends complete.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from corral import structs
from corral.client.drivers.base import Driver
from corral.client.taskrunner import TaskRunner
from corral.proto import pb

log = logging.getLogger(__name__)


def client_status(states: list[pb.TaskState]) -> tuple[str, str]:
    """(ClientStatus, ClientDescription) from the task states. Pure."""
    if any(s.state == structs.TASK_STATE_DEAD and s.failed for s in states):
        return structs.ALLOC_CLIENT_FAILED, "Failed tasks"
    if states and all(s.state == structs.TASK_STATE_DEAD for s in states):
        return structs.ALLOC_CLIENT_COMPLETE, "All tasks have completed"
    if states and all(s.state == structs.TASK_STATE_RUNNING for s in states):
        return structs.ALLOC_CLIENT_RUNNING, "Tasks are running"
    if any(s.state == structs.TASK_STATE_RUNNING for s in states):
        return structs.ALLOC_CLIENT_RUNNING, "Tasks are running"
    return structs.ALLOC_CLIENT_PENDING, "No tasks have started"


class AllocRunner:
    def __init__(
        self,
        alloc: pb.Allocation,
        node: pb.Node,
        drivers: dict[str, Driver],
        alloc_root: str,
        on_update: Callable[[AllocRunner], None],
        restored: dict[str, Any] | None = None,
    ) -> None:
        self.alloc = alloc
        self.node = node
        self.root = alloc_root
        self._on_update = on_update
        self._lock = threading.Lock()
        self.killed = False
        group = structs.group_by_name(alloc.job, alloc.task_group)
        tasks = list(group.tasks) if group is not None else []
        restored_tasks = (restored or {}).get("tasks", {})
        self.tasks: dict[str, TaskRunner] = {
            t.name: TaskRunner(
                alloc,
                t,
                node,
                drivers.get(t.driver),
                alloc_root,
                self._task_changed,
                restored=restored_tasks.get(t.name),
            )
            for t in tasks
        }
        if restored and restored.get("killed"):
            self.killed = True

    def start(self) -> None:
        os.makedirs(os.path.join(self.root, "alloc", "logs"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "alloc", "tmp"), exist_ok=True)
        for tr in self.tasks.values():
            tr.start()
        if self.killed:
            self.kill()
        self._on_update(self)

    def update(self, alloc: pb.Allocation) -> None:
        """The server changed the allocation (desired status, or an in-place update
        to a new job version, which needs no restart)."""
        with self._lock:
            self.alloc = alloc
        if alloc.desired_status != structs.ALLOC_DESIRED_RUN:
            self.kill()

    def kill(self) -> None:
        self.killed = True
        for tr in self.tasks.values():
            tr.kill()

    def wait(self, timeout: float | None = None) -> None:
        for tr in self.tasks.values():
            tr.join(timeout)

    def destroy(self) -> None:
        for tr in self.tasks.values():
            tr.destroy()

    @property
    def terminal(self) -> bool:
        return all(tr.dead for tr in self.tasks.values())

    def _task_changed(self, tr: TaskRunner) -> None:
        # A failed task with siblings: kill the rest (Nomad kills the group).
        if tr.dead and tr.state.failed and not self.killed:
            for other in self.tasks.values():
                if other is not tr and not other.dead:
                    other.kill()
        self._on_update(self)

    def client_update(self) -> pb.Allocation:
        """What the client reports for this allocation."""
        states = {name: tr.state for name, tr in self.tasks.items()}
        status, desc = client_status(list(states.values()))
        upd = pb.Allocation(
            id=self.alloc.id, client_status=status, client_description=desc
        )
        for name, st in states.items():
            upd.task_states[name].CopyFrom(st)
        return upd

    def persist_state(self) -> dict[str, Any]:
        return {
            "alloc": self.alloc.SerializeToString().hex(),
            "killed": self.killed,
            "tasks": {name: tr.snapshot() for name, tr in self.tasks.items()},
        }
