"""CorralClient against a real gRPC server (the in-process fake): results, errors.

What matters to the CLI: every failure is an APIError with a readable one-line
message and the gRPC code, and an unreachable server is named by address quickly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from corral.api.client import DEFAULT_ADDRESS, APIError, CorralClient, resolve_address
from corral.proto import pb
from tests.support.env import free_port
from tests.support.fake_server import FakeServer, sample_job


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@pytest.fixture
def client(fake: FakeServer) -> Iterator[CorralClient]:
    with CorralClient(fake.address, timeout=5.0) as c:
        yield c


def test_address_from_argument_env_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_ADDR", raising=False)
    assert resolve_address(None) == DEFAULT_ADDRESS == "127.0.0.1:4647"
    monkeypatch.setenv("CORRAL_ADDR", "10.0.0.5:5000")
    assert resolve_address(None) == "10.0.0.5:5000"
    assert CorralClient().address == "10.0.0.5:5000"
    assert resolve_address("host:1234") == "host:1234"
    # A copied Nomad-style URL and a missing port still give a dialable address.
    assert resolve_address("http://server1:4647/") == "server1:4647"
    assert resolve_address("server1") == "server1:4647"
    assert resolve_address("::1") == "[::1]:4647"
    assert resolve_address("[::1]:99") == "[::1]:99"


def test_register_then_read_back(fake: FakeServer, client: CorralClient) -> None:
    fake.state.add_node("n1")
    resp = client.register_job(sample_job("web", count=2))
    assert resp.eval_id
    fake.state.process(resp.eval_id)
    job = client.get_job("web")
    assert job.id == "web" and job.version == 0
    assert [s.id for s in client.list_jobs()] == ["web"]
    allocs = client.job_allocations("web")
    assert len(allocs) == 2
    assert client.get_alloc(allocs[0].id[:6]).id == allocs[0].id
    assert {a.id for a in client.list_allocs(node_id=allocs[0].node_id)} == {a.id for a in allocs}
    ev = client.get_eval(resp.eval_id)
    assert ev.status == "complete"
    assert [e.id for e in client.list_evals(job_id="web")] == [resp.eval_id]
    assert [e.id for e in client.job_evaluations("web")] == [resp.eval_id]
    assert [v.version for v in client.job_versions("web")] == [0]
    node = client.list_nodes()[0]
    assert client.get_node(node.id[:4]).name == "n1"
    assert client.status().leader == fake.address


def test_deregister_and_stop_alloc(fake: FakeServer, client: CorralClient) -> None:
    fake.state.add_node("n1")
    fake.run_job(sample_job("web"))
    alloc = client.job_allocations("web")[0]
    stop = client.stop_alloc(alloc.id)
    assert stop.eval_id in fake.state.evals
    assert client.get_alloc(alloc.id).desired_status == "stop"
    resp = client.deregister_job("web", purge=True)
    assert resp.eval_id
    with pytest.raises(APIError) as info:
        client.get_job("web")
    assert info.value.not_found


def test_not_found_is_one_readable_line(client: CorralClient) -> None:
    with pytest.raises(APIError) as info:
        client.get_alloc("deadbeef")
    err = info.value
    assert err.code == grpc.StatusCode.NOT_FOUND
    assert err.not_found
    assert str(err) == 'allocation "deadbeef" not found'


def test_ambiguous_prefix_lists_matches(fake: FakeServer, client: CorralClient) -> None:
    fake.state.add_node("a", node_id="abcd0000-0000-0000-0000-000000000001")
    fake.state.add_node("b", node_id="abcd0000-0000-0000-0000-000000000002")
    with pytest.raises(APIError) as info:
        client.get_node("abcd")
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "\n" not in info.value.message
    assert 'prefix "abcd" matches multiple nodes' in info.value.message


def test_invalid_job_keeps_every_problem(client: CorralClient) -> None:
    job = pb.Job(id="bad job")
    with pytest.raises(APIError) as info:
        client.register_job(job)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.message.splitlines() == [
        "Job ID contains a space",
        "Missing job task groups",
    ]


def test_server_side_errors_pass_through(fake: FakeServer, client: CorralClient) -> None:
    """UNAVAILABLE from a server that was reached is its own message, not "cannot reach"."""
    fake.state.inject_errors["List"] = (grpc.StatusCode.UNAVAILABLE, "no cluster leader")
    with pytest.raises(APIError) as info:
        client.list_jobs()
    assert str(info.value) == "no cluster leader"
    fake.state.inject_errors["List"] = (grpc.StatusCode.INTERNAL, "state store\nexploded")
    with pytest.raises(APIError) as info:
        client.list_jobs()
    assert str(info.value) == "state store; exploded"
    assert info.value.code == grpc.StatusCode.INTERNAL


def test_check_index_conflict(fake: FakeServer, client: CorralClient) -> None:
    fake.run_job(sample_job("web"))
    with pytest.raises(APIError) as info:
        client.register_job(sample_job("web"), enforce_index=True, job_modify_index=0)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "conflicting job modify index" in info.value.message
    current = client.get_job("web").job_modify_index
    assert client.register_job(sample_job("web"), enforce_index=True, job_modify_index=current)


def test_logs_stream_bytes(fake: FakeServer, client: CorralClient) -> None:
    fake.state.add_node("n1")
    fake.run_job(sample_job("web"))
    alloc = client.job_allocations("web")[0]
    key = (alloc.id, "server", "stdout")
    fake.state.logs[key] = b"hello\nworld\n"
    fake.state.follow_chunks[key] = [b"more\n", b"\xff\x00raw\n"]
    assert b"".join(client.alloc_logs(alloc.id, "server")) == b"hello\nworld\n"
    assert b"".join(client.alloc_logs(alloc.id, "server", offset=6, origin="end")) == b"world\n"
    followed = b"".join(client.alloc_logs(alloc.id, "server", follow=True))
    assert followed == b"hello\nworld\nmore\n\xff\x00raw\n"
    request = [r for name, r in fake.state.requests if name == "Logs"][-1]
    assert request.follow and request.type == "stdout"
    with pytest.raises(APIError) as info:
        list(client.alloc_logs(alloc.id, "nope"))
    assert info.value.not_found


def test_unreachable_server_is_named_quickly() -> None:
    port = free_port()  # nothing listens there
    client = CorralClient(f"127.0.0.1:{port}", timeout=5.0)
    started = time.monotonic()
    with pytest.raises(APIError) as info:
        client.list_jobs()
    assert time.monotonic() - started < 2.0
    assert (
        str(info.value) == f"cannot reach a corral server at 127.0.0.1:{port} (connection refused)"
    )
    assert info.value.unreachable
    with pytest.raises(APIError, match="cannot reach a corral server"):
        list(client.alloc_logs("x", "y", follow=True))
    client.close()


def test_server_going_away_mid_session(fake: FakeServer) -> None:
    client = CorralClient(fake.address, timeout=2.0)
    assert client.list_jobs() == []
    fake.stop()
    with pytest.raises(APIError) as info:
        client.list_jobs()
    assert info.value.unreachable
    assert fake.address in str(info.value)
    client.close()
