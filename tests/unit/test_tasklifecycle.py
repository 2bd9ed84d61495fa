"""The task lifecycle's decisions, as data: each scenario is a list of
(event, the actions it must produce), read like a log. No threads, no driver, no
clock: ``now`` is a number given with each event.

Actions are written short: ``emit:<TaskEvent type>``, ``state:<state>`` (with
``/failed`` or ``/ok`` when the failed flag is set), ``start``, ``stop`` (``stop+wait``
when the exit is waited for), ``destroy``, ``count`` (a restart counted),
``delay:<seconds>``.
"""

from __future__ import annotations

import pytest

from corral import structs
from corral.client.drivers.base import ExitResult
from corral.client.restarts import RestartTracker
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

S = 1_000_000_000


def short(action: Action) -> str:
    match action:
        case Emit():
            return f"emit:{action.type}"
        case SetState():
            flag = "" if action.failed is None else ("/failed" if action.failed else "/ok")
            return f"state:{action.state}{flag}"
        case StartTask():
            return "start"
        case StopTask():
            return "stop+wait" if action.wait_exit else "stop"
        case DestroyTask():
            return "destroy"
        case CountRestart():
            return "count"
        case Delay():
            return f"delay:{action.delay_ns / S:g}"
    raise AssertionError(action)


def machine(
    attempts: int = 2, delay_s: float = 15, mode: str = "fail", job_type: str = "service"
) -> TaskLifecycle:
    policy = pb.RestartPolicy(
        attempts=attempts, interval=1800 * S, delay=int(delay_s * S), mode=mode
    )
    return TaskLifecycle(RestartTracker(policy, job_type), "docker")


def run(m: TaskLifecycle, script: list[tuple[Event, list[str]]]) -> None:
    for step, (event, expected) in enumerate(script):
        got = [short(a) for a in m.handle(event, now_ns=step * S)]
        assert got == expected, f"step {step}: {event}"


OK = ExitResult(exit_code=0)
ONE = ExitResult(exit_code=1)
RUNNING = ["state:running", "emit:Started"]
RECEIVED_START = ["emit:Received", "emit:Task Setup", "start"]


def test_a_batch_task_runs_once_and_completes() -> None:
    m = machine(job_type="batch")
    run(
        m,
        [
            (Begin(), RECEIVED_START),
            (Started(), RUNNING),
            (Exited(OK), ["emit:Terminated", "destroy", "state:dead/ok"]),
            (KillRequested(5, "SIGINT"), []),  # dead ignores everything
        ],
    )
    assert m.dead


def test_a_failing_service_restarts_within_policy_then_fails() -> None:
    m = machine(attempts=1, delay_s=15)
    restart = ["emit:Terminated", "destroy", "emit:Restarting", "count", "state:pending"]
    run(
        m,
        [
            (Begin(), RECEIVED_START),
            (Started(), RUNNING),
            (Exited(ONE), [*restart, "delay:15"]),
            (DelayOver(), ["start"]),
            (Started(), RUNNING),
            (
                Exited(ONE),
                ["emit:Terminated", "destroy", "emit:Not Restarting", "state:dead/failed"],
            ),
        ],
    )


def test_a_recoverable_start_error_is_retried_an_unrecoverable_one_fails() -> None:
    run(
        machine(attempts=1, delay_s=2),
        [
            (Begin(), RECEIVED_START),
            (StartFailed("pull failed", recoverable=True), ["emit:Driver Failure", "emit:Restarting", "count", "delay:2"]),
            (DelayOver(), ["start"]),
            (StartFailed("bad config", recoverable=False), ["emit:Driver Failure", "emit:Not Restarting", "state:dead/failed"]),
        ],
    )  # fmt: skip


def test_no_driver_fails_the_task_at_once() -> None:
    run(
        machine(),
        [(Begin(driver_available=False), ["emit:Received", "emit:Driver Failure", "state:dead/failed"])],
    )  # fmt: skip


