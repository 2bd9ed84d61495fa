"""gRPC endpoints of the server agent: thin adapters from RPCs to ``Server``.

Errors map to gRPC status codes the CLI relies on: INVALID_ARGUMENT (bad input,
every problem one per line), NOT_FOUND, FAILED_PRECONDITION (ambiguous prefix),
UNAVAILABLE (no leader / write outcome unknown).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from corral import structs
from corral.proto import pb, rpc
from corral.server.forward import LEADER_WAIT, MAX_HOPS, Forwarder, NoLeader
from corral.server.raft import NotLeaderError, ProposalError
from corral.server.server import Ambiguous, InvalidRequest, NotFound, Server

log = logging.getLogger(__name__)

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0

F = TypeVar("F", bound=Callable[..., Any])


def _abort_for(exc: Exception, context: grpc.ServicerContext) -> None:
    if isinstance(exc, InvalidRequest):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "\n".join(exc.problems))
    if isinstance(exc, NotFound):
        context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, Ambiguous):
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, (NotLeaderError, ProposalError, NoLeader)):
        context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    raise exc


def _is_stale(request: Any) -> bool:
    query = getattr(request, "query", None)
    return bool(query is not None and query.stale)


def _rpc(kind: str) -> Callable[[F], F]:
    """An RPC handled on the leader (``write``; ``read`` unless stale) or right
    here (``local``). A follower forwards it; errors become gRPC status codes."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: _Base, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if kind == "local" or (kind == "read" and _is_stale(request)):
                    return fn(self, request, context)
                deadline = time.monotonic() + LEADER_WAIT
                while True:
                    addr = self.forwarder.wait_leader_addr(deadline)
                    if not addr:
                        try:
                            return fn(self, request, context)
                        except NotLeaderError:
                            if time.monotonic() >= deadline:
                                raise
                            continue  # lost leadership before proposing: forward
                    if Forwarder.hops(context) >= MAX_HOPS:
                        raise NoLeader("the leader moved during forwarding; try again")
                    try:
                        return self.forwarder.unary(
                            addr, self.SERVICE, fn.__name__, request, context
                        )
                    except grpc.RpcError as exc:
                        if (
                            exc.code() != grpc.StatusCode.UNAVAILABLE
                            or time.monotonic() >= deadline
                        ):
                            context.abort(exc.code(), exc.details() or "forwarding failed")
                        time.sleep(0.1)
            except grpc.RpcError:
                raise
            except Exception as exc:
                _abort_for(exc, context)

        return wrapper  # type: ignore[return-value]

    return decorate


