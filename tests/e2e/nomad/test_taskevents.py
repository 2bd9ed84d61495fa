"""Nomad's ``e2e/taskevents`` (``taskevents.go``, old framework) on corral.

Each test registers one job of ``input/taskevents/`` under a unique ID, takes its
single allocation and reads the events of the task named like the job, as Nomad's
``waitUntilEvents`` does, through ``corral alloc status <id> --json``. Nomad waits
for at least N events; corral may emit fewer (see below), so the tests wait for
the task to be dead instead (every event of a run is recorded by then) and then
compare the first N event types with Nomad's.

The events Nomad's test expects come from: the task dir hook ("Task Setup", before the
first start), the alloc runner ("Leader Task Dead" when a leader task ends, "Sibling
Task Failed" when a sibling fails, each followed by a kill) and the task runner
("Killing", "Terminated" for how the killed task ended, "Killed").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.nomad import support
from tests.e2e.nomad.support import Alloc, alloc_status, job_allocs, unique_id
from tests.support.multinode import MultiNode
from tests.support.wait import wait_for

INPUT = Path(__file__).parent / "input" / "taskevents"


def register(cluster: MultiNode, jobs: list[str], job_name: str) -> str:
    """``e2eutil.Register``: the job file under a unique ID, through ``job run -detach -``."""
    job_id = unique_id(job_name)
    support.register(cluster, INPUT / f"{job_name}.nomad", job_id)
    jobs.append(job_id)
    return job_id


def format_events(events: list[dict[str, Any]]) -> str:
    """Nomad's ``formatEvents``."""
    return "\n".join(
        f"{i:2d} {e['Type']:<20} fail={str(e.get('FailsTask', False)).lower()} "
        f"msg=> {e.get('DisplayMessage', '')}"
        for i, e in enumerate(events)
    )


def task_dead(task: str) -> Callable[[Alloc], bool]:
    def check(alloc: Alloc) -> bool:
        state = (alloc.get("TaskStates") or {}).get(task)
        return state is not None and state["State"] == "dead"

    return check


def alloc_when(cluster: MultiNode, alloc_id: str, done: Callable[[Alloc], bool]) -> Alloc:
    """The allocation once ``done`` holds for it, else {} (for ``wait_for``)."""
    alloc = alloc_status(cluster, alloc_id)
    return alloc if done(alloc) else {}


def wait_until_events(
    cluster: MultiNode, jobs: list[str], job_name: str, done: Callable[[Alloc], bool]
) -> tuple[Alloc, dict[str, Any]]:
    """Nomad's ``waitUntilEvents``: register ``input/<job_name>.nomad``, require one
    allocation, and wait (here: until ``done``) for the events of the task named like
    the job. Returns the allocation and that task's state."""
    job_id = register(cluster, jobs, job_name)
    allocs = wait_for(
        lambda: job_allocs(cluster, job_id),
        timeout=30,
        message=f"allocations of {job_id}",
    )
    assert len(allocs) == 1, allocs
    alloc_id = allocs[0]["ID"]
    alloc = wait_for(
        lambda: alloc_when(cluster, alloc_id, done),
        timeout=30,
        interval=0.2,
        message=lambda: f"the events of {job_name} in {alloc_status(cluster, alloc_id)}",
    )
    state = alloc["TaskStates"].get(job_name)
    assert state is not None, f"task state not found for {job_name}"
    return alloc, state


def assert_events(state: dict[str, Any], expected: list[str]) -> None:
    """The first ``len(expected)`` event types are Nomad's ``expected``."""
    events = state["Events"]
    types = [e["Type"] for e in events]
    assert types[: len(expected)] == expected, format_events(events)


def test_TaskEvents_SimpleBatch(cluster: MultiNode, jobs: list[str]) -> None:
    _, state = wait_until_events(cluster, jobs, "simple_batch", task_dead("simple_batch"))
    events = state["Events"]
    assert not state["Failed"], (
        f"task unexpectedly failed after {len(events)} events\n{format_events(events)}"
    )
    assert_events(state, ["Received", "Task Setup", "Started", "Terminated"])


def test_TaskEvents_FailedBatch(cluster: MultiNode, jobs: list[str]) -> None:
    _, state = wait_until_events(cluster, jobs, "failed_batch", task_dead("failed_batch"))
    events = state["Events"]
    assert state["Failed"], (
        f"task unexpectedly succeeded after {len(events)} events\n{format_events(events)}"
    )
    # Nomad: events[3] is "Not Restarting" with FailsTask.
    not_restarting = [e for e in events if e["Type"] == "Not Restarting"]
    assert not_restarting and not_restarting[0].get("FailsTask"), format_events(events)
    assert_events(
        state,
        ["Received", "Task Setup", "Driver Failure", "Not Restarting"],
    )


def test_TaskEvents_CompletedLeader(cluster: MultiNode, jobs: list[str]) -> None:
    # The leader sleeps 1 s; its end must kill the task under test (sleep 1000).
    alloc, _ = wait_until_events(cluster, jobs, "completed_leader", task_dead("leader"))
    alloc = wait_for(
        lambda: alloc_when(cluster, alloc["ID"], task_dead("completed_leader")),
        timeout=10,
        interval=0.2,
        message="the non-leader task to be killed after its leader died",
    )
    state = alloc["TaskStates"]["completed_leader"]
    events = state["Events"]
    assert not state["Failed"], (
        f"task unexpectedly failed after {len(events)} events\n{format_events(events)}"
    )
    assert_events(
        state,
        [
            "Received",
            "Task Setup",
            "Started",
            "Leader Task Dead",
            "Killing",
            "Terminated",
            "Killed",
        ],
    )


def test_TaskEvents_FailedSibling(cluster: MultiNode, jobs: list[str]) -> None:
    alloc, state = wait_until_events(cluster, jobs, "failed_sibling", task_dead("failed_sibling"))
    events = state["Events"]
    # A sibling's failure does not fail this task; it is killed cleanly.
    assert not state["Failed"], (
        f"task unexpectedly failed after {len(events)} events\n{format_events(events)}"
    )
    assert alloc["ClientStatus"] == "failed"
    assert_events(
        state,
        [
            "Received",
            "Task Setup",
            "Started",
            "Sibling Task Failed",
            "Killing",
            "Terminated",
            "Killed",
        ],
    )
