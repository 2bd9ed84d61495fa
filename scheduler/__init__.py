"""The scheduler: pure functions from a state snapshot and an evaluation to a plan.

No I/O, no clock, no consensus: everything random is drawn from a seeded RNG and
"now" is an argument, so a plan is reproducible from (snapshot, evaluation, seed,
now). ``compute_plan`` handles every job type (system jobs through
``compute_system_plan``).
"""

from .common import SchedulerResult, SchedulerState
from .generic import compute_plan
from .system import compute_system_plan

__all__ = ["SchedulerResult", "SchedulerState", "compute_plan", "compute_system_plan"]
