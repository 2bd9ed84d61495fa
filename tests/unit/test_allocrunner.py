"""The alloc runner with the mock driver: client status from the tasks, a failed
task takes its siblings down, and a stop runs the prekill hooks (deregister, then
the shutdown delay, waited on an injected wait) before any task is signalled."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import structs
from corral.client.allocrunner import AllocRunner
from corral.client.drivers.base import TaskHandle
from corral.client.drivers.mock import MockDriver
from corral.proto import pb
from tests.support import factories as f
from tests.support.wait import wait_for

S = 1_000_000_000


class RecordingDriver(MockDriver):
    """The mock driver, recording each stop into a shared log."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def stop_task(self, handle: TaskHandle, timeout: float, signal: str) -> None:
        self.log.append(f"stop:{handle.task_id.split('/')[1]}")
        super().stop_task(handle, timeout, signal)


def two_task_alloc(
    web: dict[str, object], sidecar: dict[str, object], shutdown_delay_s: float = 0
) -> pb.Allocation:
    job = f.job(job_id="shop", count=1, ports=())
    group = job.task_groups[0]
    group.restart_policy.CopyFrom(pb.RestartPolicy(attempts=0, mode="fail"))
    group.shutdown_delay = int(shutdown_delay_s * S)
    group.tasks[0].name = "web"
    group.tasks[0].config.Clear()
    group.tasks[0].config.update(web)
    side = group.tasks.add(name="sidecar", driver="mock")
    side.config.update(sidecar)
    return pb.Allocation(
        id=f.uid("a"), job=job, job_id=job.id, task_group=group.name, name="shop.web[0]"
    )


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def driver(log: list[str]) -> Iterator[RecordingDriver]:
    d = RecordingDriver(log)
    yield d
    d.close()


def runner(alloc: pb.Allocation, driver: MockDriver, tmp_path: Path, **kw: object) -> AllocRunner:
    ar = AllocRunner(alloc, f.node(), {"mock": driver}, str(tmp_path), lambda r: None, **kw)  # type: ignore[arg-type]
    ar.start()
    return ar


def status(ar: AllocRunner) -> str:
    return ar.client_update().client_status


def all_running(ar: AllocRunner) -> bool:
    """Every task running (the client status says running as soon as one is)."""
    return all(tr.state.state == structs.TASK_STATE_RUNNING for tr in ar.tasks.values())


def test_status_follows_the_tasks_to_complete(driver: RecordingDriver, tmp_path: Path) -> None:
    alloc = two_task_alloc({"run_for": "200ms"}, {"run_for": "300ms"})
    alloc.job.type = structs.JOB_TYPE_BATCH
    ar = runner(alloc, driver, tmp_path)
    wait_for(lambda: status(ar) == structs.ALLOC_CLIENT_RUNNING, timeout=5)
    wait_for(lambda: status(ar) == structs.ALLOC_CLIENT_COMPLETE, timeout=5)
    assert (tmp_path / "alloc" / "logs").is_dir() and (tmp_path / "web" / "local").is_dir()
    ar.wait(5)


def test_a_failed_task_kills_its_siblings(driver: RecordingDriver, tmp_path: Path) -> None:
    ar = runner(two_task_alloc({"run_for": "100ms", "exit_code": 3}, {}), driver, tmp_path)
    wait_for(lambda: ar.terminal, timeout=5, message="every task dead")
    assert status(ar) == structs.ALLOC_CLIENT_FAILED
    side = ar.tasks["sidecar"].state
    assert not side.failed and side.events[-1].type == structs.EVENT_KILLED
    told = [e for e in side.events if e.type == structs.EVENT_SIBLING_FAILED]
    assert len(told) == 1 and told[0].message == 'Task\'s sibling "web" failed'
    types = [e.type for e in side.events]
    assert types.index(structs.EVENT_SIBLING_FAILED) < types.index(structs.EVENT_KILLING)
    ar.wait(5)


def test_a_stop_waits_the_shutdown_delay_before_any_task_is_signalled(
    driver: RecordingDriver, log: list[str], tmp_path: Path
) -> None:
    def fake_wait(event: threading.Event, seconds: float) -> bool:
        log.append(f"delay:{seconds:g}")
        return False

    alloc = two_task_alloc({}, {}, shutdown_delay_s=3)
    ar = runner(alloc, driver, tmp_path, wait=fake_wait)
    wait_for(lambda: all_running(ar), timeout=5)
    stop = pb.Allocation()
    stop.CopyFrom(alloc)
    stop.desired_status = structs.ALLOC_DESIRED_STOP
    ar.update(stop)
    wait_for(lambda: ar.terminal, timeout=5, message="every task dead")
    ar.wait(5)
    assert log[0] == "delay:3"
    assert sorted(log[1:]) == ["stop:sidecar", "stop:web"]
    assert status(ar) == structs.ALLOC_CLIENT_COMPLETE


def test_no_delay_and_no_services_kill_at_once(
    driver: RecordingDriver, log: list[str], tmp_path: Path
) -> None:
    ar = runner(two_task_alloc({}, {}), driver, tmp_path)
    wait_for(lambda: all_running(ar), timeout=5)
    ar.kill()
    assert ar._stopper is None  # nothing to wait for: no stop thread
    wait_for(lambda: ar.terminal, timeout=5)
    ar.wait(5)
    assert sorted(log) == ["stop:sidecar", "stop:web"]


def test_agent_shutdown_cuts_the_shutdown_delay_short(
    driver: RecordingDriver, tmp_path: Path
) -> None:
    ar = runner(two_task_alloc({}, {}, shutdown_delay_s=3600), driver, tmp_path)
    wait_for(lambda: all_running(ar), timeout=5)
    ar.kill()
    wait_for(lambda: ar._stopper is not None and ar._stopper.is_alive(), timeout=5)
    assert not ar.terminal  # waiting the hour
    ar.shutdown_delay.cut_short.set()
    wait_for(lambda: ar.terminal, timeout=5, message="killed once the delay was cut short")
    ar.wait(5)
