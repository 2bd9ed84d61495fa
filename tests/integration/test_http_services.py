"""Contract tests of the service-discovery HTTP API against a real ``corral agent``.

Services are registered the real way: a job whose raw_exec tasks are small Python
HTTP servers (serving their task dir, where a ``health`` file makes the check pass),
checked by the client, reported through raft, read back through port 4646 in the
shapes Traefik's Nomad provider (the Go ``nomad/api`` client) decodes.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import DevAgent
from tests.support.wait import wait_for

HEARTBEAT = 0.5

SERVER = (
    "import functools, http.server, os, sys\n"
    "d = os.environ['NOMAD_TASK_DIR']\n"
    "open(os.path.join(d, 'index.html'), 'w').write(os.environ['NOMAD_ALLOC_ID'])\n"
    "open(os.path.join(d, 'health'), 'w').write('ok')\n"
    "class H(http.server.SimpleHTTPRequestHandler):\n"
    "    def log_message(self, *a):\n"
    "        pass\n"
    "h = functools.partial(H, directory=d)\n"
    "http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), h).serve_forever()\n"
)


def job_hcl(name: str, count: int, extra_check: str = "") -> str:
    return f"""
job "{name}" {{
  group "api" {{
    count = {count}
    network {{
      port "http" {{}}
    }}
    service {{
      name = "${{NOMAD_JOB_NAME}}"
      port = "http"
      tags = ["traefik.enable=true", "traefik.http.routers.{name}.rule=PathPrefix(`/`)", "v1"]
      check {{
        type     = "http"
        path     = "/health"
        interval = "1s"
        timeout  = "1s"
        {extra_check}
      }}
    }}
    task "server" {{
      driver = "raw_exec"
      config {{
        command = "python3"
        args    = ["-c", {json.dumps(SERVER)}, "${{NOMAD_IP_http}}", "${{NOMAD_PORT_http}}"]
      }}
      service {{
        name = "${{JOB}}-admin"
        port = "http"
        tags = ["internal"]
      }}
      resources {{
        cpu    = 50
        memory = 32
      }}
    }}
  }}
}}
"""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("http-services")
    with DevAgent(base_dir=base, env={"CORRAL_EVENT_HEARTBEAT": f"{HEARTBEAT}s"}) as a:
        yield a


def get(agent: DevAgent, path: str, **params: str) -> tuple[int, dict[str, str], Any]:
    url = agent.http_url + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read().decode()


def instances(agent: DevAgent, name: str, **params: str) -> list[dict[str, Any]]:
    status, _, body = get(agent, f"/v1/service/{name}", **params)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def run_job(agent: DevAgent, tmp_path: Path, name: str, count: int, extra: str = "") -> None:
    path = tmp_path / f"{name}.hcl"
    path.write_text(job_hcl(name, count, extra))
    out = agent.cli("job", "run", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def wait_passing(agent: DevAgent, name: str, count: int) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (found := instances(agent, name)) and len(found) == count and found,
        timeout=60,
        interval=0.2,
        message=lambda: f"{count} passing instances of {name}\n{agent.log_tail(20)}",
    )


def health_file(agent: DevAgent, alloc_id: str) -> Path:
    return agent.data_dir / "alloc" / alloc_id / "server" / "local" / "health"


def stop_job(agent: DevAgent, name: str) -> None:
    agent.cli("job", "stop", "--purge", name)


# ---------------------------------------------------------------- listings


def test_listing_shapes_filters_and_unknown_services(agent: DevAgent, tmp_path: Path) -> None:
    run_job(agent, tmp_path, "shapes", 2)
    try:
        found = wait_passing(agent, "shapes", 2)
        keys = {
            "ID",
            "ServiceName",
            "Namespace",
            "NodeID",
            "Datacenter",
            "JobID",
            "AllocID",
            "Tags",
            "Address",
            "Port",
            "CreateIndex",
            "ModifyIndex",
        }
        for inst in found:
            assert keys <= inst.keys()
            assert inst["ID"] == f"_nomad-task-{inst['AllocID']}-group-api-shapes-http"
            assert (inst["JobID"], inst["Namespace"], inst["Datacenter"]) == (
                "shapes",
                "default",
                "dc1",
            )
            assert isinstance(inst["Port"], int) and inst["Port"] > 0
            assert inst["Health"] == "passing"
            with urllib.request.urlopen(
                f"http://{inst['Address']}:{inst['Port']}/", timeout=5
            ) as resp:
                assert resp.read().decode() == inst["AllocID"]

        # The client reports the allocations healthy (checks passing; no update
        # block, so min_healthy_time is 0): what deployments read.
        wait_for(
            lambda: all(
                a.deployment_status.HasField("healthy") and a.deployment_status.healthy
                for a in agent.allocations("shapes")
            ),
            timeout=15,
            message="allocations reported healthy",
        )

        status, headers, listing = get(agent, "/v1/services")
        assert status == 200
        assert int(headers["X-Nomad-Index"]) >= max(i["ModifyIndex"] for i in found)
        assert headers["X-Nomad-KnownLeader"] == "true" and "X-Nomad-LastContact" in headers
        [default] = listing
        assert default["Namespace"] == "default"
        by_name = {s["ServiceName"]: s["Tags"] for s in default["Services"]}
        assert by_name["shapes"] == sorted(
            ["traefik.enable=true", "traefik.http.routers.shapes.rule=PathPrefix(`/`)", "v1"]
        )
        assert by_name["shapes-admin"] == ["internal"]

        # Filters (go-bexpr), as Traefik sends them with exposedByDefault=false.
        assert len(instances(agent, "shapes", filter='Tags contains "traefik.enable=true"')) == 2
        assert instances(agent, "shapes-admin", filter='Tags contains "traefik.enable=true"') == []
        assert len(instances(agent, "shapes-admin", filter='"internal" in Tags')) == 2
        assert (
            len(
                instances(
                    agent, "shapes", filter='ServiceName == "x" and "v1" in Tags or "v1" in Tags'
                )
            )
            == 2
        )
        assert instances(agent, "shapes", filter='"v2" in Tags or "v3" in Tags') == []
        status, _, body = get(agent, "/v1/service/shapes", filter='Tags contains "x" and')
        assert status == 400 and "filter" in body

        # Unknown services and namespaces: [] with 200, never 404.
        status, headers, body = get(agent, "/v1/service/does-not-exist")
        assert (status, body) == (200, []) and int(headers["X-Nomad-Index"]) >= 1
        assert instances(agent, "shapes", namespace="other") == []
        assert get(agent, "/v1/services", namespace="other")[2] == []
        assert len(instances(agent, "shapes", stale="true")) == 2

        # The CLI reads the same catalog over gRPC.
        out = agent.cli("service", "info", "shapes")
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("passing") == 2, out.stdout
        out = agent.cli("service", "info", "shapes", "--json")
        assert {i["ID"] for i in json.loads(out.stdout)} == {i["ID"] for i in found}
        out = agent.cli("service", "list")
        assert "shapes-admin" in out.stdout and "[internal]" in out.stdout
        out = agent.cli("service", "info", "nothing-here")
        assert out.returncode == 0 and "No service registrations found" in out.stdout
    finally:
        stop_job(agent, "shapes")
    wait_for(lambda: instances(agent, "shapes", health="any") == [], timeout=30, message="gone")


def test_failing_check_hides_an_instance_unless_health_any(agent: DevAgent, tmp_path: Path) -> None:
    run_job(agent, tmp_path, "flaky", 2)
    try:
        found = wait_passing(agent, "flaky", 2)
        victim = found[0]["AllocID"]
        health_file(agent, victim).unlink()
        wait_for(
            lambda: [i["AllocID"] for i in instances(agent, "flaky")] == [found[1]["AllocID"]],
            timeout=15,
            message="the failing instance leaves the listing",
        )
        every = {i["AllocID"]: i["Health"] for i in instances(agent, "flaky", health="any")}
        assert every == {victim: "critical", found[1]["AllocID"]: "passing"}
        # A service with no checks is listed as long as its task runs.
        assert len(instances(agent, "flaky-admin")) == 2
        out = agent.cli("service", "info", "flaky")
        assert "critical" in out.stdout and "passing" in out.stdout, out.stdout
        out = agent.cli("service", "info", "flaky", "--passing", "--json")
        assert [i["AllocID"] for i in json.loads(out.stdout)] == [found[1]["AllocID"]]
        # Healthy again: listed again.
        health_file(agent, victim).write_text("ok")
        wait_passing(agent, "flaky", 2)
    finally:
        stop_job(agent, "flaky")


def test_check_restart_restarts_the_task(agent: DevAgent, tmp_path: Path) -> None:
    extra = 'check_restart {\n limit = 2\n grace = "1s"\n }'
    run_job(agent, tmp_path, "restarty", 1, extra)
    try:
        [inst] = wait_passing(agent, "restarty", 1)
        health_file(agent, inst["AllocID"]).unlink()

        def restarted() -> bool:
            allocs = agent.allocations("restarty")
            state = allocs[0].task_states["server"]
            return state.restarts >= 1 and any(e.type == "Restart Signaled" for e in state.events)

        wait_for(restarted, timeout=30, message="the task restarted by check_restart")
        # The restarted server writes its health file again: passing once more.
        wait_passing(agent, "restarty", 1)
        alloc = agent.allocations("restarty")[0]
        assert alloc.client_status == "running"
    finally:
        stop_job(agent, "restarty")


def test_alloc_restart_restarts_in_place_and_the_instance_comes_back(
    agent: DevAgent, tmp_path: Path
) -> None:
    run_job(agent, tmp_path, "again", 1)
    try:
        [inst] = wait_passing(agent, "again", 1)
        out = agent.cli("alloc", "restart", inst["AllocID"][:8])
        assert out.returncode == 0, out.stdout + out.stderr

        def restarted() -> bool:
            state = agent.allocations("again")[0].task_states["server"]
            types = [e.type for e in state.events]
            return state.restarts == 1 and "Restart Signaled" in types and types[-1] == "Started"

        wait_for(restarted, timeout=30, message="restarted in place")
        [after] = wait_passing(agent, "again", 1)
        assert after["ID"] == inst["ID"] and after["AllocID"] == inst["AllocID"]
        out = agent.cli("alloc", "restart", inst["AllocID"][:8], "nope")
        assert out.returncode != 0 and "nope" in out.stderr
    finally:
        stop_job(agent, "again")


def test_bad_service_blocks_are_refused_with_the_job_unchanged(
    agent: DevAgent, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.hcl"
    bad.write_text(
        """
