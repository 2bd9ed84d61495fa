"""The scheduler: pure functions from a state snapshot and an evaluation to a plan.

No I/O, no clock, no consensus: everything random is drawn from a seeded RNG and
"now" is an argument, so a plan is reproducible from (snapshot, evaluation, seed,
now). ``compute_plan`` handles every job type: it dispatches by the job's type
through ``BUILTIN_SCHEDULERS`` (``dispatch.py``) to the generic scheduler
(service, batch: ``generic.py``) or the system scheduler (``system.py``).
"""

from .common import SchedulerResult, SchedulerState
from .dispatch import BUILTIN_SCHEDULERS, compute_plan
from .system import compute_system_plan

__all__ = [
    "BUILTIN_SCHEDULERS",
    "SchedulerResult",
    "SchedulerState",
    "compute_plan",
    "compute_system_plan",
]
