"""One task's life on a client: start through its driver, wait, restart, kill.

The task runner owns a thread. What it decides is kept in small pure pieces (the
restart tracker, the environment builder); what it does goes through the driver
interface, so the mock driver exercises it with no processes at all.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from corral.client.restarts import DONE, FAIL, RestartTracker
from corral.proto import pb

log = logging.getLogger(__name__)

MAX_EVENTS = 10
MAX_KILL_TIMEOUT = 30.0  # the client's max_kill_timeout


class _RestartRequest:
    """``_wait`` returns this when ``restart()`` was asked for."""

    def __init__(self, reason: str, failure: bool) -> None:
        self.reason = reason
        self.failure = failure


@dataclass
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
    ) -> None:
        self.alloc = alloc
        self.task = task
        self.node = node
        self.driver = driver
        self.paths = task_paths(alloc_root, task.name)
        self._on_change = on_change
        self.state = pb.TaskState(state=structs.TASK_STATE_PENDING)
        self.handle: TaskHandle | None = None
        self._kill = threading.Event()
        self._restart_req: _RestartRequest | None = None
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
                self._restart_req = _RestartRequest(reason, failure)
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

    # ------------------------------------------------------------ state
    def _event(self, etype: str, message: str = "", **extra: Any) -> None:
        with self._lock:
            ev = self.state.events.add(
                type=etype, time=time.time_ns(), message=message, display_message=message
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
            now = time.time_ns()
            if state == structs.TASK_STATE_RUNNING:
                self.state.started_at = now
                self.state.finished_at = 0
            elif state == structs.TASK_STATE_DEAD:
                self.state.finished_at = now
        self._on_change(self)

    # ------------------------------------------------------------ the loop
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # never let a bug leave a task 'running' forever
            log.exception("task runner %s crashed", self.task.name)
            self._event(structs.EVENT_DRIVER_FAILURE, f"task runner error: {exc}", fails_task=True)
            self._set_state(structs.TASK_STATE_DEAD, failed=True)

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
        if not recovered:
            if not self.state.events:
                self._event(structs.EVENT_RECEIVED, "Task received by client")
            if self.driver is None:
                self._event(
                    structs.EVENT_DRIVER_FAILURE,
                    f"driver {self.task.driver!r} is not available on this node",
                    fails_task=True,
                )
                self._set_state(structs.TASK_STATE_DEAD, failed=True)
                return
        while True:
            if not recovered:
                if self._kill.is_set():
                    self._set_state(structs.TASK_STATE_DEAD, failed=False)
                    return
                if not self._start_once():
                    return  # dead: failed or killed
            recovered = False
            result = self._wait()
            if result is None:  # killed
                return
            if isinstance(result, _RestartRequest):
                if not self._restart_signaled(result):
                    return
                continue
            verdict = self.restarts.on_exit(time.time_ns(), result.successful)
            msg = f"Exit Code: {result.exit_code}"
            if result.signal:
                msg += f", Signal: {result.signal}"
            if result.oom_killed:
                msg += ", OOM Killed"
            if result.err:
                msg += f", {result.err}"
            self._event(
                structs.EVENT_TERMINATED,
                msg,
                exit_code=result.exit_code,
                signal=result.signal,
            )
            self._destroy()
            if verdict.action == DONE:
                self._set_state(structs.TASK_STATE_DEAD, failed=False)
                return
            if verdict.action == FAIL:
                self._event(structs.EVENT_NOT_RESTARTING, verdict.reason, fails_task=True)
                self._set_state(structs.TASK_STATE_DEAD, failed=True)
                return
            if not self._restart_delay(verdict.delay_ns):
                return

    def _restart_signaled(self, req: _RestartRequest) -> bool:
        """Carry out ``restart()``: stop the task, then (after the policy's delay for
        a failure restart) let the loop start it again. False when the task ended."""
        self._event(structs.EVENT_RESTART_SIGNAL, req.reason)
        assert self.driver is not None and self.handle is not None
        timeout, signal = self._kill_params()
        try:
            self.driver.stop_task(self.handle, timeout, signal)
            result = self.driver.wait_task(self.handle, timeout=1.0)
        except DriverError as exc:
            result = ExitResult(exit_code=-1, err=str(exc))
        if result is not None:
            msg = f"Exit Code: {result.exit_code}"
            if result.signal:
                msg += f", Signal: {result.signal}"
            self._event(
                structs.EVENT_TERMINATED, msg, exit_code=result.exit_code, signal=result.signal
            )
        self._destroy()
        with self._lock:
            self._restart_req = None
        delay = 0
        if req.failure:
            verdict = self.restarts.on_exit(time.time_ns(), successful=False)
            if verdict.action == FAIL:
                self._event(structs.EVENT_NOT_RESTARTING, verdict.reason, fails_task=True)
                self._set_state(structs.TASK_STATE_DEAD, failed=True)
                return False
            delay = verdict.delay_ns
        return self._restart_delay(delay)

    def _restart_delay(self, delay_ns: int) -> bool:
        self._event(
            structs.EVENT_RESTARTING,
            f"Task restarting in {delay_ns / 1e9:.3g}s",
            start_delay=delay_ns,
        )
        with self._lock:
            self.state.restarts += 1
            self.state.last_restart = time.time_ns()
        # Not running while it waits to restart (Nomad shows the task pending).
        if self.state.state == structs.TASK_STATE_RUNNING:
            self._set_state(structs.TASK_STATE_PENDING)
        if self._kill.wait(delay_ns / 1e9):
            self._set_state(structs.TASK_STATE_DEAD, failed=False)
            return False
        return True

    def _start_once(self) -> bool:
        """Start the task, retrying failed starts as the restart policy says; False
        when it ended dead (start failed for good, or killed between tries).

        A loop, not a recursion: with ``mode = "delay"`` the policy never gives up on
        a recoverable start error (an image that cannot be pulled yet), so every try
        must leave the stack as it found it. A kill between tries (during the
        policy's delay, or just after it) ends the task instead of starting it.
        """
        assert self.driver is not None
        while True:
            if self._kill.is_set():
                self._set_state(structs.TASK_STATE_DEAD, failed=False)
                return False
            try:
                cfg = self._task_config()
                os.makedirs(self.paths.task_dir, exist_ok=True)
                os.makedirs(os.path.join(self.paths.task_dir, "local"), exist_ok=True)
                os.makedirs(os.path.join(self.paths.task_dir, "secrets"), exist_ok=True)
                os.makedirs(os.path.dirname(self.paths.stdout), exist_ok=True)
                self.handle = self.driver.start_task(cfg)
            except DriverError as exc:
                self._event(
                    structs.EVENT_DRIVER_FAILURE, str(exc), driver_error=str(exc), fails_task=True
                )
                verdict = self.restarts.on_start_error(time.time_ns(), exc.recoverable, str(exc))
                if verdict.action == FAIL:
                    self._event(structs.EVENT_NOT_RESTARTING, verdict.reason, fails_task=True)
                    self._set_state(structs.TASK_STATE_DEAD, failed=True)
                    return False
                if not self._restart_delay(verdict.delay_ns):
                    return False
                continue
            self._set_state(structs.TASK_STATE_RUNNING)
            self._event(structs.EVENT_STARTED, "Task started by client")
            return True

    def _wait(self) -> ExitResult | _RestartRequest | None:
        """Wait for exit; on a kill request stop the task and return None; on a
        restart request return it (the task still runs)."""
        assert self.driver is not None and self.handle is not None
        while True:
            if self._kill.is_set():
                self._stop_task()
                return None
            req = self._restart_req
            if req is not None:
                return req
            try:
                result = self.driver.wait_task(self.handle, timeout=0.25)
            except DriverError as exc:
                result = ExitResult(exit_code=-1, err=str(exc))
            if result is not None:
                return result

    def _kill_params(self) -> tuple[float, str]:
        timeout = min(
            self.task.kill_timeout / 1e9 if self.task.kill_timeout else 5.0, MAX_KILL_TIMEOUT
        )
        signal = self.task.kill_signal or ("SIGTERM" if self.task.driver == "docker" else "SIGINT")
        return timeout, signal

    def _stop_task(self) -> None:
        assert self.driver is not None and self.handle is not None
        timeout, signal = self._kill_params()
        self._event(
            structs.EVENT_KILLING, f"Sent interrupt. Waiting {timeout:g}s before force killing"
        )
        try:
            self.driver.stop_task(self.handle, timeout, signal)
        except DriverError as exc:
            log.warning("stopping task %s: %s", self.task.name, exc)
        self._event(structs.EVENT_KILLED, "Task successfully killed")
        self._destroy()
        self._set_state(structs.TASK_STATE_DEAD, failed=False)

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
