"""The HTTP API's route table (refactor issue: split ``http_api.py``).

First the router on its own (no server, no sockets): patterns, percent-decoding,
405 versus 404. Then corral's table (``ROUTES``) on a real in-memory server over
real HTTP: a known path asked with another method is a 405 "Invalid method" with
``Allow`` (as Nomad answers), an unknown path a 404, an ID sent percent-encoded is
decoded, and the answers that succeed keep their shapes and ``X-Nomad-*`` headers.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from corral.server.http_api import HTTPAPI
from corral.server.http_router import HTTPError, Request, Route, RouteTable, split_path
from corral.server.http_routes import ROUTES
from corral.server.server import Server, ServerConfig
from tests.support import factories as f
from tests.support.env import free_port

# ---------------------------------------------------------------- the router alone


def echo(name: str) -> Callable[[None, Request], tuple[Any, int]]:
    def handler(ctx: None, req: Request) -> tuple[Any, int]:
        return {"handler": name}, 0

    return handler


TABLE: RouteTable[None] = RouteTable(
    [
        Route("GET", "/v1/things", echo("list")),
        Route(("PUT", "POST"), "/v1/things", echo("create")),
        Route("GET", "/v1/thing/{id}", echo("read")),
        Route("DELETE", "/v1/thing/{id}", echo("delete")),
        Route("GET", "/v1/thing/{id}/parts", echo("parts")),
        Route("GET", "/v1/tail/{rest...}", echo("tail")),
    ]
)


def resolve(method: str, path: str) -> tuple[str, dict[str, str]]:
    """(name of the handler that answers, parameters it gets)."""
    route, params = TABLE.resolve(method, path)
    reply = route.handler(None, Request(method, path, params))
    assert isinstance(reply, tuple)
    return reply[0]["handler"], params


def test_the_method_picks_among_routes_of_one_path() -> None:
    assert resolve("GET", "/v1/things") == ("list", {})
    assert resolve("PUT", "/v1/things") == ("create", {})
    assert resolve("POST", "/v1/things") == ("create", {})
    assert resolve("GET", "/v1/thing/abc") == ("read", {"id": "abc"})
    assert resolve("DELETE", "/v1/thing/abc") == ("delete", {"id": "abc"})
    assert resolve("GET", "/v1/thing/abc/parts") == ("parts", {"id": "abc"})


def test_a_known_path_with_another_method_is_405_with_allow() -> None:
    with pytest.raises(HTTPError) as err:
        TABLE.resolve("DELETE", "/v1/things")
    assert err.value.status == 405 and str(err.value) == "Invalid method"
    assert err.value.headers == {"Allow": "GET, POST, PUT"}
    with pytest.raises(HTTPError) as err:
        TABLE.resolve("PUT", "/v1/thing/abc")
    assert err.value.status == 405 and err.value.headers == {"Allow": "DELETE, GET"}


@pytest.mark.parametrize(
    "path",
    ["/", "/v1", "/v2/things", "/v1/thing", "/v1/thing/abc/parts/more", "/v1/thing/abc/other"],
)
def test_an_unknown_path_is_404_whatever_the_method(path: str) -> None:
    for method in ("GET", "PUT", "DELETE"):
        with pytest.raises(HTTPError) as err:
            TABLE.resolve(method, path)
        assert err.value.status == 404 and not err.value.headers
        assert str(err.value) == f"no such endpoint: {method} {path}"


def test_segments_are_split_then_percent_decoded() -> None:
    assert split_path("//v1/things/") == ["v1", "things"]
    # %2F inside an ID stays inside that one segment.
    assert resolve("GET", "/v1/thing/team%2Fweb") == ("read", {"id": "team/web"})
    assert resolve("GET", "/v1/thing/a%20b/parts") == ("parts", {"id": "a b"})
    assert resolve("GET", "/v1/things/") == ("list", {})
    # A tail takes one or more segments, joined again by "/".
    assert resolve("GET", "/v1/tail/a/b%2Fc") == ("tail", {"rest": "a/b/c"})
    with pytest.raises(HTTPError) as err:
        TABLE.resolve("GET", "/v1/tail")
    assert err.value.status == 404


def test_a_table_refuses_ambiguous_or_malformed_routes() -> None:
    with pytest.raises(ValueError, match="repeats"):
        RouteTable([Route("GET", "/a/{x}", echo("1")), Route("GET", "/a/{y}", echo("2"))])
    with pytest.raises(ValueError, match="last segment"):
        Route("GET", "/a/{rest...}/b", echo("x"))
    with pytest.raises(ValueError, match="upper-case"):
        Route("get", "/a", echo("x"))
    with pytest.raises(ValueError, match="starts with /"):
        Route("GET", "a", echo("x"))


def test_corrals_table_uses_only_methods_the_transport_serves() -> None:
    """The handler has do_GET/PUT/POST/DELETE; a route under any other method
    could never be reached."""
    for route in ROUTES.routes:
        assert route.methods <= {"GET", "PUT", "POST", "DELETE"}, route


# ---------------------------------------------------------------- the table over HTTP


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[Server, int]]:
    server = Server(ServerConfig(in_memory=True, num_workers=1))
    server.start()
    assert server.wait_leader(5)
    port = free_port()
    http_api = HTTPAPI(server, "127.0.0.1", port)
    http_api.start()
    server.register_job(f.job(job_id="web", count=1))
    server.register_job(f.job(job_id="team/web", count=1))
    try:
        yield server, port
    finally:
        http_api.stop()
        server.stop()


def call(
    port: int, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        # Answered 200 before the table (any method read).
        ("PUT", "/v1/allocations", "GET"),
        ("DELETE", "/v1/nodes", "GET"),
        ("POST", "/v1/job/web/allocations", "GET"),
        ("PUT", "/v1/status/leader", "GET"),
        ("DELETE", "/v1/agent/self", "GET"),
        # Answered 404 before the table.
        ("DELETE", "/v1/jobs", "GET, POST, PUT"),
        ("GET", "/v1/jobs/parse", "POST, PUT"),
        ("GET", "/v1/system/gc", "POST, PUT"),
        ("PUT", "/v1/services", "GET"),
        ("DELETE", "/v1/service/web", "GET"),
        ("POST", "/v1/event/stream", "GET"),
    ],
)
def test_a_wrong_method_on_a_known_path_is_405(
    api: tuple[Server, int], method: str, path: str, allow: str
) -> None:
    _, port = api
    status, headers, body = call(port, method, path, b"{}" if method != "GET" else None)
    assert (status, body) == (405, b"Invalid method\n")
    assert headers["Allow"] == allow
    assert headers["X-Nomad-Index"] == "0" and "X-Nomad-KnownLeader" in headers


@pytest.mark.parametrize(
    "path", ["/", "/v1", "/v1/nope", "/v1/job/web/nope", "/v1/job/web/allocations/more"]
)
def test_an_unknown_path_is_404(api: tuple[Server, int], path: str) -> None:
    _, port = api
    status, _, body = call(port, "GET", path)
    assert status == 404 and body == f"no such endpoint: GET {path}\n".encode()


def test_a_405_leaves_the_connection_usable(api: tuple[Server, int]) -> None:
    """The body of the refused request is read, so the next one on the same
    keep-alive connection is parsed from the right place."""
    _, port = api
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("PUT", "/v1/allocations", body=b'{"x": 1}' * 100)
        first = conn.getresponse()
        assert first.status == 405
        first.read()
        conn.request("GET", "/v1/job/web")
        second = conn.getresponse()
        assert second.status == 200 and json.loads(second.read())["ID"] == "web"
    finally:
        conn.close()


def test_percent_encoded_ids_are_decoded(api: tuple[Server, int]) -> None:
    """The Go client escapes IDs (``url.PathEscape``): ``team/web`` arrives as
    ``team%2Fweb``, one segment."""
    _, port = api
    status, _, body = call(port, "GET", "/v1/job/team%2Fweb")
    assert status == 200 and json.loads(body)["ID"] == "team/web"
    status, _, body = call(port, "GET", "/v1/job/team%2Fweb/versions")
    assert status == 200 and [v["ID"] for v in json.loads(body)["Versions"]] == ["team/web"]
    status, _, _ = call(port, "GET", "/v1/job/team/web")  # two segments: no such path
    assert status == 404


def test_successful_answers_keep_their_shape_and_headers(api: tuple[Server, int]) -> None:
    server, port = api
    status, headers, body = call(port, "GET", "/v1/job/web")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert int(headers["X-Nomad-Index"]) == server.state.table_index("jobs")
    assert headers["X-Nomad-KnownLeader"] == "true" and headers["X-Nomad-LastContact"] == "0"
    job = json.loads(body)
    assert job["ID"] == "web" and job["TaskGroups"][0]["Scaling"]["Enabled"] is True
    status, _, body = call(port, "GET", "/v1/jobs?prefix=te")
    assert status == 200 and [j["ID"] for j in json.loads(body)] == ["team/web"]
    status, _, body = call(port, "GET", "/v1/status/leader")
    assert status == 200 and json.loads(body) == server.raft.leader()
    status, _, body = call(port, "GET", "/v1/service/nothing-here")
    assert (status, json.loads(body)) == (200, [])
    status, _, body = call(port, "GET", "/v1/job/nope")
    assert (status, body) == (404, b"job not found\n")
    status, _, body = call(port, "GET", "/v1/event/stream?index=x")
    assert (status, body) == (400, b"invalid index\n")
