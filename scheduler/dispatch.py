"""The scheduler's entry point: each evaluation goes to its job type's scheduler.

Nomad keeps a table of scheduler factories by name (``BuiltinSchedulers``:
service and batch to the generic scheduler, system to the system scheduler) and
the worker picks one by the evaluation's type. ``BUILTIN_SCHEDULERS`` is that
table; ``compute_plan`` looks the job's type up in it. The schedulers share the
plan builder (``plan.py``) and never import each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

from corral import structs
from corral.proto import pb

from .common import IdSource, SchedulerResult, SchedulerState
from .generic import compute_generic_plan
from .stack import ALGORITHM_BINPACK
from .system import compute_system_plan

__all__ = ["BUILTIN_SCHEDULERS", "Scheduler", "compute_plan"]


class Scheduler(Protocol):
    """One job type's scheduler: (snapshot, evaluation, seed, now) to a plan."""

    def __call__(
        self,
        state: SchedulerState,
        ev: pb.Evaluation,
        seed: int,
        new_id: IdSource = ...,
        *,
        now_ns: int = ...,
        algorithm: str = ...,
    ) -> SchedulerResult: ...


BUILTIN_SCHEDULERS: Mapping[str, Scheduler] = MappingProxyType(
    {
        structs.JOB_TYPE_SERVICE: compute_generic_plan,
        structs.JOB_TYPE_BATCH: compute_generic_plan,
        structs.JOB_TYPE_SYSTEM: compute_system_plan,
    }
)


def compute_plan(
    state: SchedulerState,
    ev: pb.Evaluation,
    seed: int,
    new_id: IdSource = structs.new_id,
    *,
    now_ns: int = 0,
    algorithm: str = ALGORITHM_BINPACK,
) -> SchedulerResult:
    """Plan the evaluation with the scheduler of its job's type.

    The job's type decides, or the evaluation's when the job is gone (its
    allocations are then stopped by that type's rules). A type with no entry in
    ``BUILTIN_SCHEDULERS`` gets the generic scheduler, as before the table.

    ``now_ns`` is the wall clock for reschedule delays and drain deadlines (the
    evaluation's timestamps stand in when 0); ``algorithm`` is the cluster's
    scheduler algorithm, "binpack" (default) or "spread" (worst fit).
    """
    job = state.job(ev.namespace, ev.job_id)
    job_type = job.type if job is not None else ev.type
    scheduler = BUILTIN_SCHEDULERS.get(job_type, compute_generic_plan)
    return scheduler(state, ev, seed, new_id, now_ns=now_ns, algorithm=algorithm)
