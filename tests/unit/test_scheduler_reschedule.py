"""Rescheduling failed allocations (delays, attempts, follow-up evaluations, other
nodes) and migrating allocations off draining nodes (max_parallel, deadlines)."""

from __future__ import annotations

import pytest

from corral import structs
from corral.proto import pb
from corral.scheduler import reschedule
from tests.support import factories as f
from tests.support.scheduler_harness import SchedulerHarness

S = structs.SECOND
T0 = f.FAKE_NOW  # when the FSM says things happened


def _failed_with(events: list[tuple[int, int]], finished_at: int = 0) -> pb.Allocation:
    """A failed allocation whose tracker holds (reschedule_time, delay) events."""
    a = pb.Allocation(id="a1", node_id="n1", client_status="failed", desired_status="run")
    a.task_states["t"].finished_at = finished_at or T0
    for when, delay in events:
        a.reschedule_tracker.events.add(reschedule_time=when, delay=delay, prev_node_id="n0")
    return a


@pytest.mark.parametrize(
    ("function", "delays"),
    [
        ("constant", [5, 5, 5, 5, 5, 5]),
        ("exponential", [5, 10, 20, 40, 60, 60]),
        ("fibonacci", [5, 5, 10, 15, 25, 40]),
    ],
)
def test_delay_functions_are_capped_by_max_delay(function: str, delays: list[int]) -> None:
    policy = f.reschedule_policy(
        delay=5 * S, delay_function=function, max_delay=60 * S, unlimited=True
    )
    events: list[tuple[int, int]] = []
    got = []
    for i in range(len(delays)):
        alloc = _failed_with(events, finished_at=T0 + i * S)
        d = reschedule.next_delay(alloc, policy)
        got.append(d // S)
        events.append((T0 + i * S, d))
    assert got == delays


def test_delay_resets_after_a_quiet_period() -> None:
    policy = f.reschedule_policy(
        delay=5 * S, delay_function="exponential", max_delay=60 * S, unlimited=True
    )
    # Last reschedule long ago, at the ceiling: start over from the base delay.
    alloc = _failed_with([(T0 - 3600 * S, 60 * S)], finished_at=T0)
    assert reschedule.next_delay(alloc, policy) == 5 * S


def test_attempts_within_the_interval() -> None:
    policy = f.reschedule_policy(attempts=2, interval=3600 * S, delay=5 * S)
    assert reschedule.next_reschedule_time(_failed_with([]), policy) == (T0 + 5 * S, True)
    one = _failed_with([(T0 - 100 * S, 5 * S)])
    assert reschedule.next_reschedule_time(one, policy)[1] is True
    two = _failed_with([(T0 - 100 * S, 5 * S), (T0 - 50 * S, 5 * S)])
    assert reschedule.next_reschedule_time(two, policy)[1] is False
    # Attempts outside the interval no longer count.
    old = _failed_with([(T0 - 7200 * S, 5 * S), (T0 - 50 * S, 5 * S)])
    assert reschedule.next_reschedule_time(old, policy)[1] is True
    # No attempts and not unlimited: rescheduling is off.
    assert reschedule.next_reschedule_time(_failed_with([]), f.reschedule_policy())[1] is False


def test_tracker_keeps_events_in_the_interval_or_the_last_five() -> None:
    events = [(T0 - k * 1000 * S, 5 * S) for k in range(8, 0, -1)]
    prev = _failed_with(events)
    limited = reschedule.new_tracker(prev, f.reschedule_policy(attempts=3, interval=3500 * S), T0)
    assert len(limited.events) == 4  # three in the interval, plus this one
    unlimited = reschedule.new_tracker(prev, f.reschedule_policy(unlimited=True), T0)
    assert len(unlimited.events) == 6
    last = unlimited.events[-1]
    assert (last.prev_alloc_id, last.prev_node_id, last.reschedule_time) == ("a1", "n1", T0)


# ------------------------------------------------------------------ scenarios


def _service_job(policy: pb.ReschedulePolicy | None = None, count: int = 1) -> pb.Job:
    job = f.job(count=count)
    if policy is not None:
        job.task_groups[0].reschedule_policy.CopyFrom(policy)
    return job


def test_failed_service_allocation_waits_for_its_delay_then_moves() -> None:
    h = SchedulerHarness()
    nodes = [h.add_node() for _ in range(2)]
    h.run(_service_job())  # Nomad's default: 30s exponential, unlimited
    (first,) = h.live()
    h.set_client_status([first], "failed", finished_at=T0)

    early = h.reevaluate(now_ns=T0 + 1 * S)
    assert early.placed == 0
    assert early.followups == {first.id: T0 + 30 * S}
    assert early.followup_at_ns == T0 + 30 * S
    (follow,) = early.followup_evals
    assert follow.wait_until == T0 + 30 * S and follow.status == "pending"
    assert follow.triggered_by == structs.TRIGGER_RETRY_FAILED_ALLOC
    stored = h.state.alloc(first.id)
    assert stored.followup_eval_id == follow.id and stored.desired_status == "run"

    # Another evaluation meanwhile does not create a second follow-up.
    again = h.reevaluate(now_ns=T0 + 2 * S)
    assert again.placed == 0 and not again.followup_evals

    # The follow-up evaluation, when due, replaces it on the other node.
    result = h.process(follow, now_ns=T0 + 30 * S)
    assert result.placed == 1
    (second,) = h.live()
    assert second.previous_allocation == first.id
    assert second.node_id != first.node_id and second.node_id in {n.id for n in nodes}
    (event,) = second.reschedule_tracker.events
    assert (event.prev_alloc_id, event.prev_node_id, event.delay) == (
        first.id,
        first.node_id,
        30 * S,
    )
    old = h.state.alloc(first.id)
    assert old.desired_status == "stop" and old.next_allocation == second.id

    # A second failure doubles the delay (exponential).
    h.set_client_status([second], "failed", finished_at=T0 + 100 * S)
    nxt = h.reevaluate(now_ns=T0 + 100 * S)
    assert nxt.followups == {second.id: T0 + 160 * S}


def test_batch_allocation_with_no_attempts_left_stays_failed() -> None:
    h = SchedulerHarness()
    for _ in range(2):
        h.add_node()
    job = f.job(job_type=structs.JOB_TYPE_BATCH, count=1)  # 1 attempt in 24h, 5s constant
    h.run(job)
    (first,) = h.live()
    h.set_client_status([first], "failed", finished_at=T0)
    assert h.reevaluate(now_ns=T0 + 10 * S).placed == 1
    (second,) = h.live()
    assert len(second.reschedule_tracker.events) == 1
    h.set_client_status([second], "failed", finished_at=T0 + 20 * S)
    result = h.reevaluate(now_ns=T0 + 60 * S)
    assert result.placed == 0 and not result.followups and not result.failed_tg_allocs
    assert h.live() == []
    assert h.state.alloc(second.id).client_status == "failed"


def test_due_within_a_second_is_rescheduled_now() -> None:
    h = SchedulerHarness()
    h.add_node()
    h.add_node()
    h.run(_service_job(f.reschedule_policy(attempts=3, interval=3600 * S, delay=5 * S)))
    (first,) = h.live()
    h.set_client_status([first], "failed", finished_at=T0)
    assert h.reevaluate(now_ns=T0 + 4 * S + S // 2).placed == 1


def test_reschedule_prefers_another_node_but_uses_the_same_if_alone() -> None:
    h = SchedulerHarness()
    only = h.add_node()
    h.run(_service_job(f.reschedule_policy(unlimited=True, delay=S)))
    (first,) = h.live()
    h.set_client_status([first], "failed", finished_at=T0)
    assert h.reevaluate(now_ns=T0 + 5 * S).placed == 1
    assert h.live()[0].node_id == only.id


def test_no_reschedule_policy_means_no_replacement() -> None:
    h = SchedulerHarness()
    h.add_node()
    h.run(_service_job(f.reschedule_policy(attempts=0, unlimited=False)))
    h.set_client_status(h.live(), "failed", finished_at=T0)
    result = h.reevaluate(now_ns=T0 + 3600 * S)
    assert result.placed == 0 and not result.followups


def test_force_reschedule_skips_the_delay() -> None:
    h = SchedulerHarness()
    h.add_node()
    h.run(_service_job())
    (first,) = h.live()
    h.set_client_status([first], "failed", finished_at=T0)
    h.set_transition([first.id], force_reschedule=True)
    assert h.reevaluate(now_ns=T0 + S).placed == 1


def test_followups_are_batched_within_five_seconds() -> None:
    h = SchedulerHarness()
    h.add_node()
    h.run(_service_job(f.reschedule_policy(unlimited=True, delay=60 * S), count=3))
    a, b, c = h.live()
    h.set_client_status([a], "failed", finished_at=T0)
    h.set_client_status([b], "failed", finished_at=T0 + 2 * S)
    h.set_client_status([c], "failed", finished_at=T0 + 20 * S)
    result = h.reevaluate(now_ns=T0 + 21 * S)
    assert len(result.followup_evals) == 2
    assert result.followups == {a.id: T0 + 60 * S, b.id: T0 + 62 * S, c.id: T0 + 80 * S}
    assert result.followup_at_ns == T0 + 60 * S


def test_complete_service_allocation_is_replaced_but_batch_is_done() -> None:
    h = SchedulerHarness()
    h.add_node()
    h.run(f.job(count=1))
    h.set_client_status(h.live(), "complete")
    assert h.reevaluate().placed == 1

    h.run(f.job(job_id="once", job_type=structs.JOB_TYPE_BATCH, count=1))
    h.set_client_status(h.live("once"), "complete")
    assert h.reevaluate("once").placed == 0


def test_lost_allocations_are_replaced_at_once() -> None:
    h = SchedulerHarness()
    a = h.add_node()
    h.run(_service_job(count=2))
    h.add_node()
    h.set_node_status(a.id, structs.NODE_STATUS_DOWN)
    result = h.reevaluate()
    assert result.placed == 2 and not result.followups
    assert all(x.node_id != a.id for x in h.live())


# ------------------------------------------------------------------ drain


def _drain_setup(count: int = 3, max_parallel: int = 1) -> tuple[SchedulerHarness, pb.Node]:
    h = SchedulerHarness()
    a = h.add_node()
    job = f.job(count=count)
    job.task_groups[0].migrate.max_parallel = max_parallel
    h.run(job)
    h.mark_running()
    h.add_node()
    h.add_node()
    return h, a


def test_drain_migrates_at_most_max_parallel_at_a_time() -> None:
    h, a = _drain_setup(count=3, max_parallel=1)
    h.drain(a.id)
    first = h.reevaluate()
    assert first.placed == 1 and first.deferred_migrations == {"web": 2}
    migrated = [x for x in h.allocs() if x.desired_description == "alloc is being migrated"]
    assert len(migrated) == 1

    # The replacement is not running yet: nothing more moves.
    assert h.reevaluate().placed == 0

    h.mark_running()
    assert h.reevaluate().placed == 1
    h.mark_running()
    last = h.reevaluate()
    assert last.placed == 1 and not last.deferred_migrations
    assert all(x.node_id != a.id for x in h.live()) and len(h.live()) == 3
    for x in h.live():
        assert h.state.alloc(x.previous_allocation).node_id == a.id


def test_drain_with_max_parallel_two() -> None:
    h, a = _drain_setup(count=5, max_parallel=2)
    h.drain(a.id)
    assert h.reevaluate().placed == 2
    h.mark_running()
    assert h.reevaluate().placed == 2
    h.mark_running()
    assert h.reevaluate().placed == 1
    assert all(x.node_id != a.id for x in h.live())


def test_drain_past_its_deadline_moves_everything() -> None:
    h, a = _drain_setup(count=3, max_parallel=1)
    h.drain(a.id, deadline=-1)  # Nomad's -force
    result = h.reevaluate()
    assert result.placed == 3 and not result.deferred_migrations

    h2, b = _drain_setup(count=2, max_parallel=1)
    h2.drain(b.id, deadline=60 * S)
    assert h2.reevaluate(now_ns=T0 + 10 * S).placed == 1
    assert h2.reevaluate(now_ns=T0 + 61 * S).placed == 1


def test_desired_transition_migrate_moves_an_allocation() -> None:
    h = SchedulerHarness()
    a = h.add_node()
    h.run(f.job(count=1))
    (alloc,) = h.live()
    b = h.add_node()
    h.set_eligibility(a.id, False)
    h.set_transition([alloc.id], migrate=True)
    assert h.reevaluate().placed == 1
    assert h.live()[0].node_id == b.id


def test_drain_with_nowhere_to_go_stops_and_queues() -> None:
    h = SchedulerHarness()
    a = h.add_node()
    h.run(f.job(count=1))
    h.drain(a.id)
    result = h.reevaluate()
    assert result.placed == 0 and result.queued == {"web": 1}
    assert h.live() == []


def test_batch_work_on_a_draining_node_may_finish_until_the_deadline() -> None:
    h = SchedulerHarness()
    a = h.add_node()
    h.run(f.job(job_id="crunch", job_type=structs.JOB_TYPE_BATCH, count=1))
    h.mark_running("crunch")
    h.add_node()
    h.drain(a.id, deadline=60 * S)
    assert h.reevaluate("crunch", now_ns=T0 + 10 * S).placed == 0
    assert h.live("crunch")[0].node_id == a.id
    assert h.reevaluate("crunch", now_ns=T0 + 61 * S).placed == 1
    assert h.live("crunch")[0].node_id != a.id