def _stream(kind: str) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(self: _Base, request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if kind == "read" and not _is_stale(request):
                    addr = self.forwarder.wait_leader_addr(time.monotonic() + LEADER_WAIT)
                    if addr:
                        try:
                            yield from self.forwarder.stream(
                                addr, self.SERVICE, fn.__name__, request, context
                            )
                        except grpc.RpcError as exc:
                            if exc.code() != grpc.StatusCode.CANCELLED:
                                context.abort(exc.code(), exc.details() or "forwarding failed")
                        return
                yield from fn(self, request, context)
            except (
                InvalidRequest,
                NotFound,
                Ambiguous,
                NotLeaderError,
                ProposalError,
                NoLeader,
            ) as exc:
                _abort_for(exc, context)

        return wrapper  # type: ignore[return-value]

    return decorate


class _Base:
    SERVICE = ""

    def __init__(self, server: Server, forwarder: Forwarder) -> None:
        self.server = server
        self.forwarder = forwarder

    def _block(self, query: pb.QueryOptions, *tables: str) -> pb.QueryMeta:
        """Blocking query: wait for ``tables`` to pass ``min_index`` (bounded)."""
        if query.min_index:
            wait = query.max_wait / 1e9 if query.max_wait else DEFAULT_WAIT
            self.server.state.wait_for_index(query.min_index, min(wait, MAX_WAIT), *tables)
        return pb.QueryMeta(
            index=self.server.state.table_index(*tables),
            known_leader=bool(self.server.raft.leader()),
        )


def _ns(ns: str) -> str:
    return ns or structs.DEFAULT_NAMESPACE


def job_stub(server: Server, job: pb.Job) -> pb.JobListStub:
    return pb.JobListStub(
        id=job.id,
        name=job.name,
        namespace=job.namespace,
        type=job.type,
        priority=job.priority,
        status=server.job_status(job),
        stop=job.stop,
        version=job.version,
        submit_time=job.submit_time,
        create_index=job.create_index,
        modify_index=job.modify_index,
        job_modify_index=job.job_modify_index,
        datacenters=list(job.datacenters),
    )


class JobEndpoint(_Base, rpc.JobServiceServicer):
    SERVICE = "JobService"

    @_rpc("write")
    def Register(self, request: pb.JobRegisterRequest, context: Any) -> pb.JobRegisterResponse:
        if request.enforce_index:
            current = self.server.state.job(_ns(request.job.namespace), request.job.id)
            current_index = current.job_modify_index if current is not None else 0
            if current_index != request.job_modify_index:
                raise InvalidRequest(
                    [
                        f"enforcing job modify index {request.job_modify_index}: "
                        f"job exists with conflicting job modify index: {current_index}"
                    ]
                )
        return self.server.register_job(request.job)

    @_rpc("write")
    def Deregister(
        self, request: pb.JobDeregisterRequest, context: Any
    ) -> pb.JobDeregisterResponse:
        return self.server.deregister_job(request.namespace, request.job_id, request.purge)

    @_rpc("read")
    def List(self, request: pb.JobListRequest, context: Any) -> pb.JobListResponse:
        meta = self._block(request.query, "jobs", "allocs")
        jobs = [
            job_stub(self.server, j)
            for j in self.server.state.jobs()
            if j.id.startswith(request.prefix)
        ]
        jobs.sort(key=lambda j: j.id)
        return pb.JobListResponse(jobs=jobs, meta=meta)

    def _job(self, namespace: str, job_id: str) -> pb.Job:
        job = self.server.state.job(_ns(namespace), job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        return job

    @_rpc("read")
    def Get(self, request: pb.JobGetRequest, context: Any) -> pb.JobGetResponse:
        meta = self._block(request.query, "jobs")
        job = self._job(request.namespace, request.job_id)
        return pb.JobGetResponse(job=self.server.with_status(job), meta=meta)

    @_rpc("read")
    def Allocations(
        self, request: pb.JobAllocationsRequest, context: Any
    ) -> pb.AllocationsResponse:
        meta = self._block(request.query, "allocs")
        allocs = self.server.state.allocs_by_job(_ns(request.namespace), request.job_id)
        allocs.sort(key=lambda a: (a.create_index, a.name))
        return pb.AllocationsResponse(allocs=allocs, meta=meta)

    @_rpc("read")
    def Versions(self, request: pb.JobGetRequest, context: Any) -> pb.JobVersionsResponse:
        meta = self._block(request.query, "jobs")
        self._job(request.namespace, request.job_id)
        versions = self.server.state.job_versions(_ns(request.namespace), request.job_id)
        return pb.JobVersionsResponse(versions=versions, meta=meta)

    @_rpc("read")
    def Evaluations(self, request: pb.JobGetRequest, context: Any) -> pb.JobEvaluationsResponse:
        meta = self._block(request.query, "evals")
        evals = self.server.state.evals_by_job(_ns(request.namespace), request.job_id)
        evals.sort(key=lambda e: e.create_index)
        return pb.JobEvaluationsResponse(evals=evals, meta=meta)

    @_rpc("read")
    def Plan(self, request: pb.JobPlanRequest, context: Any) -> pb.JobPlanResponse:
        return self.server.plan_job(request.job)

    @_rpc("local")
    def Validate(self, request: pb.JobValidateRequest, context: Any) -> pb.JobValidateResponse:
        _, problems = self.server.canonical_job(request.job)
        return pb.JobValidateResponse(
            validation_errors=problems,
            error="\n".join(problems),
            driver_config_validated=True,
        )

    @_rpc("write")
    def Scale(self, request: pb.JobScaleRequest, context: Any) -> pb.JobRegisterResponse:
        return self.server.scale_job(
            request.namespace, request.job_id, request.group, request.count
        )

    @_rpc("write")
    def Revert(self, request: pb.JobRevertRequest, context: Any) -> pb.JobRegisterResponse:
        prior = request.enforce_prior_version if request.HasField("enforce_prior_version") else None
        return self.server.revert_job(request.namespace, request.job_id, request.version, prior)


class AllocEndpoint(_Base, rpc.AllocServiceServicer):
    SERVICE = "AllocService"

    def _client_node(self, alloc: pb.Allocation) -> pb.Node:
        """The node whose client agent runs ``alloc`` (logs and restarts go there)."""
        node = self.server.state.node(alloc.node_id)
        if node is None or not node.rpc_addr:
            raise NotFound(f"node {alloc.node_id} of allocation {alloc.id[:8]} is unknown")
        return node

    @_rpc("read")
    def List(self, request: pb.AllocListRequest, context: Any) -> pb.AllocationsResponse:
        meta = self._block(request.query, "allocs")
        if request.node_id:
            node = self.server.resolve_node(request.node_id)
            allocs = self.server.state.allocs_by_node(node.id)
        else:
            allocs = self.server.state.allocs()
        allocs = [a for a in allocs if a.id.startswith(request.prefix)]
        allocs.sort(key=lambda a: (a.create_index, a.name))
        return pb.AllocationsResponse(allocs=allocs, meta=meta)

    @_rpc("read")
    def Get(self, request: pb.AllocGetRequest, context: Any) -> pb.AllocGetResponse:
        meta = self._block(request.query, "allocs")
        alloc = self.server.resolve_alloc(request.alloc_id)
        full = pb.Allocation()
        full.CopyFrom(alloc)
        job = self.server.state.job_version(alloc.namespace, alloc.job_id, alloc.job_version)
        if job is not None:
            full.job.CopyFrom(job)
        return pb.AllocGetResponse(alloc=full, meta=meta)

    @_rpc("write")
    def Stop(self, request: pb.AllocStopRequest, context: Any) -> pb.AllocStopResponse:
        alloc = self.server.resolve_alloc(request.alloc_id)
        job = self.server.state.job(alloc.namespace, alloc.job_id)
        ev = self.server._new_eval(job, alloc.namespace, alloc.job_id, structs.TRIGGER_ALLOC_STOP)
        result = self.server.propose(
            pb.Command(
                alloc_desired_transition=pb.AllocDesiredTransitionCommand(
                    transitions={alloc.id: pb.DesiredTransition(migrate=True)}, evals=[ev]
                )
            )
        )
        return pb.AllocStopResponse(eval_id=ev.id, index=result.index)

    @_stream("read")
    def Logs(self, request: pb.AllocLogsRequest, context: Any) -> Iterator[pb.LogChunk]:
        alloc = self.server.resolve_alloc(request.alloc_id)
        node = self._client_node(alloc)
        forwarded = pb.AllocLogsRequest()
        forwarded.CopyFrom(request)
        forwarded.alloc_id = alloc.id
        with grpc.insecure_channel(node.rpc_addr) as channel:
            stub = rpc.ClientServiceStub(channel)
            try:
                for chunk in stub.Logs(forwarded, timeout=None if request.follow else 30):
                    if not context.is_active():
                        return
                    yield chunk
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.NOT_FOUND:
                    raise NotFound(exc.details() or "not found") from None
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidRequest([exc.details() or "invalid"]) from None
                if code == grpc.StatusCode.CANCELLED:
                    return
                context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    f"cannot reach the client of node {node.name} at {node.rpc_addr}: "
                    f"{exc.details()}",
                )

    @_rpc("read")
    def Restart(self, request: pb.AllocRestartRequest, context: Any) -> pb.AllocRestartResponse:
        alloc = self.server.resolve_alloc(request.alloc_id)
        node = self._client_node(alloc)
        forwarded = pb.AllocRestartRequest(alloc_id=alloc.id, task=request.task)
        try:
            with grpc.insecure_channel(node.rpc_addr) as channel:
                resp: pb.AllocRestartResponse = rpc.ClientServiceStub(channel).Restart(
                    forwarded, timeout=60
                )
                return resp
        except grpc.RpcError as exc:
            if exc.code() in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
            ):
                context.abort(exc.code(), exc.details() or "refused by the client")
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"cannot reach the client of node {node.name} at {node.rpc_addr}: {exc.details()}",
            )
        raise AssertionError("unreachable")


