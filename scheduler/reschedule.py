"""Rescheduling failed allocations: when, how often, and with what history.

Nomad's rules, from the group's ``reschedule`` policy: an allocation that failed may
be replaced ``attempts`` times within ``interval`` (or without limit), each time after
a delay that grows by the ``delay_function`` (``constant``, ``exponential`` or
``fibonacci``) up to ``max_delay``. The replacement carries a ``reschedule_tracker``
with the previous attempts, so the count survives the chain of replacements. Times
are nanoseconds; the caller passes "now", since the scheduler reads no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral import structs
from corral.proto import pb

# An allocation due within this window is rescheduled now rather than by a follow-up.
RESCHEDULE_WINDOW_NS = 1 * structs.SECOND
# Failed allocations due within this window of each other share one follow-up eval.
FOLLOWUP_BATCH_WINDOW_NS = 5 * structs.SECOND
# With unlimited rescheduling only the last few events are carried along.
MAX_PAST_EVENTS = 5

FOLLOWUP_DESCRIPTION = "created for delayed rescheduling"


def policy_of(group: pb.TaskGroup, job_type: str) -> pb.ReschedulePolicy:
    if group.HasField("reschedule_policy"):
        return group.reschedule_policy
    return structs.default_reschedule_policy(job_type)


def last_event_time(alloc: pb.Allocation) -> int:
    """When the allocation failed: its tasks' latest finish time, else its last update."""
    latest = 0
    for ts in alloc.task_states.values():
        if ts.finished_at > latest:
            latest = ts.finished_at
    return int(latest or alloc.modify_time)


def next_delay(alloc: pb.Allocation, policy: pb.ReschedulePolicy) -> int:
    """The delay before the next replacement of ``alloc`` (Nomad's ``NextDelay``)."""
    delay = int(policy.delay)
    events = alloc.reschedule_tracker.events
    if not events:
        return delay
    fn = policy.delay_function or "constant"
    if fn == "exponential":
        delay = events[-1].delay * 2
    elif fn == "fibonacci":
        if len(events) >= 2:
            n1 = events[-1].delay
            n2 = events[-2].delay
            # After a reset to the base delay the series starts over.
            delay = n1 if (n2 == policy.max_delay and n1 == policy.delay) else n1 + n2
    else:
        return delay
    if policy.max_delay > 0 and delay > policy.max_delay:
        delay = policy.max_delay
        # A long quiet period since the last reschedule resets the delay.
        since = last_event_time(alloc) - events[-1].reschedule_time
        if since > delay:
            delay = policy.delay
    return delay


def attempts_in_interval(alloc: pb.Allocation, policy: pb.ReschedulePolicy, at: int) -> int:
    return sum(
        1 for e in alloc.reschedule_tracker.events if at - e.reschedule_time < policy.interval
    )


def next_reschedule_time(alloc: pb.Allocation, policy: pb.ReschedulePolicy) -> tuple[int, bool]:
    """(when the failed allocation may be replaced, whether it may be at all)."""
    fail_time = last_event_time(alloc)
    if (
        alloc.desired_status == structs.ALLOC_DESIRED_STOP
        or alloc.client_status != structs.ALLOC_CLIENT_FAILED
        or not fail_time
    ):
        return 0, False
    delay = next_delay(alloc, policy)
    due = fail_time + delay
    if policy.unlimited:
        return due, True
    if policy.attempts <= 0:
        return due, False
    if not alloc.reschedule_tracker.events:
        return due, True
    attempted = attempts_in_interval(alloc, policy, fail_time)
    return due, attempted < policy.attempts and delay < policy.interval


@dataclass(frozen=True, slots=True)
class Decision:
    now: bool
    later: bool
    due: int


def decide(alloc: pb.Allocation, policy: pb.ReschedulePolicy, now: int, eval_id: str) -> Decision:
    """Replace now, schedule a follow-up, or leave the allocation failed.

    Nomad's ``updateByReschedulable``: the follow-up evaluation created for the
    allocation replaces it when it runs; an allocation due within a second is
    replaced at once; one that already has a follow-up waits for it.
    """
    if alloc.desired_transition.force_reschedule:
        due, _ = next_reschedule_time(alloc, policy)
        return Decision(True, False, due)
    due, eligible = next_reschedule_time(alloc, policy)
    if not eligible:
        return Decision(False, False, due)
    if (alloc.followup_eval_id and alloc.followup_eval_id == eval_id) or (
        due - now <= RESCHEDULE_WINDOW_NS
    ):
        return Decision(True, False, due)
    if not alloc.followup_eval_id:
        return Decision(False, True, due)
    return Decision(False, False, due)


def new_tracker(prev: pb.Allocation, policy: pb.ReschedulePolicy, now: int) -> pb.RescheduleTracker:
    """The tracker of ``prev``'s replacement: the relevant past events plus this one."""
    tracker = pb.RescheduleTracker()
    events = list(prev.reschedule_tracker.events)
    if policy.attempts > 0:
        kept = [
            e for e in events if policy.interval > 0 and now - e.reschedule_time <= policy.interval
        ]
    else:
        kept = events[-MAX_PAST_EVENTS:]
    tracker.events.extend(kept)
    tracker.events.add(
        reschedule_time=now,
        prev_alloc_id=prev.id,
        prev_node_id=prev.node_id,
        delay=next_delay(prev, policy),
    )
    return tracker


def penalty_nodes(prev: pb.Allocation) -> frozenset[str]:
    """Nodes a replacement should avoid: where this allocation and its ancestors failed."""
    nodes = {prev.node_id}
    nodes.update(e.prev_node_id for e in prev.reschedule_tracker.events if e.prev_node_id)
    return frozenset(nodes)
