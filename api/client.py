"""A thin, typed client over corral's gRPC services, used by the CLI (and tests).

Why a wrapper at all: the CLI should speak in domain objects (``pb.Job``,
``pb.Allocation``) and one error type, not in request envelopes and
``grpc.RpcError``. Every failure, whether the server refused the request or could
not be reached, becomes :class:`APIError` with a one-line message a person can act
on, so that the CLI prints ``Error: ...`` and never a traceback.

Reachability: a refused connection must fail at once, and an address that never
answers must fail after a short connect deadline rather than after the (longer)
per-call timeout. Before its first call the client opens (and closes) a TCP
connection to the address with ``connect_timeout``; calls then run with
``wait_for_ready=False`` so that a server that goes away later also fails fast, and
gRPC's UNAVAILABLE/DEADLINE_EXCEEDED are translated into ``cannot reach a corral
server at ADDR (connection refused)`` and the like.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from corral.proto import pb, rpc

DEFAULT_PORT = 4647
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
DEFAULT_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 3.0
ENV_ADDRESS = "CORRAL_ADDR"

T = TypeVar("T")


class APIError(Exception):
    """Any failure of a call to a corral server, with a readable message.

    ``code`` is the gRPC status code when the server answered (``NOT_FOUND``,
    ``INVALID_ARGUMENT``, ...), ``UNAVAILABLE``/``DEADLINE_EXCEEDED`` when it could
    not be reached, and ``None`` for errors raised by the client itself. The message
    is one line, except for ``INVALID_ARGUMENT`` whose details list one problem per
    line (a job with several mistakes should show all of them at once).
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def not_found(self) -> bool:
        return bool(self.code == grpc.StatusCode.NOT_FOUND)

    @property
    def unreachable(self) -> bool:
        return bool(self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))


def resolve_address(address: str | None = None) -> str:
    """The gRPC address to dial: argument, else ``$CORRAL_ADDR``, else the default.

    A scheme (``http://``, ``grpc://``) is tolerated and dropped because people
    copy addresses from Nomad's ``NOMAD_ADDR``; a missing port means 4647.
    """
    addr = (address or os.environ.get(ENV_ADDRESS) or DEFAULT_ADDRESS).strip()
    for scheme in ("http://", "https://", "grpc://", "dns:///"):
        if addr.startswith(scheme):
            addr = addr[len(scheme) :]
    addr = addr.rstrip("/")
    if not addr:
        return DEFAULT_ADDRESS
    if addr.startswith("["):  # [v6] or [v6]:port
        return addr if "]:" in addr else f"{addr}:{DEFAULT_PORT}"
    colons = addr.count(":")
    if colons == 0:
        return f"{addr}:{DEFAULT_PORT}"
    if colons > 1:  # a bare IPv6 address
        return f"[{addr}]:{DEFAULT_PORT}"
    return addr


# How gRPC-core's own connection failures begin, as opposed to a server that
# answered UNAVAILABLE on purpose ("no cluster leader", "cannot reach the client of
# node ...": those are passed through, since the server itself was reached).
_CONNECT_MARKERS = (
    "failed to connect",
    "connection refused",
    "connection reset",
    "connections to all backends failing",
    "socket closed",
    "dns resolution failed",
    "name resolution",
    "broken pipe",
    "no route to host",
    "network is unreachable",
    "handshake",
    "end of tcp stream",
)


_PROXY_VARS = ("grpc_proxy", "https_proxy", "http_proxy", "GRPC_PROXY", "HTTPS_PROXY", "HTTP_PROXY")


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``[v6]:port``; None for other targets."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _reason(details: str) -> str:
    """A short cause from gRPC's long connection error text."""
    low = details.lower()
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("connection reset", "connection reset"),
        ("no route to host", "no route to host"),
        ("network is unreachable", "network unreachable"),
        ("dns resolution failed", "unknown host"),
        ("name or service not known", "unknown host"),
        ("deadline", "timed out"),
        ("timeout", "timed out"),
        ("timed out", "timed out"),
        ("socket closed", "connection closed"),
        ("ssl", "TLS handshake failed"),
    ):
        if needle in low:
            return reason
    return details.splitlines()[0] if details else "unavailable"


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


