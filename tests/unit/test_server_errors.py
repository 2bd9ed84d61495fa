"""Errors are reported as what they are (refactor issue, defect 5): a write the FSM
refused is not a success, and a bug is not a 404."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from corral.proto import pb
from corral.server.http_api import HTTPAPI
from corral.server.server import NotFound, Server, ServerConfig
from tests.support import factories as f
from tests.support.env import free_port


class StaleLookupServer(Server):
    """A server whose node lookup answers from a moment ago: the node it returns
    was deleted before the write commits (the race, made deterministic)."""

    def resolve_node(self, prefix: str) -> pb.Node:
        return pb.Node(id=prefix)


class BuggyServer(Server):
    """A server with a bug that raises KeyError while answering a job read."""

    def with_status(self, job: pb.Job) -> pb.Job:
        raise KeyError("a bug, not a missing job")


def started(server: Server) -> Server:
    server.start()
    assert server.wait_leader(5)
    return server


def test_eligibility_of_a_node_gone_before_the_commit_is_not_found() -> None:
    server = started(StaleLookupServer(ServerConfig(in_memory=True, num_workers=1)))
    try:
        with pytest.raises(NotFound, match="not found"):
            server.set_eligibility("gone-node", eligible=False)
    finally:
        server.stop()


def test_a_key_error_in_a_handler_is_a_500_not_a_404() -> None:
    server = started(BuggyServer(ServerConfig(in_memory=True, num_workers=1)))
    port = free_port()
    http = HTTPAPI(server, "127.0.0.1", port)
    http.start()
    try:
        job = f.job(job_id="web")
        server.register_job(job)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/job/web", timeout=5)
        assert err.value.code == 500
        body = err.value.read().decode()
        assert "internal error" in body, body
        # A job that really is missing is still a 404.
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/job/nope", timeout=5)
        assert missing.value.code == 404
        assert "job not found" in json.dumps(missing.value.read().decode())
    finally:
        http.stop()
        server.stop()
