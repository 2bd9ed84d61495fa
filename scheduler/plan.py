"""Building a plan: what every scheduler writes its decisions with.

``new_plan`` starts the plan for an evaluation; ``PlanBuilder`` appends stops,
follow-up marks, new and in-place updated allocations to it. The generic
(service/batch) and system schedulers both build on this module and never import
each other; ``dispatch.py`` chooses between them.
"""

from __future__ import annotations

from corral import structs
from corral.proto import pb

__all__ = ["PlanBuilder", "new_plan"]


def new_plan(ev: pb.Evaluation, snapshot_index: int) -> pb.Plan:
    """An empty plan for the evaluation, planned on the snapshot at ``snapshot_index``."""
    return pb.Plan(
        eval_id=ev.id,
        priority=ev.priority,
        job_id=ev.job_id,
        namespace=ev.namespace,
        snapshot_index=snapshot_index,
    )


class PlanBuilder:
    """Appends to a plan without looking up map entries twice."""

    def __init__(self, plan: pb.Plan) -> None:
        self.plan = plan
        self._updates: dict[str, pb.AllocList] = {}
        self._allocs: dict[str, pb.AllocList] = {}

    def _update_list(self, node_id: str) -> pb.AllocList:
        lst = self._updates.get(node_id)
        if lst is None:
            lst = self._updates[node_id] = self.plan.node_update[node_id]
        return lst

    def stop(self, alloc: pb.Allocation, description: str, client_status: str = "") -> None:
        self._update_list(alloc.node_id).allocs.add(
            id=alloc.id,
            desired_status=structs.ALLOC_DESIRED_STOP,
            desired_description=description,
            client_status=client_status,
        )

    def mark_followup(self, alloc: pb.Allocation, eval_id: str) -> None:
        """Record the follow-up evaluation on a failed allocation, leaving it as is."""
        self._update_list(alloc.node_id).allocs.add(
            id=alloc.id,
            desired_status=alloc.desired_status,
            desired_description=alloc.desired_description,
            followup_eval_id=eval_id,
        )

    def new_alloc(self, node_id: str) -> pb.Allocation:
        lst = self._allocs.get(node_id)
        if lst is None:
            lst = self._allocs[node_id] = self.plan.node_allocation[node_id]
        return lst.allocs.add()

    def update_in_place(
        self, alloc: pb.Allocation, job: pb.Job, eval_id: str, deployment_id: str = ""
    ) -> None:
        updated = self.new_alloc(alloc.node_id)
        updated.CopyFrom(alloc)
        updated.job_version = job.version
        updated.eval_id = eval_id
        if deployment_id and deployment_id != alloc.deployment_id:
            # It joins the new version's deployment: its health is judged afresh
            # (Nomad counts in-place updated allocations into the deployment).
            updated.deployment_id = deployment_id
            updated.ClearField("deployment_status")