class EvalEndpoint(_Base, rpc.EvalServiceServicer):
    SERVICE = "EvalService"

    @_rpc("read")
    def Get(self, request: pb.EvalGetRequest, context: Any) -> pb.EvalGetResponse:
        meta = self._block(request.query, "evals")
        return pb.EvalGetResponse(eval=self.server.resolve_eval(request.eval_id), meta=meta)

    @_rpc("read")
    def List(self, request: pb.EvalListRequest, context: Any) -> pb.EvalListResponse:
        meta = self._block(request.query, "evals")
        evals = [
            e
            for e in self.server.state.evals()
            if e.id.startswith(request.prefix)
            and (not request.job_id or e.job_id == request.job_id)
        ]
        evals.sort(key=lambda e: e.create_index)
        return pb.EvalListResponse(evals=evals, meta=meta)


class NodeEndpoint(_Base, rpc.NodeServiceServicer):
    SERVICE = "NodeService"

    @_rpc("write")
    def Register(self, request: pb.NodeRegisterRequest, context: Any) -> pb.NodeHeartbeatResponse:
        return self.server.register_node(request.node)

    @_rpc("write")
    def Heartbeat(self, request: pb.NodeHeartbeatRequest, context: Any) -> pb.NodeHeartbeatResponse:
        return self.server.heartbeat(request.node_id, request.secret_id)

    @_stream("read")
    def WatchAllocations(
        self, request: pb.NodeWatchRequest, context: Any
    ) -> Iterator[pb.NodeAllocations]:
        node = self.server.state.node(request.node_id)
        if node is None:
            raise NotFound(f"node {request.node_id} not registered")
        if node.secret_id and node.secret_id != request.secret_id:
            raise InvalidRequest(["node secret ID does not match"])
        last = 0
        while context.is_active():
            index = self.server.state.table_index("allocs", "jobs")
            if index > last:
                last = index
                yield pb.NodeAllocations(
                    allocs=self.server.node_allocations(request.node_id), index=index
                )
            self.server.state.wait_for_index(last, 5.0, "allocs", "jobs")

    @_rpc("write")
    def UpdateAllocations(
        self, request: pb.NodeUpdateAllocsRequest, context: Any
    ) -> pb.NodeUpdateAllocsResponse:
        index = self.server.update_allocs_from_client(list(request.allocs))
        return pb.NodeUpdateAllocsResponse(index=index)

    @_rpc("read")
    def List(self, request: pb.NodeListRequest, context: Any) -> pb.NodeListResponse:
        meta = self._block(request.query, "nodes")
        nodes = []
        for node in self.server.state.nodes():
            if node.id.startswith(request.prefix):
                n = pb.Node()
                n.CopyFrom(node)
                n.secret_id = ""
                nodes.append(n)
        nodes.sort(key=lambda n: n.name)
        return pb.NodeListResponse(nodes=nodes, meta=meta)

    @_rpc("read")
    def Get(self, request: pb.NodeGetRequest, context: Any) -> pb.NodeGetResponse:
        meta = self._block(request.query, "nodes")
        node = pb.Node()
        node.CopyFrom(self.server.resolve_node(request.node_id))
        node.secret_id = ""
        return pb.NodeGetResponse(node=node, meta=meta)

    @_rpc("write")
    def SetEligibility(self, request: pb.NodeEligibilityRequest, context: Any) -> pb.WriteResponse:
        return self.server.set_eligibility(request.node_id, request.eligible)

    @_rpc("write")
    def SetDrain(self, request: pb.NodeDrainRequest, context: Any) -> pb.WriteResponse:
        return self.server.set_drain(
            request.node_id,
            request.enable,
            request.deadline,
            request.ignore_system_jobs,
            request.mark_eligible,
        )

    @_stream("read")
    def WatchFleet(
        self, request: pb.FleetWatchRequest, context: Any
    ) -> Iterator[pb.FleetAllocations]:
        """Allocation changes of many nodes in one stream (simulated fleets): the
        change log of the state store, so no watcher scans every allocation."""
        wanted = set(request.node_ids)
        state = self.server.state
        last = request.min_index
        while context.is_active():
            index = state.table_index("allocs")
            if index > last:
                changed = state.allocs_changed_since(last)
                if changed is None:  # fell behind the log: rescan these nodes
                    allocs = [a for n in wanted for a in state.allocs_by_node(n)]
                else:
                    allocs = [
                        a
                        for a in (state.alloc(i) for i in changed)
                        if a is not None and a.node_id in wanted
                    ]
                # In chunks (a rescan of a big fleet exceeds any message limit); all
                # but the last carry the previous index, so a watcher that resumes
                # after a broken stream asks again for what it may have missed.
                for start in range(0, len(allocs), FLEET_CHUNK):
                    final = start + FLEET_CHUNK >= len(allocs)
                    yield pb.FleetAllocations(
                        allocs=allocs[start : start + FLEET_CHUNK], index=index if final else last
                    )
                last = index
            state.wait_for_index(last, 5.0, "allocs")

    @_rpc("write")
    def HeartbeatMany(
        self, request: pb.NodeHeartbeatManyRequest, context: Any
    ) -> pb.NodeHeartbeatResponse:
        return self.server.heartbeat_many(list(request.heartbeats))

    @_rpc("write")
    def UpdateServices(self, request: pb.NodeServicesRequest, context: Any) -> pb.WriteResponse:
        return pb.WriteResponse(index=self.server.update_services(request))


