"""The ``corral`` CLI against the in-process fake server over real gRPC.

What a user relies on: Nomad-shaped output, ``--json`` in Nomad's API shapes, exit
codes (0 ok, 1 error, 2 placement failure) and one ``Error: ...`` line instead of a
traceback whenever something goes wrong.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import corral.jobspec
from corral.agentconfig import AgentConfig
from corral.api.jsonmap import from_json, to_json
from corral.cli import monitor
from corral.cli.main import cli
from corral.proto import pb
from tests.support.cluster import CLUSTER_KEY as KEY
from tests.support.env import free_port
from tests.support.fake_server import FakeServer, sample_job

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


@pytest.fixture
def parse_json_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand in for ``corral.jobspec.parse_file`` with a Nomad-JSON reader.

    The CLI's job is to call the parser and act on its result; these tests pin the
    CLI's behaviour independently of the parser's progress. The real parser is
    exercised by ``test_job_run_bad_file_prints_parser_errors``.
    """

    def parse(text: str, filename: str = "<input>") -> pb.Job:
        data = json.loads(text)
        job = pb.Job()
        from_json(data.get("Job", data), job)
        return job

    def parse_file(path: str) -> pb.Job:
        return parse(Path(path).read_text(), path)

    monkeypatch.setattr(corral.jobspec, "parse", parse)
    monkeypatch.setattr(corral.jobspec, "parse_file", parse_file)


def write_job(tmp_path: Path, job: pb.Job) -> str:
    path = tmp_path / f"{job.id or 'job'}.json"
    path.write_text(json.dumps({"Job": to_json(job, omit_empty=True)}))
    return str(path)


def lines(text: str) -> list[str]:
    return text.splitlines()


