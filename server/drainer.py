"""The drainer (leader only): moves draining nodes along, as Nomad's drainer."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from corral import structs
from corral.proto import pb

if TYPE_CHECKING:
    from corral.server.leader import LeaderContext

log = logging.getLogger(__name__)


class Drainer:
    """Leader loop: one per leadership term (``run`` returns when the term ends)."""

    def __init__(self, ctx: LeaderContext) -> None:
        self.ctx = ctx

    def run(self, stop: threading.Event) -> None:
        """Leader loop: moves draining nodes along (Nomad's drainer).

        The scheduler migrates allocations off a draining node, ``migrate.max_parallel``
        at a time; this loop re-evaluates the affected jobs as replacements start, forces
        what is left at the deadline, and ends the drain when the node is empty (the node
        stays ineligible, as in Nomad).
        """
        last_index = -1
        while not stop.is_set():
            index = self.ctx.state.wait_for_index(last_index, 1.0, "allocs", "nodes", cancel=stop)
            if stop.is_set():
                return
            if index == last_index and not any(n.drain for n in self.ctx.state.nodes()):
                continue
            last_index = index
            try:
                self.step()
            except Exception:
                log.exception("drain step failed")

    def step(self) -> None:
        now = self.ctx.now_ns()
        for node in self.ctx.state.nodes():
            if not node.drain:
                continue
            strategy = node.drain_strategy
            remaining = [
                a
                for a in self.ctx.state.allocs_by_node(node.id)
                if not structs.is_client_terminal(a)
                and not (
                    strategy.ignore_system_jobs
                    and (job := self.ctx.state.job(a.namespace, a.job_id)) is not None
                    and job.type == structs.JOB_TYPE_SYSTEM
                )
            ]
            if not remaining:
                log.info("node %s drained", node.id)
                self.ctx.propose(pb.Command(node_drain=pb.NodeDrainCommand(node_id=node.id)))
                continue
            overdue = strategy.deadline > 0 and now > strategy.started_at + strategy.deadline
            forced = strategy.deadline < 0 or overdue
            jobs = {
                (a.namespace, a.job_id)
                for a in remaining
                if a.desired_status == structs.ALLOC_DESIRED_RUN
            }
            # Jobs with an evaluation already pending need no other (per-job index:
            # the eval table only grows, so never scan it whole here).
            busy = {
                key
                for key in jobs
                if any(
                    e.status == structs.EVAL_STATUS_PENDING
                    for e in self.ctx.state.evals_by_job(*key)
                )
            }
            evals = [
                self.ctx.new_eval(
                    self.ctx.state.job(ns, jid), ns, jid, structs.TRIGGER_NODE_DRAIN, node.id
                )
                for ns, jid in sorted(jobs - busy)
            ]
            if forced:
                transitions = {
                    a.id: pb.DesiredTransition(migrate=True, force_reschedule=True)
                    for a in remaining
                    if not a.desired_transition.migrate
                }
                if transitions or evals:
                    self.ctx.propose(
                        pb.Command(
                            alloc_desired_transition=pb.AllocDesiredTransitionCommand(
                                transitions=transitions, evals=evals
                            )
                        )
                    )
            elif evals:
                self.ctx.update_evals(evals)
