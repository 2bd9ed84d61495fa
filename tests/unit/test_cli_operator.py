"""The job operator verbs against the real server, in memory, over real gRPC.

``job plan|validate|inspect|history|revert|scale``, ``eval status``'s placement
failures and ``operator keygen``: Nomad's flags, output shapes and exit codes (plan:
0 no change, 1 change, 255 error), since scripts depend on them. The plans, diffs,
versions and placement metrics are the real server's. ``node eligibility|drain``,
``server members`` and ``operator raft`` are in ``test_cli_cluster.py``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result

import corral.jobspec
from corral import structs
from corral.cli.main import cli
from corral.proto import pb
from tests.support.env import free_port
from tests.support.inproc_server import InProcServer, sample_job

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)"

HCL = """
job "web" {{
  datacenters = ["dc1"]
  {constraint}
  group "web" {{
    count = {count}
    update {{
      max_parallel = 0  # no deployment: these tests watch the evaluation only
    }}
    task "server" {{
      driver = "mock"
      resources {{
        cpu    = 100
        memory = {memory}
      }}
    }}
  }}
}}
"""


@pytest.fixture
def srv() -> Iterator[InProcServer]:
    with InProcServer() as server:
        yield server


@pytest.fixture
def run(srv: InProcServer) -> Any:
    """Invoke ``corral --address <in-memory server> ARGS...``."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--address", srv.address, *args], input=input)

    return invoke


def job_file(tmp_path: Path, count: int = 2, memory: int = 64, constraint: str = "") -> str:
    path = tmp_path / "web.hcl"
    path.write_text(HCL.format(count=count, memory=memory, constraint=constraint))
    return str(path)


# ---------------------------------------------------------------- job plan


def test_plan_new_job_exits_1_with_the_whole_job_added(
    srv: InProcServer, run: Any, tmp_path: Path
) -> None:
    srv.add_node("n1")
    path = job_file(tmp_path)
    result = run("job", "plan", path)
    assert result.exit_code == 1, result.output
    assert result.stdout == (
        '+ Job: "web"\n'
        '+ Task Group: "web" (2 create)\n'
        '  + Task: "server"\n'
        "\n"
        "Scheduler dry-run:\n"
        "- All tasks successfully allocated.\n"
        "\n"
        "Job Modify Index: 0\n"
        "To submit the job with version verification run:\n"
        "\n"
        f"corral job run --check-index 0 {path}\n"
        "\n"
        "When running the job with the check-index flag, the job will only be run if the\n"
        "job modify index given matches the server-side version. If the index has\n"
        "changed, another user has modified the job and the plan's results are\n"
        "potentially invalid.\n"
    )
    assert not srv.server.state.jobs(), "a plan changes nothing"
    (req,) = srv.log.of("Plan")
    assert req.diff and req.job.id == "web" and req.job.task_groups[0].count == 2


def test_plan_unchanged_exits_0_and_changed_exits_1(
    srv: InProcServer, run: Any, tmp_path: Path
) -> None:
    srv.add_node("n1")
    path = job_file(tmp_path)
    assert run("job", "run", path).exit_code == 0
    index = srv.job("web").job_modify_index

    same = run("job", "plan", path)
    assert same.exit_code == 0, same.output
    assert same.stdout.startswith(
        'Job: "web"\nTask Group: "web" (2 ignore)\n  Task: "server"\n\nScheduler dry-run:\n'
    )
    assert f"Job Modify Index: {index}\n" in same.stdout
    assert f"corral job run --check-index {index} {path}\n" in same.stdout

    changed = run("job", "plan", job_file(tmp_path, count=3, memory=128))
    assert changed.exit_code == 1
    assert changed.stdout.startswith(
        '+/- Job: "web"\n'
        '+/- Task Group: "web" (1 create, 2 create/destroy update)\n'
        '  +/- Count: "2" => "3"\n'
        '  +/- Task: "server"\n'
        "    +/- Resources {\n"
        '      +/- MemoryMB: "64" => "128"\n'
        "        }\n"
        "\n"
        "Scheduler dry-run:\n"
        "- All tasks successfully allocated.\n"
    )
    # the hint works as printed: --check-index (and Nomad's -check-index) with that index
    applied = run("job", "run", "--detach", "-check-index", str(index), path)
    assert applied.exit_code == 0, applied.output
    stale = run("job", "run", "--detach", "--check-index", str(index), path)
    assert stale.exit_code == 1 and "conflicting job modify index" in stale.stderr


