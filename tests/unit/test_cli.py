"""The ``corral`` CLI against the real server, in memory, over real gRPC.

What a user relies on: Nomad-shaped output, ``--json`` in Nomad's API shapes, exit
codes (0 ok, 1 error, 2 placement failure) and one ``Error: ...`` line instead of a
traceback whenever something goes wrong.

The server is the real one (``tests.support.inproc_server``), so the answers are
corral's own: validation messages, placement metrics, job status. The scripted
fake (``tests.support.fake_server``) serves only what a script must: an evaluation
that never finishes, followed with a fake clock. The alloc verbs, which need a
client agent, are in ``test_cli_alloc.py``; ``corral agent`` in ``test_cli_agent.py``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import corral.jobspec
from corral import structs
from corral.api.jsonmap import from_json, to_json
from corral.cli.main import cli
from corral.proto import pb
from tests.support.env import free_port
from tests.support.fake_server import FakeServer, use_fake_clock
from tests.support.inproc_server import InProcServer, sample_job

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)"


@pytest.fixture
def srv() -> Iterator[InProcServer]:
    with InProcServer() as server:
        yield server


def invoker(address: str) -> Any:
    """Invoke ``corral --address ADDRESS ARGS...``."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--address", address, *args], input=input)

    return invoke


@pytest.fixture
def run(srv: InProcServer) -> Any:
    """Invoke ``corral --address <in-memory server> ARGS...``."""
    return invoker(srv.address)


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
def test_job_run_monitors_until_complete(srv: InProcServer, run: Any, tmp_path: Path) -> None:
    node = srv.add_node("node-a")
    result = run("job", "run", write_job(tmp_path, sample_job("hello", count=2)))
    assert result.exit_code == 0, result.output
    out = lines(result.stdout)
    (ev,) = srv.evals("hello")
    allocs = sorted(srv.allocs("hello"), key=lambda a: a.alloc_index)
    assert re.fullmatch(rf'==> {STAMP}: Monitoring evaluation "{ev.id[:8]}"', out[0])
    assert re.fullmatch(rf'    {STAMP}: Evaluation triggered by job "hello"', out[1])
    for line, alloc in zip(out[2:4], allocs, strict=True):
        assert re.fullmatch(
            rf'    {STAMP}: Allocation "{alloc.id[:8]}" created: node "{node.id[:8]}", '
            r'group "web"',
            line,
        )
    assert re.fullmatch(rf'    {STAMP}: Evaluation status changed: "pending" -> "complete"', out[4])
    assert re.fullmatch(
        rf'==> {STAMP}: Evaluation "{ev.id[:8]}" finished with status "complete"', out[5]
    )
    assert len(out) == 6
    assert result.stderr == ""


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_placement_failure_exits_2(srv: InProcServer, run: Any, tmp_path: Path) -> None:
    srv.add_node("small-1", memory_mb=512)
    srv.add_node("small-2", memory_mb=512)
    srv.add_node("mac", attributes={"kernel.name": "darwin"})
    job = sample_job(
        "hungry",
        count=3,
        memory_mb=400,
        constraints=(("${attr.kernel.name}", "=", "linux"),),
    )
    result = run("job", "run", write_job(tmp_path, job))
    assert result.exit_code == 2, result.output
    out = result.stdout
    ev = next(e for e in srv.evals("hungry") if e.triggered_by == "job-register")
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
def test_job_run_plural_failure_header(run: Any, tmp_path: Path) -> None:
    result = run("job", "run", write_job(tmp_path, sample_job("nowhere", count=2)))
    assert result.exit_code == 2
    assert 'Task Group "web" (failed to place 2 allocations):' in result.stdout
    assert "* No nodes were eligible for evaluation" in result.stdout


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_detach_and_check_index(srv: InProcServer, run: Any, tmp_path: Path) -> None:
    path = write_job(tmp_path, sample_job("hello"))
    result = run("job", "run", "--detach", path)
    assert result.exit_code == 0
    ev = srv.evals("hello")[0]  # then the blocked one: no nodes
    assert lines(result.stdout) == ["Job registration successful", f"Evaluation ID: {ev.id}"]
    stale = run("job", "run", "--detach", "--check-index", "0", path)
    assert stale.exit_code == 1
    assert lines(stale.stderr) == [
        f"Error: enforcing job modify index 0: job exists with conflicting job modify "
        f"index: {srv.job('hello').job_modify_index}"
    ]
    request = srv.log.of("Register")[-1]
    assert request.enforce_index and request.job_modify_index == 0


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_from_stdin(srv: InProcServer, run: Any) -> None:
    srv.add_node("n1")
    body = json.dumps({"Job": to_json(sample_job("piped"), omit_empty=True)})
    result = run("job", "run", "--detach", "-", input=body)
    assert result.exit_code == 0, result.output
    assert srv.server.state.job(structs.DEFAULT_NAMESPACE, "piped") is not None


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_server_rejects_job(run: Any, tmp_path: Path) -> None:
    bad = sample_job("two words")
    del bad.task_groups[:]
    result = run("job", "run", write_job(tmp_path, bad))
    assert result.exit_code == 1
    assert lines(result.stderr) == [
        'Error: job ID "two words" must not contain spaces',
        "    no task groups: a job needs at least one group",
    ]
    assert "Traceback" not in result.output


