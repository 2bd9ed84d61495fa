"""The real corral server in this process, over real gRPC, for the CLI's tests.

Why the real server rather than the scripted fake (``fake_server``): a CLI test
that only needs what the server really does (validation, placement and its
failure metrics, plans and diffs, job versions, scaling, reverts) should get the
server's own answers; a fake that re-implements them drifts, and a test passing
against the drift proves nothing about ``corral`` against ``corral``. The fake
stays for what only a script can do (a rollout's progress step by step, a drain
that advances on demand, a cluster membership to taste).

It is ``Server(ServerConfig(in_memory=True, num_workers=1))`` (no raft ports, no
data dir; one scheduler worker), served on 127.0.0.1 the way ``corral.agent``
serves it (``endpoints.add_to_grpc``). There are no client agents: the helpers
here play their part through the server's API (register nodes, report
allocations running or stopped), so tests arrange a cluster as clients would.

Every request is recorded and errors can be injected (:class:`RequestLog`, a gRPC
interceptor), so that a test can assert what the CLI sent, on either server.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

from corral import structs
from corral.proto import pb
from corral.server.endpoints import add_to_grpc
from corral.server.server import Server, ServerConfig
from tests.support.env import free_port
from tests.support.wait import wait_for

#: How long a test waits for the scheduler (one worker, usually milliseconds).
SETTLE_TIMEOUT = 10.0


class RequestLog(grpc.ServerInterceptor):  # type: ignore[misc]
    """Records ``(method, request)`` for every call; answers injected errors and
    scripted responses instead of calling the method.

    Methods are named without their service (``"Register"``, ``"List"``), as the
    tests have always named them: an error injected for ``"List"`` answers every
    service's ``List``. Streaming calls (``Logs``) are recorded, never scripted.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        #: Method name -> (code, details) answered instead of calling the method.
        self.inject_errors: dict[str, tuple[grpc.StatusCode, str]] = {}
        #: Method name -> the response answered instead of calling the method.
        self.answers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def of(self, method: str) -> list[Any]:
        """The requests of ``method``, oldest first."""
        with self._lock:
            return [r for name, r in self.requests if name == method]

    def _before(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        """Record the call; abort with an injected error; else the scripted answer."""
        with self._lock:
            self.requests.append((method, request))
            injected = self.inject_errors.get(method)
            answer = self.answers.get(method)
        if injected is not None:
            context.abort(*injected)
        return answer

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            def call(request: Any, context: grpc.ServicerContext) -> Any:
                answer = self._before(method, request, context)
                return answer if answer is not None else unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                call,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            def call_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                self._before(method, request, context)
                yield from stream(request, context)

            return grpc.unary_stream_rpc_method_handler(
                call_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class InProcServer:
    """A running in-memory server: ``address`` to dial, ``server`` to inspect.

    Use it as a context manager: it starts the server, waits for it to lead, serves
    gRPC; on exit it stops gRPC, then the server (see :meth:`stop`).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.server = Server(
            ServerConfig(
                in_memory=True,
                num_workers=1,
                name="inproc",
                rpc_address=self.address,
                # No client heartbeats here: nodes must not go down mid-test.
                min_heartbeat_ttl=3600.0,
                failover_heartbeat_ttl=3600.0,
            )
        )
        self.log = RequestLog()
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="inproc-grpc"),
            interceptors=[self.log],
        )
        add_to_grpc(self.server, self._grpc)
        if self._grpc.add_insecure_port(self.address) == 0:
            raise OSError(f"cannot listen for gRPC on {self.address}")

    def start(self) -> InProcServer:
        self.server.start()
        try:
            if not self.server.wait_leader(5):
                raise RuntimeError("the in-memory server did not become leader in 5s")
            self._grpc.start()
        except BaseException:
            self.server.stop()
            raise
        return self

    def stop(self, *, wait: bool = False) -> None:
        """Stop serving at once, then stop the server; in the background unless
        ``wait``: its leader loops (drainer, deployment watcher) notice a stop only
        when their 1 s blocking read ends, which would add a second to every test.
        Nothing reaches it meanwhile (gRPC is down) and its threads are daemons."""
        self._grpc.stop(grace=None)
        if wait:
            self.server.stop()
        else:
            threading.Thread(target=self.server.stop, name="inproc-stop", daemon=True).start()

    def __enter__(self) -> InProcServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- inspecting

    def job(self, job_id: str) -> pb.Job:
        job = self.server.state.job(structs.DEFAULT_NAMESPACE, job_id)
        assert job is not None, f"no job {job_id!r}"
        return job

    def allocs(self, job_id: str = "") -> list[pb.Allocation]:
        """Allocations (of ``job_id`` when given), oldest first."""
        allocs = (
            self.server.state.allocs_by_job(structs.DEFAULT_NAMESPACE, job_id)
            if job_id
            else self.server.state.allocs()
        )
        return sorted(allocs, key=lambda a: (a.create_index, a.alloc_index))

    def evals(self, job_id: str = "") -> list[pb.Evaluation]:
        """Evaluations (of ``job_id`` when given), oldest first."""
        evals = (
            self.server.state.evals_by_job(structs.DEFAULT_NAMESPACE, job_id)
            if job_id
            else self.server.state.evals()
        )
        return sorted(evals, key=lambda e: e.create_index)

    def eval(self, eval_id: str) -> pb.Evaluation:
        ev = self.server.state.eval(eval_id)
        assert ev is not None, f"no evaluation {eval_id!r}"
        return ev

    # ---------------------------------------------------------------- arranging

    def add_node(
        self,
        name: str,
        *,
        datacenter: str = "dc1",
        node_class: str = "",
        cpu: int = 4000,
        memory_mb: int = 4096,
        attributes: dict[str, str] | None = None,
        node_id: str = "",
    ) -> pb.Node:
        """Register a ready node with the mock and docker drivers, as a client would."""
        node = pb.Node(
            id=node_id or str(uuid.uuid4()),
            secret_id=str(uuid.uuid4()),
            name=name,
            datacenter=datacenter,
            node_class=node_class,
            http_addr="127.0.0.1:4646",
            attributes={
                "kernel.name": "linux",
                "cpu.arch": "amd64",
                "unique.hostname": name,
                "unique.network.ip-address": "127.0.0.1",
                **(attributes or {}),
            },
            status=structs.NODE_STATUS_READY,
            scheduling_eligibility=structs.NODE_ELIGIBLE,
        )
        for driver in ("docker", "mock"):
            node.drivers[driver].CopyFrom(
                pb.DriverInfo(detected=True, healthy=True, health_description="Healthy")
            )
        node.node_resources.cpu.cpu_shares = cpu
        node.node_resources.cpu.total_cpu_cores = 4
        node.node_resources.memory.memory_mb = memory_mb
        node.node_resources.min_dynamic_port = structs.MIN_DYNAMIC_PORT
        node.node_resources.max_dynamic_port = structs.MAX_DYNAMIC_PORT
        self.server.register_node(node)
        self.settle()
        stored = self.server.state.node(node.id)
        assert stored is not None
        return stored

    def settle(self) -> None:
        """Wait until the scheduler has no pending evaluation left."""
        wait_for(
            lambda: (
                not any(e.status == structs.EVAL_STATUS_PENDING for e in self.server.state.evals())
            ),
            SETTLE_TIMEOUT,
            interval=0.005,
            message="the scheduler to finish every pending evaluation",
        )

    def run_job(self, job: pb.Job, *, start: bool = True) -> pb.Evaluation:
        """Register ``job`` and wait for its evaluation; with ``start`` the clients
        then report its allocations running. Returns the finished evaluation."""
        resp = self.server.register_job(job)
        self.settle()
        if start:
            self.sync_allocs()
        return self.eval(resp.eval_id)

    def sync_allocs(self) -> None:
        """Play the clients once: pending allocations start running (their tasks
        with a Started event), those the server stopped complete (tasks dead)."""
        now = time.time_ns()
        updates = []
        for alloc in self.server.state.allocs():
            stopped = alloc.desired_status != structs.ALLOC_DESIRED_RUN
            if structs.is_client_terminal(alloc) or not (
                stopped or alloc.client_status == structs.ALLOC_CLIENT_PENDING
            ):
                continue
            upd = pb.Allocation(
                id=alloc.id,
                client_status=(
                    structs.ALLOC_CLIENT_COMPLETE if stopped else structs.ALLOC_CLIENT_RUNNING
                ),
                client_description="All tasks have completed" if stopped else "Tasks are running",
            )
            for task in self._tasks(alloc):
                state = upd.task_states[task]
                state.CopyFrom(alloc.task_states[task])
                if stopped:
                    state.state = structs.TASK_STATE_DEAD
                    state.finished_at = now
                else:
                    state.state = structs.TASK_STATE_RUNNING
                    state.started_at = now
                    state.events.add(
                        type=structs.EVENT_STARTED,
                        time=now,
                        display_message="Task started by client",
                    )
            updates.append(upd)
        if updates:
            self.server.update_allocs_from_client(updates)
            self.settle()

    def _tasks(self, alloc: pb.Allocation) -> list[str]:
        job = self.server.state.job_version(alloc.namespace, alloc.job_id, alloc.job_version)
        group = structs.group_by_name(job, alloc.task_group) if job is not None else None
        return [t.name for t in group.tasks] if group is not None else []


def sample_job(
    job_id: str = "hello",
    *,
    count: int = 1,
    memory_mb: int = 256,
    tasks: tuple[str, ...] = ("server",),
    group: str = "web",
    constraints: tuple[tuple[str, str, str], ...] = (),
) -> pb.Job:
    """A small service job with one group, a dynamic "http" port, mock tasks and no
    deployment (for either server: it is what the job file of a CLI test would say)."""
    job = pb.Job(id=job_id, name=job_id, type="service", datacenters=["dc1"])
    tg = job.task_groups.add(name=group, count=count)
    # No deployment (Nomad's explicit opt-out): the CLI tests watch evaluations;
    # deployments have their own tests.
    tg.update.max_parallel = 0
    tg.networks.add(mode="host").dynamic_ports.add(label="http", to=8080)
    for name in tasks:
        task = tg.tasks.add(name=name, driver="mock")
        task.resources.cpu = 100
        task.resources.memory_mb = memory_mb
    for left, op, right in constraints:
        job.constraints.add(l_target=left, operand=op, r_target=right)
    return job