def test_plan_placement_failure_and_no_diff(srv: InProcServer, run: Any, tmp_path: Path) -> None:
    srv.add_node("small", memory_mb=100)
    result = run("job", "plan", "--no-diff", job_file(tmp_path, count=2, memory=200))
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith(
        "Scheduler dry-run:\n"
        "- WARNING: Failed to place all allocations.\n"
        '  Task Group "web" (failed to place 2 allocations):\n'
        "    * Resources exhausted on 1 nodes\n"
        '    * Dimension "memory" exhausted on 1 nodes\n'
        "\n"
        "Job Modify Index: 0\n"
    )


def test_plan_json_keeps_the_exit_code(srv: InProcServer, run: Any, tmp_path: Path) -> None:
    srv.add_node("n1")
    result = run("job", "plan", "--json", job_file(tmp_path))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["Changed"] is True and data["JobModifyIndex"] == 0
    assert data["Annotations"]["web"]["Place"] == 2
    assert data["FailedTGAllocs"] == {}


def test_plan_errors_exit_255(srv: InProcServer, run: Any, tmp_path: Path) -> None:
    path = job_file(tmp_path)
    usage = run("job", "plan", "--bogus", path)
    assert usage.exit_code == 255 and "No such option" in usage.stderr
    assert run("job", "plan", str(tmp_path / "missing.hcl")).exit_code == 255
    assert run("job", "plan").exit_code == 255

    bad = tmp_path / "bad.hcl"
    bad.write_text(HCL.format(count="", memory=64, constraint=""))
    parsed = run("job", "plan", str(bad))
    assert parsed.exit_code == 255 and parsed.stderr.startswith(f"{bad}:")

    srv.log.inject_errors["Plan"] = (grpc.StatusCode.INTERNAL, "scheduler exploded")
    refused = run("job", "plan", path)
    assert refused.exit_code == 255
    assert refused.stderr == "Error: scheduler exploded\n"

    closed = CliRunner().invoke(cli, ["--address", f"127.0.0.1:{free_port()}", "job", "plan", path])
    assert closed.exit_code == 255 and "cannot reach a corral server" in closed.stderr
    # other commands keep their usage exit code
    assert run("job", "status", "--bogus").exit_code == 1


# ---------------------------------------------------------------- job validate


def test_validate_success_warnings_and_json(srv: InProcServer, run: Any, tmp_path: Path) -> None:
    path = job_file(tmp_path)
    ok = run("job", "validate", path)
    assert ok.exit_code == 0 and ok.stdout == "Job validation successful\n"
    assert srv.log.of("Validate")[0].job.id == "web"
    data = json.loads(run("job", "validate", "--json", path).stdout)
    assert data["ValidationErrors"] == [] and data["Error"] == ""
    # corral warns of nothing yet: a scripted answer shows how warnings print
    srv.log.answers["Validate"] = pb.JobValidateResponse(
        warnings="1 warning:\n\n* group web: count is high", driver_config_validated=True
    )
    warned = run("job", "validate", path)
    assert warned.exit_code == 0
    assert warned.stdout == (
        "Job Warnings:\n1 warning:\n\n* group web: count is high\n\nJob validation successful\n"
    )


