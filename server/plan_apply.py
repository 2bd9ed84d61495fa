"""The plan applier (leader only): one plan at a time, re-checked, then committed.

Scheduler workers plan optimistically on snapshots. Before a plan is committed it is
checked against the latest state: a node must still be ready and every placement
must fit alongside what is already there (cpu, memory, no port given twice). Nodes
that no longer fit are dropped from the plan, and the worker is told to refresh and
retry for those placements. Since this runs on one thread, two workers can never
overcommit a node between them.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass

from corral import structs
from corral.proto import pb
from corral.scheduler.feasible import node_ready
from corral.scheduler.rank import GroupAsk, NodeUsage, alloc_cpu_mem
from corral.server.state import StateStore

log = logging.getLogger(__name__)


@dataclass
class PlanResult:
    index: int
    # Nodes whose placements were refused: the worker retries those.
    rejected_nodes: list[str]
    error: str = ""

    @property
    def fully_applied(self) -> bool:
        return not self.rejected_nodes and not self.error


class PlanApplier:
    def __init__(
        self,
        state: StateStore,
        commit: Callable[[pb.Plan, list[pb.Evaluation]], int],
    ) -> None:
        self._state = state
        self._commit = commit
        self._queue: queue.Queue[
            tuple[pb.Plan, list[pb.Evaluation], list[pb.Evaluation], Future[PlanResult]] | None
        ]
        self._queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="plan-applier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def submit(
        self,
        plan: pb.Plan,
        evals: list[pb.Evaluation],
        always: list[pb.Evaluation] | None = None,
    ) -> Future[PlanResult]:
        """``evals`` commit only with a fully applied plan (they complete the
        evaluation); ``always`` commit with whatever part of it is applied."""
        fut: Future[PlanResult] = Future()
        self._queue.put((plan, evals, always or [], fut))
        return fut

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            plan, evals, always, fut = item
            try:
                fut.set_result(self.apply(plan, evals, always))
            except Exception as exc:
                log.exception("plan apply failed")
                fut.set_exception(exc)

    def apply(
        self, plan: pb.Plan, evals: list[pb.Evaluation], always: list[pb.Evaluation] | None = None
    ) -> PlanResult:
        always = always or []
        accepted, rejected = evaluate_plan(self._state, plan)
        if rejected and plan.all_at_once:
            accepted = pb.Plan()
            accepted.CopyFrom(plan)
            accepted.ClearField("node_allocation")
            accepted.ClearField("node_update")
            rejected = sorted(plan.node_allocation)
        commit_evals = (evals if not rejected else []) + always
        if not accepted.node_allocation and not accepted.node_update and not commit_evals:
            return PlanResult(index=self._state.index, rejected_nodes=rejected)
        index = self._commit(accepted, commit_evals)
        return PlanResult(index=index, rejected_nodes=rejected)


def evaluate_plan(state: StateStore, plan: pb.Plan) -> tuple[pb.Plan, list[str]]:
    """The part of ``plan`` that still fits the latest state, and the rejected nodes.

    When every node fits (the common case) the plan itself is returned: copying a
    plan of 1,000 placements cost more than checking it."""
    snap = state.snapshot()
    rejected: list[str] = []
    node_update = plan.node_update
    for node_id, alloc_list in plan.node_allocation.items():
        node = snap.node(node_id)
        if node is None:
            rejected.append(node_id)
            continue
        allocs = alloc_list.allocs
        if not node_ready(node):
            # A node that takes no new work may still have its allocations updated
            # in place (a new job version that changes no task).
            if not all(snap.alloc(a.id) is not None for a in allocs):
                rejected.append(node_id)
            continue
        # Resources of allocations this plan replaces on the node: updated in place,
        # or stopped (follow-up markers, desired status still "run", free nothing).
        replaced = {a.id for a in allocs}
        if node_id in node_update:
            replaced.update(
                a.id
                for a in node_update[node_id].allocs
                if a.desired_status != structs.ALLOC_DESIRED_RUN
            )
        minus = [
            a for a in (snap.alloc(i) for i in replaced) if a is not None and a.node_id == node_id
        ]
        usage = NodeUsage.from_totals(node, snap.node_usage(node_id), minus)
        if not _fits(usage, allocs):
            rejected.append(node_id)
    if not rejected:
        return plan, rejected
    accepted = pb.Plan()
    accepted.CopyFrom(plan)
    for node_id in rejected:
        del accepted.node_allocation[node_id]
    return accepted, rejected


def _fits(usage: NodeUsage, allocs: Iterable[pb.Allocation]) -> bool:
    """Whether ``allocs`` fit together on the node beside ``usage``."""
    for alloc in allocs:
        cpu, mem = alloc_cpu_mem(alloc)
        ports = [p.value for p in alloc.allocated_resources.shared.ports]
        if (
            usage.cpu_used + cpu > usage.cpu_total
            or usage.mem_used + mem > usage.mem_total
            or any(p in usage.ports_used for p in ports)
            or len(set(ports)) != len(ports)
        ):
            return False
        usage.add_ask(GroupAsk(cpu, mem, (), ()), ports)
    return True


__all__ = ["PlanApplier", "PlanResult", "evaluate_plan"]
