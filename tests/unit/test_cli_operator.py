"""The operator verbs against the in-process fake server over real gRPC.

``job plan|validate|inspect|history|revert|scale``, ``alloc restart``, ``eval
status``'s placement failures, ``node eligibility|drain``, ``server members``,
``operator raft ...`` and ``operator keygen``: Nomad's flags, output shapes and
exit codes (plan: 0 no change, 1 change, 255 error), since scripts depend on them.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result

from corral import structs
from corral.cli import node as node_cli
from corral.cli.main import cli
from corral.proto import pb
from tests.support.env import free_port
from tests.support.fake_server import FakeServer, sample_job

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)"

HCL = """
job "web" {{
  datacenters = ["dc1"]
  {constraint}
  group "web" {{
    count = {count}
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


def job_file(tmp_path: Path, count: int = 2, memory: int = 64, constraint: str = "") -> str:
    path = tmp_path / "web.hcl"
    path.write_text(HCL.format(count=count, memory=memory, constraint=constraint))
    return str(path)


def requests(fake: FakeServer, method: str) -> list[Any]:
    return [r for name, r in fake.state.requests if name == method]


# ---------------------------------------------------------------- job plan


def test_plan_new_job_exits_1_with_the_whole_job_added(
    fake: FakeServer, run: Any, tmp_path: Path
) -> None:
    fake.state.add_node("n1")
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
    assert not fake.state.jobs, "a plan changes nothing"
    (req,) = requests(fake, "Plan")
    assert req.diff and req.job.id == "web" and req.job.task_groups[0].count == 2


def test_plan_unchanged_exits_0_and_changed_exits_1(
    fake: FakeServer, run: Any, tmp_path: Path
) -> None:
    fake.state.add_node("n1")
    path = job_file(tmp_path)
    assert run("job", "run", path).exit_code == 0
    index = fake.state.jobs["web"][-1].job_modify_index

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


def test_plan_placement_failure_and_no_diff(fake: FakeServer, run: Any, tmp_path: Path) -> None:
    fake.state.add_node("small", memory_mb=100)
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


def test_plan_json_keeps_the_exit_code(fake: FakeServer, run: Any, tmp_path: Path) -> None:
    fake.state.add_node("n1")
    result = run("job", "plan", "--json", job_file(tmp_path))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["Changed"] is True and data["JobModifyIndex"] == 0
    assert data["Annotations"]["web"]["Place"] == 2
    assert data["FailedTGAllocs"] == {}


def test_plan_errors_exit_255(fake: FakeServer, run: Any, tmp_path: Path) -> None:
    path = job_file(tmp_path)
    usage = run("job", "plan", "--bogus", path)
    assert usage.exit_code == 255 and "No such option" in usage.stderr
    assert run("job", "plan", str(tmp_path / "missing.hcl")).exit_code == 255
    assert run("job", "plan").exit_code == 255

    bad = tmp_path / "bad.hcl"
    bad.write_text(HCL.format(count="", memory=64, constraint=""))
    parsed = run("job", "plan", str(bad))
    assert parsed.exit_code == 255 and parsed.stderr.startswith(f"{bad}:")

    fake.state.inject_errors["Plan"] = (grpc.StatusCode.INTERNAL, "scheduler exploded")
    refused = run("job", "plan", path)
    assert refused.exit_code == 255
    assert refused.stderr == "Error: scheduler exploded\n"

    closed = CliRunner().invoke(cli, ["--address", f"127.0.0.1:{free_port()}", "job", "plan", path])
    assert closed.exit_code == 255 and "cannot reach a corral server" in closed.stderr
    # other commands keep their usage exit code
    assert run("job", "status", "--bogus").exit_code == 1


# ---------------------------------------------------------------- job validate


def test_validate_success_warnings_and_json(fake: FakeServer, run: Any, tmp_path: Path) -> None:
    path = job_file(tmp_path)
    ok = run("job", "validate", path)
    assert ok.exit_code == 0 and ok.stdout == "Job validation successful\n"
    assert requests(fake, "Validate")[0].job.id == "web"
    fake.state.validate_warnings = "1 warning:\n\n* group web: count is high"
    warned = run("job", "validate", path)
    assert warned.exit_code == 0
    assert warned.stdout == (
        "Job Warnings:\n1 warning:\n\n* group web: count is high\n\nJob validation successful\n"
    )
    data = json.loads(run("job", "validate", "--json", path).stdout)
    assert data["ValidationErrors"] == [] and data["Error"] == ""


def test_validate_reports_server_errors_exit_1(
    fake: FakeServer, run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Any, request: pb.JobValidateRequest, context: Any) -> Any:
        return pb.JobValidateResponse(
            validation_errors=["Task group web: bad thing", "Task group web: worse thing"],
            error="2 errors occurred",
        )

    from tests.support import fake_server

    monkeypatch.setattr(fake_server._Jobs, "Validate", refuse)
    with FakeServer() as other:
        result = CliRunner().invoke(
            cli, ["--address", other.address, "job", "validate", job_file(tmp_path)]
        )
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        "Job validation errors:\n"
        "2 errors occurred:\n"
        "\t* Task group web: bad thing\n"
        "\t* Task group web: worse thing\n"
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


def versions_of_web(fake: FakeServer) -> None:
    fake.state.add_node("n1")
    fake.run_job(sample_job("web", count=1))
    fake.run_job(sample_job("web", count=3))
    fake.run_job(sample_job("web", count=3, memory_mb=512))


def test_inspect_prints_the_job_wrapper(fake: FakeServer, run: Any) -> None:
    versions_of_web(fake)
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


def test_history_newest_first_with_diffs(fake: FakeServer, run: Any) -> None:
    versions_of_web(fake)
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


def test_history_json(fake: FakeServer, run: Any) -> None:
    versions_of_web(fake)
    data = json.loads(run("job", "history", "--json", "web").stdout)
    assert [v["Version"] for v in data] == [2, 1, 0]
    one = json.loads(run("job", "history", "--json", "--version", "1", "web").stdout)
    assert one["Version"] == 1
    both = run("job", "history", "--json", "-p", "web")
    assert both.exit_code == 1 and "cannot be combined" in both.stderr


# ---------------------------------------------------------------- revert and scale


def test_revert_monitors_and_detaches(fake: FakeServer, run: Any) -> None:
    versions_of_web(fake)
    result = run("job", "revert", "web", "0")
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert re.fullmatch(rf'==> {STAMP}: Monitoring evaluation "[0-9a-f]{{8}}"', out[0])
    assert re.fullmatch(
        rf'==> {STAMP}: Evaluation "[0-9a-f]{{8}}" finished with status "complete"', out[-1]
    )
    (req,) = requests(fake, "Revert")
    assert req.job_id == "web" and req.version == 0 and not req.HasField("enforce_prior_version")
    current = fake.state.jobs["web"][-1]
    assert current.version == 3 and current.task_groups[0].count == 1

    detached = run("job", "revert", "--detach", "we", "1")
    assert detached.exit_code == 0
    ev_id = max(fake.state.evals.values(), key=lambda e: e.create_index).id
    assert detached.stdout == f"Evaluation ID: {ev_id}\n"

    same = run("job", "revert", "web", "4")
    assert same.exit_code == 1 and same.stderr == "Error: can't revert to current version\n"
    assert run("job", "revert", "web", "-1").exit_code == 1


def test_scale_defaults_to_the_only_group(fake: FakeServer, run: Any) -> None:
    fake.state.add_node("n1")
    fake.run_job(sample_job("web", count=1))
    result = run("job", "scale", "web", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("created: node") == 2
    (req,) = requests(fake, "Scale")
    assert (req.job_id, req.group, req.count) == ("web", "web", 3)
    assert req.message == "submitted using the corral CLI"
    assert fake.state.jobs["web"][-1].task_groups[0].count == 3
    ev = max(fake.state.evals.values(), key=lambda e: e.create_index)
    assert ev.triggered_by == structs.TRIGGER_SCALING

    detached = run("job", "scale", "--detach", "we", "web", "0")
    assert detached.exit_code == 0
    ev = max(fake.state.evals.values(), key=lambda e: e.create_index)
    assert detached.stdout == f"Job scale successful\nEvaluation ID: {ev.id}\n"


def test_scale_needs_a_group_when_there_are_several(fake: FakeServer, run: Any) -> None:
    job = sample_job("multi")
    api = job.task_groups.add(name="api", count=1)
    api.tasks.add(name="app", driver="mock").resources.memory_mb = 64
    fake.run_job(job)
    result = run("job", "scale", "multi", "2")
    assert result.exit_code == 1
    assert result.stderr == (
        'Error: job "multi" has 2 task groups, name one (corral job scale multi GROUP 2): '
        "web, api\n"
    )
    wrong = run("job", "scale", "multi", "db", "2")
    assert wrong.exit_code == 1
    assert wrong.stderr == 'Error: job "multi" has no task group "db"; its groups: web, api\n'
    assert not requests(fake, "Scale")
    ok = run("job", "scale", "--detach", "multi", "api", "4")
    assert ok.exit_code == 0 and requests(fake, "Scale")[0].group == "api"


def test_scale_usage_errors(fake: FakeServer, run: Any) -> None:
    fake.run_job(sample_job("web"))
    for args in (("web",), ("web", "-1"), ("web", "three"), ("web", "a", "b", "3")):
        result = run("job", "scale", *args)
        assert result.exit_code == 1, args
        assert result.stderr.startswith(("Usage:", "Error:")), result.stderr
    assert not requests(fake, "Scale")


def test_scale_placement_failure_exits_2(fake: FakeServer, run: Any) -> None:
    fake.state.add_node("small", memory_mb=600)
    fake.run_job(sample_job("web", count=1, memory_mb=256))
    result = run("job", "scale", "web", "4")
    assert result.exit_code == 2
    assert 'Task Group "web" (failed to place 2 allocations):' in result.stdout


# ---------------------------------------------------------------- alloc restart, eval status


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


def test_eval_status_explains_placement_failure(fake: FakeServer, run: Any) -> None:
    fake.state.add_node("tiny", memory_mb=100)
    fake.state.add_node("mac", attributes={"kernel.name": "darwin"})
    ev = fake.run_job(
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


# ---------------------------------------------------------------- node eligibility and drain


def test_node_eligibility(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    off = run("node", "eligibility", "-disable", n.id[:6])
    assert off.exit_code == 0
    assert off.stdout == f'Node "{n.id}" scheduling eligibility set: ineligible for scheduling\n'
    assert n.scheduling_eligibility == structs.NODE_INELIGIBLE
    on = run("node", "eligibility", "--enable", n.id)
    assert on.stdout == f'Node "{n.id}" scheduling eligibility set: eligible for scheduling\n'
    assert n.scheduling_eligibility == structs.NODE_ELIGIBLE
    assert [r.node_id for r in requests(fake, "SetEligibility")] == [n.id, n.id]
    for flags in ((), ("-enable", "-disable")):
        bad = run("node", "eligibility", *flags, n.id)
        assert bad.exit_code == 1 and "either -enable or -disable" in bad.stderr
    n.drain = True
    refused = run("node", "eligibility", "-enable", n.id)
    assert refused.exit_code == 1 and "while it is draining" in refused.stderr


@pytest.fixture
def fast_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_cli, "DRAIN_POLL_INTERVAL", 0.01)


@pytest.mark.usefixtures("fast_drain")
def test_drain_monitors_until_the_node_is_empty(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    fake.run_job(sample_job("web", count=2))
    allocs = sorted(fake.state.allocs)
    result = run("node", "drain", "-enable", "-yes", n.id)
    assert result.exit_code == 0, result.output
    expected = [
        "Ctrl-C to stop monitoring: will not cancel the node drain",
        f'Node "{n.id}" drain strategy set',
        *[f'Alloc "{a}" marked for migration' for a in allocs],
        *[f'Alloc "{a}" draining' for a in allocs],
        *[f'Alloc "{a}" status running -> complete' for a in allocs],
        f'Drain complete for node "{n.id}"',
        f'All allocations on node "{n.id}" have stopped',
    ]
    out = result.stdout.splitlines()
    assert len(out) == len(expected)
    for line, want in zip(out, expected, strict=True):
        assert re.fullmatch(rf"{STAMP}: {re.escape(want)}", line), line
    (req,) = requests(fake, "SetDrain")
    assert req.enable and req.deadline == 3600 * structs.SECOND and not req.ignore_system_jobs
    assert n.scheduling_eligibility == structs.NODE_INELIGIBLE


@pytest.mark.usefixtures("fast_drain")
def test_drain_empty_node_and_ignore_system(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    result = run("node", "drain", "--enable", "--yes", n.id)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1].endswith(f'All allocations on node "{n.id}" have stopped')
    run("node", "drain", "-disable", "-yes", n.id)
    system = sample_job("agent")
    system.type = "system"
    fake.run_job(system)
    fake.run_job(sample_job("web"))
    sys_alloc = next(a for a in fake.state.allocs.values() if a.job_id == "agent")
    result = run("node", "drain", "-enable", "-ignore-system", "-yes", n.id)
    assert result.exit_code == 0, result.output
    assert sys_alloc.id not in result.stdout
    assert sys_alloc.client_status == structs.ALLOC_CLIENT_RUNNING
    assert requests(fake, "SetDrain")[-1].ignore_system_jobs


def test_drain_detach_disable_and_deadlines(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    on = run("node", "drain", "-enable", "-detach", "-deadline", "1h30m", "-yes", n.id)
    assert on.exit_code == 0 and on.stdout == f'Node "{n.id}" drain strategy set\n'
    off = run("node", "drain", "--disable", "--yes", n.id)
    assert off.exit_code == 0 and off.stdout == f'Node "{n.id}" drain strategy unset\n'
    assert n.scheduling_eligibility == structs.NODE_ELIGIBLE
    run("node", "drain", "-enable", "-detach", "-force", "-yes", n.id)
    run("node", "drain", "-enable", "-detach", "-no-deadline", "-yes", n.id)
    run("node", "drain", "-disable", "-keep-ineligible", "-yes", n.id)
    reqs = requests(fake, "SetDrain")
    assert [(r.enable, r.deadline, r.mark_eligible) for r in reqs] == [
        (True, 90 * 60 * structs.SECOND, False),
        (False, 0, True),
        (True, -1, False),
        (True, 0, False),
        (False, 0, False),
    ]
    assert n.scheduling_eligibility == structs.NODE_INELIGIBLE


def test_drain_usage_errors(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    for flags in (
        (),
        ("-enable", "-disable"),
        ("-disable", "-deadline", "1h"),
        ("-enable", "-force", "-no-deadline"),
        ("-enable", "-deadline", "0s"),
        ("-enable", "-deadline", "soon"),
    ):
        result = run("node", "drain", *flags, "-yes", n.id)
        assert result.exit_code == 1, flags
        assert result.stderr, flags
    assert not requests(fake, "SetDrain")


def test_drain_asks_when_node_was_a_prefix(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    question = f'Are you sure you want to enable drain mode for node "{n.id}"? [y/N] '
    no = run("node", "drain", "-enable", "-detach", n.id[:4], input="n\n")
    assert no.exit_code == 0 and no.stdout == question + "n\nCanceling drain toggle\n"
    sloppy = run("node", "drain", "-enable", "-detach", n.id[:4], input="yes\n")
    assert sloppy.exit_code == 0 and "an exact 'y' is required" in sloppy.stdout
    other = run("node", "drain", "-enable", "-detach", n.id[:4], input="what\n")
    assert other.exit_code == 1 and "No confirmation detected" in other.stdout
    assert not requests(fake, "SetDrain")
    yes = run("node", "drain", "-enable", "-detach", n.id[:4], input="y\n")
    assert yes.exit_code == 0 and yes.stdout.endswith(f'Node "{n.id}" drain strategy set\n')
    # the full ID needs no confirmation
    assert run("node", "drain", "-disable", n.id).exit_code == 0


@pytest.mark.usefixtures("fast_drain")
def test_drain_monitor_gives_up_after_the_deadline(
    fake: FakeServer, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_cli, "DRAIN_MONITOR_MARGIN", 0.2)
    fake.state.drain_progress = False
    n = fake.state.add_node("n1")
    fake.run_job(sample_job("web"))
    result = run("node", "drain", "-enable", "-deadline", "100ms", "-yes", n.id)
    assert result.exit_code == 1
    assert result.stderr == (
        f'Error: 1 allocation still running on node "{n.id}" 0.3s after the drain started; '
        f"see corral node status {n.id[:8]}\n"
    )


@pytest.mark.usefixtures("fast_drain")
def test_drain_monitor_stops_when_the_drain_is_cancelled(fake: FakeServer, run: Any) -> None:
    fake.state.drain_progress = False
    n = fake.state.add_node("n1")
    fake.run_job(sample_job("web"))
    # someone runs "node drain -disable" while this one follows the drain
    cancel = threading.Timer(
        0.2, fake.state.set_drain, args=(pb.NodeDrainRequest(node_id=n.id, enable=False),)
    )
    cancel.start()
    try:
        result = run("node", "drain", "-enable", "-yes", n.id)
    finally:
        cancel.cancel()
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[-2].endswith(f'Drain complete for node "{n.id}"')
    assert out[-1].endswith(f'Node "{n.id}" is no longer draining; 1 allocation still running')


# ---------------------------------------------------------------- server members, raft


def test_server_members(fake: FakeServer, run: Any) -> None:
    fake.state.members.append(
        pb.ServerMember(
            id="s2",
            name="server-2",
            address="10.0.0.2",
            raft_address="10.0.0.2:4648",
            rpc_address="10.0.0.2:4647",
            raft_state="follower",
            voter=True,
            healthy=False,
            last_index=7,
        )
    )
    result = run("server", "members")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert re.split(r"\s{2,}", header) == [
        "Name",
        "Address",
        "Port",
        "Status",
        "Leader",
        "Raft Version",
        "Build",
        "Datacenter",
        "Region",
        "Raft State",
        "Last Index",
    ]
    leader_port = fake.state.members[0].raft_address.rsplit(":", 1)[1]
    assert re.split(r"\s+", rows[0])[:5] == [
        "fake-server",
        "127.0.0.1",
        leader_port,
        "alive",
        "true",
    ]
    cells = re.split(r"\s+", rows[1])
    assert cells[:6] == ["server-2", "10.0.0.2", "4648", "failed", "false", "3"]
    assert cells[7:] == ["dc1", "global", "follower", "7"]
    data = json.loads(run("server", "members", "--json").stdout)
    assert data["Leader"] == fake.address
    assert [m["Name"] for m in data["Members"]] == ["fake-server", "server-2"]
    assert data["Members"][1]["Healthy"] is False


def test_raft_list_peers_table_and_json(fake: FakeServer, run: Any) -> None:
    fake.state.members.append(
        pb.ServerMember(name="server-2", raft_address="10.0.0.2:4648", voter=True)
    )
    raft = fake.state.members[0].raft_address
    result = run("operator", "raft", "list-peers")
    assert result.exit_code == 0
    assert [re.split(r"\s{2,}", line) for line in result.stdout.splitlines()] == [
        ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"],
        ["fake-server", raft, raft, "leader", "true", "3"],
        ["server-2", "10.0.0.2:4648", "10.0.0.2:4648", "follower", "true", "3"],
    ]
    data = json.loads(run("operator", "raft", "list-peers", "--json").stdout)
    assert list(data) == ["Servers"]
    assert data["Servers"][1] == {
        "ID": "10.0.0.2:4648",
        "Node": "server-2",
        "Address": "10.0.0.2:4648",
        "Leader": False,
        "Voter": True,
        "RaftProtocol": "3",
    }


def test_raft_add_and_remove_peer(fake: FakeServer, run: Any) -> None:
    added = run("operator", "raft", "add-peer", "-peer-address", "10.0.0.9:4648")
    assert added.exit_code == 0 and added.stdout == 'Added peer with address "10.0.0.9:4648"\n'
    assert "10.0.0.9:4648" in [m.raft_address for m in fake.state.members]
    removed = run("operator", "raft", "remove-peer", "--peer-address", "10.0.0.9:4648")
    assert removed.stdout == 'Removed peer with address "10.0.0.9:4648"\n'
    assert run("operator", "raft", "add-peer", "10.0.0.8:4648").exit_code == 0
    assert run("operator", "raft", "remove-peer", "10.0.0.8:4648").exit_code == 0
    assert [r.address for r in requests(fake, "RaftAddPeer")] == ["10.0.0.9:4648", "10.0.0.8:4648"]
    assert len(fake.state.members) == 1

    missing = run("operator", "raft", "remove-peer")
    assert missing.exit_code == 1 and "missing the peer's raft address" in missing.stderr
    bad = run("operator", "raft", "remove-peer", "-peer-address", "nohost")
    assert bad.exit_code == 1 and "is not HOST:PORT" in bad.stderr
    leader = run("operator", "raft", "remove-peer", fake.state.members[0].raft_address)
    assert leader.exit_code == 1
    assert leader.stderr == "Error: a server cannot remove itself; remove it from another server\n"
    gone = run("operator", "raft", "remove-peer", "10.0.0.77:4648")
    assert gone.exit_code == 1 and gone.stderr == "Error: 10.0.0.77:4648 is not a raft peer\n"


def test_keygen_needs_no_server() -> None:
    runner = CliRunner()
    closed = f"127.0.0.1:{free_port()}"
    keys = [runner.invoke(cli, ["--address", closed, "operator", "keygen"]) for _ in range(2)]
    assert all(k.exit_code == 0 for k in keys)
    raw = [base64.b64decode(k.stdout.strip(), validate=True) for k in keys]
    assert [len(r) for r in raw] == [32, 32] and raw[0] != raw[1]
