"""``job plan``: run the scheduler on a snapshot with the proposed job swapped in.

Nothing is committed; the result tells what a ``job run`` would do (per group:
place, stop, in-place or destructive updates) and how the spec changes.
"""

from __future__ import annotations

from typing import Any

from corral import structs
from corral.proto import pb
from corral.server.state import StateSnapshot


class OverlaySnapshot:
    """A snapshot that answers with the proposed job instead of the stored one."""

    def __init__(self, snap: StateSnapshot, job: pb.Job) -> None:
        self._snap = snap
        self._job = job

    def __getattr__(self, name: str) -> Any:
        return getattr(self._snap, name)

    @property
    def index(self) -> int:
        return self._snap.index

    def job(self, namespace: str, job_id: str) -> pb.Job | None:
        if (namespace, job_id) == (self._job.namespace, self._job.id):
            return self._job
        return self._snap.job(namespace, job_id)

    def job_version(self, namespace: str, job_id: str, version: int) -> pb.Job | None:
        if (namespace, job_id) == (
            self._job.namespace,
            self._job.id,
        ) and version == self._job.version:
            return self._job
        return self._snap.job_version(namespace, job_id, version)


def annotate(plan: pb.Plan, snap: StateSnapshot, job: pb.Job) -> dict[str, pb.PlanAnnotation]:
    """Per group counts of what the plan does, as Nomad's plan annotations."""
    out: dict[str, pb.PlanAnnotation] = {g.name: pb.PlanAnnotation() for g in job.task_groups}
    replaced: set[str] = set()
    for lst in plan.node_allocation.values():
        for alloc in lst.allocs:
            ann = out.setdefault(alloc.task_group, pb.PlanAnnotation())
            if snap.alloc(alloc.id) is not None:
                ann.in_place_update += 1
            elif alloc.previous_allocation:
                replaced.add(alloc.previous_allocation)
                ann.destructive_update += 1
            else:
                ann.place += 1
    for lst in plan.node_update.values():
        for stop in lst.allocs:
            if stop.id in replaced or stop.desired_status == structs.ALLOC_DESIRED_RUN:
                continue  # replaced, or only a follow-up marker on a failed allocation
            old = snap.alloc(stop.id)
            group = old.task_group if old is not None else ""
            out.setdefault(group, pb.PlanAnnotation()).stop += 1
    live: dict[str, int] = {}
    for alloc in snap.allocs_by_job(job.namespace, job.id):
        if alloc.desired_status == structs.ALLOC_DESIRED_RUN and alloc.client_status not in (
            structs.ALLOC_TERMINAL_CLIENT
        ):
            live[alloc.task_group] = live.get(alloc.task_group, 0) + 1
    for group, ann in out.items():
        touched = ann.in_place_update + ann.destructive_update + ann.stop
        ann.ignore = max(live.get(group, 0) - touched, 0)
    return out


def spec_diff(old: pb.Job | None, new: pb.Job) -> str:
    """Nomad's job diff format, shared with ``corral job history -p``."""
    from corral.api.jobdiff import diff_jobs

    return "\n".join(diff_jobs(old, new))
