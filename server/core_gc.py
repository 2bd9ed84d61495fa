"""Core garbage collection (leader only): Nomad's eval and alloc reaping.

Without it a long-running cluster keeps every evaluation and every stopped or
finished allocation forever: each job update, scale or reschedule adds some, and a
server's memory grows with its history instead of with its work. As Nomad does, the
leader periodically deletes terminal evaluations older than a threshold (Nomad's
``eval_gc_threshold``, 1 h) together with their terminal allocations, through one
raft command naming the IDs (the FSM stays deterministic: the choice, which reads
the clock, is made here). ``corral system gc`` runs it at once with no threshold.

What is kept, whatever its age:

* evaluations that are not terminal (pending, blocked), and terminal ones that
  still have an allocation which is not collectable;
* allocations whose client has not reported them terminal (a stopped allocation
  may still be running until its client confirms);
* a failed allocation that may still be rescheduled (no replacement yet, job
  running): the reschedule policy counts it;
* a job's latest deployment, and any deployment a live allocation belongs to.
  Deployments carry no timestamp, so their age counts from when the leader first
  saw them terminal (a new leader starts counting again), as Nomad's deployment GC
  approximates it with its index-to-time table.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from corral import structs
from corral.proto import pb
from corral.server.deployment_watcher import TERMINAL as TERMINAL_DEPLOYMENT
from corral.server.state import StateReader

if TYPE_CHECKING:
    from corral.server.leader import LeaderContext

log = logging.getLogger(__name__)

EVAL_GC_THRESHOLD_NS = 3600 * 10**9  # Nomad's eval_gc_threshold: 1 h
GC_INTERVAL_S = 300.0  # Nomad's eval_gc_interval: 5 min
DELETE_CHUNK = 1000  # IDs per raft command

_TERMINAL_EVAL = (
    structs.EVAL_STATUS_COMPLETE,
    structs.EVAL_STATUS_FAILED,
    structs.EVAL_STATUS_CANCELED,
)


def collectable_alloc(state: StateReader, alloc: pb.Allocation, cutoff_ns: int) -> bool:
    if not structs.is_client_terminal(alloc):
        return False
    if alloc.modify_time > cutoff_ns:
        return False
    if alloc.client_status == structs.ALLOC_CLIENT_FAILED and not alloc.next_allocation:
        job = state.job(alloc.namespace, alloc.job_id)
        if job is not None and not job.stop:
            return False  # may still be rescheduled: its policy counts this attempt
    return True


def collect(state: StateReader, now_ns: int, threshold_ns: int) -> tuple[list[str], list[str]]:
    """(evaluation IDs, allocation IDs) to delete, in a stable order."""
    cutoff = now_ns - threshold_ns
    evals: list[str] = []
    allocs: list[str] = []
    by_eval: dict[str, list[pb.Allocation]] = {}
    for alloc in state.allocs():
        by_eval.setdefault(alloc.eval_id, []).append(alloc)
    for ev in state.evals():
        if ev.status not in _TERMINAL_EVAL or ev.modify_time > cutoff:
            continue
        own = by_eval.pop(ev.id, [])
        if all(collectable_alloc(state, a, cutoff) for a in own):
            evals.append(ev.id)
            allocs.extend(a.id for a in own)
    # Allocations whose evaluation is already gone (deleted earlier, or never stored).
    for eval_id, own in by_eval.items():
        if state.eval(eval_id) is None:
            allocs.extend(a.id for a in own if collectable_alloc(state, a, cutoff))
    return sorted(evals), sorted(allocs)


def collect_deployments(
    state: StateReader, now_ns: int, threshold_ns: int, first_seen_terminal: dict[str, int]
) -> list[str]:
    """Terminal deployments collectable now; updates ``first_seen_terminal``."""
    latest: dict[tuple[str, str], pb.Deployment] = {}
    terminal: list[pb.Deployment] = []
    for d in state.deployments():
        key = (d.namespace, d.job_id)
        if key not in latest or d.create_index > latest[key].create_index:
            latest[key] = d
        if d.status in TERMINAL_DEPLOYMENT:
            terminal.append(d)
    in_use = {
        a.deployment_id
        for a in state.allocs()
        if a.deployment_id and not structs.is_client_terminal(a)
    }
    seen = {d.id: first_seen_terminal.get(d.id, now_ns) for d in terminal}
    first_seen_terminal.clear()
    first_seen_terminal.update(seen)
    return sorted(
        d.id
        for d in terminal
        if latest[(d.namespace, d.job_id)].id != d.id
        and d.id not in in_use
        and now_ns - seen[d.id] >= threshold_ns
    )


def delete_commands(
    evals: list[str], allocs: list[str], deployments: list[str] | None = None
) -> list[pb.Command]:
    """The deletions as raft commands of at most DELETE_CHUNK IDs of each kind."""
    deployments = deployments or []
    cmds = []
    for i in range(0, max(len(evals), len(allocs), len(deployments)), DELETE_CHUNK):
        cmds.append(
            pb.Command(
                eval_delete=pb.EvalDeleteCommand(
                    eval_ids=evals[i : i + DELETE_CHUNK],
                    alloc_ids=allocs[i : i + DELETE_CHUNK],
                    deployment_ids=deployments[i : i + DELETE_CHUNK],
                )
            )
        )
    return cmds


class CoreGC:
    """The leader's periodic collection: ``run`` is a leader loop (one per term);
    ``run_once`` is also what ``corral system gc`` calls."""

    def __init__(
        self,
        ctx: LeaderContext,
        interval_s: float = GC_INTERVAL_S,
        threshold_ns: int = EVAL_GC_THRESHOLD_NS,
    ) -> None:
        self.ctx = ctx
        self.interval_s = interval_s
        self.threshold_ns = threshold_ns
        self.first_seen_terminal: dict[str, int] = {}  # deployment ID -> when

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                self.run_once(self.threshold_ns)
            except Exception:
                log.exception("core GC failed")

    def run_once(self, threshold_ns: int) -> pb.SystemGCResponse:
        snap = self.ctx.state.snapshot()
        now = self.ctx.now_ns()
        evals, allocs = collect(snap, now, threshold_ns)
        deployments = collect_deployments(snap, now, threshold_ns, self.first_seen_terminal)
        index = self.ctx.state.index
        if evals or allocs or deployments:
            results = self.ctx.propose_many(delete_commands(evals, allocs, deployments))
            index = max(r.index for r in results)
            log.info(
                "core GC deleted %d evaluations, %d allocations, %d deployments",
                len(evals),
                len(allocs),
                len(deployments),
            )
        return pb.SystemGCResponse(
            evals_deleted=len(evals),
            allocs_deleted=len(allocs),
            deployments_deleted=len(deployments),
            index=index,
        )