class CorralClient:
    """Calls to one corral server (any server: writes are forwarded to the leader).

    Each method returns messages of ``corral.proto`` or raises :class:`APIError`.
    ``timeout`` bounds every unary call; log streams that follow have no deadline.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        namespace: str = "",
        stale: bool = False,
    ) -> None:
        self.address = resolve_address(address)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.namespace = namespace
        # Reads served by whichever server answers, without going to the leader
        # (may lag a little; useful when there is no leader).
        self.stale = stale
        self._channel = grpc.insecure_channel(self.address)
        self._jobs = rpc.JobServiceStub(self._channel)
        self._allocs = rpc.AllocServiceStub(self._channel)
        self._evals = rpc.EvalServiceStub(self._channel)
        self._nodes = rpc.NodeServiceStub(self._channel)
        self._status = rpc.StatusServiceStub(self._channel)
        self._operator = rpc.OperatorServiceStub(self._channel)
        self._checked = False

    # ------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CorralClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, reason: str, code: grpc.StatusCode) -> APIError:
        return APIError(f"cannot reach a corral server at {self.address} ({reason})", code)

    def _wait_connected(self) -> None:
        """Before the first call, check (once) that something listens at the address.

        A plain TCP connect answers both questions that matter to a person at a
        terminal within ``connect_timeout``: "refused" at once, "no answer" after the
        short deadline, instead of a gRPC call waiting out its full timeout. gRPC's
        own connectivity watchers are not used: they run a polling thread that races
        with ``close()`` and prints a stray traceback. Skipped behind an HTTP proxy
        (gRPC honours ``*_proxy``; the direct connect would not mean anything).
        """
        if self._checked:
            return
        if any(os.environ.get(name) for name in _PROXY_VARS):
            self._checked = True
            return
        target = _host_port(self.address)
        if target is None:
            self._checked = True
            return
        try:
            with socket.create_connection(target, timeout=self.connect_timeout):
                pass
        except TimeoutError:
            raise self._unreachable(
                f"no answer within {self.connect_timeout:g}s", grpc.StatusCode.DEADLINE_EXCEEDED
            ) from None
        except socket.gaierror:
            raise self._unreachable("unknown host", grpc.StatusCode.UNAVAILABLE) from None
        except ConnectionRefusedError:
            raise self._unreachable("connection refused", grpc.StatusCode.UNAVAILABLE) from None
        except OSError as err:
            reason = (err.strerror or str(err)).lower()
            raise self._unreachable(reason, grpc.StatusCode.UNAVAILABLE) from None
        self._checked = True

    def _error(self, err: grpc.RpcError) -> APIError:
        code: grpc.StatusCode | None = err.code() if hasattr(err, "code") else None
        details = (err.details() if hasattr(err, "details") else "") or ""
        if code == grpc.StatusCode.UNAVAILABLE:
            low = details.lower().lstrip()
            if not details or low.startswith(_CONNECT_MARKERS):
                return self._unreachable(_reason(details), code)
            return APIError(_one_line(details), code)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return APIError(f"request to {self.address} timed out after {self.timeout:g}s", code)
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return APIError(
                f"the server at {self.address} does not implement this call "
                f"({_one_line(details) or 'unimplemented'})",
                code,
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            text = "\n".join(line.rstrip() for line in details.strip().splitlines() if line.strip())
            return APIError(text or "invalid request", code)
        name = code.name.lower().replace("_", " ") if code is not None else "error"
        return APIError(_one_line(details) or name, code)

    def _call(self, method: Callable[..., T], request: Any) -> T:
        self._wait_connected()
        try:
            result: T = method(request, timeout=self.timeout, wait_for_ready=False)
        except grpc.RpcError as err:
            raise self._error(err) from None
        return result

    def _query(self) -> pb.QueryOptions:
        return pb.QueryOptions(namespace=self.namespace, stale=self.stale)

    # ------------------------------------------------------------ jobs

    def register_job(
        self, job: pb.Job, *, enforce_index: bool = False, job_modify_index: int = 0
    ) -> pb.JobRegisterResponse:
        """Register (create or update) a job; the answer carries the new eval's ID.

        With ``enforce_index`` the server registers only if the job's current
        JobModifyIndex equals ``job_modify_index`` (0: the job must not exist), which
        is Nomad's ``-check-index`` for safe read-modify-write.
        """
        req = pb.JobRegisterRequest(
            job=job, enforce_index=enforce_index, job_modify_index=job_modify_index
        )
        resp: pb.JobRegisterResponse = self._call(self._jobs.Register, req)
        return resp

    def deregister_job(self, job_id: str, *, purge: bool = False) -> pb.JobDeregisterResponse:
        req = pb.JobDeregisterRequest(job_id=job_id, namespace=self.namespace, purge=purge)
        resp: pb.JobDeregisterResponse = self._call(self._jobs.Deregister, req)
        return resp

    def list_jobs(self, prefix: str = "") -> list[pb.JobListStub]:
        resp = self._call(self._jobs.List, pb.JobListRequest(query=self._query(), prefix=prefix))
        return list(resp.jobs)

    def get_job(self, job_id: str) -> pb.Job:
        req = pb.JobGetRequest(query=self._query(), job_id=job_id, namespace=self.namespace)
        resp: pb.JobGetResponse = self._call(self._jobs.Get, req)
        return resp.job

    def job_allocations(self, job_id: str, *, all: bool = False) -> list[pb.Allocation]:
        req = pb.JobAllocationsRequest(
            query=self._query(), job_id=job_id, namespace=self.namespace, all=all
        )
        return list(self._call(self._jobs.Allocations, req).allocs)

    def job_versions(self, job_id: str) -> list[pb.Job]:
        req = pb.JobGetRequest(query=self._query(), job_id=job_id, namespace=self.namespace)
        return list(self._call(self._jobs.Versions, req).versions)

    def job_evaluations(self, job_id: str) -> list[pb.Evaluation]:
        req = pb.JobGetRequest(query=self._query(), job_id=job_id, namespace=self.namespace)
        return list(self._call(self._jobs.Evaluations, req).evals)

    def plan_job(self, job: pb.Job, *, diff: bool = True) -> pb.JobPlanResponse:
        """Dry-run the scheduler for ``job``: what registering it would change.

        Nothing is written; the answer's ``job_modify_index`` is what ``register_job``
        with ``enforce_index`` expects, so a plan can be applied only if nobody
        changed the job in between.
        """
        resp: pb.JobPlanResponse = self._call(
            self._jobs.Plan, pb.JobPlanRequest(job=job, diff=diff)
        )
        return resp

    def validate_job(self, job: pb.Job) -> pb.JobValidateResponse:
        """The server's verdict on ``job`` (its problems come back in the answer,
        not as an error, so that all of them can be shown at once)."""
        resp: pb.JobValidateResponse = self._call(
            self._jobs.Validate, pb.JobValidateRequest(job=job)
        )
        return resp

    def scale_job(
        self, job_id: str, group: str, count: int, *, message: str = ""
    ) -> pb.JobRegisterResponse:
        """Set one group's count (a new job version and an evaluation)."""
        req = pb.JobScaleRequest(
            job_id=job_id, namespace=self.namespace, group=group, count=count, message=message
        )
        resp: pb.JobRegisterResponse = self._call(self._jobs.Scale, req)
        return resp

    def revert_job(
        self, job_id: str, version: int, *, enforce_prior_version: int | None = None
    ) -> pb.JobRegisterResponse:
        """Register an older version of the job again (as a new version).

        With ``enforce_prior_version`` the server reverts only if the current
        version is that one (a guard against racing another operator).
        """
        req = pb.JobRevertRequest(job_id=job_id, namespace=self.namespace, version=version)
        if enforce_prior_version is not None:
            req.enforce_prior_version = enforce_prior_version
        resp: pb.JobRegisterResponse = self._call(self._jobs.Revert, req)
        return resp

    # ------------------------------------------------------------ allocations

    def list_allocs(self, *, prefix: str = "", node_id: str = "") -> list[pb.Allocation]:
        req = pb.AllocListRequest(query=self._query(), prefix=prefix, node_id=node_id)
        return list(self._call(self._allocs.List, req).allocs)

    def get_alloc(self, alloc_id: str) -> pb.Allocation:
        """One allocation by full ID or unambiguous prefix."""
        req = pb.AllocGetRequest(query=self._query(), alloc_id=alloc_id)
        resp: pb.AllocGetResponse = self._call(self._allocs.Get, req)
        return resp.alloc

    def stop_alloc(self, alloc_id: str) -> pb.AllocStopResponse:
        req = pb.AllocStopRequest(alloc_id=alloc_id)
        resp: pb.AllocStopResponse = self._call(self._allocs.Stop, req)
        return resp

    def restart_alloc(self, alloc_id: str, task: str = "") -> pb.AllocRestartResponse:
        """Restart one task of the allocation in place ("" = every task)."""
        req = pb.AllocRestartRequest(alloc_id=alloc_id, task=task)
        resp: pb.AllocRestartResponse = self._call(self._allocs.Restart, req)
        return resp

    def alloc_logs(
        self,
        alloc_id: str,
        task: str,
        *,
        stderr: bool = False,
        follow: bool = False,
        offset: int = 0,
        origin: str = "start",
    ) -> Iterator[bytes]:
        """The task's stdout (or stderr) as raw byte chunks.

        Without ``follow`` the stream ends at the current end of the log and is
        bounded by the call timeout; with ``follow`` it stays open (no deadline)
        until the caller stops iterating or the server closes it.
        """
        req = pb.AllocLogsRequest(
            alloc_id=alloc_id,
            task=task,
            type="stderr" if stderr else "stdout",
            follow=follow,
            offset=offset,
            origin=origin,
        )
        self._wait_connected()
        timeout = None if follow else max(self.timeout, 60.0)
        try:
            stream = self._allocs.Logs(req, timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as err:
            raise self._error(err) from None
        return self._iter_stream(stream)

    def _iter_stream(self, stream: Any) -> Iterator[bytes]:
        try:
            for chunk in stream:
                yield chunk.data
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._error(err) from None
        finally:
            stream.cancel()

    # ------------------------------------------------------------ evaluations

    def get_eval(self, eval_id: str) -> pb.Evaluation:
        req = pb.EvalGetRequest(query=self._query(), eval_id=eval_id)
        resp: pb.EvalGetResponse = self._call(self._evals.Get, req)
        return resp.eval

    def list_evals(self, *, prefix: str = "", job_id: str = "") -> list[pb.Evaluation]:
        req = pb.EvalListRequest(query=self._query(), prefix=prefix, job_id=job_id)
        return list(self._call(self._evals.List, req).evals)

    # ------------------------------------------------------------ nodes

    def list_nodes(self, prefix: str = "") -> list[pb.Node]:
        req = pb.NodeListRequest(query=self._query(), prefix=prefix)
        return list(self._call(self._nodes.List, req).nodes)

    def get_node(self, node_id: str) -> pb.Node:
        req = pb.NodeGetRequest(query=self._query(), node_id=node_id)
        resp: pb.NodeGetResponse = self._call(self._nodes.Get, req)
        return resp.node

    def set_node_eligibility(self, node_id: str, eligible: bool) -> pb.WriteResponse:
        """Allow or forbid new placements on the node (running allocations stay)."""
        req = pb.NodeEligibilityRequest(node_id=node_id, eligible=eligible)
        resp: pb.WriteResponse = self._call(self._nodes.SetEligibility, req)
        return resp

    def set_node_drain(
        self,
        node_id: str,
        enable: bool,
        *,
        deadline: int = 0,
        ignore_system_jobs: bool = False,
        mark_eligible: bool = False,
    ) -> pb.WriteResponse:
        """Start (``enable``) or cancel a drain of the node.

        ``deadline`` is in nanoseconds, as Nomad's DrainSpec: > 0 forces the
        remaining allocations off after that long, 0 means no deadline, -1 forces
        them off at once. ``mark_eligible`` makes the node eligible again when a
        drain is cancelled.
        """
        req = pb.NodeDrainRequest(
            node_id=node_id,
            enable=enable,
            deadline=deadline,
            ignore_system_jobs=ignore_system_jobs,
            mark_eligible=mark_eligible,
        )
        resp: pb.WriteResponse = self._call(self._nodes.SetDrain, req)
        return resp

    # ------------------------------------------------------------ services

    def list_services(self) -> pb.ServiceListResponse:
        """Services with at least one passing instance, with their tags."""
        req = pb.ServiceListRequest(query=self._query())
        resp: pb.ServiceListResponse = self._call(rpc.ServiceCatalogStub(self._channel).List, req)
        return resp

    def get_service(self, name: str, *, any_health: bool = False) -> list[pb.ServiceRegistration]:
        """The instances of a service: passing ones, or all with ``any_health``
        (their ``health`` says which). An unknown service is an empty list."""
        req = pb.ServiceGetRequest(query=self._query(), name=name, any_health=any_health)
        resp: pb.ServiceGetResponse = self._call(rpc.ServiceCatalogStub(self._channel).Get, req)
        return list(resp.instances)

    # ------------------------------------------------------------ deployments

    def list_deployments(self, job_id: str = "") -> list[pb.Deployment]:
        """Deployments, newest first; only those of ``job_id`` when given."""
        req = pb.DeploymentListRequest(query=self._query(), job_id=job_id)
        stub = rpc.DeploymentServiceStub(self._channel)
        resp: pb.DeploymentListResponse = self._call(stub.List, req)
        return list(resp.deployments)

    def get_deployment(self, id_or_prefix: str) -> pb.Deployment:
        """One deployment by full ID or unambiguous prefix."""
        return self.watch_deployment(id_or_prefix)[0]

    def watch_deployment(
        self, id_or_prefix: str, *, min_index: int = 0, max_wait: float = 0.0
    ) -> tuple[pb.Deployment, int]:
        """A blocking read of one deployment: ``(deployment, index)``.

        With ``min_index`` the server answers once the deployments table has passed
        that index, or after ``max_wait`` seconds, whichever is first; the returned
        index is what to pass as the next ``min_index``. The table's index is used
        rather than the deployment's ModifyIndex because the server blocks on the
        table: waiting on an older per-object index would return at once. The call's
        deadline is ``max_wait`` plus the usual timeout, so that a long wait is not
        mistaken for an unreachable server.
        """
        query = self._query()
        query.min_index = min_index
        query.max_wait = int(max_wait * 1e9) if min_index else 0
        req = pb.DeploymentGetRequest(query=query, deployment_id=id_or_prefix)
        stub = rpc.DeploymentServiceStub(self._channel)
        self._wait_connected()
        try:
            resp: pb.DeploymentGetResponse = stub.Get(
                req, timeout=self.timeout + (max_wait if min_index else 0.0), wait_for_ready=False
            )
        except grpc.RpcError as err:
            raise self._error(err) from None
        return resp.deployment, resp.meta.index

    def promote_deployment(
        self, deployment_id: str, groups: tuple[str, ...] | list[str] = ()
    ) -> pb.DeploymentWriteResponse:
        """Promote the canaries of a running deployment (all groups, or ``groups``);
        the answer carries the evaluation that continues the rollout."""
        req = pb.DeploymentPromoteRequest(deployment_id=deployment_id, groups=list(groups))
        stub = rpc.DeploymentServiceStub(self._channel)
        resp: pb.DeploymentWriteResponse = self._call(stub.Promote, req)
        return resp

    def fail_deployment(self, deployment_id: str) -> pb.DeploymentWriteResponse:
        """Mark a running deployment failed (with auto-revert, the last stable version
        is registered again: ``reverted_job_version`` says which)."""
        req = pb.DeploymentFailRequest(deployment_id=deployment_id)
        stub = rpc.DeploymentServiceStub(self._channel)
        resp: pb.DeploymentWriteResponse = self._call(stub.Fail, req)
        return resp

    # ------------------------------------------------------------ cluster

    def status(self) -> pb.StatusResponse:
        resp: pb.StatusResponse = self._call(self._status.Status, pb.StatusRequest())
        return resp

    def raft_list_peers(self) -> pb.RaftPeersResponse:
        """The raft configuration: every voting server and who leads."""
        resp: pb.RaftPeersResponse = self._call(self._operator.RaftListPeers, pb.StatusRequest())
        return resp

    def raft_add_peer(self, address: str) -> pb.WriteResponse:
        """Add the server whose raft address is ``address`` (host:port) to the cluster."""
        resp: pb.WriteResponse = self._call(
            self._operator.RaftAddPeer, pb.RaftPeerRequest(address=address)
        )
        return resp

    def system_gc(self) -> pb.SystemGCResponse:
        """Garbage-collect every terminal evaluation and allocation now."""
        resp: pb.SystemGCResponse = self._call(self._operator.SystemGC, pb.StatusRequest())
        return resp

    def raft_remove_peer(self, address: str) -> pb.WriteResponse:
        """Remove the server whose raft address is ``address`` from the cluster."""
        resp: pb.WriteResponse = self._call(
            self._operator.RaftRemovePeer, pb.RaftPeerRequest(address=address)
        )
        return resp
