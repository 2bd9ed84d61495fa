"""The FSM's deployment bookkeeping: the counters a deployment keeps (placed,
canaries, healthy, unhealthy, the progress deadline) are the FSM's, written as
plans and client reports are applied, never the scheduler's possibly stale copy.

Functions of a write transaction only: no clock (``now`` is the command's), no
random, no I/O, like every FSM handler.
"""

from __future__ import annotations

from corral import structs
from corral.proto import pb
from corral.server.state import _WriteTxn


def plan_deployment(
    txn: _WriteTxn, plan: pb.Plan, now: int, joined: dict[str, str] | None = None
) -> None:
    """Create/update the plan's deployment, and count the allocations any plan
    places into their deployment (the counters belong to the FSM)."""
    for upd in plan.deployment_updates:
        set_deployment_status(txn, upd, now)
    touched: dict[str, pb.Deployment] = {}
    if plan.HasField("deployment"):
        old = txn.t.deployments.get(plan.deployment.id)
        if old is None:
            d = pb.Deployment()
            d.CopyFrom(plan.deployment)
            d.create_index = txn.index
            touched[d.id] = d
    for lst in plan.node_allocation.values():
        for alloc in lst.allocs:
            if not alloc.deployment_id:
                continue
            stored = txn.t.allocs.get(alloc.id)
            if stored is None:
                continue
            if stored.create_index != txn.index and alloc.id not in (joined or {}):
                continue  # neither placed by this plan nor moved into the deployment
            found = touched.get(alloc.deployment_id)
            if found is None:
                existing = txn.t.deployments.get(alloc.deployment_id)
                if existing is None:
                    continue
                found = pb.Deployment()
                found.CopyFrom(existing)
                touched[found.id] = found
            d = found
            group = d.task_groups[alloc.task_group]
            group.placed_allocs += 1
            if alloc.deployment_status.canary:
                group.placed_canaries.append(alloc.id)
            if not group.require_progress_by and group.progress_deadline:
                group.require_progress_by = now + group.progress_deadline
    for d in touched.values():
        d.modify_index = txn.index
        txn.put_deployment(d)


def set_deployment_status(txn: _WriteTxn, upd: pb.DeploymentStatusUpdate, now: int) -> bool:
    old = txn.t.deployments.get(upd.deployment_id)
    if old is None:
        return False
    d = pb.Deployment()
    d.CopyFrom(old)
    d.status = upd.status
    d.status_description = upd.status_description
    d.modify_index = txn.index
    txn.put_deployment(d)
    return True


def count_health(txn: _WriteTxn, before: pb.Allocation, after: pb.Allocation, now: int) -> None:
    """Count an allocation's first health verdict into its deployment."""
    if not after.deployment_id or not after.HasField("deployment_status"):
        return
    if not after.deployment_status.HasField("healthy"):
        return
    if before.HasField("deployment_status") and before.deployment_status.HasField("healthy"):
        return  # already counted
    old = txn.t.deployments.get(after.deployment_id)
    if old is None or old.status != structs.DeploymentStatus.RUNNING:
        return
    d = pb.Deployment()
    d.CopyFrom(old)
    group = d.task_groups[after.task_group]
    if after.deployment_status.healthy:
        group.healthy_allocs += 1
        if group.progress_deadline:
            group.require_progress_by = now + group.progress_deadline
    else:
        group.unhealthy_allocs += 1
    d.modify_index = txn.index
    txn.put_deployment(d)
