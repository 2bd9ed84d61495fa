"""The scheduler: pure functions from a state snapshot and an evaluation to a plan.

No I/O, no clock, no consensus: everything random is drawn from a seeded RNG, so a
plan is reproducible from (snapshot, evaluation, seed).
"""

from corral.scheduler.generic import SchedulerResult, SchedulerState, compute_plan

__all__ = ["SchedulerResult", "SchedulerState", "compute_plan"]
