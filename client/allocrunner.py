"""One allocation on a client: its directory, its task runners, its client status.

The client status is derived from the tasks (Nomad's rules): pending until every
task runs, running while they do, failed as soon as one failed, complete when all
ended well. A server-side stop kills the tasks; the allocation then ends complete.

Each concern is an alloc hook (``client/allochooks.py``): the alloc dir, the
services (registered once every task runs, checks, deployment health), the
shutdown delay. Stopping an allocation whose hooks have something to wait for
runs, on its own thread (never the watch loop's):

    prekill hooks: deregister the services (wait until the servers acknowledged,
                   bounded) -> shutdown delay
      -> kill every task (kill_signal, kill_timeout, SIGKILL)

so that a proxy stops routing to an instance before the instance stops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from corral import structs
from corral.client.allochooks import AllocDirHook, ServicesHook, ShutdownDelayHook, run_hooks
from corral.client.drivers.base import Driver
from corral.client.services import AllocServices, ServiceRuntime
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
        *,
        services: ServiceRuntime | None = None,
        wait: Callable[[threading.Event, float], bool] | None = None,
    ) -> None:
        self.alloc = alloc
        self.node = node
        self.root = alloc_root
        self._on_update = on_update
        self._lock = threading.Lock()
        self.killed = False
        self._stopping = False
        self._cascaded: set[str] = set()  # tasks whose end already killed the group
        self._stopper: threading.Thread | None = None
        self.services = AllocServices(
            alloc,
            node,
            services if services is not None else ServiceRuntime.detached(),
            restart_task=self.restart_task,
            on_health=lambda: self._on_update(self),
        )
        self.shutdown_delay = ShutdownDelayHook(lambda: self.alloc, wait)
        self.hooks: list[object] = [
            AllocDirHook(alloc_root),
            ServicesHook(self.services),
            self.shutdown_delay,
        ]
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
        run_hooks(self.hooks, "prerun")
        for tr in self.tasks.values():
            tr.start()
        if self.killed:
            self.kill()
        else:
            # Restored tasks may already run: let the hooks see them.
            run_hooks(self.hooks, "tasks_changed", self._states())
        self._on_update(self)

    def update(self, alloc: pb.Allocation) -> None:
        """The server changed the allocation (desired status, or an in-place update
        to a new job version, which needs no restart)."""
        with self._lock:
            self.alloc = alloc
        if alloc.desired_status != structs.ALLOC_DESIRED_RUN:
            self.kill()
        else:
            run_hooks(self.hooks, "update", alloc)

    def kill(self) -> None:
        """Stop the allocation: the prekill hooks (deregister its services, wait the
        shutdown delay), then kill its tasks. Returns at once (the sequence runs on
        its own thread when a hook has something to wait for); idempotent."""
        with self._lock:
            self.killed = True
            if self._stopping:
                return
            self._stopping = True
            live = any(not tr.dead for tr in self.tasks.values())
            waits = live and any(getattr(h, "needs_time", lambda: False)() for h in self.hooks)
            if waits:
                self._stopper = threading.Thread(
                    target=self._stop_sequence,
                    args=(live,),
                    name=f"alloc-stop-{self.alloc.id[:8]}",
                    daemon=True,
                )
        if self._stopper is not None:
            self._stopper.start()
        else:
            self._stop_sequence(live)

    def _stop_sequence(self, live: bool) -> None:
        try:
            run_hooks(self.hooks, "prekill", live)
        finally:
            self._kill_tasks()

    def _kill_tasks(self) -> None:
        for tr in self.tasks.values():
            tr.kill()

    def restart_task(self, task: str, reason: str) -> None:
        """``check_restart``: restart one task ("" = every task), counted by the
        restart policy as a failure."""
        if self.killed:
            return
        for name, tr in self.tasks.items():
            if not task or name == task:
                tr.restart(reason, failure=True)

    def wait(self, timeout: float | None = None) -> None:
        stopper = self._stopper
        if stopper is not None and stopper.ident is not None:
            stopper.join(timeout)
        for tr in self.tasks.values():
            tr.join(timeout)

    def destroy(self) -> None:
        for tr in self.tasks.values():
            tr.destroy()
        run_hooks(self.hooks, "destroy")

    @property
    def terminal(self) -> bool:
        return all(tr.dead for tr in self.tasks.values())

    def _states(self) -> dict[str, pb.TaskState]:
        return {name: tr.state for name, tr in self.tasks.items()}

    def _task_changed(self, tr: TaskRunner) -> None:
        # A failed task, or a leader task that ended: the rest of the group is
        # killed, each told why first (Nomad's handleTaskStateUpdates).
        if tr.dead and not self.killed and tr.task.name not in self._cascaded:
            if tr.state.failed:
                why = (structs.EVENT_SIBLING_FAILED, f'Task\'s sibling "{tr.task.name}" failed')
            elif tr.task.leader:
                why = (structs.EVENT_LEADER_DEAD, "Leader Task in Group dead")
            else:
                why = None
            if why is not None:
                self._cascaded.add(tr.task.name)
                for other in self.tasks.values():
                    if other is not tr and not other.dead:
                        other.add_event(*why)
                        other.kill()
        run_hooks(self.hooks, "tasks_changed", self._states())
        self._on_update(self)

    def client_update(self) -> pb.Allocation:
        """What the client reports for this allocation (with its deployment
        health once the service hook decided it)."""
        states = self._states()
        status, desc = client_status(list(states.values()))
        upd = pb.Allocation(id=self.alloc.id, client_status=status, client_description=desc)
        for name, st in states.items():
            upd.task_states[name].CopyFrom(st)
        deployment = self.services.deployment_status()
        if deployment is not None:
            upd.deployment_status.CopyFrom(deployment)
        return upd

    def persist_state(self) -> dict[str, Any]:
        return {
            "alloc": self.alloc.SerializeToString().hex(),
            "killed": self.killed,
            "tasks": {name: tr.snapshot() for name, tr in self.tasks.items()},
        }
