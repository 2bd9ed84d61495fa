"""Jobs: register (with Nomad's defaults and every problem at once), deregister,
scale, revert and plan; each a command with its evaluation in one raft entry."""

from __future__ import annotations

import logging

from corral import structs
from corral.proto import pb
from corral.server.base import (
    InvalidRequest,
    NotFound,
    ServerBase,
    _copy,
)

log = logging.getLogger(__name__)


class JobEndpoints(ServerBase):
    # ------------------------------------------------------------ jobs
    @staticmethod
    def canonical_job(job: pb.Job) -> tuple[pb.Job, list[str]]:
        """A copy of ``job`` with Nomad's defaults filled in, and every problem with
        it: what register, plan and validate all check, the same way."""
        from corral import jobspec

        job = _copy(job)
        structs.canonicalize(job)
        return job, jobspec.validate(job)

    def register_job(self, job: pb.Job) -> pb.JobRegisterResponse:
        job, problems = self.canonical_job(job)
        if problems:
            raise InvalidRequest(problems)
        ev = self._new_eval(job, job.namespace, job.id, structs.TRIGGER_JOB_REGISTER)
        result = self.propose(pb.Command(job_register=pb.JobRegisterCommand(job=job, eval=ev)))
        if result.error:
            raise InvalidRequest([result.error])
        stored = self.state.job(job.namespace, job.id)
        return pb.JobRegisterResponse(
            eval_id=ev.id,
            eval_create_index=result.index,
            job_modify_index=stored.job_modify_index if stored is not None else result.index,
            index=result.index,
        )

    def deregister_job(self, namespace: str, job_id: str, purge: bool) -> pb.JobDeregisterResponse:
        namespace = namespace or structs.DEFAULT_NAMESPACE
        job = self.state.job(namespace, job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        ev = self._new_eval(job, namespace, job_id, structs.TRIGGER_JOB_DEREGISTER)
        result = self.propose(
            pb.Command(
                job_deregister=pb.JobDeregisterCommand(
                    namespace=namespace, job_id=job_id, purge=purge, eval=ev
                )
            )
        )
        if result.error:
            raise NotFound(result.error)
        return pb.JobDeregisterResponse(eval_id=ev.id, index=result.index)

    def scale_job(
        self, namespace: str, job_id: str, group: str, count: int
    ) -> pb.JobRegisterResponse:
        namespace = namespace or structs.DEFAULT_NAMESPACE
        job = self.state.job(namespace, job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        if not group:
            if len(job.task_groups) != 1:
                names = ", ".join(g.name for g in job.task_groups)
                raise InvalidRequest([f"job {job_id!r} has several groups ({names}): name one"])
            group = job.task_groups[0].name
        if structs.group_by_name(job, group) is None:
            raise InvalidRequest([f"job {job_id!r} has no group {group!r}"])
        if count < 0:
            raise InvalidRequest([f"count must be >= 0, got {count}"])
        if job.type == structs.JOB_TYPE_SYSTEM:
            raise InvalidRequest(["system jobs cannot be scaled: they run one allocation per node"])
        ev = self._new_eval(job, namespace, job_id, structs.TRIGGER_SCALING)
        result = self.propose(
            pb.Command(
                job_scale=pb.JobScaleCommand(
                    namespace=namespace, job_id=job_id, group=group, count=count, eval=ev
                )
            )
        )
        if result.error:
            raise InvalidRequest([result.error])
        stored = self.state.job(namespace, job_id)
        return pb.JobRegisterResponse(
            eval_id=ev.id,
            eval_create_index=result.index,
            job_modify_index=stored.job_modify_index if stored is not None else 0,
            index=result.index,
        )

    def revert_job(
        self, namespace: str, job_id: str, version: int, enforce_prior: int | None
    ) -> pb.JobRegisterResponse:
        namespace = namespace or structs.DEFAULT_NAMESPACE
        current = self.state.job(namespace, job_id)
        if current is None:
            raise NotFound(f"job {job_id!r} not found")
        if enforce_prior is not None and current.version != enforce_prior:
            raise InvalidRequest(
                [f"current job version is {current.version}, not {enforce_prior} as enforced"]
            )
        if version == current.version:
            raise InvalidRequest([f"job is already at version {version}"])
        old = self.state.job_version(namespace, job_id, version)
        if old is None:
            known = ", ".join(str(v.version) for v in self.state.job_versions(namespace, job_id))
            raise NotFound(f"job {job_id!r} has no version {version} (tracked: {known})")
        return self.register_job(old)

    def plan_job(self, job: pb.Job) -> pb.JobPlanResponse:
        """A dry run: the scheduler on a snapshot with the job swapped in; nothing
        is committed."""
        from corral.scheduler import compute_plan
        from corral.server.dryrun import OverlaySnapshot, annotate, spec_diff

        job, problems = self.canonical_job(job)
        if problems:
            raise InvalidRequest(problems)
        snap = self.state.snapshot()
        current = snap.job(job.namespace, job.id)
        proposed = _copy(job)
        from corral.server.fsm import spec_changed

        changed_spec = current is None or spec_changed(current, proposed)
        proposed.version = (
            (current.version + 1)
            if (current is not None and changed_spec)
            else (current.version if current is not None else 0)
        )
        overlay = OverlaySnapshot(snap, proposed)
        ev = self._new_eval(proposed, job.namespace, job.id, structs.TRIGGER_JOB_REGISTER)
        result = compute_plan(overlay, ev, 1)
        resp = pb.JobPlanResponse(
            diff=spec_diff(current, proposed),
            job_modify_index=current.job_modify_index if current is not None else 0,
        )
        for group, ann in annotate(result.plan, snap, proposed).items():
            resp.annotations[group].CopyFrom(ann)
        for group, metric in result.failed_tg_allocs.items():
            resp.failed_tg_allocs[group].CopyFrom(metric)
        resp.changed = changed_spec or any(
            a.place or a.stop or a.destructive_update for a in resp.annotations.values()
        )
        return resp