def _passing(svc: pb.ServiceRegistration) -> bool:
    return svc.health in ("", "passing")


FLEET_CHUNK = 5_000  # allocations per WatchFleet message (~2 MB)


class DeploymentEndpoint(_Base, rpc.DeploymentServiceServicer):
    SERVICE = "DeploymentService"

    @_rpc("read")
    def List(self, request: pb.DeploymentListRequest, context: Any) -> pb.DeploymentListResponse:
        meta = self._block(request.query, "deployments")
        deps = [
            d
            for d in self.server.state.deployments()
            if not request.job_id or d.job_id == request.job_id
        ]
        deps.sort(key=lambda d: d.create_index, reverse=True)
        return pb.DeploymentListResponse(deployments=deps, meta=meta)

    @_rpc("read")
    def Get(self, request: pb.DeploymentGetRequest, context: Any) -> pb.DeploymentGetResponse:
        meta = self._block(request.query, "deployments")
        return pb.DeploymentGetResponse(
            deployment=self.server.resolve_deployment(request.deployment_id), meta=meta
        )

    @_rpc("write")
    def Promote(
        self, request: pb.DeploymentPromoteRequest, context: Any
    ) -> pb.DeploymentWriteResponse:
        return self.server.promote_deployment(request.deployment_id, list(request.groups))

    @_rpc("write")
    def Fail(self, request: pb.DeploymentFailRequest, context: Any) -> pb.DeploymentWriteResponse:
        return self.server.fail_deployment(request.deployment_id)


