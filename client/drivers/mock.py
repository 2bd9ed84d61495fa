"""The ``mock`` driver: simulated tasks with no process at all.

Why it exists: scheduler, client and deployment tests (and benchmarks with
thousands of allocations) need tasks that start, run for a while, fail or hang
on stop, deterministically and for free. Like Nomad's mock driver, behaviour
comes from the task's ``config`` block:

``run_for``          duration ("10s", "500ms", int ns); absent = runs until stopped
``exit_code``        int, default 0: the exit code when it ends (or is stopped)
``exit_signal``      int, default 0
``exit_err_msg``     string: ExitResult.err
``start_error``      string: start_task raises DriverError(start_error)
``start_error_recoverable``  bool: DriverError.recoverable for start_error
``start_block_for``  duration: start_task blocks this long before returning
``kill_after``       duration: how long the task takes to exit once signalled.
                     When it exceeds the stop timeout the task is "SIGKILLed" at
                     the timeout and exits with 137 / signal 9; otherwise it
                     exits with its configured result (as Nomad's mock does).
``stdout_string``    written once to the task's stdout file at start (optional)

Cost model: a task is a small record and an ``Event``; every ``run_for`` deadline
lives in one heap served by a single timer thread, so ten thousand running mock
tasks cost ten thousand records, not ten thousand threads.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from corral.client.drivers.base import (
    DriverError,
    ExitResult,
    Fingerprint,
    TaskConfig,
    TaskHandle,
)
from corral.client.drivers.durations import parse_duration

log = logging.getLogger(__name__)

_KNOWN_KEYS = frozenset(
    {
        "run_for",
        "exit_code",
        "exit_signal",
        "exit_err_msg",
        "start_error",
        "start_error_recoverable",
        "start_block_for",
        "kill_after",
        "stdout_string",
    }
)
_DURATION_KEYS = ("run_for", "start_block_for", "kill_after")


@dataclass
class _MockTask:
    task_id: str
    result: ExitResult  # what it exits with on its own or after a graceful stop
    kill_after: float
    started_at: float  # wall clock, for state and debugging
    done: threading.Event = field(default_factory=threading.Event)
    exit: ExitResult | None = None


def _as_int(value: Any, key: str) -> int:
    """Struct numbers are doubles: accept 1.0 as 1, refuse 1.5 and strings."""
    if isinstance(value, bool):
        raise ValueError(f"{key} must be an integer, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{key} must be an integer, not {value!r}")


class MockDriver:
    """Simulated tasks; thread-safe; one timer thread for all deadlines."""

    name = "mock"

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._tasks: dict[str, _MockTask] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._timer: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------ interface

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(detected=True, healthy=True, description="mock driver (simulated tasks)")

    def validate_config(self, config: dict[str, Any]) -> list[str]:
        problems: list[str] = []
        for key in sorted(set(config) - _KNOWN_KEYS):
            problems.append(f"unknown config key {key!r} for the mock driver")
        for key in _DURATION_KEYS:
            if key in config:
                try:
                    if parse_duration(config[key]) < 0:
                        problems.append(f"{key} must not be negative")
                except ValueError as exc:
                    problems.append(f"{key}: {exc}")
        for key in ("exit_code", "exit_signal"):
            if key in config:
                try:
                    _as_int(config[key], key)
                except ValueError as exc:
                    problems.append(str(exc))
        for key in ("start_error", "exit_err_msg", "stdout_string"):
            if key in config and not isinstance(config[key], str):
                problems.append(f"{key} must be a string")
        if "start_error_recoverable" in config and not isinstance(
            config["start_error_recoverable"], bool
        ):
            problems.append("start_error_recoverable must be true or false")
        return problems

    def start_task(self, cfg: TaskConfig) -> TaskHandle:
        problems = self.validate_config(cfg.config)
        if problems:
            raise DriverError("invalid mock config: " + "; ".join(problems))
        conf = cfg.config
        block = parse_duration(conf.get("start_block_for"))
        if block > 0:
            time.sleep(block)
        if conf.get("start_error"):
            raise DriverError(
                str(conf["start_error"]),
                recoverable=bool(conf.get("start_error_recoverable", False)),
            )
        if conf.get("stdout_string"):
            # The only I/O the mock does, and only when asked: lets log tests
            # see something in the task's stdout file.
            os.makedirs(os.path.dirname(cfg.stdout_path) or ".", exist_ok=True)
            with open(cfg.stdout_path, "a", encoding="utf-8") as fh:
                fh.write(str(conf["stdout_string"]))

        result = ExitResult(
            exit_code=_as_int(conf.get("exit_code", 0), "exit_code"),
            signal=_as_int(conf.get("exit_signal", 0), "exit_signal"),
            err=str(conf.get("exit_err_msg", "")),
        )
        task_id = f"{cfg.alloc_id}/{cfg.task_name}/{uuid.uuid4().hex[:8]}"
        task = _MockTask(
            task_id=task_id,
            result=result,
            kill_after=parse_duration(conf.get("kill_after")),
            started_at=time.time(),
        )
        run_for = conf.get("run_for")
        with self._lock:
            self._tasks[task_id] = task
            if run_for is not None:
                seconds = parse_duration(run_for)
                if seconds <= 0:
                    task.exit = result
                    task.done.set()
                else:
                    self._schedule(time.monotonic() + seconds, task_id)
        return TaskHandle(
            driver=self.name,
            task_id=task_id,
            state={"started_at": task.started_at, "pid": os.getpid()},
        )

    def wait_task(self, handle: TaskHandle, timeout: float | None = None) -> ExitResult | None:
        task = self._get(handle)
        if not task.done.wait(timeout):
            return None
        return task.exit

    def stop_task(self, handle: TaskHandle, timeout: float, signal: str) -> None:
        task = self._get(handle)
        if task.done.is_set():
            return
        # The task needs kill_after to react; past the stop timeout it is killed.
        graceful = task.kill_after <= timeout
        delay = task.kill_after if graceful else timeout
        if delay > 0 and task.done.wait(delay):
            return  # it ended on its own meanwhile
        self._finish(task, task.result if graceful else ExitResult(exit_code=137, signal=9))

    def destroy_task(self, handle: TaskHandle) -> None:
        with self._lock:
            task = self._tasks.pop(handle.task_id, None)
        if task is not None and not task.done.is_set():
            self._finish(task, ExitResult(exit_code=137, signal=9))

    def recover_task(self, handle: TaskHandle) -> bool:
        """True only when this process still knows the task: a mock task has no
        existence outside the driver's memory, so a real client restart loses it."""
        with self._lock:
            return handle.task_id in self._tasks

    # ------------------------------------------------------------ extras

    def running_count(self) -> int:
        """How many known tasks have not exited (for tests and benchmarks)."""
        with self._lock:
            return sum(1 for t in self._tasks.values() if not t.done.is_set())

    def close(self) -> None:
        """Stop the timer thread; known tasks stay as they are."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    # ------------------------------------------------------------ internals

    def _get(self, handle: TaskHandle) -> _MockTask:
        with self._lock:
            task = self._tasks.get(handle.task_id)
        if task is None:
            raise DriverError(f"mock task {handle.task_id} is unknown (destroyed or never started)")
        return task

    def _finish(self, task: _MockTask, result: ExitResult) -> None:
        with self._lock:
            if task.done.is_set():
                return
            task.exit = result
            task.done.set()

    def _schedule(self, deadline: float, task_id: str) -> None:
        """Caller holds the lock."""
        heapq.heappush(self._heap, (deadline, next(self._seq), task_id))
        if self._timer is None:
            self._timer = threading.Thread(
                target=self._run_timer, name="mock-driver-timer", daemon=True
            )
            self._timer.start()
        elif self._heap[0][2] == task_id:
            self._lock.notify()  # new earliest deadline: wake the timer up

    def _run_timer(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._heap:
                    self._lock.wait()
                    continue
                deadline, _, task_id = self._heap[0]
                now = time.monotonic()
                if deadline > now:
                    self._lock.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                task = self._tasks.get(task_id)
                if task is not None and not task.done.is_set():
                    task.exit = task.result
                    task.done.set()
