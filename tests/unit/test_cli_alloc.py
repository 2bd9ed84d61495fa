"""``corral alloc status|logs|restart`` against the scripted fake server.

Why the fake and not the in-memory server: these verbs reach a client agent (the
server forwards logs and restarts to the node that runs the allocation), and an
allocation's task states and events are what a client reports; the fake serves
them from its tables, so a test states exactly the events, logs and IDs it checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from corral.cli.main import cli
from corral.proto import pb
from tests.support.fake_server import FakeServer
from tests.support.inproc_server import sample_job

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@pytest.fixture
def run(fake: FakeServer) -> Any:
    """Invoke ``corral --address <fake> ARGS...``."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--address", fake.address, *args], input=input)

    return invoke


def lines(text: str) -> list[str]:
    return text.splitlines()


def _one_alloc(fake: FakeServer, tasks: tuple[str, ...] = ("server",)) -> pb.Allocation:
    fake.state.add_node("node-a")
    fake.run_job(sample_job("web", tasks=tasks))
    return next(iter(fake.state.allocs.values()))


def test_alloc_status(fake: FakeServer, run: Any) -> None:
    alloc = _one_alloc(fake)
    alloc.task_states["server"].events.add(
        type="Driver Failure",
        time=alloc.create_time + 10**9,
        message="boom",
        driver_error="no image",
    )
    result = run("alloc", "status", alloc.id[:6])
    assert result.exit_code == 0, result.output
    blocks = result.stdout.split("\n\n")
    head = dict(re.split(r"\s+=\s+", line, maxsplit=1) for line in lines(blocks[0]))
    assert list(head)[:13] == [
        "ID",
        "Eval ID",
        "Name",
        "Node ID",
        "Node Name",
        "Job ID",
        "Job Version",
        "Client Status",
        "Client Description",
        "Desired Status",
        "Desired Description",
        "Created",
        "Modified",
    ]
    assert head["ID"] == alloc.id[:8] and head["Name"] == "web.web[0]"
    assert head["Node Name"] == "node-a" and head["Desired Description"] == "<none>"
    port = alloc.allocated_resources.shared.ports[0]
    assert lines(blocks[1]) == [
        "Allocation Addresses:",
        "Label  Address",
        f"http   127.0.0.1:{port.value} -> 8080",
    ]
    task_block = "\n\n".join(blocks[2:])
    assert 'Task "server" is "running"' in task_block
    events = task_block.split("Recent Events:\n", 1)[1]
    event_lines = lines(events)
    assert re.split(r"\s{2,}", event_lines[0]) == ["Time", "Type", "Description"]
    assert re.fullmatch(rf"{STAMP}\s+Driver Failure\s+boom: no image", event_lines[1])
    assert re.fullmatch(rf"{STAMP}\s+Started\s+Task started by client", event_lines[2])
    full = run("alloc", "status", "--verbose", alloc.id[:6]).stdout
    assert f"ID                  = {alloc.id}" in full


def test_alloc_status_json(fake: FakeServer, run: Any) -> None:
    alloc = _one_alloc(fake)
    data = json.loads(run("alloc", "status", "--json", alloc.id).stdout)
    assert data["ID"] == alloc.id
    assert data["TaskStates"]["server"]["State"] == "running"
    assert data["AllocatedResources"]["Shared"]["Ports"][0]["Label"] == "http"


def test_alloc_prefix_errors_are_readable(fake: FakeServer, run: Any) -> None:
    fake.state.add_node("n1")
    fake.run_job(sample_job("web", count=2))
    a, b = fake.state.allocs.values()
    # Give both the same leading characters.
    for alloc, new_id in ((a, "abcd1111-0000"), (b, "abcd2222-0000")):
        del fake.state.allocs[alloc.id]
        alloc.id = new_id
        fake.state.allocs[new_id] = alloc
    result = run("alloc", "status", "abcd")
    assert result.exit_code == 1
    assert lines(result.stderr) == [
        'Error: prefix "abcd" matches multiple allocations: abcd1111, abcd2222'
    ]
    missing = run("alloc", "status", "ffff")
    assert missing.exit_code == 1
    assert lines(missing.stderr) == ['Error: allocation "ffff" not found']
    assert "Traceback" not in result.output + missing.output


def test_alloc_logs_single_task_default(fake: FakeServer, run: Any) -> None:
    alloc = _one_alloc(fake)
    fake.state.logs[(alloc.id, "server", "stdout")] = b"one\ntwo\nthree\n\xff\n"
    fake.state.logs[(alloc.id, "server", "stderr")] = b"oops\n"
    result = run("alloc", "logs", alloc.id[:6])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == b"one\ntwo\nthree\n\xff\n"
    assert run("alloc", "logs", "--stderr", alloc.id, "server").stdout == "oops\n"
    tail = run("alloc", "logs", "--tail", "-n", "2", alloc.id)
    assert tail.stdout_bytes == b"three\n\xff\n"
    request = fake.log.of("Logs")[-1]
    assert request.origin == "end" and request.offset > 0
    assert run("alloc", "logs", "-c", "6", alloc.id).stdout_bytes == b"ree\n\xff\n"


def test_alloc_logs_follow(fake: FakeServer, run: Any) -> None:
    alloc = _one_alloc(fake)
    key = (alloc.id, "server", "stdout")
    fake.state.logs[key] = b"a\nb\nc\n"
    fake.state.follow_chunks[key] = [b"d\n", b"e\n"]
    result = run("alloc", "logs", "-f", alloc.id)
    assert result.exit_code == 0, result.output
    assert result.stdout == "a\nb\nc\nd\ne\n"
    tailed = run("alloc", "logs", "-f", "--tail", "-n", "1", alloc.id)
    assert tailed.stdout == "c\nd\ne\n"


def test_alloc_logs_needs_task_when_several(fake: FakeServer, run: Any) -> None:
    alloc = _one_alloc(fake, tasks=("api", "worker"))
    result = run("alloc", "logs", alloc.id)
    assert result.exit_code == 1
    assert lines(result.stderr) == [
        f'Error: allocation "{alloc.id[:8]}" runs several tasks, name one: api, worker'
    ]
    fake.state.logs[(alloc.id, "worker", "stdout")] = b"working\n"
    assert run("alloc", "logs", alloc.id, "worker").stdout == "working\n"
    wrong = run("alloc", "logs", alloc.id, "db")
    assert wrong.exit_code == 1
    assert "its tasks: api, worker" in wrong.stderr


def test_alloc_restart(fake: FakeServer, run: Any) -> None:
    fake.state.add_node("n1")
    fake.run_job(sample_job("web", tasks=("server", "sidecar")))
    alloc = next(iter(fake.state.allocs.values()))
    result = run("alloc", "restart", alloc.id[:6])
    assert result.exit_code == 0 and result.output == ""
    result = run("alloc", "restart", alloc.id[:6], "sidecar")
    assert result.exit_code == 0
    result = run("alloc", "restart", "--task", "server", alloc.id)
    assert result.exit_code == 0
    assert fake.state.restarts == [(alloc.id, ""), (alloc.id, "sidecar"), (alloc.id, "server")]
    assert alloc.task_states["sidecar"].restarts == 2
    missing = run("alloc", "restart", alloc.id, "db")
    assert missing.exit_code == 1
    assert missing.stderr == (
        f'Error: no task "db" in allocation "{alloc.id[:8]}"; its tasks: server, sidecar\n'
    )
    unknown = run("alloc", "restart", "ffffffff")
    assert unknown.exit_code == 1 and unknown.stderr == 'Error: allocation "ffffffff" not found\n'
