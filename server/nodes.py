"""Nodes and what clients report: registration, heartbeats (and a node's expiry),
drain, eligibility, allocation updates, service registrations."""

from __future__ import annotations

import logging

from corral import structs
from corral.proto import pb
from corral.server.base import (
    InvalidRequest,
    NotFound,
    ServerBase,
    _copy,
    now_ns,
)

log = logging.getLogger(__name__)


class NodeEndpoints(ServerBase):
    # ------------------------------------------------------------ services
    def update_services(self, req: pb.NodeServicesRequest) -> int:
        node = self.state.node(req.node_id)
        if node is None:
            raise NotFound(f"node {req.node_id} not registered")
        if node.secret_id and req.secret_id != node.secret_id:
            raise InvalidRequest(["node secret ID does not match"])
        index = self.state.index
        if req.delete_ids or req.delete_alloc_ids:
            index = self.propose(
                pb.Command(
                    service_delete=pb.ServiceDeleteCommand(
                        ids=list(req.delete_ids), alloc_ids=list(req.delete_alloc_ids)
                    )
                )
            ).index
        if req.upserts:
            for svc in req.upserts:
                svc.node_id = node.id
                svc.datacenter = svc.datacenter or node.datacenter
                svc.namespace = svc.namespace or structs.DEFAULT_NAMESPACE
            index = self.propose(
                pb.Command(service_upsert=pb.ServiceUpsertCommand(services=list(req.upserts)))
            ).index
        return index

    # ------------------------------------------------------------ nodes
    def register_node(self, node: pb.Node) -> pb.NodeHeartbeatResponse:
        problems = []
        if not node.id:
            problems.append("node ID is required")
        if not node.secret_id:
            problems.append("node secret ID is required")
        if problems:
            raise InvalidRequest(problems)
        node = _copy(node)
        node.status = structs.NODE_STATUS_READY
        evals = self._evals_for_node(node.id, structs.TRIGGER_NODE_UPDATE)
        result = self.propose(
            pb.Command(node_register=pb.NodeRegisterCommand(node=node, evals=evals))
        )
        if result.error:
            raise InvalidRequest([result.error])
        ttl = self.heartbeats.ttl()
        self.heartbeats.reset(node.id, ttl)
        return pb.NodeHeartbeatResponse(
            heartbeat_ttl=int(ttl * 1e9), index=result.index, leader=self.raft.leader()
        )

    def system_gc(self) -> pb.SystemGCResponse:
        """``corral system gc``: collect every terminal evaluation and allocation now."""
        return self.core_gc.run_once(threshold_ns=0)

    def heartbeat(self, node_id: str, secret_id: str) -> pb.NodeHeartbeatResponse:
        return self.heartbeat_many([pb.NodeHeartbeatRequest(node_id=node_id, secret_id=secret_id)])

    def heartbeat_many(self, beats: list[pb.NodeHeartbeatRequest]) -> pb.NodeHeartbeatResponse:
        """Heartbeats of one or many nodes. All are checked before anything is
        written; the nodes coming back (down, initializing) are marked ready
        together, in shared raft entries: one write each in turn took longer than
        a heartbeat's deadline for a fleet of thousands of nodes."""
        back: list[str] = []
        for hb in beats:
            node = self.state.node(hb.node_id)
            if node is None:
                raise NotFound(f"node {hb.node_id} not registered")
            if node.secret_id and hb.secret_id != node.secret_id:
                raise InvalidRequest([f"node {hb.node_id}: node secret ID does not match"])
            if node.status != structs.NODE_STATUS_READY:
                back.append(hb.node_id)
        index = self.state.index
        if back:
            cmds = [
                pb.Command(
                    node_status=pb.NodeStatusCommand(
                        node_id=node_id,
                        status=structs.NODE_STATUS_READY,
                        evals=self._evals_for_node(node_id, structs.TRIGGER_NODE_UPDATE),
                    )
                )
                for node_id in back
            ]
            index = max(r.index for r in self.propose_many(cmds))
        ttl = self.heartbeats.ttl()
        for hb in beats:
            self.heartbeats.reset(hb.node_id, ttl)
        return pb.NodeHeartbeatResponse(
            heartbeat_ttl=int(ttl * 1e9), index=index, leader=self.raft.leader()
        )

    def _node_expired(self, node_id: str) -> None:
        node = self.state.node(node_id)
        if node is None or node.status == structs.NODE_STATUS_DOWN:
            return
        log.warning("node %s missed its heartbeat; marking it down", node_id)
        evals = self._evals_for_node(node_id, structs.TRIGGER_NODE_UPDATE)
        self.propose(
            pb.Command(
                node_status=pb.NodeStatusCommand(
                    node_id=node_id,
                    status=structs.NODE_STATUS_DOWN,
                    status_description="missed heartbeat",
                    evals=evals,
                )
            )
        )

    def _evals_for_node(
        self, node_id: str, trigger: str, system_jobs: bool = True
    ) -> list[pb.Evaluation]:
        """One evaluation per job with live allocations on the node, plus every
        system job (a node that appears, returns or changes may need one)."""
        jobs: dict[tuple[str, str], pb.Job | None] = {}
        for alloc in self.state.allocs_by_node(node_id):
            if not structs.is_alloc_terminal(alloc):
                key = (alloc.namespace, alloc.job_id)
                jobs[key] = self.state.job(*key)
        if system_jobs:
            for job in self.state.jobs():
                if job.type == structs.JOB_TYPE_SYSTEM and not job.stop:
                    jobs[(job.namespace, job.id)] = job
        return [self._new_eval(job, ns, jid, trigger, node_id) for (ns, jid), job in jobs.items()]

    def set_drain(
        self, node_id: str, enable: bool, deadline_ns: int, ignore_system: bool, mark_eligible: bool
    ) -> pb.WriteResponse:
        node = self.resolve_node(node_id)
        cmd = pb.NodeDrainCommand(node_id=node.id, mark_eligible=mark_eligible)
        evals: list[pb.Evaluation] = []
        if enable:
            cmd.drain_strategy.deadline = deadline_ns
            cmd.drain_strategy.ignore_system_jobs = ignore_system
            cmd.drain_strategy.started_at = now_ns()
            evals = self._evals_for_node(node.id, structs.TRIGGER_NODE_DRAIN)
        cmd.evals.extend(evals)
        result = self.propose(pb.Command(node_drain=cmd))
        if result.error:
            raise NotFound(result.error)
        return pb.WriteResponse(index=result.index, eval_ids=[e.id for e in evals])

    def set_eligibility(self, node_id: str, eligible: bool) -> pb.WriteResponse:
        node = self.resolve_node(node_id)
        evals = self._evals_for_node(node.id, structs.TRIGGER_NODE_UPDATE) if eligible else []
        result = self.propose(
            pb.Command(
                node_eligibility=pb.NodeEligibilityCommand(
                    node_id=node.id,
                    eligibility=structs.NODE_ELIGIBLE if eligible else structs.NODE_INELIGIBLE,
                    evals=evals,
                )
            )
        )
        if result.error:  # the node was deleted between the lookup and the commit
            raise NotFound(result.error)
        return pb.WriteResponse(index=result.index, eval_ids=[e.id for e in evals])

    # ------------------------------------------------------------ allocations
    def update_allocs_from_client(self, allocs: list[pb.Allocation]) -> int:
        """A client's status reports. A newly failed allocation gets its job an
        evaluation (trigger ``alloc-failure``) in the same raft entry, as Nomad's
        ``Node.UpdateAlloc``: the scheduler then applies the reschedule policy (now,
        or a follow-up evaluation after its delay)."""
        if not allocs:
            return self.state.index
        evals = self._evals_for_failed(allocs)
        result = self.propose(
            pb.Command(alloc_client_update=pb.AllocClientUpdateCommand(allocs=allocs, evals=evals))
        )
        return result.index

    def _evals_for_failed(self, allocs: list[pb.Allocation]) -> list[pb.Evaluation]:
        """One evaluation per job with an allocation that just failed and may be
        rescheduled: not already failed (a repeated report), still desired to run,
        no follow-up evaluation waiting for it, its job neither stopped nor purged,
        and a reschedule policy that allows any attempt (system jobs have none)."""
        evals: list[pb.Evaluation] = []
        seen: set[tuple[str, str]] = set()
        for upd in allocs:
            if upd.client_status != structs.ALLOC_CLIENT_FAILED:
                continue
            old = self.state.alloc(upd.id)
            if (
                old is None
                or old.client_status == structs.ALLOC_CLIENT_FAILED
                or old.desired_status != structs.ALLOC_DESIRED_RUN
                or old.followup_eval_id
            ):
                continue
            key = (old.namespace, old.job_id)
            if key in seen:
                continue
            job = self.state.job(old.namespace, old.job_id)
            if job is None or job.stop:
                continue
            group = structs.group_by_name(job, old.task_group)
            if group is None:
                continue
            policy = group.reschedule_policy
            if not (policy.unlimited or policy.attempts > 0):
                continue
            seen.add(key)
            evals.append(
                self._new_eval(job, old.namespace, old.job_id, structs.TRIGGER_RETRY_FAILED_ALLOC)
            )
        return evals

    def node_allocations(self, node_id: str) -> list[pb.Allocation]:
        """The node's allocations, each with its job version attached (what a
        client needs to run it)."""
        out = []
        for alloc in self.state.allocs_by_node(node_id):
            full = _copy(alloc)
            job = self.state.job_version(alloc.namespace, alloc.job_id, alloc.job_version)
            if job is not None:
                full.job.CopyFrom(job)
            out.append(full)
        return out
