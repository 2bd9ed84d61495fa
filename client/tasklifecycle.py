"""One task's lifecycle as a pure state machine: events in, actions out.

The shape of dask's ``worker_state_machine``: the decisions (what to do when a
start fails, an exit comes, a kill or a restart is asked for) are made here with no
threads, no driver and no clock of their own (``now_ns`` comes with each event), so
they are tested as sequences of events (``tests/unit/test_tasklifecycle.py``). The
task runner (``client/taskrunner.py``) is the I/O shell: it carries out the actions
through the driver and the task hooks, and feeds back what happened.

States (``Phase``) and the events that move between them::

                    Begin
                      |  no driver -----------------------------------+
                      v                                               |
     +-----------> STARTING --StartFailed(recoverable, policy allows)-+--> DELAYING
     |                |   \\--StartFailed(otherwise)--------------+    |        |
     |            Started                                        |    |        |
     |                v                                          v    v        |
     |   +------> RUNNING --Exited(policy: restart)--------------|-> DELAYING  |
     |   |            |  \\--Exited(done / fail)------------------+             |
     |   |  RestartRequested        KillRequested                 |             |
     |   |            v                   v                       v             |
     |   |        STOPPING ----Stopped---> (restart: DELAYING)   DEAD <---------+
     |   |                     KILLING --Stopped--> DEAD          ^   (KillRequested
     |   +-- Begin(recovered)                                     |    while DELAYING)
     +--------------------------- DelayOver ---- DELAYING --------+

``Begin(recovered=True)``: the client restarted and reattached to the running task
(it goes straight to RUNNING). A kill asked for before a start, or during a delay,
ends the task dead and not failed, without starting it again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from corral import structs
from corral.client.drivers.base import ExitResult
from corral.client.restarts import DONE, FAIL, RestartTracker


class Phase(enum.StrEnum):
    PENDING = "pending"  # before Begin
    STARTING = "starting"  # a Start action is out
    RUNNING = "running"
    STOPPING = "stopping"  # stopping to restart
    KILLING = "killing"  # stopping for good
    DELAYING = "delaying"  # waiting the restart policy's delay
    DEAD = "dead"


# ------------------------------------------------------------------ events


@dataclass(frozen=True)
class Begin:
    recovered: bool = False  # reattached to a task that still runs
    driver_available: bool = True
    first_run: bool = True  # no task event recorded yet


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class StartFailed:
    error: str
    recoverable: bool


@dataclass(frozen=True)
class Exited:
    result: ExitResult


@dataclass(frozen=True)
class KillRequested:
    timeout_s: float
    signal: str


@dataclass(frozen=True)
class RestartRequested:
    reason: str
    failure: bool  # counted by the restart policy (check_restart), or not (a user's)
    timeout_s: float = 5.0
    signal: str = "SIGTERM"


@dataclass(frozen=True)
class Stopped:
    result: ExitResult | None  # None when the driver could not tell


@dataclass(frozen=True)
class DelayOver:
    pass


Event = (
    Begin | Started | StartFailed | Exited | KillRequested | RestartRequested | Stopped | DelayOver
)


# ------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Emit:
    """Record a task event (Nomad's ``TaskEvent``)."""

    type: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SetState:
    state: str  # structs.TASK_STATE_*
    failed: bool | None = None


@dataclass(frozen=True)
class StartTask:
    """Run the prestart hooks, then start through the driver; answer ``Started`` or
    ``StartFailed``."""


@dataclass(frozen=True)
class StopTask:
    """Stop through the driver (signal, timeout, then SIGKILL); answer ``Stopped``,
    with the exit result when ``wait_exit`` (a restart reports how the task ended)."""

    timeout_s: float
    signal: str
    wait_exit: bool = False


@dataclass(frozen=True)
class DestroyTask:
    """Release what the driver holds for the task (and run the exited hooks)."""


@dataclass(frozen=True)
class CountRestart:
    """TaskState.restarts += 1, last_restart = now."""


@dataclass(frozen=True)
class Delay:
    """Wait ``delay_ns`` (a kill cuts it short); answer ``DelayOver``."""

    delay_ns: int


Action = Emit | SetState | StartTask | StopTask | DestroyTask | CountRestart | Delay


def exit_message(result: ExitResult) -> str:
    msg = f"Exit Code: {result.exit_code}"
    if result.signal:
        msg += f", Signal: {result.signal}"
    if result.oom_killed:
        msg += ", OOM Killed"
    if result.err:
        msg += f", {result.err}"
    return msg


class TaskLifecycle:
    """The decisions of one task. ``handle(event, now_ns)`` returns the actions to
    carry out, in order; the runner answers the long ones (start, stop, delay) with
    their outcome event."""

    def __init__(self, restarts: RestartTracker, driver_name: str = "") -> None:
        self.restarts = restarts
        self.driver_name = driver_name
        self.phase = Phase.PENDING
        self.kill_requested = False
        self.running = False  # the task state last set is "running"
        self._restart: RestartRequested | None = None

    @property
    def dead(self) -> bool:
        return self.phase == Phase.DEAD

    def handle(self, event: Event, now_ns: int) -> list[Action]:
        if self.phase == Phase.DEAD:
            return []
        out: list[Action] = []
        match event:
            case Begin():
                self._begin(event, out)
            case Started():
                self.phase = Phase.RUNNING
                self._set(out, structs.TASK_STATE_RUNNING)
                out.append(Emit(structs.EVENT_STARTED, "Task started by client"))
            case StartFailed():
                out.append(
                    Emit(
                        structs.EVENT_DRIVER_FAILURE,
                        event.error,
                        {"driver_error": event.error, "fails_task": True},
                    )
                )
                verdict = self.restarts.on_start_error(now_ns, event.recoverable, event.error)
                if verdict.action == FAIL:
                    self._fail(out, verdict.reason)
                else:
                    self._delay(out, verdict.delay_ns)
            case Exited():
                if self.phase != Phase.RUNNING:
                    return out
                result = event.result
                verdict = self.restarts.on_exit(now_ns, result.successful)
                out.append(
                    Emit(
                        structs.EVENT_TERMINATED,
                        exit_message(result),
                        {"exit_code": result.exit_code, "signal": result.signal},
                    )
                )
                out.append(DestroyTask())
                if verdict.action == DONE:
                    self._dead(out, failed=False)
                elif verdict.action == FAIL:
                    self._fail(out, verdict.reason)
                else:
                    self._delay(out, verdict.delay_ns)
            case KillRequested():
                self.kill_requested = True
                if self.phase == Phase.RUNNING:
                    self.phase = Phase.KILLING
                    out.append(
                        Emit(
                            structs.EVENT_KILLING,
                            f"Sent interrupt. Waiting {event.timeout_s:g}s before force killing",
                        )
                    )
                    out.append(StopTask(event.timeout_s, event.signal, wait_exit=True))
                elif self.phase in (Phase.DELAYING, Phase.PENDING, Phase.STARTING):
                    # STARTING: the runner answers a start with this when the kill
                    # came first, instead of starting.
                    self._dead(out, failed=False)
                # STOPPING: decided when the stop answers.
            case RestartRequested():
                if self.phase != Phase.RUNNING or self.kill_requested:
                    return out
                self.phase = Phase.STOPPING
                self._restart = event
                out.append(Emit(structs.EVENT_RESTART_SIGNAL, event.reason))
                out.append(StopTask(event.timeout_s, event.signal, wait_exit=True))
            case Stopped():
                self._stopped(event, now_ns, out)
            case DelayOver():
                if self.phase == Phase.DELAYING:
                    self._try_start(out)
        return out

    # ------------------------------------------------------------ steps
    def _begin(self, event: Begin, out: list[Action]) -> None:
        if event.recovered:
            self.phase = Phase.RUNNING
            self.running = True
            return
        if event.first_run:
            out.append(Emit(structs.EVENT_RECEIVED, "Task received by client"))
        if not event.driver_available:
            out.append(
                Emit(
                    structs.EVENT_DRIVER_FAILURE,
                    f"driver {self.driver_name!r} is not available on this node",
                    {"fails_task": True},
                )
            )
            self._dead(out, failed=True)
            return
        if event.first_run:
            # Nomad's task_dir_hook: once per task, before its first start.
            out.append(Emit(structs.EVENT_SETUP, "Building Task Directory"))
        self._try_start(out)

    def _try_start(self, out: list[Action]) -> None:
        if self.kill_requested:
            self._dead(out, failed=False)
            return
        self.phase = Phase.STARTING
        out.append(StartTask())

    def _stopped(self, event: Stopped, now_ns: int, out: list[Action]) -> None:
        if self.phase == Phase.KILLING:
            if event.result is not None:  # Nomad: Killing, Terminated, Killed
                out.append(self._terminated(event.result))
            out.append(Emit(structs.EVENT_KILLED, "Task successfully killed"))
            out.append(DestroyTask())
            self._dead(out, failed=False)
            return
        if self.phase != Phase.STOPPING:
            return
        req, self._restart = self._restart, None
        if event.result is not None:
            out.append(self._terminated(event.result))
        out.append(DestroyTask())
        delay = 0
        if req is not None and req.failure:
            verdict = self.restarts.on_exit(now_ns, successful=False)
            if verdict.action == FAIL:
                self._fail(out, verdict.reason)
                return
            delay = verdict.delay_ns
        self._delay(out, delay)

    @staticmethod
    def _terminated(result: ExitResult) -> Emit:
        """How a stopped task ended (exit code and signal only: a stop's own error
        is not the task's)."""
        return Emit(
            structs.EVENT_TERMINATED,
            exit_message(ExitResult(exit_code=result.exit_code, signal=result.signal)),
            {"exit_code": result.exit_code, "signal": result.signal},
        )

    def _delay(self, out: list[Action], delay_ns: int) -> None:
        out.append(
            Emit(
                structs.EVENT_RESTARTING,
                f"Task restarting in {delay_ns / 1e9:.3g}s",
                {"start_delay": delay_ns},
            )
        )
        out.append(CountRestart())
        # Not running while it waits to restart (Nomad shows the task pending).
        if self.running:
            self._set(out, structs.TASK_STATE_PENDING)
        if self.kill_requested:
            self._dead(out, failed=False)
            return
        self.phase = Phase.DELAYING
        out.append(Delay(delay_ns))

    def _fail(self, out: list[Action], reason: str) -> None:
        out.append(Emit(structs.EVENT_NOT_RESTARTING, reason, {"fails_task": True}))
        self._dead(out, failed=True)

    def _dead(self, out: list[Action], failed: bool) -> None:
        self.phase = Phase.DEAD
        self._set(out, structs.TASK_STATE_DEAD, failed)

    def _set(self, out: list[Action], state: str, failed: bool | None = None) -> None:
        self.running = state == structs.TASK_STATE_RUNNING
        out.append(SetState(state, failed))
