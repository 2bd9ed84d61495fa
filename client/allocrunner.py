"""One allocation on a client: its directory, its task runners, its client status.

The client status is derived from the tasks (Nomad's rules): pending until every
task runs, running while they do, failed as soon as one failed, complete when all
ended well. A server-side stop kills the tasks; the allocation then ends complete.

Services (``client/services/``): the allocation's service hook registers it once
every task runs, and reports its deployment health. Stopping an allocation that
declares services runs, on its own thread (never the watch loop's):

    deregister (wait until the servers acknowledged, bounded)
      -> shutdown delay (``_shutdown_delay``: the hook for issue 6)
      -> kill every task (kill_signal, kill_timeout, SIGKILL)

so that a proxy stops routing to an instance before the instance stops.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from corral import structs
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
    ) -> None:
        self.alloc = alloc
        self.node = node
        self.root = alloc_root
        self._on_update = on_update
        self._lock = threading.Lock()
        self.killed = False
        # Set to cut a shutdown delay short (agent shutdown); never set otherwise.
        self._delay_done = threading.Event()
        self._stopping = False
        self._stopper: threading.Thread | None = None
        self.services = AllocServices(
            alloc,
            node,
            services if services is not None else ServiceRuntime.detached(),
            restart_task=self.restart_task,
            on_health=lambda: self._on_update(self),
        )
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
        else:
            # Restored tasks may already run: let the service hook see them.
            self.services.tasks_changed(self._states())
        self._on_update(self)

    def update(self, alloc: pb.Allocation) -> None:
        """The server changed the allocation (desired status, or an in-place update
        to a new job version, which needs no restart)."""
        with self._lock:
            self.alloc = alloc
        if alloc.desired_status != structs.ALLOC_DESIRED_RUN:
            self.kill()
        else:
            self.services.update_alloc(alloc)

    def kill(self) -> None:
        """Stop the allocation: deregister its services, wait the shutdown delay,
        then kill its tasks. Returns at once (the sequence runs on its own thread
        when there is something to deregister); idempotent."""
        with self._lock:
            self.killed = True
            if self._stopping:
                return
            self._stopping = True
            live = any(not tr.dead for tr in self.tasks.values())
            if self.services.declared and live:
                self._stopper = threading.Thread(
                    target=self._stop_sequence, name=f"alloc-stop-{self.alloc.id[:8]}", daemon=True
                )
        if self._stopper is not None:
            self._stopper.start()
        else:
            self.services.deregister(wait=0)
            self._kill_tasks()

    def _stop_sequence(self) -> None:
        try:
            self.services.deregister()
            self._shutdown_delay()
        except Exception:
            log.exception("stopping the services of allocation %s failed", self.alloc.id)
        finally:
            self._kill_tasks()

    def _shutdown_delay(self) -> None:
        """Between deregistration and the kill signal: the time a proxy needs to
        stop routing here (Nomad's ``shutdown_delay``, group and task level: the
        longest applies, since the tasks are killed together). In-flight requests
        finish meanwhile; new ones already go elsewhere."""
        group = structs.group_by_name(self.alloc.job, self.alloc.task_group)
        delays = [group.shutdown_delay] if group is not None else []
        delays += [tr.task.shutdown_delay for tr in self.tasks.values()]
        delay = max(delays, default=0) / 1e9
        if delay > 0 and any(not tr.dead for tr in self.tasks.values()):
            log.info("allocation %s: waiting shutdown_delay %.3gs", self.alloc.id[:8], delay)
            self._delay_done.wait(delay)

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

    @property
    def terminal(self) -> bool:
        return all(tr.dead for tr in self.tasks.values())

    def _states(self) -> dict[str, pb.TaskState]:
        return {name: tr.state for name, tr in self.tasks.items()}

    def _task_changed(self, tr: TaskRunner) -> None:
        # A failed task with siblings: kill the rest (Nomad kills the group).
        if tr.dead and tr.state.failed and not self.killed:
            for other in self.tasks.values():
                if other is not tr and not other.dead:
                    other.kill()
        self.services.tasks_changed(self._states())
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