GOOD_HCL = """
job "hello" {
  datacenters = ["dc1"]
  group "web" {
    count = 2
    update {
      max_parallel = 0  # no deployment: these tests watch the evaluation only
    }
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


def test_job_run_real_hcl_file(srv: InProcServer, run: Any, tmp_path: Path) -> None:
    srv.add_node("n1")
    path = tmp_path / "hello.hcl"
    path.write_text(GOOD_HCL)
    result = run("job", "run", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout.count("created: node") == 2
    registered = srv.log.of("Register")[-1].job
    assert registered.id == "hello" and registered.task_groups[0].count == 2


def test_job_run_bad_file_prints_parser_errors(srv: InProcServer, run: Any, tmp_path: Path) -> None:
    path = tmp_path / "bad.hcl"
    path.write_text(GOOD_HCL.replace("count = 2", "count = "))
    result = run("job", "run", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert re.match(rf"{re.escape(str(path))}:5:\d+: ", result.stderr), result.stderr
    assert "Traceback" not in result.output
    assert not srv.server.state.jobs()
    piped = run("job", "run", "-", input=GOOD_HCL.replace("count = 2", "count = "))
    assert piped.exit_code == 1
    assert piped.stderr.startswith("<stdin>:5:")


def test_job_run_missing_file_is_a_usage_error(run: Any, tmp_path: Path) -> None:
    result = run("job", "run", str(tmp_path / "nope.hcl"))
    assert result.exit_code == 1
    assert "does not exist" in result.stderr


@pytest.mark.usefixtures("parse_json_jobs")
def test_job_run_gives_up_on_a_stuck_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An evaluation no scheduler picks up (the scripted fake keeps it pending): the
    monitor gives up at its deadline, on a fake clock, so without waiting for it."""
    clock = use_fake_clock(monkeypatch, eval_timeout=0.3)
    with FakeServer() as fake:
        fake.state.pending_reads = 10_000
        result = invoker(fake.address)("job", "run", write_job(tmp_path, sample_job("stuck")))
    assert result.exit_code == 1
    assert "is still pending after 0.3s" in result.stdout
    assert "corral eval status" in result.stdout
    assert clock.sleeps == [0.1, 0.1, 0.1]


# ---------------------------------------------------------------- job status


def test_job_status_list(srv: InProcServer, run: Any) -> None:
    assert run("job", "status").stdout == "No running jobs\n"
    srv.add_node("n1")
    srv.run_job(sample_job("web"))
    srv.run_job(sample_job("api"))
    result = run("job", "status")
    assert result.exit_code == 0
    out = lines(result.stdout)
    assert re.split(r"\s{2,}", out[0]) == ["ID", "Type", "Priority", "Status", "Submit Date"]
    assert re.fullmatch(rf"api\s+service\s+50\s+running\s+{STAMP}", out[1])
    assert out[2].startswith("web  ")
    as_json = json.loads(run("job", "status", "--json").stdout)
    assert [j["ID"] for j in as_json] == ["api", "web"]
    assert as_json[0]["Type"] == "service" and isinstance(as_json[0]["SubmitTime"], int)


