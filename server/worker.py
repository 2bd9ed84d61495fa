"""Scheduler workers (leader only): dequeue an evaluation, plan on a snapshot, submit.

The worker is the I/O shell around the pure scheduler: it waits for the state to
catch up with the evaluation, calls ``compute_plan``, hands the plan to the plan
applier and retries with a fresh snapshot when the applier refused part of it.
It then completes the evaluation (with placement failures and a blocked follow-up
evaluation when capacity is missing) in the same raft entry as the plan.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from corral import structs
from corral.proto import pb
from corral.scheduler import compute_plan
from corral.server.eval_broker import EvalBroker
from corral.server.plan_apply import PlanApplier
from corral.server.state import StateStore

log = logging.getLogger(__name__)

MAX_PLAN_ATTEMPTS = 5


def eval_seed(eval_id: str, attempt: int) -> int:
    """A deterministic seed per (evaluation, attempt): replanning after a refused
    plan explores other nodes, and a test can replay any plan."""
    return int(eval_id.replace("-", "")[:15] or "0", 16) + attempt


class Worker:
    def __init__(
        self,
        name: str,
        state: StateStore,
        broker: EvalBroker,
        applier: PlanApplier,
        update_evals: Callable[[list[pb.Evaluation]], int],
        now: Callable[[], int],
    ) -> None:
        self.name = name
        self._state = state
        self._broker = broker
        self._applier = applier
        self._update_evals = update_evals
        self._now = now
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._broker.dequeue(timeout=0.5)
            if item is None:
                continue
            ev, token = item
            try:
                self.process(ev)
            except Exception as exc:
                log.exception("evaluation %s failed in %s", ev.id, self.name)
                if not self._broker.nack(ev.id, token):
                    failed = pb.Evaluation()
                    failed.CopyFrom(ev)
                    failed.status = structs.EVAL_STATUS_FAILED
                    failed.status_description = f"evaluation failed: {exc}"
                    try:
                        self._update_evals([failed])
                    except Exception:
                        log.exception("could not mark evaluation %s failed", ev.id)
                continue
            self._broker.ack(ev.id, token)

    def process(self, ev: pb.Evaluation) -> None:
        self._state.wait_for_index(ev.modify_index - 1, 5.0)
        for attempt in range(MAX_PLAN_ATTEMPTS):
            snap = self._state.snapshot()
            result = compute_plan(snap, ev, eval_seed(ev.id, attempt), now_ns=self._now())
            done = pb.Evaluation()
            done.CopyFrom(ev)
            done.status = structs.EVAL_STATUS_COMPLETE
            done.snapshot_index = snap.index
            done.ClearField("failed_tg_allocs")
            done.ClearField("queued_allocations")
            for group, metric in result.failed_tg_allocs.items():
                done.failed_tg_allocs[group].CopyFrom(metric)
            done.queued_allocations.update(result.queued)
            evals = [done]
            blocked: pb.Evaluation | None = None
            if result.needs_blocked_eval:
                blocked = pb.Evaluation(
                    id=structs.new_id(),
                    namespace=ev.namespace,
                    priority=ev.priority,
                    type=ev.type,
                    triggered_by=structs.TRIGGER_QUEUED_ALLOCS,
                    job_id=ev.job_id,
                    status=structs.EVAL_STATUS_BLOCKED,
                    status_description="created to place remaining allocations",
                    previous_eval=ev.id,
                    create_time=self._now(),
                )
                done.blocked_eval = blocked.id
                evals.append(blocked)
            # An older blocked evaluation of this job is superseded by this one.
            for old in snap.evals_by_job(ev.namespace, ev.job_id):
                if old.status == structs.EVAL_STATUS_BLOCKED and old.id != ev.id:
                    canceled = pb.Evaluation()
                    canceled.CopyFrom(old)
                    canceled.status = structs.EVAL_STATUS_CANCELED
                    canceled.status_description = f"superseded by evaluation {ev.id}"
                    evals.append(canceled)
            # Follow-ups (delayed rescheduling) are committed even when part of the plan
            # is refused: stopped allocations may already point at them.
            followups = list(result.followup_evals)
            if not result.plan.node_allocation and not result.plan.node_update:
                self._update_evals(evals + followups)
                return
            outcome = self._applier.submit(result.plan, evals, followups).result(timeout=60)
            if outcome.error:
                raise RuntimeError(outcome.error)
            if outcome.fully_applied:
                return
            log.info(
                "plan for eval %s partly refused on %d nodes; replanning",
                ev.id,
                len(outcome.rejected_nodes),
            )
            self._state.wait_for_index(outcome.index - 1, 5.0)
        raise RuntimeError(f"plan still refused after {MAX_PLAN_ATTEMPTS} attempts")