# ---------------------------------------------------------------- job run


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_monitors_until_complete(fake: FakeServer, run: Any, tmp_path: Path) -> None:
    node = fake.state.add_node("node-a")
    fake.state.pending_reads = 2  # the monitor sees "pending" first
    result = run("job", "run", write_job(tmp_path, sample_job("hello", count=2)))
    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    ev_id = next(iter(fake.state.evals))
    allocs = sorted(fake.state.allocs.values(), key=lambda a: a.alloc_index)
    assert re.fullmatch(rf'==> {STAMP}: Monitoring evaluation "{ev_id[:8]}"', out[0])
    assert re.fullmatch(rf'    {STAMP}: Evaluation triggered by job "hello"', out[1])
    for line, alloc in zip(out[2:4], allocs, strict=True):
        assert re.fullmatch(
            rf'    {STAMP}: Allocation "{alloc.id[:8]}" created: node "{node.id[:8]}", '
            r'group "web"',
            line,
        )
    assert re.fullmatch(rf'    {STAMP}: Evaluation status changed: "pending" -> "complete"', out[4])
    assert re.fullmatch(
        rf'==> {STAMP}: Evaluation "{ev_id[:8]}" finished with status "complete"', out[5]
    )
    assert len(out) == 6
    assert result.stderr == ""


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_placement_failure_exits_2(fake: FakeServer, run: Any, tmp_path: Path) -> None:
    fake.state.add_node("small-1", memory_mb=512)
    fake.state.add_node("small-2", memory_mb=512)
    fake.state.add_node("mac", attributes={"kernel.name": "darwin"})
    job = sample_job(
        "hungry",
        count=3,
        memory_mb=400,
        constraints=(("${attr.kernel.name}", "=", "linux"),),
    )
    fake.state.nodes[next(iter(fake.state.nodes))].node_resources.memory.memory_mb = 512
    result = run("job", "run", write_job(tmp_path, job))
    assert result.exit_code == 2, result.output
    out = result.stdout
    ev = next(e for e in fake.state.evals.values() if e.triggered_by == "job-register")
    assert re.search(
        rf'==> {STAMP}: Evaluation "{ev.id[:8]}" finished with status "complete" but failed '
        r"to place all allocations:\n"
        rf'    {STAMP}: Task Group "web" \(failed to place 1 allocation\):\n'
        r'      \* Constraint "\$\{attr.kernel.name\} = linux" filtered 1 nodes\n'
        r"      \* Resources exhausted on 2 nodes\n"
        r'      \* Dimension "memory" exhausted on 2 nodes\n'
        rf'    {STAMP}: Evaluation "{ev.blocked_eval[:8]}" waiting for additional capacity '
        r"to place remainder\n",
        out,
    ), out
    assert out.count("created: node") == 2


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_plural_failure_header(fake: FakeServer, run: Any, tmp_path: Path) -> None:
    result = run("job", "run", write_job(tmp_path, sample_job("nowhere", count=2)))
    assert result.exit_code == 2
    assert 'Task Group "web" (failed to place 2 allocations):' in result.stdout
    assert "* No nodes were eligible for evaluation" in result.stdout


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_detach_and_check_index(fake: FakeServer, run: Any, tmp_path: Path) -> None:
    path = write_job(tmp_path, sample_job("hello"))
    result = run("job", "run", "--detach", path)
    assert result.exit_code == 0
    ev_id = next(iter(fake.state.evals))
    assert lines(result.stdout) == ["Job registration successful", f"Evaluation ID: {ev_id}"]
    stale = run("job", "run", "--detach", "--check-index", "0", path)
    assert stale.exit_code == 1
    assert lines(stale.stderr) == [
        f"Error: enforcing job modify index 0: job exists with conflicting job modify "
        f"index: {fake.state.jobs['hello'][-1].job_modify_index}"
    ]
    request = fake.state.requests[-1][1]
    assert request.enforce_index and request.job_modify_index == 0


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_from_stdin(fake: FakeServer, run: Any) -> None:
    fake.state.add_node("n1")
    body = json.dumps({"Job": to_json(sample_job("piped"), omit_empty=True)})
    result = run("job", "run", "--detach", "-", input=body)
    assert result.exit_code == 0, result.output
    assert "piped" in fake.state.jobs


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_server_rejects_job(fake: FakeServer, run: Any, tmp_path: Path) -> None:
    bad = sample_job("two words")
    del bad.task_groups[:]
    result = run("job", "run", write_job(tmp_path, bad))
    assert result.exit_code == 1
    assert lines(result.stderr) == [
        "Error: Job ID contains a space",
        "    Missing job task groups",
    ]
    assert "Traceback" not in result.output


GOOD_HCL = """
job "hello" {
  datacenters = ["dc1"]
  group "web" {
    count = 2
    network {
      port "http" { to = 8080 }
    }
    task "server" {
      driver = "mock"
      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
"""


