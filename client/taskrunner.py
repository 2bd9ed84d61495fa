"""One task's life on a client: the I/O shell around ``TaskLifecycle``.

The decisions (start, restart, give up, kill) are made by the pure state machine
in ``client/tasklifecycle.py`` (its docstring has the state diagram); this runner
owns the task's thread, carries out the machine's actions through the driver and
the task hooks (``client/taskhooks.py``), and feeds back what happened: the
outcome of a start or a stop, an exit, a kill or restart asked for by another
thread, the end of a delay. The clock is injected (``clock``), and so is the way
a delay is waited (``wait``), so tests drive it with the mock driver and a fake
clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from corral import structs
from corral.api.jsonmap import struct_to_python
from corral.client import taskenv
from corral.client.drivers.base import (
    Driver,
    DriverError,
    ExitResult,
    PortMapping,
    TaskConfig,
    TaskHandle,
)
from corral.client.restarts import RestartTracker
from corral.client.taskhooks import TaskDirHook, TaskPaths, run_hooks, task_paths
from corral.client.tasklifecycle import (
    Action,
    Begin,
    CountRestart,
    Delay,
    DelayOver,
    DestroyTask,
    Emit,
    Event,
    Exited,
    KillRequested,
    Phase,
    RestartRequested,
    SetState,
    Started,
    StartFailed,
    StartTask,
    Stopped,
    StopTask,
    TaskLifecycle,
)
from corral.proto import pb

log = logging.getLogger(__name__)

MAX_EVENTS = 10
MAX_KILL_TIMEOUT = 30.0  # the client's max_kill_timeout
WAIT_POLL_S = 0.25  # how often a running task's runner looks for a kill or restart

__all__ = ["TaskPaths", "TaskRunner", "task_paths"]


def _wait_event(event: threading.Event, seconds: float) -> bool:
    return event.wait(seconds)


class TaskRunner:
    def __init__(
        self,
        alloc: pb.Allocation,
        task: pb.Task,
        node: pb.Node,
        driver: Driver | None,
        alloc_root: str,
        on_change: Callable[[TaskRunner], None],
        restored: dict[str, Any] | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
        wait: Callable[[threading.Event, float], bool] = _wait_event,
        hooks: list[object] | None = None,
    ) -> None:
        self.alloc = alloc
        self.task = task
        self.node = node
        self.driver = driver
        self.paths = task_paths(alloc_root, task.name)
        self._on_change = on_change
        self._clock = clock
        self._wait_fn = wait
        self.hooks: list[object] = [TaskDirHook(self.paths), *(hooks or [])]
        self.state = pb.TaskState(state=structs.TASK_STATE_PENDING)
        self.handle: TaskHandle | None = None
        self._kill = threading.Event()
        self._restart_req: RestartRequested | None = None
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        group = structs.group_by_name(alloc.job, alloc.task_group)
        policy = pb.RestartPolicy()
        if task.HasField("restart_policy"):
            policy.CopyFrom(task.restart_policy)
        elif group is not None and group.HasField("restart_policy"):
            policy.CopyFrom(group.restart_policy)
        else:
            policy.CopyFrom(structs.default_restart_policy(alloc.job.type))
        self.restarts = RestartTracker(policy, alloc.job.type or structs.JOB_TYPE_SERVICE)
        self.lifecycle = TaskLifecycle(self.restarts, task.driver)
        if restored:
            self.state = pb.TaskState.FromString(bytes.fromhex(restored["state"]))
            if restored.get("handle"):
                self.handle = TaskHandle.from_dict(restored["handle"])

    # ------------------------------------------------------------ public
    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"task-{self.alloc.id[:8]}-{self.task.name}", daemon=True
        )
        self._thread.start()

    def kill(self) -> None:
        """Ask the task to stop (kill_signal, then kill_timeout, then SIGKILL)."""
        self._kill.set()

    def restart(self, reason: str, failure: bool = False) -> bool:
        """Stop the running task (kill_signal, kill_timeout) and start it again.

        ``failure=False`` (a user's restart) restarts at once and is not counted by
        the restart policy; ``failure=True`` (``check_restart``) goes through the
        policy like an exit: its delay applies, and an exhausted policy fails the
        task (Nomad's ``SetRestartTriggered(failure)``). Both count in
        ``TaskState.restarts``. False when the task is not running.
        """
        with self._lock:
            if self.dead or self._kill.is_set() or self.handle is None:
                return False
            if self._restart_req is None:
                timeout, signal = self._kill_params()
                self._restart_req = RestartRequested(reason, failure, timeout, signal)
        return True

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def dead(self) -> bool:
        return self.state.state == structs.TASK_STATE_DEAD

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self.state.SerializeToString().hex(),
                "handle": self.handle.to_dict() if self.handle else None,
            }

    def add_event(self, etype: str, message: str) -> None:
        """Record a task event decided by the alloc runner (a sibling failed, the
        leader died) before it kills this task."""
        self._event(etype, message)

    # ------------------------------------------------------------ state
    def _event(self, etype: str, message: str = "", **extra: Any) -> None:
        with self._lock:
            ev = self.state.events.add(
                type=etype, time=self._clock(), message=message, display_message=message
            )
            for k, v in extra.items():
                setattr(ev, k, v)
            if len(self.state.events) > MAX_EVENTS:
                del self.state.events[0 : len(self.state.events) - MAX_EVENTS]
        self._on_change(self)

    def _set_state(self, state: str, failed: bool | None = None) -> None:
        with self._lock:
            self.state.state = state
            if failed is not None:
                self.state.failed = failed
            now = self._clock()
            if state == structs.TASK_STATE_RUNNING:
                self.state.started_at = now
                self.state.finished_at = 0
            elif state == structs.TASK_STATE_DEAD:
                self.state.finished_at = now
        self._on_change(self)

    # ------------------------------------------------------------ the shell
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # never let a bug leave a task 'running' forever
            log.exception("task runner %s crashed", self.task.name)
            self._event(structs.EVENT_DRIVER_FAILURE, f"task runner error: {exc}", fails_task=True)
            self._set_state(structs.TASK_STATE_DEAD, failed=True)
        finally:
            if self.dead:
                run_hooks(self.hooks, "stop")

    def _loop(self) -> None:
        if self.dead:
            return
        recovered = False
        if self.handle is not None and self.driver is not None:
            try:
                recovered = self.driver.recover_task(self.handle)
            except Exception:
                log.exception("recovering task %s failed", self.task.name)
            if recovered:
                log.info("reattached to task %s of alloc %s", self.task.name, self.alloc.id)
            else:
                self.handle = None
        self.lifecycle.running = self.state.state == structs.TASK_STATE_RUNNING
        self._feed(
            Begin(
                recovered=recovered,
                driver_available=self.driver is not None,
                first_run=not self.state.events,
            )
        )
        while not self.lifecycle.dead:
            # Only a running task waits here; every other phase is resolved by the
            # action that put the machine in it.
            self._feed(self._watch())

    def _feed(self, first: Event) -> None:
        """Hand ``first`` to the machine, carry out its actions, and hand it their
        outcomes in turn, until it waits for the task itself."""
        events: deque[Event] = deque([first])
        while events:
            for action in self.lifecycle.handle(events.popleft(), self._clock()):
                outcome = self._do(action)
                if outcome is not None:
                    events.append(outcome)

    def _do(self, action: Action) -> Event | None:
        match action:
            case Emit():
                self._event(action.type, action.message, **action.extra)
            case SetState():
                self._set_state(action.state, action.failed)
            case CountRestart():
                with self._lock:
                    self.state.restarts += 1
                    self.state.last_restart = self._clock()
            case StartTask():
                return self._start()
            case StopTask():
                return self._stop(action)
            case DestroyTask():
                self._destroy()
                run_hooks(self.hooks, "exited")
            case Delay():
                if self._wait_fn(self._kill, action.delay_ns / 1e9):
                    return KillRequested(*self._kill_params())
                return DelayOver()
        return None

    def _start(self) -> Event:
        assert self.driver is not None
        if self._kill.is_set():
            return KillRequested(*self._kill_params())
        try:
            cfg = self._task_config()
            run_hooks(self.hooks, "prestart")
            handle = self.driver.start_task(cfg)
        except DriverError as exc:
            return StartFailed(str(exc), exc.recoverable)
        with self._lock:
            self.handle = handle
        run_hooks(self.hooks, "poststart")
        return Started()

    def _watch(self) -> Event:
        """A running task: its exit, or a kill or restart asked for meanwhile."""
        assert self.lifecycle.phase == Phase.RUNNING
        assert self.driver is not None and self.handle is not None
        while True:
            if self._kill.is_set():
                return KillRequested(*self._kill_params())
            req = self._restart_req  # cleared once the restart's stop is done
            if req is not None:
                return req
            try:
                result = self.driver.wait_task(self.handle, timeout=WAIT_POLL_S)
            except DriverError as exc:
                result = ExitResult(exit_code=-1, err=str(exc))
            if result is not None:
                return Exited(result)

    def _stop(self, action: StopTask) -> Event:
        assert self.driver is not None and self.handle is not None
        result: ExitResult | None = None
        try:
            self.driver.stop_task(self.handle, action.timeout_s, action.signal)
            if action.wait_exit:
                result = self.driver.wait_task(self.handle, timeout=1.0)
        except DriverError as exc:
            log.warning("stopping task %s: %s", self.task.name, exc)
            if action.wait_exit:
                result = ExitResult(exit_code=-1, err=str(exc))
        if action.wait_exit:
            with self._lock:  # a restart asked for meanwhile is the one carried out
                self._restart_req = None
        return Stopped(result)

    def _kill_params(self) -> tuple[float, str]:
        timeout = min(
            self.task.kill_timeout / 1e9 if self.task.kill_timeout else 5.0, MAX_KILL_TIMEOUT
        )
        signal = self.task.kill_signal or ("SIGTERM" if self.task.driver == "docker" else "SIGINT")
        return timeout, signal

    def _destroy(self) -> None:
        if self.driver is not None and self.handle is not None:
            try:
                self.driver.destroy_task(self.handle)
            except Exception:
                log.exception("destroying task %s failed", self.task.name)
        with self._lock:
            self.handle = None

    def destroy(self) -> None:
        """Release what the task holds without waiting for the thread (GC)."""
        self._destroy()

    def _task_config(self) -> TaskConfig:
        env = taskenv.build_env(
            self.alloc, self.task, self.node, self.paths.alloc_dir, self.paths.task_dir
        )
        node_vars = taskenv.node_variables(self.node)
        config = struct_to_python(self.task.config) if self.task.HasField("config") else {}
        config = taskenv.interpolate(config, env, node_vars)
        ports = [
            PortMapping(label=p.label, host_port=p.value, to=p.to, host_ip=p.host_ip)
            for p in self.alloc.allocated_resources.shared.ports
        ]
        res = self.alloc.allocated_resources.tasks.get(self.task.name)
        cpu = int(res.cpu.cpu_shares) if res is not None else self.task.resources.cpu
        mem = int(res.memory.memory_mb) if res is not None else self.task.resources.memory_mb
        return TaskConfig(
            alloc_id=self.alloc.id,
            task_name=self.task.name,
            job_name=self.alloc.job_id,
            group_name=self.alloc.task_group,
            node_id=self.node.id,
            config=config,
            env=env,
            cpu_mhz=cpu,
            memory_mb=mem,
            memory_max_mb=self.task.resources.memory_max_mb,
            ports=ports,
            alloc_dir=self.paths.alloc_dir,
            task_dir=self.paths.task_dir,
            stdout_path=self.paths.stdout,
            stderr_path=self.paths.stderr,
            user=self.task.user,
        )