class CatalogEndpoint(_Base, rpc.ServiceCatalogServicer):
    SERVICE = "ServiceCatalog"

    @_rpc("read")
    def List(self, request: pb.ServiceListRequest, context: Any) -> pb.ServiceListResponse:
        meta = self._block(request.query, "services")
        ns = _ns(request.query.namespace)
        tags: dict[str, set[str]] = {}
        for svc in self.server.state.services():
            if svc.namespace == ns and _passing(svc):
                tags.setdefault(svc.service_name, set()).update(svc.tags)
        stubs = [pb.ServiceStub(service_name=n, tags=sorted(t)) for n, t in sorted(tags.items())]
        return pb.ServiceListResponse(namespace=ns, services=stubs, meta=meta)

    @_rpc("read")
    def Get(self, request: pb.ServiceGetRequest, context: Any) -> pb.ServiceGetResponse:
        meta = self._block(request.query, "services")
        found = self.server.state.services_by_name(_ns(request.query.namespace), request.name)
        instances = [s for s in found if request.any_health or _passing(s)]
        instances.sort(key=lambda s: (s.create_index, s.id))
        return pb.ServiceGetResponse(instances=instances, meta=meta)


class StatusEndpoint(_Base, rpc.StatusServiceServicer):
    SERVICE = "StatusService"

    # Local, as Nomad's /v1/status/leader: this server's view, even with no leader.
    @_rpc("local")
    def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        return pb.StatusResponse(
            leader=self.server.raft.leader(),
            members=self.server.members(),
            index=self.server.state.index,
        )