def test_validate_reports_server_errors_exit_1(
    srv: InProcServer, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's errors as it words them: scripted first (any wording), then the
    server's own, for a job the local parser did not get to check (both check with
    corral.jobspec, so a file the CLI parses is one the server accepts)."""
    srv.log.answers["Validate"] = pb.JobValidateResponse(
        validation_errors=["Task group web: bad thing", "Task group web: worse thing"],
        error="2 errors occurred",
    )
    result = run("job", "validate", job_file(tmp_path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Job validation errors:\n"
        "2 errors occurred:\n"
        "\t* Task group web: bad thing\n"
        "\t* Task group web: worse thing\n"
    )
    del srv.log.answers["Validate"]
    bad = pb.Job(id="two words")
    monkeypatch.setattr(corral.jobspec, "parse_file", lambda path: bad)
    real = run("job", "validate", job_file(tmp_path))
    assert real.exit_code == 1
    assert real.stderr == (
        "Job validation errors:\n"
        "2 errors occurred:\n"
        '\t* job ID "two words" must not contain spaces\n'
        "\t* no task groups: a job needs at least one group\n"
    )


def test_validate_local_errors_and_no_server(tmp_path: Path) -> None:
    bad = tmp_path / "bad.hcl"
    bad.write_text(HCL.format(count="", memory=64, constraint=""))
    closed = f"127.0.0.1:{free_port()}"
    result = CliRunner().invoke(cli, ["--address", closed, "job", "validate", str(bad)])
    assert result.exit_code == 1 and result.stderr.startswith(f"{bad}:")
    offline = CliRunner().invoke(cli, ["--address", closed, "job", "validate", job_file(tmp_path)])
    assert offline.exit_code == 0
    assert offline.stdout.startswith("Server-side checks not run: cannot reach a corral server")
    assert offline.stdout.endswith("\n\nJob validation successful\n")


# ---------------------------------------------------------------- inspect and history


def versions_of_web(srv: InProcServer) -> None:
    srv.add_node("n1")
    srv.run_job(sample_job("web", count=1))
    srv.run_job(sample_job("web", count=3))
    srv.run_job(sample_job("web", count=3, memory_mb=512))


def test_inspect_prints_the_job_wrapper(srv: InProcServer, run: Any) -> None:
    versions_of_web(srv)
    result = run("job", "inspect", "we")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == ["Job"]
    assert data["Job"]["ID"] == "web" and data["Job"]["Version"] == 2
    assert data["Job"]["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMB"] == 512
    assert json.loads(run("job", "inspect", "web", "--json").stdout) == data
    old = json.loads(run("job", "inspect", "web", "-version", "0").stdout)
    assert old["Job"]["Version"] == 0 and old["Job"]["TaskGroups"][0]["Count"] == 1
    missing = run("job", "inspect", "web", "--version", "7")
    assert missing.exit_code == 1
    assert missing.stderr == 'Error: job "web" has no version 7 (known: 2, 1, 0)\n'
    unknown = run("job", "inspect", "nope")
    assert unknown.exit_code == 1
    assert unknown.stderr == 'Error: no job with ID or prefix "nope" found\n'


def test_history_newest_first_with_diffs(srv: InProcServer, run: Any) -> None:
    versions_of_web(srv)
    plain = run("job", "history", "web")
    assert plain.exit_code == 0, plain.output
    blocks = plain.stdout.rstrip("\n").split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [
        "Version     = 2",
        "Version     = 1",
        "Version     = 0",
    ]
    assert re.fullmatch(
        rf"Version     = 2\nStable      = false\nSubmit Date = {STAMP}", blocks[0]
    ), blocks[0]

    diff = run("job", "history", "-p", "web")
    assert diff.exit_code == 0
    blocks = diff.stdout.rstrip("\n").split("\n\n")
    assert blocks[0].split("\n", 3)[3] == (
        "Diff        =\n"
        '+/- Job: "web"\n'
        '+/- Task Group: "web"\n'
        '  +/- Task: "server"\n'
        "    +/- Resources {\n"
        '      +/- MemoryMB: "256" => "512"\n'
        "        }"
    )
    assert blocks[1].split("\n", 3)[3] == (
        'Diff        =\n+/- Job: "web"\n+/- Task Group: "web"\n  +/- Count: "1" => "3"\n'
        '      Task: "server"'
    )
    assert "Diff" not in blocks[2]

    one = run("job", "history", "-p", "--version", "1", "web")
    assert one.stdout.startswith("Version     = 1\n") and '"1" => "3"' in one.stdout
    assert "Version     = 2" not in one.stdout

    full = run("job", "history", "--full", "--version", "0", "web")
    head, _, body = full.stdout.partition("Full        = JSON Job:\n")
    assert head.startswith("Version     = 0\n")
    assert json.loads(body)["TaskGroups"][0]["Count"] == 1


def test_history_json(srv: InProcServer, run: Any) -> None:
    versions_of_web(srv)
    data = json.loads(run("job", "history", "--json", "web").stdout)
    assert [v["Version"] for v in data] == [2, 1, 0]
    one = json.loads(run("job", "history", "--json", "--version", "1", "web").stdout)
    assert one["Version"] == 1
    both = run("job", "history", "--json", "-p", "web")
    assert both.exit_code == 1 and "cannot be combined" in both.stderr


# ---------------------------------------------------------------- revert and scale


def test_revert_monitors_and_detaches(srv: InProcServer, run: Any) -> None:
    versions_of_web(srv)
    result = run("job", "revert", "web", "0")
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert re.fullmatch(rf'==> {STAMP}: Monitoring evaluation "[0-9a-f]{{8}}"', out[0])
    assert re.fullmatch(
        rf'==> {STAMP}: Evaluation "[0-9a-f]{{8}}" finished with status "complete"', out[-1]
    )
    (req,) = srv.log.of("Revert")
    assert req.job_id == "web" and req.version == 0 and not req.HasField("enforce_prior_version")
    current = srv.job("web")
    assert current.version == 3 and current.task_groups[0].count == 1

    detached = run("job", "revert", "--detach", "we", "1")
    assert detached.exit_code == 0
    ev_id = srv.evals("web")[-1].id
    assert detached.stdout == f"Evaluation ID: {ev_id}\n"

    same = run("job", "revert", "web", "4")
    assert same.exit_code == 1 and same.stderr == "Error: job is already at version 4\n"
    assert run("job", "revert", "web", "-1").exit_code == 1


def test_scale_defaults_to_the_only_group(srv: InProcServer, run: Any) -> None:
    srv.add_node("n1")
    srv.run_job(sample_job("web", count=1))
    result = run("job", "scale", "web", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("created: node") == 2
    (req,) = srv.log.of("Scale")
    assert (req.job_id, req.group, req.count) == ("web", "web", 3)
    assert req.message == "submitted using the corral CLI"
    assert srv.job("web").task_groups[0].count == 3
    ev = srv.evals("web")[-1]
    assert ev.triggered_by == structs.TRIGGER_SCALING

    detached = run("job", "scale", "--detach", "we", "web", "0")
    assert detached.exit_code == 0
    ev = srv.evals("web")[-1]
    assert detached.stdout == f"Job scale successful\nEvaluation ID: {ev.id}\n"


def test_scale_needs_a_group_when_there_are_several(srv: InProcServer, run: Any) -> None:
    job = sample_job("multi")
    api = job.task_groups.add(name="api", count=1)
    api.tasks.add(name="app", driver="mock").resources.memory_mb = 64
    srv.run_job(job)
    result = run("job", "scale", "multi", "2")
    assert result.exit_code == 1
    assert result.stderr == (
        'Error: job "multi" has 2 task groups, name one (corral job scale multi GROUP 2): '
        "web, api\n"
    )
    wrong = run("job", "scale", "multi", "db", "2")
    assert wrong.exit_code == 1
    assert wrong.stderr == 'Error: job "multi" has no task group "db"; its groups: web, api\n'
    assert not srv.log.of("Scale")
    ok = run("job", "scale", "--detach", "multi", "api", "4")
    assert ok.exit_code == 0 and srv.log.of("Scale")[0].group == "api"


def test_scale_usage_errors(srv: InProcServer, run: Any) -> None:
    srv.run_job(sample_job("web"))
    for args in (("web",), ("web", "-1"), ("web", "three"), ("web", "a", "b", "3")):
        result = run("job", "scale", *args)
        assert result.exit_code == 1, args
        assert result.stderr.startswith(("Usage:", "Error:")), result.stderr
    assert not srv.log.of("Scale")


def test_scale_placement_failure_exits_2(srv: InProcServer, run: Any) -> None:
    srv.add_node("small", memory_mb=600)
    srv.run_job(sample_job("web", count=1, memory_mb=256))
    result = run("job", "scale", "web", "4")
    assert result.exit_code == 2
    assert 'Task Group "web" (failed to place 2 allocations):' in result.stdout


# ---------------------------------------------------------------- eval status


def test_eval_status_explains_placement_failure(srv: InProcServer, run: Any) -> None:
    srv.add_node("tiny", memory_mb=100)
    srv.add_node("mac", attributes={"kernel.name": "darwin"})
    ev = srv.run_job(
        sample_job("web", count=2, constraints=(("${attr.kernel.name}", "=", "linux"),))
    )
    result = run("eval", "status", ev.id)
    assert result.exit_code == 0
    assert (
        "Failed Placements\n"
        'Task Group "web" (failed to place 2 allocations):\n'
        '  * Constraint "${attr.kernel.name} = linux" filtered 1 nodes\n'
        "  * Resources exhausted on 1 nodes\n"
        '  * Dimension "memory" exhausted on 1 nodes\n'
        "\n"
        f'Evaluation "{ev.blocked_eval[:8]}" waiting for additional capacity to place remainder\n'
    ) in result.stdout


# ---------------------------------------------------------------- keygen


def test_keygen_needs_no_server() -> None:
    runner = CliRunner()
    closed = f"127.0.0.1:{free_port()}"
    keys = [runner.invoke(cli, ["--address", closed, "operator", "keygen"]) for _ in range(2)]
    assert all(k.exit_code == 0 for k in keys)
    raw = [base64.b64decode(k.stdout.strip(), validate=True) for k in keys]
    assert [len(r) for r in raw] == [32, 32] and raw[0] != raw[1]
