"""What the scheduler reads and what it returns: the contract with the server.

The server's worker calls ``compute_plan`` with a state snapshot and an evaluation,
commits ``SchedulerResult.plan`` through the plan applier, and commits the
evaluation updates the result asks for (blocked evaluation, follow-ups) with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from corral.proto import pb


class SchedulerState(Protocol):
    """What the scheduler reads: a consistent snapshot of the state store."""

    @property
    def index(self) -> int: ...

    def job(self, namespace: str, job_id: str) -> pb.Job | None: ...

    def job_version(self, namespace: str, job_id: str, version: int) -> pb.Job | None: ...

    def nodes(self) -> list[pb.Node]: ...

    def node(self, node_id: str) -> pb.Node | None: ...

    def allocs_by_job(self, namespace: str, job_id: str) -> list[pb.Allocation]: ...

    def allocs_by_node(self, node_id: str) -> list[pb.Allocation]: ...

    def deployments(self) -> list[pb.Deployment]: ...


class IdSource(Protocol):
    def __call__(self) -> str: ...


@dataclass
class SchedulerResult:
    """The plan, and what the server must do besides committing it.

    - ``failed_tg_allocs`` / ``queued``: per group, why placements failed and how
      many are missing; the server then creates a blocked evaluation
      (``needs_blocked_eval``) that capacity changes release.
    - ``followup_evals``: delayed evaluations (``wait_until`` set, status pending,
      triggered by "alloc-failure") for failed allocations whose reschedule delay
      has not elapsed. Commit them with the plan and hand them to the broker no
      earlier than ``wait_until``. The plan already carries, in ``node_update``, an
      entry per such allocation that only sets ``followup_eval_id`` (its
      ``desired_status`` stays "run"), so that later evaluations do not create
      another follow-up for it. ``followups`` maps those allocation IDs to their due
      time, and ``followup_at_ns`` is the earliest.
    - ``deferred_migrations``: per group, allocations that must leave a draining
      node but wait for ``migrate.max_parallel``: evaluate the job again when one of
      its pending replacements starts running (or at the drain deadline).
    """

    plan: pb.Plan
    failed_tg_allocs: dict[str, pb.AllocMetric] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    placed: int = 0
    followup_evals: list[pb.Evaluation] = field(default_factory=list)
    followups: dict[str, int] = field(default_factory=dict)
    deferred_migrations: dict[str, int] = field(default_factory=dict)

    @property
    def needs_blocked_eval(self) -> bool:
        return bool(self.failed_tg_allocs)

    @property
    def followup_at_ns(self) -> int:
        """The earliest time a delayed reschedule is due (0: none)."""
        return min(self.followups.values(), default=0)
