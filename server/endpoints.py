"""gRPC endpoints of the server agent: thin adapters from RPCs to ``Server``.

Errors map to gRPC status codes the CLI relies on: INVALID_ARGUMENT (bad input,
every problem one per line), NOT_FOUND, FAILED_PRECONDITION (ambiguous prefix),
UNAVAILABLE (no leader / write outcome unknown).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from corral import structs
from corral.proto import pb, rpc
from corral.server.raft import NotLeaderError, ProposalError
from corral.server.server import Ambiguous, InvalidRequest, NotFound, Server

log = logging.getLogger(__name__)

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0

F = TypeVar("F", bound=Callable[..., Any])


def _errors(fn: F) -> F:
    """Translate our exceptions to gRPC status codes with readable details."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except InvalidRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "\n".join(exc.problems))
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except Ambiguous as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except NotLeaderError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except ProposalError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    return wrapper  # type: ignore[return-value]


def _stream_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            yield from fn(self, request, context)
        except NotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except Ambiguous as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except InvalidRequest as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "\n".join(exc.problems))

    return wrapper  # type: ignore[return-value]


class _Base:
    def __init__(self, server: Server) -> None:
        self.server = server

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
    @_errors
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

    @_errors
    def Deregister(
        self, request: pb.JobDeregisterRequest, context: Any
    ) -> pb.JobDeregisterResponse:
        return self.server.deregister_job(request.namespace, request.job_id, request.purge)

    @_errors
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

    @_errors
    def Get(self, request: pb.JobGetRequest, context: Any) -> pb.JobGetResponse:
        meta = self._block(request.query, "jobs")
        job = self._job(request.namespace, request.job_id)
        return pb.JobGetResponse(job=self.server.with_status(job), meta=meta)

    @_errors
    def Allocations(
        self, request: pb.JobAllocationsRequest, context: Any
    ) -> pb.AllocationsResponse:
        meta = self._block(request.query, "allocs")
        allocs = self.server.state.allocs_by_job(_ns(request.namespace), request.job_id)
        allocs.sort(key=lambda a: (a.create_index, a.name))
        return pb.AllocationsResponse(allocs=allocs, meta=meta)

    @_errors
    def Versions(self, request: pb.JobGetRequest, context: Any) -> pb.JobVersionsResponse:
        meta = self._block(request.query, "jobs")
        self._job(request.namespace, request.job_id)
        versions = self.server.state.job_versions(_ns(request.namespace), request.job_id)
        return pb.JobVersionsResponse(versions=versions, meta=meta)

    @_errors
    def Evaluations(self, request: pb.JobGetRequest, context: Any) -> pb.JobEvaluationsResponse:
        meta = self._block(request.query, "evals")
        evals = self.server.state.evals_by_job(_ns(request.namespace), request.job_id)
        evals.sort(key=lambda e: e.create_index)
        return pb.JobEvaluationsResponse(evals=evals, meta=meta)


class AllocEndpoint(_Base, rpc.AllocServiceServicer):
    @_errors
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

    @_errors
    def Get(self, request: pb.AllocGetRequest, context: Any) -> pb.AllocGetResponse:
        meta = self._block(request.query, "allocs")
        alloc = self.server.resolve_alloc(request.alloc_id)
        full = pb.Allocation()
        full.CopyFrom(alloc)
        job = self.server.state.job_version(alloc.namespace, alloc.job_id, alloc.job_version)
        if job is not None:
            full.job.CopyFrom(job)
        return pb.AllocGetResponse(alloc=full, meta=meta)

    @_errors
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

    @_stream_errors
    def Logs(self, request: pb.AllocLogsRequest, context: Any) -> Iterator[pb.LogChunk]:
        alloc = self.server.resolve_alloc(request.alloc_id)
        node = self.server.state.node(alloc.node_id)
        if node is None or not node.rpc_addr:
            raise NotFound(f"node {alloc.node_id} of allocation {alloc.id[:8]} is unknown")
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


class EvalEndpoint(_Base, rpc.EvalServiceServicer):
    @_errors
    def Get(self, request: pb.EvalGetRequest, context: Any) -> pb.EvalGetResponse:
        meta = self._block(request.query, "evals")
        return pb.EvalGetResponse(eval=self.server.resolve_eval(request.eval_id), meta=meta)

    @_errors
    def List(self, request: pb.EvalListRequest, context: Any) -> pb.EvalListResponse:
        meta = self._block(request.query, "evals")
        evals = [
            e
            for e in self.server.state.evals()
            if e.id.startswith(request.prefix) and (not request.job_id or e.job_id == request.job_id)
        ]
        evals.sort(key=lambda e: e.create_index)
        return pb.EvalListResponse(evals=evals, meta=meta)


class NodeEndpoint(_Base, rpc.NodeServiceServicer):
    @_errors
    def Register(self, request: pb.NodeRegisterRequest, context: Any) -> pb.NodeHeartbeatResponse:
        return self.server.register_node(request.node)

    @_errors
    def Heartbeat(
        self, request: pb.NodeHeartbeatRequest, context: Any
    ) -> pb.NodeHeartbeatResponse:
        return self.server.heartbeat(request.node_id, request.secret_id)

    @_stream_errors
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

    @_errors
    def UpdateAllocations(
        self, request: pb.NodeUpdateAllocsRequest, context: Any
    ) -> pb.NodeUpdateAllocsResponse:
        index = self.server.update_allocs_from_client(list(request.allocs))
        return pb.NodeUpdateAllocsResponse(index=index)

    @_errors
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

    @_errors
    def Get(self, request: pb.NodeGetRequest, context: Any) -> pb.NodeGetResponse:
        meta = self._block(request.query, "nodes")
        node = pb.Node()
        node.CopyFrom(self.server.resolve_node(request.node_id))
        node.secret_id = ""
        return pb.NodeGetResponse(node=node, meta=meta)

    @_errors
    def SetEligibility(self, request: pb.NodeEligibilityRequest, context: Any) -> pb.WriteResponse:
        return self.server.set_eligibility(request.node_id, request.eligible)

    @_errors
    def SetDrain(self, request: pb.NodeDrainRequest, context: Any) -> pb.WriteResponse:
        raise InvalidRequest(["node drain is not supported yet"])


class StatusEndpoint(_Base, rpc.StatusServiceServicer):
    @_errors
    def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        leader = self.server.raft.leader()
        me = self.server.raft.self_address()
        member = pb.ServerMember(
            id=me,
            name=me,
            address=me,
            raft_address=me,
            raft_state="leader" if self.server.is_leader() else "follower",
            leader=self.server.is_leader(),
            voter=True,
            last_index=self.server.state.index,
            healthy=True,
        )
        return pb.StatusResponse(leader=leader, members=[member], index=self.server.state.index)


def add_to_grpc(server: Server, grpc_server: grpc.Server) -> None:
    rpc.add_JobServiceServicer_to_server(JobEndpoint(server), grpc_server)
    rpc.add_AllocServiceServicer_to_server(AllocEndpoint(server), grpc_server)
    rpc.add_EvalServiceServicer_to_server(EvalEndpoint(server), grpc_server)
    rpc.add_NodeServiceServicer_to_server(NodeEndpoint(server), grpc_server)
    rpc.add_StatusServiceServicer_to_server(StatusEndpoint(server), grpc_server)
