"""Allocation hooks: one concern each, run by the alloc runner at fixed points, as
Nomad's ``client/allocrunner/*_hook.go`` (``alloc_runner_hooks.go``).

    prerun         once, before the tasks start (or reattach)
    tasks_changed  after any task's state changed (every task's state given)
    update         the server changed the allocation in place (a new job version
                   that needs no restart, a count change)
    prekill        once, when the allocation stops, before its tasks are killed;
                   may block (``needs_time`` says whether it has anything to wait for,
                   so that a stop with nothing to wait for kills at once)
    destroy        the allocation is garbage-collected

Every method is optional: the runner calls what a hook has. The order of the
list is the order of the calls; for ``prekill`` that order is the zero-downtime
stop (Nomad's): deregister the services (wait until the servers acknowledged)
-> shutdown delay (a proxy's time to stop routing here) -> the tasks are killed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping

from corral import structs
from corral.client.services import AllocServices
from corral.proto import pb

log = logging.getLogger(__name__)


class AllocDirHook:
    """prerun: the shared alloc dir (``alloc/logs``, ``alloc/tmp``)."""

    name = "alloc_dir"

    def __init__(self, root: str) -> None:
        self.root = root

    def prerun(self) -> None:
        os.makedirs(os.path.join(self.root, "alloc", "logs"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "alloc", "tmp"), exist_ok=True)


class ServicesHook:
    """The allocation's services (``client/services/``): registered once every task
    runs, checks, deployment health, ``check_restart``; deregistered first on stop."""

    name = "services"

    def __init__(self, services: AllocServices) -> None:
        self.services = services

    def needs_time(self) -> bool:
        return self.services.declared

    def tasks_changed(self, states: Mapping[str, pb.TaskState]) -> None:
        self.services.tasks_changed(states)

    def update(self, alloc: pb.Allocation) -> None:
        self.services.update_alloc(alloc)

    def prekill(self, live: bool) -> None:
        # Nothing left running: nothing to drain, so do not wait for the servers.
        self.services.deregister(wait=None if live else 0)


class ShutdownDelayHook:
    """prekill: Nomad's ``shutdown_delay`` (group and task level: the longest applies,
    since the tasks are killed together). In-flight requests finish meanwhile; new
    ones already go elsewhere. ``cut_short`` ends the wait (agent shutdown)."""

    name = "shutdown_delay"

    def __init__(
        self,
        get_alloc: Callable[[], pb.Allocation],
        wait: Callable[[threading.Event, float], bool] | None = None,
    ) -> None:
        self._get_alloc = get_alloc
        self._wait = wait or (lambda ev, s: ev.wait(s))
        self.cut_short = threading.Event()

    def delay_s(self) -> float:
        alloc = self._get_alloc()
        group = structs.group_by_name(alloc.job, alloc.task_group)
        delays = [group.shutdown_delay] if group is not None else []
        if group is not None:
            delays += [t.shutdown_delay for t in group.tasks]
        return max(delays, default=0) / 1e9

    def needs_time(self) -> bool:
        return self.delay_s() > 0

    def prekill(self, live: bool) -> None:
        delay = self.delay_s()
        if delay > 0 and live:
            log.info("allocation %s: waiting shutdown_delay %.3gs", self._get_alloc().id[:8], delay)
            self._wait(self.cut_short, delay)


def run_hooks(hooks: list[object], point: str, *args: object) -> None:
    """Call ``point(*args)`` on every hook that has it, in order; a failing hook is
    logged and the others still run (a stop must reach the kill)."""
    for hook in hooks:
        fn = getattr(hook, point, None)
        if fn is None:
            continue
        try:
            fn(*args)
        except Exception:
            log.exception("alloc hook %s failed at %s", getattr(hook, "name", hook), point)
