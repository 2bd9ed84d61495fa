"""The deployment watcher (leader only): drives rolling updates to an end.

Clients report each new allocation's health; the FSM counts it into the
deployment (deterministically). This loop reads those counters and decides, as
Nomad's deploymentwatcher does:

* progress: a newly healthy allocation -> a new evaluation, so the scheduler
  replaces the next ``max_parallel`` old allocations;
* success: every group has its desired healthy allocations (and canaries were
  promoted) -> ``successful``, and the job version is marked stable;
* failure: an unhealthy allocation, or no progress before ``progress_deadline``
  -> ``failed``; with ``auto_revert`` the last stable version is registered again
  (skipped when it is the same spec, to avoid revert loops);
* auto-promote: every canary healthy and ``auto_promote`` -> promote;
* a deployment whose job moved on (newer version, or stopped) -> ``cancelled``.

The decision is a pure function (``decide``) over the deployment, the job and a
clock reading; the loop only applies what it returns.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from corral import structs
from corral.proto import pb
from corral.server.fsm import spec_changed

if TYPE_CHECKING:
    from corral.server.leader import LeaderContext

log = logging.getLogger(__name__)

RUNNING = structs.DeploymentStatus.RUNNING
SUCCESSFUL = structs.DeploymentStatus.SUCCESSFUL
FAILED = structs.DeploymentStatus.FAILED
CANCELLED = structs.DeploymentStatus.CANCELLED
TERMINAL = structs.DEPLOYMENT_TERMINAL


@dataclass
class Decision:
    status: str = ""  # new status, "" = unchanged
    description: str = ""
    mark_stable: bool = False
    revert_to: pb.Job | None = None
    promote: bool = False
    evaluate: bool = False  # progress was made: let the scheduler continue
    notes: list[str] = field(default_factory=list)


def decide(
    d: pb.Deployment,
    job: pb.Job | None,
    stable_versions: list[pb.Job],
    now_ns: int,
    last_healthy: int,
) -> Decision:
    """What to do with a running deployment. Pure."""
    out = Decision()
    if job is None or job.stop:
        out.status, out.description = CANCELLED, "Cancelled because job is stopped"
        return out
    if job.version != d.job_version:
        out.status = CANCELLED
        out.description = f"Cancelled due to newer version of job (version {job.version})"
        return out
    unhealthy = any(g.unhealthy_allocs > 0 for g in d.task_groups.values())
    overdue = any(
        g.require_progress_by
        and now_ns > g.require_progress_by
        and (g.healthy_allocs < g.desired_total or (g.desired_canaries and not g.promoted))
        for g in d.task_groups.values()
    )
    if unhealthy or overdue:
        out.status = FAILED
        out.description = (
            "Failed due to unhealthy allocations"
            if unhealthy
            else "Failed due to progress deadline"
        )
        if any(g.auto_revert for g in d.task_groups.values()):
            target = next(
                (v for v in stable_versions if v.version != job.version and v.stable), None
            )
            if target is not None and spec_changed(target, job):
                out.revert_to = target
                out.description += f" - rolling back to job version {target.version}"
            elif target is not None:
                out.notes.append("auto-revert skipped: the stable version has the same spec")
        return out
    canaries_pending = [g for g in d.task_groups.values() if g.desired_canaries and not g.promoted]
    if canaries_pending:
        ready = all(
            len(g.placed_canaries) >= g.desired_canaries and g.healthy_allocs >= g.desired_canaries
            for g in canaries_pending
        )
        if ready and all(g.auto_promote for g in canaries_pending):
            out.promote = True
            out.evaluate = True
            return out
    else:
        done = all(g.healthy_allocs >= g.desired_total for g in d.task_groups.values())
        if done:
            out.status = SUCCESSFUL
            out.description = "Deployment completed successfully"
            out.mark_stable = True
            return out
    total_healthy = sum(g.healthy_allocs for g in d.task_groups.values())
    if total_healthy > last_healthy:
        out.evaluate = True
    return out


class DeploymentWatcher:
    """Leader loop: one per leadership term (``run`` returns when the term ends)."""

    def __init__(self, ctx: LeaderContext) -> None:
        self._ctx = ctx
        self._healthy_seen: dict[str, int] = {}

    def run(self, stop: threading.Event) -> None:
        state = self._ctx.state
        last = -1
        while not stop.is_set():
            index = state.wait_for_index(last, 1.0, "deployments", "jobs", cancel=stop)
            if stop.is_set():
                return
            last = index
            try:
                self.step()
            except Exception:
                log.exception("deployment watcher step failed")

    def step(self) -> None:
        state = self._ctx.state
        for d in state.deployments():
            if d.status != RUNNING:
                continue
            job = state.job(d.namespace, d.job_id)
            versions = state.job_versions(d.namespace, d.job_id)
            decision = decide(d, job, versions, self._ctx.now_ns(), self._healthy_seen.get(d.id, 0))
            self._healthy_seen[d.id] = sum(g.healthy_allocs for g in d.task_groups.values())
            self._apply(d, job, decision)

    def _apply(self, d: pb.Deployment, job: pb.Job | None, decision: Decision) -> None:
        server = self._ctx
        for note in decision.notes:
            log.info("deployment %s: %s", d.id[:8], note)
        if decision.promote:
            ev = server.new_eval(job, d.namespace, d.job_id, "deployment-watcher")
            ev.deployment_id = d.id
            server.propose(
                pb.Command(
                    deployment_promote=pb.DeploymentPromoteCommand(deployment_id=d.id, evals=[ev])
                )
            )
            return
        if decision.status:
            cmd = pb.DeploymentStatusCommand(
                update=pb.DeploymentStatusUpdate(
                    deployment_id=d.id,
                    status=decision.status,
                    status_description=decision.description,
                ),
                mark_stable=decision.mark_stable,
            )
            if decision.revert_to is not None:
                cmd.revert_job.CopyFrom(decision.revert_to)
                ev = server.new_eval(
                    decision.revert_to, d.namespace, d.job_id, structs.TRIGGER_JOB_REGISTER
                )
                cmd.evals.append(ev)
            log.info("deployment %s %s: %s", d.id[:8], decision.status, decision.description)
            server.propose(pb.Command(deployment_status=cmd))
            return
        if decision.evaluate:
            ev = server.new_eval(job, d.namespace, d.job_id, "deployment-watcher")
            ev.deployment_id = d.id
            server.update_evals([ev])