def test_a_kill_stops_a_running_task_for_good() -> None:
    run(
        machine(),
        [
            (Begin(), RECEIVED_START),
            (Started(), RUNNING),
            (RestartRequested("late", failure=False), ["emit:Restart Signaled", "stop+wait"]),
            # A kill while stopping for a restart: the restart still finishes its stop,
            # then the kill wins over the restart's delay.
            (KillRequested(5, "SIGINT"), []),
            (Stopped(ONE), ["emit:Terminated", "destroy", "emit:Restarting", "count", "state:pending", "state:dead/ok"]),
        ],
    )  # fmt: skip
    run(
        machine(),
        [
            (Begin(), RECEIVED_START),
            (Started(), RUNNING),
            (KillRequested(5, "SIGINT"), ["emit:Killing", "stop+wait"]),
            (RestartRequested("too late", failure=False), []),
            # Nomad's order: Killing, Terminated (how it ended), Killed.
            (Stopped(ExitResult(exit_code=130, signal=2)), ["emit:Terminated", "emit:Killed", "destroy", "state:dead/ok"]),
        ],
    )  # fmt: skip


@pytest.mark.parametrize("phase_event", [DelayOver(), StartFailed("x", recoverable=True)])
def test_a_kill_while_waiting_or_starting_ends_dead_without_a_new_start(phase_event: Event) -> None:
    m = machine(delay_s=30)
    run(
        m,
        [
            (Begin(), RECEIVED_START),
            (StartFailed("pull", recoverable=True), ["emit:Driver Failure", "emit:Restarting", "count", "delay:30"]),
            (KillRequested(5, "SIGINT"), ["state:dead/ok"]),
            (phase_event, []),
        ],
    )  # fmt: skip
    # The runner answers a start with a kill when the kill came first.
    run(
        machine(),
        [(Begin(), RECEIVED_START), (KillRequested(5, "SIGINT"), ["state:dead/ok"])],
    )


def test_a_users_restart_is_immediate_and_not_counted_by_the_policy() -> None:
    m = machine(attempts=0)  # the policy allows no restart at all
    run(
        m,
        [
            (Begin(), RECEIVED_START),
            (Started(), RUNNING),
            (RestartRequested("user", failure=False), ["emit:Restart Signaled", "stop+wait"]),
            (Stopped(ExitResult(exit_code=0, signal=15)), ["emit:Terminated", "destroy", "emit:Restarting", "count", "state:pending", "delay:0"]),
            (DelayOver(), ["start"]),
        ],
    )  # fmt: skip


def test_a_check_restart_is_a_failure_the_policy_counts() -> None:
    run(
        machine(attempts=0),
        [
            (Begin(), RECEIVED_START),
            (Started(), RUNNING),
            (RestartRequested("unhealthy", failure=True), ["emit:Restart Signaled", "stop+wait"]),
            (Stopped(None), ["destroy", "emit:Not Restarting", "state:dead/failed"]),
        ],
    )  # fmt: skip


def test_a_reattached_task_is_running_without_a_start() -> None:
    m = machine(job_type="batch")
    m.running = True
    run(
        m,
        [
            (Begin(recovered=True), []),
            (RestartRequested("r", failure=False), ["emit:Restart Signaled", "stop+wait"]),
        ],
    )
    assert m.phase == Phase.STOPPING


def test_the_second_run_after_a_client_restart_does_not_say_received_again() -> None:
    run(machine(), [(Begin(first_run=False), ["start"])])


def test_exits_outside_running_are_ignored() -> None:
    m = machine()
    run(m, [(Exited(ONE), []), (Begin(), RECEIVED_START), (Exited(ONE), [])])
    assert m.phase == Phase.STARTING


def test_event_names_are_nomads() -> None:
    """The short names above are Nomad's TaskEvent types, as the CLI shows them."""
    assert structs.EVENT_RECEIVED == "Received"
    assert structs.EVENT_NOT_RESTARTING == "Not Restarting"
