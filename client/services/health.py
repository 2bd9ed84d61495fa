"""An allocation's deployment health (Nomad's ``allochealth`` tracker).

Nomad's rules: every task running and every check passing, continuously for
``min_healthy_time``; a failed task is unhealthy at once; not healthy within
``healthy_deadline`` is unhealthy. Pure, with the clock passed in: it never reads a
clock itself, so it is tested on plain numbers; the hook (``hook``) feeds it facts
and arms a timer for the wait it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral import structs
from corral.proto import pb


@dataclass
class HealthTracker:
    """An allocation's deployment health, decided once (per deployment).

    ``mode`` is the group's ``update.health_check``: ``checks`` (tasks running and
    checks passing), ``task_states`` (tasks running), or ``manual`` (never decided
    here). Times are seconds on any monotonic clock; ``observe`` also takes the
    wall clock (ns), written as ``decided_at_ns`` when it decides (the timestamp
    reported to the servers). Pure: both clocks are the caller's, so tests run it
    on plain numbers.
    """

    mode: str
    min_healthy: float
    healthy_deadline: float  # 0 = none
    started: float
    healthy: bool | None = None
    decided_at_ns: int = 0
    _since: float | None = None

    @classmethod
    def for_alloc(cls, alloc: pb.Allocation, now: float) -> HealthTracker:
        group = structs.group_by_name(alloc.job, alloc.task_group)
        update = group.update if group is not None else pb.UpdateStrategy()
        return cls(
            mode=update.health_check or "checks",
            min_healthy=update.min_healthy_time / 1e9,
            healthy_deadline=update.healthy_deadline / 1e9,
            started=now,
        )

    def observe(
        self,
        now: float,
        tasks_running: bool,
        task_failed: bool,
        checks_passing: bool,
        *,
        wall_ns: int,
    ) -> float | None:
        """Feed the current facts (``now`` monotonic seconds, ``wall_ns`` the wall
        clock at the same moment); returns the seconds after which to observe again
        (a timer: min_healthy_time or the deadline may pass with no other change),
        or None when nothing is pending."""
        if self.healthy is not None or self.mode == "manual":
            return None
        if task_failed:
            self._decide(False, wall_ns)
            return None
        ok = tasks_running and (checks_passing or self.mode == "task_states")
        if not ok:
            self._since = None
        elif self._since is None:
            self._since = now
        if ok and self._since is not None and now - self._since >= self.min_healthy:
            self._decide(True, wall_ns)
            return None
        if self.healthy_deadline > 0 and now - self.started >= self.healthy_deadline:
            self._decide(False, wall_ns)
            return None
        waits = []
        if ok and self._since is not None:
            waits.append(self._since + self.min_healthy - now)
        if self.healthy_deadline > 0:
            waits.append(self.started + self.healthy_deadline - now)
        return max(min(waits), 0.0) if waits else None

    def _decide(self, healthy: bool, wall_ns: int) -> None:
        self.healthy = healthy
        self.decided_at_ns = wall_ns
