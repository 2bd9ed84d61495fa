"""Relaying calls to the leader: a relayed answer may be as large as a direct one."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from corral.proto import pb, rpc
from corral.server.forward import GRPC_MESSAGE_OPTIONS, Forwarder
from tests.support.env import free_port


class BigJobs(rpc.JobServiceServicer):
    """A leader whose job list is larger than gRPC's default 4 MB message limit."""

    def List(self, request: pb.JobListRequest, context: Any) -> pb.JobListResponse:
        stubs = [pb.JobListStub(id=f"job-{i:06d}", name="x" * 200) for i in range(30_000)]
        return pb.JobListResponse(jobs=stubs)


class CallContext:
    """The two things the forwarder reads from the incoming call."""

    def time_remaining(self) -> float:
        return 30.0

    def invocation_metadata(self) -> Iterator[tuple[str, str]]:
        return iter(())


def test_a_relayed_answer_larger_than_4_mb_arrives() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(4), options=GRPC_MESSAGE_OPTIONS)
    rpc.add_JobServiceServicer_to_server(BigJobs(), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    forwarder = Forwarder(lambda: f"127.0.0.1:{port}", lambda: False)
    try:
        answer = forwarder.unary(
            f"127.0.0.1:{port}", "JobService", "List", pb.JobListRequest(), CallContext()
        )
        assert isinstance(answer, pb.JobListResponse)
        assert answer.ByteSize() > 4 * 1024 * 1024
        assert len(answer.jobs) == 30_000
    finally:
        forwarder.close()
        server.stop(grace=None)