def test_job_run_real_hcl_file(fake: FakeServer, run: Any, tmp_path: Path) -> None:
    fake.state.add_node("n1")
    path = tmp_path / "hello.hcl"
    path.write_text(GOOD_HCL)
    result = run("job", "run", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("created: node") == 2
    registered = [r for name, r in fake.state.requests if name == "Register"][-1].job
    assert registered.id == "hello" and registered.task_groups[0].count == 2


def test_job_run_bad_file_prints_parser_errors(fake: FakeServer, run: Any, tmp_path: Path) -> None:
    path = tmp_path / "bad.hcl"
    path.write_text(GOOD_HCL.replace("count = 2", "count = "))
    result = run("job", "run", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert re.match(rf"{re.escape(str(path))}:5:\d+: ", result.stderr), result.stderr
    assert "Traceback" not in result.output
    assert not fake.state.jobs
    piped = run("job", "run", "-", input=GOOD_HCL.replace("count = 2", "count = "))
    assert piped.exit_code == 1
    assert piped.stderr.startswith("<stdin>:5:")


def test_job_run_missing_file_is_a_usage_error(run: Any, tmp_path: Path) -> None:
    result = run("job", "run", str(tmp_path / "nope.hcl"))
    assert result.exit_code == 1
    assert "does not exist" in result.stderr


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_gives_up_on_a_stuck_eval(
    fake: FakeServer, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor, "MONITOR_TIMEOUT", 0.3)
    fake.state.pending_reads = 10_000
    result = run("job", "run", write_job(tmp_path, sample_job("stuck")))
    assert result.exit_code == 1
    assert "is still pending after 0.3s" in result.stdout
    assert "corral eval status" in result.stdout


# ---------------------------------------------------------------- job status


def test_job_status_list(fake: FakeServer, run: Any) -> None:
    assert run("job", "status").stdout == "No running jobs\n"
    fake.state.add_node("n1")
    fake.run_job(sample_job("web"))
    fake.run_job(sample_job("api"))
    result = run("job", "status")
    assert result.exit_code == 0
    out = lines(result.stdout)
    assert re.split(r"\s{2,}", out[0]) == ["ID", "Type", "Priority", "Status", "Submit Date"]
    assert re.fullmatch(rf"api\s+service\s+50\s+running\s+{STAMP}", out[1])
    assert out[2].startswith("web  ")
    as_json = json.loads(run("job", "status", "--json").stdout)
    assert [j["ID"] for j in as_json] == ["api", "web"]
    assert as_json[0]["Type"] == "service" and isinstance(as_json[0]["SubmitTime"], int)


def test_job_status_single(fake: FakeServer, run: Any) -> None:
    fake.state.add_node("n1", memory_mb=600)
    fake.run_job(sample_job("web", count=3))  # only two fit
    result = run("job", "status", "web")
    assert result.exit_code == 0, result.output
    blocks = result.stdout.split("\n\n")
    head = dict(re.split(r"\s+=\s+", line, maxsplit=1) for line in lines(blocks[0]))
    assert list(head) == [
        "ID",
        "Name",
        "Submit Date",
        "Type",
        "Priority",
        "Datacenters",
        "Namespace",
        "Status",
    ]
    assert head["ID"] == "web" and head["Datacenters"] == "dc1"
    assert head["Status"] == "running" and head["Namespace"] == "default"
    assert lines(blocks[1]) == [
        "Summary",
        "Task Group  Queued  Starting  Running  Failed  Complete  Lost",
        "web         1       0         2        0       0         0",
    ]
    assert lines(blocks[2]) == [
        "Placement Failure",
        'Task Group "web" (failed to place 1 allocation):',
        "  * Resources exhausted on 1 nodes",
        '  * Dimension "memory" exhausted on 1 nodes',
    ]
    alloc_lines = lines(blocks[3])
    assert alloc_lines[0] == "Allocations"
    assert re.split(r"\s{2,}", alloc_lines[1]) == [
        "ID",
        "Node ID",
        "Task Group",
        "Version",
        "Desired",
        "Status",
        "Created",
        "Modified",
    ]
    ids = {a.id[:8] for a in fake.state.allocs.values()}
    assert {line.split()[0] for line in alloc_lines[2:]} == ids
    assert all(re.search(r"run\s+running\s+\d+s ago\s+\d+s ago$", x) for x in alloc_lines[2:])


def test_job_status_starting_counts_pending_allocs(fake: FakeServer, run: Any) -> None:
    fake.state.add_node("n1")
    fake.state.new_alloc_client_status = "pending"
    fake.run_job(sample_job("web", count=2))
    out = run("job", "status", "web").stdout
    assert "web         0       2         0        0       0         0" in out


def test_job_status_json_shape(fake: FakeServer, run: Any) -> None:
    fake.state.add_node("n1")
    fake.run_job(sample_job("web"))
    result = run("job", "status", "web", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data) == {"Job", "Allocations"}
    assert data["Job"]["ID"] == "web" and data["Job"]["TaskGroups"][0]["Name"] == "web"
    (alloc,) = data["Allocations"]
    assert alloc["JobID"] == "web" and alloc["ClientStatus"] == "running"
    (port,) = alloc["AllocatedResources"]["Shared"]["Ports"]
    assert set(port) == {"Label", "Value", "To", "HostIP"}
    assert port["Label"] == "http" and port["To"] == 8080 and port["Value"] >= 20000
    assert port["HostIP"] == "127.0.0.1"


def test_job_status_prefix_and_not_found(fake: FakeServer, run: Any) -> None:
    fake.run_job(sample_job("website"))
    fake.run_job(sample_job("webhook"))
    assert run("job", "status", "webs").stdout.startswith("ID          = website")
    ambiguous = run("job", "status", "web")
    assert ambiguous.exit_code == 1
    assert lines(ambiguous.stderr) == [
        'Error: prefix "web" matched multiple jobs: webhook, website'
    ]
    missing = run("job", "status", "nope")
    assert missing.exit_code == 1
    assert lines(missing.stderr) == ['Error: no job with ID or prefix "nope" found']


# ---------------------------------------------------------------- job stop


def test_job_stop_monitors(fake: FakeServer, run: Any) -> None:
    fake.state.add_node("n1")
    fake.run_job(sample_job("web", count=2))
    result = run("job", "stop", "web")
    assert result.exit_code == 0, result.output
    assert re.search(r'finished with status "complete"$', result.stdout.strip())
    assert all(a.desired_status == "stop" for a in fake.state.allocs.values())
    status = run("job", "status", "web").stdout
    assert re.search(r"Status\s+= dead \(stopped\)", status)
    assert "web         0       0         0        0       2         0" in status


def test_job_stop_purge_detach(fake: FakeServer, run: Any) -> None:
    fake.run_job(sample_job("web"))
    result = run("job", "stop", "--purge", "--detach", "web")
    assert result.exit_code == 0
    ev_id = result.stdout.strip()
    assert fake.state.evals[ev_id].triggered_by == "job-deregister"
    assert "web" not in fake.state.jobs
    request = [r for name, r in fake.state.requests if name == "Deregister"][-1]
    assert request.purge


# ---------------------------------------------------------------- alloc


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
    request = [r for name, r in fake.state.requests if name == "Logs"][-1]
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


def test_alloc_stop(fake: FakeServer, run: Any) -> None:
    alloc = _one_alloc(fake)
    result = run("alloc", "stop", "--detach", alloc.id[:6])
    assert result.exit_code == 0
    assert fake.state.evals[result.stdout.strip()].triggered_by == "alloc-stop"
    assert fake.state.allocs[alloc.id].desired_status == "stop"


# ---------------------------------------------------------------- node, eval


def test_node_status(fake: FakeServer, run: Any) -> None:
    assert run("node", "status").stdout == "No nodes registered\n"
    a = fake.state.add_node("node-a", node_class="web")
    fake.state.add_node("node-b")
    fake.run_job(sample_job("web"))
    out = lines(run("node", "status").stdout)
    assert re.split(r"\s{2,}", out[0]) == [
        "ID",
        "Name",
        "Class",
        "DC",
        "Drain",
        "Eligibility",
        "Status",
    ]
    assert re.split(r"\s{2,}", out[1]) == [
        a.id[:8],
        "node-a",
        "web",
        "dc1",
        "false",
        "eligible",
        "ready",
    ]
    assert re.split(r"\s{2,}", out[2])[2] == "<none>"

    alloc = next(iter(fake.state.allocs.values()))
    holder = fake.state.nodes[alloc.node_id]
    detail = run("node", "status", holder.id[:6])
    assert detail.exit_code == 0, detail.output
    text = detail.stdout
    assert re.search(rf"^ID\s+= {holder.id[:8]}$", text, re.M)
    assert re.search(r"^Drivers\s+= docker,mock$", text, re.M)
    assert "Driver  Detected  Healthy  Message" in text
    assert "100/4000 MHz  256/4096 MiB" in text
    assert re.search(rf"^{alloc.id[:8]}\s+{holder.id[:8]}\s+web\s+0\s+run\s+running", text, re.M)
    assert re.search(r"^kernel.name\s+= linux$", text, re.M)

    nodes = json.loads(run("node", "status", "--json").stdout)
    assert [n["Name"] for n in nodes] == ["node-a", "node-b"]
    assert all(n["SecretID"] == "" for n in nodes)
    one = json.loads(run("node", "status", "--json", a.id).stdout)
    assert one["ID"] == a.id and one["Attributes"]["kernel.name"] == "linux"


def test_eval_status(fake: FakeServer, run: Any) -> None:
    fake.state.add_node("tiny", memory_mb=100)
    ev = fake.run_job(sample_job("web"))
    result = run("eval", "status", ev.id[:6])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert re.search(r"^Status\s+= complete$", text, re.M)
    assert re.search(r"^TriggeredBy\s+= job-register$", text, re.M)
    assert re.search(r"^Placement Failures\s+= true$", text, re.M)
    assert (
        "Failed Placements\n"
        'Task Group "web" (failed to place 1 allocation):\n'
        "  * Resources exhausted on 1 nodes\n"
        '  * Dimension "memory" exhausted on 1 nodes\n'
    ) in text
    data = json.loads(run("eval", "status", "--json", ev.id).stdout)
    assert data["ID"] == ev.id
    assert data["FailedTGAllocs"]["web"]["DimensionExhausted"] == {"memory": 1}
    listed = run("eval", "list", "--job", "web")
    assert listed.exit_code == 0
    assert ev.id[:8] in listed.stdout and "blocked" in listed.stdout


# ---------------------------------------------------------------- errors


def test_unreachable_server_one_line_exit_1() -> None:
    port = free_port()
    result = CliRunner().invoke(cli, ["--address", f"127.0.0.1:{port}", "job", "status"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"Error: cannot reach a corral server at 127.0.0.1:{port} (connection refused)\n"
    )


def test_unreachable_server_via_console_script_no_traceback() -> None:
    port = free_port()
    proc = subprocess.run(
        [sys.executable, "-c", "from corral.cli.main import main; main()", "job", "status"],
        capture_output=True,
        text=True,
        env={"CORRAL_ADDR": f"127.0.0.1:{port}", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (
        f"Error: cannot reach a corral server at 127.0.0.1:{port} (connection refused)\n"
    )


def test_address_from_env_or_after_the_subcommand(fake: FakeServer) -> None:
    fake.run_job(sample_job("web"))
    runner = CliRunner()
    via_env = runner.invoke(cli, ["job", "status"], env={"CORRAL_ADDR": fake.address})
    assert via_env.exit_code == 0 and via_env.stdout.startswith("ID ")
    closed = f"127.0.0.1:{free_port()}"
    late = runner.invoke(
        cli, ["--address", closed, "job", "status", "web", "--address", fake.address]
    )
    assert late.exit_code == 0, late.output
    assert "ID          = web" in late.stdout


def test_usage_errors_exit_1(run: Any) -> None:
    result = run("job", "status", "--bogus")
    assert result.exit_code == 1
    assert "No such option" in result.stderr
    assert run("alloc", "status").exit_code == 1


# ---------------------------------------------------------------- agent


@pytest.fixture
def agent_calls(monkeypatch: pytest.MonkeyPatch) -> list[AgentConfig]:
    """Record the AgentConfig the command hands to ``corral.agent.run_agent``."""
    calls: list[AgentConfig] = []
    module = types.ModuleType("corral.agent")

    def run_agent(cfg: AgentConfig) -> int:
        calls.append(cfg)
        return 0

    module.run_agent = run_agent  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "corral.agent", module)
    return calls


def test_agent_dev(agent_calls: list[AgentConfig]) -> None:
    result = CliRunner().invoke(cli, ["agent", "--dev", "--log-level", "debug"])
    assert result.exit_code == 0, result.output
    (cfg,) = agent_calls
    assert cfg.dev and cfg.server and cfg.client
    assert Path(cfg.data_dir).is_dir() and "corral-dev-" in cfg.data_dir
    assert cfg.log_level == "DEBUG" and cfg.rpc_port == 4647
    Path(cfg.data_dir).rmdir()


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("a", "must be base64"),
        ("k3y", "must be base64"),
        ("c2hvcnQ=", "must be 32 random bytes in base64 (this one is 5 bytes)"),
    ],
)
def test_agent_refuses_a_cluster_key_keygen_would_not_make(
    agent_calls: list[AgentConfig], tmp_path: Path, key: str, why: str
) -> None:
    """A typo must not become a guessable raft key."""
    args = ["agent", "--server", "--data-dir", str(tmp_path), "--encrypt", key]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output  # a usage error, as Nomad's CLI
    assert "Invalid value for '--encrypt'" in result.output and why in result.output
    assert agent_calls == []


def test_agent_server_and_client_flags(agent_calls: list[AgentConfig], tmp_path: Path) -> None:
    server = CliRunner().invoke(
        cli,
        [
            "agent",
            "--server",
            "--data-dir",
            str(tmp_path),
            "--bind",
            "0.0.0.0",
            "--rpc-port",
            "5647",
            "--raft-port",
            "5648",
            "--http-port",
            "5646",
            "--servers",
            "10.0.0.1:5648, 10.0.0.2:5648,10.0.0.3:5648",
            "--encrypt",
            KEY,
            "--min-heartbeat-ttl",
            "500ms",
            "--heartbeat-grace",
            "2",
        ],
    )
    assert server.exit_code == 0, server.output
    cfg = agent_calls[-1]
    assert cfg.server and not cfg.client and not cfg.dev
    assert cfg.servers == ["10.0.0.1:5648", "10.0.0.2:5648", "10.0.0.3:5648"]
    assert (cfg.bind, cfg.rpc_port, cfg.raft_port, cfg.http_port) == ("0.0.0.0", 5647, 5648, 5646)
    assert cfg.encrypt == KEY and cfg.min_heartbeat_ttl == 0.5 and cfg.heartbeat_grace == 2.0

    client = CliRunner().invoke(
        cli,
        [
            "agent",
            "--client",
            "--data-dir",
            str(tmp_path),
            "--servers",
            "127.0.0.1:4647",
            "--datacenter",
            "dc2",
            "--node-class",
            "gpu",
            "--node-name",
            "box1",
            "--meta",
            "rack=r1",
            "--meta",
            "zone=a=b",
            "--cpu-total",
            "2000",
            "--memory-total",
            "1024",
        ],
    )
    assert client.exit_code == 0, client.output
    cfg = agent_calls[-1]
    assert cfg.client and not cfg.server
    assert cfg.servers == ["127.0.0.1:4647"] and cfg.datacenter == "dc2"
    assert (cfg.node_class, cfg.node_name) == ("gpu", "box1")
    assert cfg.meta == {"rack": "r1", "zone": "a=b"}
    assert (cfg.cpu_total, cfg.memory_total) == (2000, 1024)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "say what to run: --dev, --server, --client"),
        (["--servers", "a:1"], "--servers needs --server"),
        (
            ["--dev", "--servers", "a:1"],
            "--dev runs a single-node cluster and cannot join --servers",
        ),
        (["--server"], "--data-dir is required"),
        (
            ["--server", "--data-dir", "D", "--node-class", "x"],
            "--node-class only apply to a client",
        ),
        (["--client", "--data-dir", "D", "--raft-port", "1"], "--raft-port only apply to a server"),
        (["--server", "--data-dir", "D", "--servers", "nope"], "'nope' is not HOST:PORT"),
        (["--client", "--data-dir", "D", "--meta", "novalue"], "'novalue' is not key=value"),
        (["--dev", "--min-heartbeat-ttl", "soon"], "is not a duration"),
        (["--dev", "--rpc-port", "4646"], "must differ"),
    ],
)
def test_agent_rejects_contradictions(
    agent_calls: list[AgentConfig], args: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, ["agent", *args])
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert agent_calls == []
