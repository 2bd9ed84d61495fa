"""Deployments from the API: promote canaries, fail a deployment (the deployment
watcher, a leader loop, moves them along by itself)."""

from __future__ import annotations

import logging

from corral import structs
from corral.proto import pb
from corral.server.base import (
    InvalidRequest,
    ServerBase,
    now_ns,
)

log = logging.getLogger(__name__)


class DeploymentEndpoints(ServerBase):
    # ------------------------------------------------------------ deployments
    def resolve_deployment(self, prefix: str) -> pb.Deployment:
        d = self.state.deployment(self._resolve("deployments", prefix, "deployment"))
        assert d is not None
        return d

    def promote_deployment(self, prefix: str, groups: list[str]) -> pb.DeploymentWriteResponse:
        d = self.resolve_deployment(prefix)
        if d.status != structs.DeploymentStatus.RUNNING:
            raise InvalidRequest(
                [f"deployment {d.id[:8]} is {d.status}: only running ones promote"]
            )
        if not any(g.desired_canaries for g in d.task_groups.values()):
            raise InvalidRequest([f"deployment {d.id[:8]} has no canaries to promote"])
        job = self.state.job(d.namespace, d.job_id)
        ev = self._new_eval(job, d.namespace, d.job_id, "deployment-promotion")
        ev.deployment_id = d.id
        result = self.propose(
            pb.Command(
                deployment_promote=pb.DeploymentPromoteCommand(
                    deployment_id=d.id, groups=groups, evals=[ev]
                )
            )
        )
        if result.error:
            raise InvalidRequest([result.error])
        return pb.DeploymentWriteResponse(eval_id=ev.id, index=result.index)

    def fail_deployment(self, prefix: str) -> pb.DeploymentWriteResponse:
        from corral.server.deployment_watcher import decide

        d = self.resolve_deployment(prefix)
        if d.status != structs.DeploymentStatus.RUNNING:
            raise InvalidRequest([f"deployment {d.id[:8]} is already {d.status}"])
        job = self.state.job(d.namespace, d.job_id)
        cmd = pb.DeploymentStatusCommand(
            update=pb.DeploymentStatusUpdate(
                deployment_id=d.id,
                status=structs.DeploymentStatus.FAILED,
                status_description="Deployment marked as failed",
            )
        )
        reverted = ""
        if any(g.auto_revert for g in d.task_groups.values()) and job is not None:
            # Reuse the watcher's revert rule on a deployment forced unhealthy.
            forced = pb.Deployment()
            forced.CopyFrom(d)
            for g in forced.task_groups.values():
                g.unhealthy_allocs = max(g.unhealthy_allocs, 1)
            decision = decide(
                forced, job, self.state.job_versions(d.namespace, d.job_id), now_ns(), 0
            )
            if decision.revert_to is not None:
                cmd.revert_job.CopyFrom(decision.revert_to)
                reverted = str(decision.revert_to.version)
                cmd.update.status_description += f" - rolling back to job version {reverted}"
        ev = self._new_eval(job, d.namespace, d.job_id, "deployment-watcher")
        cmd.evals.append(ev)
        result = self.propose(pb.Command(deployment_status=cmd))
        if result.error:
            raise InvalidRequest([result.error])
        return pb.DeploymentWriteResponse(
            eval_id=ev.id, index=result.index, reverted_job_version=reverted
        )