class OperatorEndpoint(_Base, rpc.OperatorServiceServicer):
    SERVICE = "OperatorService"

    @_rpc("read")
    def RaftListPeers(self, request: pb.StatusRequest, context: Any) -> pb.RaftPeersResponse:
        servers = [
            pb.RaftServer(
                id=m.raft_address,
                node=m.name,
                address=m.raft_address,
                leader=m.leader,
                voter=m.voter,
                raft_protocol="3",
            )
            for m in self.server.members()
        ]
        return pb.RaftPeersResponse(servers=servers, index=self.server.state.index)

    @_rpc("write")
    def RaftAddPeer(self, request: pb.RaftPeerRequest, context: Any) -> pb.WriteResponse:
        self.server.change_membership(request.address, add=True)
        return pb.WriteResponse(index=self.server.state.index)

    @_rpc("write")
    def SystemGC(self, request: pb.StatusRequest, context: Any) -> pb.SystemGCResponse:
        return self.server.system_gc()

    @_rpc("write")
    def RaftRemovePeer(self, request: pb.RaftPeerRequest, context: Any) -> pb.WriteResponse:
        self.server.change_membership(request.address, add=False)
        return pb.WriteResponse(index=self.server.state.index)

    @_rpc("local")
    def StateDigest(self, request: pb.StatusRequest, context: Any) -> pb.StateDigestResponse:
        return pb.StateDigestResponse(
            digest=self.server.fsm.digest(), index=self.server.state.index
        )

    @_rpc("write")
    def RegisterServer(self, request: pb.ServerMember, context: Any) -> pb.WriteResponse:
        result = self.server.propose(
            pb.Command(server_register=pb.ServerRegisterCommand(member=request))
        )
        return pb.WriteResponse(index=result.index)


def add_to_grpc(server: Server, grpc_server: grpc.Server) -> Forwarder:
    fwd = Forwarder(server.leader_rpc_addr, server.is_leader)
    rpc.add_JobServiceServicer_to_server(JobEndpoint(server, fwd), grpc_server)
    rpc.add_AllocServiceServicer_to_server(AllocEndpoint(server, fwd), grpc_server)
    rpc.add_EvalServiceServicer_to_server(EvalEndpoint(server, fwd), grpc_server)
    rpc.add_NodeServiceServicer_to_server(NodeEndpoint(server, fwd), grpc_server)
    rpc.add_StatusServiceServicer_to_server(StatusEndpoint(server, fwd), grpc_server)
    rpc.add_OperatorServiceServicer_to_server(OperatorEndpoint(server, fwd), grpc_server)
    rpc.add_ServiceCatalogServicer_to_server(CatalogEndpoint(server, fwd), grpc_server)
    rpc.add_DeploymentServiceServicer_to_server(DeploymentEndpoint(server, fwd), grpc_server)
    server.forwarder = fwd
    return fwd