job "badsvc" {
  group "g" {
    network {
      port "http" {}
    }
    service {
      name = "x"
      port = "http"
      check {
        type = "grpc"
        interval = "1s"
        timeout = "1s"
      }
      check {
        type = "http"
        path = "/"
        port = "nope"
        interval = "1s"
        timeout = "1s"
      }
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "sleep"
        args = ["60"]
      }
    }
  }
}
"""
    )
    out = agent.cli("job", "run", str(bad))
    assert out.returncode == 1
    assert 'type "grpc" is not supported' in out.stderr, out.stderr
    assert 'port "nope" is not defined' in out.stderr, out.stderr
    status, _, _ = get(agent, "/v1/job/badsvc")
    assert status == 404


# ---------------------------------------------------------------- blocking queries


def test_blocking_query_waits_for_a_change_or_the_wait(agent: DevAgent, tmp_path: Path) -> None:
    run_job(agent, tmp_path, "blocky", 1)
    try:
        [inst] = wait_passing(agent, "blocky", 1)
        _, headers, _ = get(agent, "/v1/service/blocky")
        index = headers["X-Nomad-Index"]

        started = time.monotonic()
        status, headers2, body = get(agent, "/v1/service/blocky", index=index, wait="1s")
        took = time.monotonic() - started
        assert status == 200 and 0.9 <= took < 5, took
        assert headers2["X-Nomad-Index"] == index and len(body) == 1

        result: dict[str, Any] = {}

        def blocked() -> None:
            t0 = time.monotonic()
            result["answer"] = get(agent, "/v1/service/blocky", index=index, wait="60s")
            result["took"] = time.monotonic() - t0

        waiter = threading.Thread(target=blocked)
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive(), "the blocking query returned before any change"
        health_file(agent, inst["AllocID"]).unlink()
        waiter.join(30)
        assert not waiter.is_alive()
        status, headers3, body = result["answer"]
        assert status == 200 and int(headers3["X-Nomad-Index"]) > int(index)
        assert body == []  # critical now
        assert result["took"] < 20
        # The listing endpoint blocks the same way.
        started = time.monotonic()
        get(agent, "/v1/services", index=headers3["X-Nomad-Index"], wait="500ms")
        assert 0.4 <= time.monotonic() - started < 5
    finally:
        stop_job(agent, "blocky")


# ---------------------------------------------------------------- event stream


class Stream:
    """A raw HTTP/1.1 client of /v1/event/stream that checks the chunked framing."""

    def __init__(self, agent: DevAgent, query: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", agent.http_port), timeout=10)
        self.sock.sendall(f"GET /v1/event/stream?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.buf = b""
        head = self._read_until(b"\r\n\r\n")
        self.status_line, _, headers = head.decode().partition("\r\n")
        self.headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in headers.split("\r\n"))
        }

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("stream closed")
        self.buf += data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(marker)
        return head

    def chunk(self) -> bytes:
        size = int(self._read_until(b"\r\n"), 16)
        while len(self.buf) < size + 2:
            self._fill()
        data, tail, self.buf = self.buf[:size], self.buf[size : size + 2], self.buf[size + 2 :]
        assert tail == b"\r\n", "chunk not terminated by CRLF"
        return data

    def frames(self, until: float) -> list[dict[str, Any]]:
        """Frames (parsed) until the deadline."""
        out = []
        while time.monotonic() < until:
            self.sock.settimeout(max(until - time.monotonic(), 0.01))
            try:
                data = self.chunk()
            except TimeoutError:
                break
            for line in data.splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return out

    def close(self) -> None:
        self.sock.close()


def test_event_stream_frames_and_heartbeats(agent: DevAgent, tmp_path: Path) -> None:
    stream = Stream(agent, "index=0&topic=Service:*&namespace=default")
    other = Stream(agent, "index=0&topic=Service:unrelated&namespace=default")
    try:
        assert stream.status_line.endswith("200 OK")
        assert stream.headers["transfer-encoding"] == "chunked"
        assert stream.headers["content-type"] == "application/json"
        assert stream.frames(time.monotonic() + 0.2)[0] == {}  # heartbeat at connect
        beats = stream.frames(time.monotonic() + 3 * HEARTBEAT + 0.3)
        assert len(beats) >= 2 and all(b == {} for b in beats)

        run_job(agent, tmp_path, "streamy", 2)
        seen: dict[str, list[dict[str, Any]]] = {
            "ServiceRegistration": [],
            "ServiceDeregistration": [],
        }

        def collect(kind: str, count: int, name: str) -> bool:
            for frame in stream.frames(time.monotonic() + 0.5):
                if not frame:
                    continue
                assert frame["Index"] > 0
                for ev in frame["Events"]:
                    assert ev["Topic"] == "Service" and ev["Index"] == frame["Index"]
                    assert ev["Namespace"] == "default"
                    assert ev["FilterKeys"] == ["streamy", ev["Key"]]
                    assert ev["Payload"]["Service"]["ServiceName"] == ev["Key"]
                    seen[ev["Type"]].append(ev)
            return len([e for e in seen[kind] if e["Key"] == name]) >= count

        wait_for(
            lambda: collect("ServiceRegistration", 2, "streamy"),
            timeout=60,
            message="registration events",
        )
        ids = {e["Payload"]["Service"]["ID"] for e in seen["ServiceRegistration"]}
        assert len({i for i in ids if "-group-api-streamy-http" in i}) == 2

        # An instance turning critical is a deregistration, as listings see it.
        victim = next(e for e in seen["ServiceRegistration"] if e["Key"] == "streamy")
        health_file(agent, victim["Payload"]["Service"]["AllocID"]).unlink()
        wait_for(
            lambda: collect("ServiceDeregistration", 1, "streamy"),
            timeout=20,
            message="deregistration of the failing instance",
        )

        stop_job(agent, "streamy")
        wait_for(
            lambda: collect("ServiceDeregistration", 2, "streamy-admin"),
            timeout=30,
            message="deregistrations on stop",
        )
        # The other stream's topic matched nothing: only heartbeats.
        assert all(f == {} for f in other.frames(time.monotonic() + 0.2))
    finally:
        stream.close()
        other.close()
        stop_job(agent, "streamy")


def test_event_stream_ends_when_the_client_goes_away(agent: DevAgent) -> None:
    pid = agent.pid
    assert pid is not None

    def threads() -> int:
        return len(os.listdir(f"/proc/{pid}/task"))

    streams = [Stream(agent, "topic=Service:*") for _ in range(8)]
    for s in streams:
        assert s.frames(time.monotonic() + 0.2)[0] == {}
    with_streams = threads()
    for s in streams:
        s.close()
    wait_for(lambda: threads() <= with_streams - 8, timeout=10, message="stream threads end")
    # Still serving.
    status, _, _ = get(agent, "/v1/services")
    assert status == 200


# ---------------------------------------------------------------- probes and jobs


def test_status_and_agent_endpoints_have_nomads_shapes(agent: DevAgent) -> None:
    status, _, leader = get(agent, "/v1/status/leader")
    assert status == 200 and leader == agent.raft_addr
    assert get(agent, "/v1/status/peers")[2] == [agent.raft_addr]
    body = get(agent, "/v1/agent/self")[2]
    assert body["config"]["Region"] == "global" and body["member"]["Status"] == "alive"
    assert isinstance(body["member"]["Port"], int)
    for section in body["stats"].values():
        assert all(isinstance(v, str) for v in section.values())


def test_job_json_has_what_allow_empty_services_reads(agent: DevAgent, tmp_path: Path) -> None:
    run_job(agent, tmp_path, "jobby", 1)
    try:
        status, _, jobs = get(agent, "/v1/jobs")
        assert status == 200 and "jobby" in [j["ID"] for j in jobs]
        job = get(agent, "/v1/job/jobby")[2]
        [group] = job["TaskGroups"]
        assert group["Count"] == 1
        assert group["Scaling"]["Enabled"] is True
        assert group["Services"][0]["Name"] == "${NOMAD_JOB_NAME}"  # interpolated on clients
        assert group["Services"][0]["Tags"][0] == "traefik.enable=true"
        assert group["Tasks"][0]["Services"][0]["Name"] == "${JOB}-admin"
    finally:
        stop_job(agent, "jobby")


def test_event_stream_is_http_1_1_chunked_for_a_stock_client(agent: DevAgent) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", agent.http_port, timeout=10)
    conn.request("GET", "/v1/event/stream?topic=Service:*")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    line = resp.readline()
    assert json.loads(line) == {}
    conn.close()


def test_client_restart_keeps_passing_instances_listed(tmp_path: Path) -> None:
    """SIGKILL the agent (server and client), start it again: the reattached
    tasks' registrations come back passing, never reported critical meanwhile."""
    with DevAgent(base_dir=tmp_path / "agent") as agent:
        run_job(agent, tmp_path, "sturdy", 2)
        before = {i["ID"] for i in wait_passing(agent, "sturdy", 2)}
        agent.kill()
        agent.start()
        healths: list[str] = []

        def settled() -> bool:
            found = instances(agent, "sturdy", health="any")
            healths.extend(i["Health"] for i in found)
            return {i["ID"] for i in found if i["Health"] == "passing"} == before

        wait_for(settled, timeout=60, interval=0.05, message="passing again after restart")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            healths.extend(i["Health"] for i in instances(agent, "sturdy", health="any"))
            time.sleep(0.05)
        assert "critical" not in healths
        assert {i["ID"] for i in instances(agent, "sturdy")} == before
        stop_job(agent, "sturdy")
