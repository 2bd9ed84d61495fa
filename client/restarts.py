"""The restart policy as a pure decision: events in, a verdict out.

Kept apart from the task runner's threads and drivers so it is tested with plain
numbers (an injected clock), as Nomad's ``restarts.RestartTracker``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from corral import structs
from corral.proto import pb

RESTART = "restart"
FAIL = "fail"  # not restarting: the task is dead and failed
DONE = "done"  # not restarting: the task is dead and successful


@dataclass(frozen=True)
class Verdict:
    action: str
    delay_ns: int = 0
    reason: str = ""


@dataclass
class RestartTracker:
    policy: pb.RestartPolicy
    job_type: str
    # Start times (ns) of the restarts counted in the current interval.
    _restarts: list[int] = field(default_factory=list)
    total: int = 0

    def on_exit(self, now_ns: int, successful: bool) -> Verdict:
        """The task exited (or failed to start, with successful=False)."""
        if successful and self.job_type == structs.JOB_TYPE_BATCH:
            return Verdict(DONE, reason="task completed successfully")
        return self._next(now_ns, "exceeded allowed attempts")

    def on_start_error(self, now_ns: int, recoverable: bool, message: str) -> Verdict:
        if not recoverable:
            return Verdict(FAIL, reason=f"error was unrecoverable: {message}")
        return self._next(now_ns, "exceeded allowed attempts")

    def _next(self, now_ns: int, exhausted_reason: str) -> Verdict:
        interval = self.policy.interval
        if interval > 0:
            self._restarts = [t for t in self._restarts if now_ns - t < interval]
        if len(self._restarts) < self.policy.attempts:
            self._restarts.append(now_ns)
            self.total += 1
            return Verdict(RESTART, delay_ns=self.policy.delay, reason="restart within policy")
        if self.policy.mode == "delay" and interval > 0 and self._restarts:
            # Wait for the interval to roll over, then start counting again.
            wait = interval - (now_ns - self._restarts[0])
            self._restarts = [now_ns + max(wait, 0)]
            self.total += 1
            return Verdict(RESTART, delay_ns=max(wait, self.policy.delay), reason="delay mode")
        return Verdict(FAIL, reason=exhausted_reason)