def test_job_status_single(srv: InProcServer, run: Any) -> None:
    srv.add_node("n1", memory_mb=600)
    srv.run_job(sample_job("web", count=3))  # only two fit
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
    ids = {a.id[:8] for a in srv.allocs()}
    assert {line.split()[0] for line in alloc_lines[2:]} == ids
    assert all(re.search(r"run\s+running\s+\d+s ago\s+\d+s ago$", x) for x in alloc_lines[2:])


def test_job_status_starting_counts_pending_allocs(srv: InProcServer, run: Any) -> None:
    srv.add_node("n1")
    srv.run_job(sample_job("web", count=2), start=False)  # no client has started them
    out = run("job", "status", "web").stdout
    assert "web         0       2         0        0       0         0" in out


def test_job_status_json_shape(srv: InProcServer, run: Any) -> None:
    srv.add_node("n1")
    srv.run_job(sample_job("web"))
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


def test_job_status_prefix_and_not_found(srv: InProcServer, run: Any) -> None:
    srv.run_job(sample_job("website"))
    srv.run_job(sample_job("webhook"))
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


def test_job_stop_monitors(srv: InProcServer, run: Any) -> None:
    srv.add_node("n1")
    srv.run_job(sample_job("web", count=2))
    result = run("job", "stop", "web")
    assert result.exit_code == 0, result.output
    assert re.search(r'finished with status "complete"$', result.stdout.strip())
    assert all(a.desired_status == "stop" for a in srv.allocs())
    srv.sync_allocs()  # the clients stop the tasks and report them complete
    status = run("job", "status", "web").stdout
    assert re.search(r"Status\s+= dead \(stopped\)", status)
    assert "web         0       0         0        0       2         0" in status


def test_job_stop_purge_detach(srv: InProcServer, run: Any) -> None:
    srv.run_job(sample_job("web"))
    result = run("job", "stop", "--purge", "--detach", "web")
    assert result.exit_code == 0
    ev_id = result.stdout.strip()
    assert srv.eval(ev_id).triggered_by == "job-deregister"
    assert srv.server.state.job(structs.DEFAULT_NAMESPACE, "web") is None
    request = srv.log.of("Deregister")[-1]
    assert request.purge


# ---------------------------------------------------------------- alloc stop


def test_alloc_stop(srv: InProcServer, run: Any) -> None:
    srv.add_node("node-a")
    srv.run_job(sample_job("web"))
    (alloc,) = srv.allocs()
    result = run("alloc", "stop", "--detach", alloc.id[:6])
    assert result.exit_code == 0
    assert srv.eval(result.stdout.strip()).triggered_by == "alloc-stop"
    srv.settle()
    assert srv.server.state.alloc(alloc.id).desired_status == "stop"


# ---------------------------------------------------------------- node, eval


def test_node_status(srv: InProcServer, run: Any) -> None:
    assert run("node", "status").stdout == "No nodes registered\n"
    a = srv.add_node("node-a", node_class="web")
    srv.add_node("node-b")
    srv.run_job(sample_job("web"))
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

    (alloc,) = srv.allocs()
    holder = srv.server.state.node(alloc.node_id)
    assert holder is not None
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


def test_eval_status(srv: InProcServer, run: Any) -> None:
    srv.add_node("tiny", memory_mb=100)
    ev = srv.run_job(sample_job("web"))
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


def test_address_from_env_or_after_the_subcommand(srv: InProcServer) -> None:
    srv.run_job(sample_job("web"))
    runner = CliRunner()
    via_env = runner.invoke(cli, ["job", "status"], env={"CORRAL_ADDR": srv.address})
    assert via_env.exit_code == 0 and via_env.stdout.startswith("ID ")
    closed = f"127.0.0.1:{free_port()}"
    late = runner.invoke(
        cli, ["--address", closed, "job", "status", "web", "--address", srv.address]
    )
    assert late.exit_code == 0, late.output
    assert "ID          = web" in late.stdout


def test_usage_errors_exit_1(run: Any) -> None:
    result = run("job", "status", "--bogus")
    assert result.exit_code == 1
    assert "No such option" in result.stderr
    assert run("alloc", "status").exit_code == 1
