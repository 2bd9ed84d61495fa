"""A task runner whose task never starts (the mock driver's ``start_error``): the
restart policy decides how often it tries again, the tries run in a loop (the stack
stays as deep as it was, however many), and a kill ends the task between tries."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import structs
from corral.client.drivers.base import TaskConfig, TaskHandle
from corral.client.drivers.mock import MockDriver
from corral.client.taskrunner import TaskRunner
from corral.proto import pb
from tests.support import factories
from tests.support.wait import wait_for

MS = 1_000_000
SECOND = 1_000_000_000


def stack_depth() -> int:
    """Frames on the calling thread's stack."""
    frame = sys._getframe(1)
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back  # type: ignore[assignment]
    return depth


class StartRecordingMock(MockDriver):
    """The mock driver, recording the stack depth of every ``start_task``."""

    def __init__(self) -> None:
        super().__init__()
        self.depths: list[int] = []
        self._starts_lock = threading.Lock()

    def start_task(self, cfg: TaskConfig) -> TaskHandle:
        with self._starts_lock:
            self.depths.append(stack_depth())
        return super().start_task(cfg)

    def starts(self) -> int:
        with self._starts_lock:
            return len(self.depths)


def never_starting_task(policy: pb.RestartPolicy) -> tuple[pb.Allocation, pb.Task]:
    job = factories.job(job_id="flaky", count=1, ports=())
    group = job.task_groups[0]
    group.restart_policy.CopyFrom(policy)
    task = group.tasks[0]
    task.config.Clear()
    task.config.update({"start_error": "image not pulled yet", "start_error_recoverable": True})
    alloc = pb.Allocation(
        id=factories.uid("c"),
        job=job,
        job_id=job.id,
        task_group=group.name,
        name=f"{job.id}.{group.name}[0]",
    )
    return alloc, task


@pytest.fixture
def driver() -> Iterator[StartRecordingMock]:
    d = StartRecordingMock()
    yield d
    d.close()


def run_task(policy: pb.RestartPolicy, driver: MockDriver, tmp_path: Path) -> TaskRunner:
    alloc, task = never_starting_task(policy)
    tr = TaskRunner(alloc, task, factories.node(), driver, str(tmp_path), lambda r: None)
    tr.start()
    return tr


def test_delay_mode_retries_a_failing_start_in_a_loop_and_stops_when_killed(
    driver: StartRecordingMock, tmp_path: Path
) -> None:
    """``mode = "delay"`` never gives up on a recoverable start error: five quick
    tries, then wait for the 20 ms interval to roll over, again and again. Each
    try starts at the same stack depth (a recursion would add frames every try
    until RecursionError), and a kill ends the task promptly."""
    policy = pb.RestartPolicy(attempts=5, interval=20 * MS, delay=0, mode="delay")
    tr = run_task(policy, driver, tmp_path)
    try:
        wait_for(lambda: driver.starts() >= 60, timeout=20, message="60 start tries")
        depths = driver.depths[:60]
        assert len(set(depths)) == 1, f"the stack grows with every try: {depths}"
        assert not tr.dead
        assert tr.state.restarts >= 59
        assert {e.type for e in tr.state.events} <= {
            structs.EVENT_RECEIVED,
            structs.EVENT_DRIVER_FAILURE,
            structs.EVENT_RESTARTING,
        }
    finally:
        tr.kill()
    wait_for(lambda: tr.dead, timeout=5, message="dead once killed")
    assert not tr.state.failed
    tries = driver.starts()
    tr.join(5)
    assert driver.starts() == tries, "started again after the kill"


def test_a_kill_during_the_policys_delay_ends_the_task_at_once(
    driver: StartRecordingMock, tmp_path: Path
) -> None:
    """One quick retry, then an hour to wait for the interval: killed meanwhile,
    the task ends dead (not failed) without trying again."""
    policy = pb.RestartPolicy(attempts=1, interval=3600 * SECOND, delay=0, mode="delay")
    tr = run_task(policy, driver, tmp_path)
    try:

        def waiting_long() -> bool:
            last = tr.state.events[-1] if tr.state.events else None
            return (
                last is not None
                and last.type == structs.EVENT_RESTARTING
                and last.start_delay > 3000 * SECOND
            )

        wait_for(waiting_long, timeout=5, message="waiting for the interval to roll over")
        assert driver.starts() == 2
    finally:
        tr.kill()
    wait_for(lambda: tr.dead, timeout=5, message="dead once killed")
    tr.join(5)
    assert not tr.state.failed
    assert driver.starts() == 2


def test_fail_mode_gives_up_after_the_policys_attempts(
    driver: StartRecordingMock, tmp_path: Path
) -> None:
    policy = pb.RestartPolicy(attempts=3, interval=3600 * SECOND, delay=0, mode="fail")
    tr = run_task(policy, driver, tmp_path)
    try:
        wait_for(lambda: tr.dead, timeout=5, message="failed for good")
        tr.join(5)
        assert tr.state.failed
        assert driver.starts() == 4  # the first try and three restarts
        assert len(set(driver.depths)) == 1
        assert tr.state.events[-1].type == structs.EVENT_NOT_RESTARTING
    finally:
        tr.kill()
