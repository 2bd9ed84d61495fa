"""``corral deployment ...`` and the deployment view of ``corral job run``.

Against the in-process fake server over real gRPC, whose deployments are scripted
(``DeploymentStep``s applied one per read), so that a rollout's progress and its
end are known (the real server's rollouts need client agents reporting health).
The monitors run on a fake clock: their grace periods and retry delays pass
without a real wait. What a user relies on: Nomad's ``deployment status`` layout
and API JSON, ``job run`` following a rollout to its end with exit 0 on success
and 1 on failure or auto-revert (naming the version it rolls back to), and
unchanged behaviour when a job write starts no deployment.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner, Result

import corral.jobspec
from corral.api.client import CorralClient
from corral.api.jsonmap import from_json, to_json
from corral.cli import monitor
from corral.cli.main import cli
from corral.proto import pb
from tests.support.fake_server import DeploymentStep, FakeClock, FakeServer, use_fake_clock
from tests.support.inproc_server import sample_job

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)"
MINUTE = 60 * 10**9


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        server.state.add_node("n1", memory_mb=16384, cpu=16000)
        yield server


@pytest.fixture
def run(fake: FakeServer) -> Any:
    """Invoke ``corral --address <fake> ARGS...``."""
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, ["--address", fake.address, *args])

    return invoke


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The CLI's monitors wait on a fake clock: no real sleeping."""
    return use_fake_clock(monkeypatch)


@pytest.fixture
def json_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read job files as Nomad JSON (the CLI's behaviour, not the HCL parser's)."""

    def parse_file(path: str) -> pb.Job:
        data = json.loads(Path(path).read_text())
        job = pb.Job()
        from_json(data.get("Job", data), job)
        return job

    monkeypatch.setattr(corral.jobspec, "parse_file", parse_file)


def write_job(tmp_path: Path, job: pb.Job) -> str:
    path = tmp_path / f"{job.id}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps({"Job": to_json(job, omit_empty=True)}))
    return str(path)


def rolling_job(
    job_id: str = "web",
    *,
    count: int = 4,
    auto_revert: bool = True,
    canary: int = 0,
    image: str = "v1",
) -> pb.Job:
    """A service job with an ``update`` block (so its registrations deploy)."""
    job = sample_job(job_id, count=count, memory_mb=64)
    group = job.task_groups[0]
    group.update.CopyFrom(
        pb.UpdateStrategy(
            max_parallel=1,
            auto_revert=auto_revert,
            canary=canary,
            progress_deadline=10 * MINUTE,
        )
    )
    group.tasks[0].env["VERSION"] = image
    return job


def rollout(*healthy: int, count: int = 4) -> list[DeploymentStep]:
    """Steps that place and make healthy allocations, ending successful."""
    steps = [
        DeploymentStep(groups={"web": {"placed_allocs": count, "healthy_allocs": h}})
        for h in healthy
    ]
    steps.append(
        DeploymentStep(
            groups={"web": {"healthy_allocs": count}},
            status="successful",
            description="Deployment completed successfully",
        )
    )
    return steps


# ---------------------------------------------------------------- list


def test_deployment_list_table_json_and_filter(fake: FakeServer, run: Any) -> None:
    assert run("deployment", "list").stdout == "No deployments found\n"
    fake.run_job(rolling_job("web"))
    fake.run_job(rolling_job("api", count=2))
    old = fake.state.add_deployment(
        "web", status="successful", description="Deployment completed successfully"
    )
    new = fake.state.add_deployment("api")

    result = run("deployment", "list")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "ID        Job ID  Job Version  Status      Description",
        f"{new.id[:8]}  api     0            running     Deployment is running",
        f"{old.id[:8]}  web     0            successful  Deployment completed successfully",
    ]

    only = run("deployment", "list", "--job", "web", "--verbose")
    assert only.stdout.splitlines()[1:] == [
        f"{old.id}  web     0            successful  Deployment completed successfully"
    ]

    data = json.loads(run("deployment", "list", "--json").stdout)
    assert [d["ID"] for d in data] == [new.id, old.id]
    assert data[0]["JobID"] == "api" and data[0]["JobVersion"] == 0
    assert data[0]["TaskGroups"]["web"]["DesiredTotal"] == 2


# ---------------------------------------------------------------- status


def test_deployment_status_nomad_layout(fake: FakeServer, run: Any) -> None:
    fake.run_job(rolling_job("web"))
    d = fake.state.add_deployment("web", groups={"web": {"placed_allocs": 2, "healthy_allocs": 1}})
    result = run("deployment", "status", d.id[:6])
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[:6] == [
        f"ID          = {d.id[:8]}",
        "Job ID      = web",
        "Job Version = 0",
        "Status      = running",
        "Description = Deployment is running",
        "",
    ]
    assert out[6] == "Deployed"
    assert out[7] == (
        "Task Group  Auto Revert  Desired  Placed  Healthy  Unhealthy  Progress Deadline"
    )
    assert re.fullmatch(
        rf"web         true         4        2       1        0          {STAMP}", out[8]
    )
    assert len(out) == 9


def test_deployment_status_canary_columns(fake: FakeServer, run: Any) -> None:
    fake.run_job(rolling_job("web", canary=1, auto_revert=False))
    d = fake.state.add_deployment("web", groups={"web": {"progress_deadline": 0}})
    out = run("deployment", "status", d.id).stdout.splitlines()
    assert out[-2:] == [
        "Task Group  Promoted  Desired  Canaries  Placed  Healthy  Unhealthy",
        "web         false     4        1         0       0        0",
    ]


def test_deployment_status_json_and_errors(fake: FakeServer, run: Any) -> None:
    fake.run_job(rolling_job("web"))
    d = fake.state.add_deployment("web")
    data = json.loads(run("deployment", "status", "--json", d.id[:8]).stdout)
    assert data["ID"] == d.id and data["Status"] == "running"
    assert set(data["TaskGroups"]["web"]) >= {"DesiredTotal", "PlacedAllocs", "HealthyAllocs"}

    missing = run("deployment", "status", "ffffffff")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("Error: ") and "Traceback" not in missing.output

    both = run("deployment", "status", "--json", "--monitor", d.id)
    assert both.exit_code == 1 and "cannot be combined" in both.stderr


def test_deployment_status_monitor_follows_to_the_end(fake: FakeServer, run: Any) -> None:
    fake.run_job(rolling_job("web"))
    d = fake.state.add_deployment("web", steps=rollout(1, 3))
    result = run("deployment", "status", "--monitor", d.id[:8])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f'Monitoring deployment "{d.id[:8]}"' in out
    progress = re.findall(r"web: desired 4, placed (\d), healthy (\d), unhealthy 0", out)
    assert progress == [("4", "1"), ("4", "3"), ("4", "4")]
    assert re.search(rf'==> {STAMP}: Deployment "{d.id[:8]}" successful', out)
    assert "Status      = successful" in out

    failing = fake.state.add_deployment(
        "web",
        steps=[
            DeploymentStep(
                groups={"web": {"placed_allocs": 1, "unhealthy_allocs": 1}},
                status="failed",
                description="Failed due to unhealthy allocations",
            )
        ],
    )
    bad = run("deployment", "status", "--monitor", failing.id)
    assert bad.exit_code == 1
    assert f'Deployment "{failing.id[:8]}" failed: Failed due to unhealthy allocations' in (
        bad.stdout
    )


# ---------------------------------------------------------------- promote


def test_deployment_promote_follows_the_rollout(fake: FakeServer, run: Any) -> None:
    fake.run_job(rolling_job("web", canary=1))
    d = fake.state.add_deployment(
        "web",
        groups={"web": {"placed_canaries": ["c1"], "placed_allocs": 1, "healthy_allocs": 1}},
    )
    fake.state.deployment_steps[d.id] = rollout(2)
    result = run("deployment", "promote", d.id[:8])
    assert result.exit_code == 0, result.output
    (req,) = fake.log.of("Promote")
    assert req.deployment_id == d.id and list(req.groups) == []
    out = result.stdout
    assert "Monitoring evaluation" in out
    assert "promoted true" in out
    assert f'Deployment "{d.id[:8]}" successful' in out
    assert fake.state.deployments[d.id].task_groups["web"].promoted


def test_deployment_promote_group_detach_and_errors(fake: FakeServer, run: Any) -> None:
    fake.run_job(rolling_job("web", canary=1))
    d = fake.state.add_deployment("web")
    unknown = run("deployment", "promote", d.id, "--group", "nope")
    assert unknown.exit_code == 1
    assert 'no task group "nope"' in unknown.stderr and "its groups: web" in unknown.stderr
    assert not fake.log.of("Promote")

    detached = run("deployment", "promote", d.id, "--group", "web", "--detach")
    assert detached.exit_code == 0, detached.output
    assert list(fake.log.of("Promote")[0].groups) == ["web"]
    assert re.search(r"Evaluation ID: [0-9a-f-]{36}", detached.stdout)

    fake.run_job(rolling_job("api", count=1))
    plain = fake.state.add_deployment("api")
    refused = run("deployment", "promote", plain.id)
    assert refused.exit_code == 1
    assert refused.stderr.startswith("Error: ") and "no canaries to promote" in refused.stderr


def test_job_run_stops_at_canaries_awaiting_promotion(
    fake: FakeServer, run: Any, tmp_path: Path, json_jobs: None
) -> None:
    fake.state.queued_deployments.append(
        [DeploymentStep(groups={"web": {"placed_canaries": ["c1"], "healthy_allocs": 1}})]
    )
    result = run("job", "run", write_job(tmp_path, rolling_job("web", canary=1)))
    assert result.exit_code == 0, result.output
    d = next(iter(fake.state.deployments.values()))
    assert "canaries 1/1, promoted false" in result.stdout
    assert f"waits for promotion: corral deployment promote {d.id[:8]}" in result.stdout


# ---------------------------------------------------------------- fail


def test_deployment_fail_without_revert(fake: FakeServer, run: Any) -> None:
    fake.run_job(rolling_job("web", auto_revert=False))
    d = fake.state.add_deployment("web")
    result = run("deployment", "fail", d.id[:8])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f'Deployment "{d.id[:8]}" failed\n')
    assert "Monitoring evaluation" in result.stdout
    assert fake.state.deployments[d.id].status == "failed"

    again = run("deployment", "fail", d.id)
    assert again.exit_code == 1 and "is already failed" in again.stderr


def test_deployment_fail_auto_reverts_and_follows_the_rollback(fake: FakeServer, run: Any) -> None:
    fake.run_job(rolling_job("web", image="v1"))
    fake.state.mark_stable("web", 0)
    fake.run_job(rolling_job("web", image="v2"))
    d = fake.state.add_deployment("web")
    fake.state.queued_deployments.append(rollout(2))
    result = run("deployment", "fail", d.id)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f'Deployment "{d.id[:8]}" failed. Auto-reverted to job version 0.\n')
    assert fake.state.job("web").version == 2
    assert fake.state.job("web").task_groups[0].tasks[0].env["VERSION"] == "v1"
    rollback = next(x for x in fake.state.deployments.values() if x.job_version == 2)
    assert f'Monitoring deployment "{rollback.id[:8]}"' in out
    assert f'Deployment "{rollback.id[:8]}" successful' in out

    detached = fake.state.add_deployment("web")
    quick = run("deployment", "fail", "--detach", detached.id)
    assert quick.exit_code == 0
    assert "Evaluation ID:" in quick.stdout and "Monitoring" not in quick.stdout


# ---------------------------------------------------------------- job run


def test_job_run_follows_the_deployment_to_success(
    fake: FakeServer, run: Any, tmp_path: Path, json_jobs: None
) -> None:
    fake.state.queued_deployments.append(rollout(1, 2, 3))
    result = run("job", "run", write_job(tmp_path, rolling_job("web")))
    assert result.exit_code == 0, result.output
    out = result.stdout
    d = next(iter(fake.state.deployments.values()))
    assert d.job_version == 0
    lines = out.splitlines()
    eval_done = next(i for i, x in enumerate(lines) if "finished with status" in x)
    follow = next(i for i, x in enumerate(lines) if "Monitoring deployment" in x)
    assert eval_done < follow
    assert re.search(
        rf'    {STAMP}: Deployment "{d.id[:8]}" in progress: Deployment is running', out
    )
    healthy = re.findall(
        r"web: desired 4, placed 4, healthy (\d), unhealthy 0, progress deadline", out
    )
    assert healthy == ["1", "2", "3", "4"]
    assert re.search(rf'==> {STAMP}: Deployment "{d.id[:8]}" successful', out)
    assert out.rstrip().endswith(lines[-1]) and lines[-2].startswith("Task Group")

    history = run("job", "history", "web")
    assert "Stable      = true" in history.stdout


def test_job_run_deployment_failure_with_rollback_exits_1(
    fake: FakeServer, run: Any, tmp_path: Path, json_jobs: None
) -> None:
    fake.run_job(rolling_job("web", image="v1"))
    fake.state.mark_stable("web", 0)
    fake.state.queued_deployments.append(
        [
            DeploymentStep(groups={"web": {"placed_allocs": 1}}),
            DeploymentStep(
                groups={"web": {"unhealthy_allocs": 1}},
                status="failed",
                description="Failed due to unhealthy allocations",
                revert_to=0,
            ),
        ]
    )
    result = run("job", "run", write_job(tmp_path, rolling_job("web", image="v3")))
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "failed: Failed due to unhealthy allocations - rolling back to job version 0" in out
    assert 'Job "web" is being rolled back to version 0' in out
    assert "Status      = failed" in out
    assert fake.state.job("web").task_groups[0].tasks[0].env["VERSION"] == "v1"

    history = run("job", "history", "web").stdout
    assert re.search(r"Version     = 1\nStable      = false", history)


def test_job_run_without_a_deployment_is_unchanged(
    fake: FakeServer, run: Any, tmp_path: Path, json_jobs: None
) -> None:
    plain = sample_job("plain", count=2, memory_mb=64)  # no update block
    result = run("job", "run", write_job(tmp_path, plain))
    assert result.exit_code == 0, result.output
    assert "eployment" not in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].endswith('finished with status "complete"')

    # An update block, but this write starts no rollout (e.g. a count-only change).
    started = time.monotonic()
    quiet = run("job", "run", write_job(tmp_path, rolling_job("web", count=1)))
    assert quiet.exit_code == 0, quiet.output
    assert "eployment" not in quiet.stdout
    assert time.monotonic() - started < 5
    assert fake.log.of("List")  # it did look

    detached = run("job", "run", "--detach", write_job(tmp_path, rolling_job("web", count=2)))
    assert detached.exit_code == 0 and "Monitoring" not in detached.stdout


def test_job_run_on_a_server_without_deployments(
    fake: FakeServer, run: Any, tmp_path: Path, json_jobs: None
) -> None:
    fake.log.inject_errors["List"] = (grpc.StatusCode.UNIMPLEMENTED, "unknown service")
    result = run("job", "run", write_job(tmp_path, rolling_job("web")))
    assert result.exit_code == 0, result.output
    assert "eployment" not in result.stdout


def test_job_run_placement_failure_does_not_wait_for_the_rollout(
    fake: FakeServer, run: Any, tmp_path: Path, json_jobs: None
) -> None:
    fake.state.queued_deployments.append(rollout(1))
    result = run("job", "run", write_job(tmp_path, rolling_job("web", count=400)))
    assert result.exit_code == 2, result.output
    assert "Monitoring deployment" not in result.stdout


def test_monitor_ignores_an_old_finished_deployment_of_the_same_version(
    fake: FakeServer, clock: FakeClock
) -> None:
    """Re-running an unchanged job keeps its version: its old, successful deployment
    is not this run's result, a running one is followed."""
    fake.run_job(rolling_job("web"))
    old = fake.state.add_deployment("web", status="successful", description="done")
    with CorralClient(fake.address) as client:
        since = old.create_index + 1
        assert (
            monitor.find_deployment(
                client, "web", 0, since_index=since, clock=clock.monotonic, sleep=clock.sleep
            )
            is None
        )
        assert clock.now == monitor.DEPLOYMENT_APPEAR_TIMEOUT  # it looked for the grace period
        assert monitor.find_deployment(client, "web", 0, timeout=0) is not None
        running = fake.state.add_deployment("web", steps=rollout())
        fake.state.index += 10
        seen: list[str] = []
        code = monitor.monitor_deployment(
            client,
            "web",
            0,
            seen.append,
            since_index=fake.state.index,
            timeout=0,
            clock=clock.monotonic,
            sleep=clock.sleep,
        )
        assert code == 0
        assert any(f'"{running.id[:8]}" successful' in line for line in seen)
        assert monitor.monitor_deployment(client, "web", 7, seen.append, timeout=0) is None


def test_monitor_cancelled_retries_and_interrupt(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """A cancelled rollout is not a success; a server that is briefly unreachable
    is retried; Ctrl-C stops watching (the rollout goes on) with a hint."""
    from corral.api.client import APIError

    fake.run_job(rolling_job("web"))
    steps = [
        DeploymentStep(
            status="cancelled", description="Cancelled due to newer version of job (version 1)"
        )
    ]
    d = fake.state.add_deployment("web", steps=steps)
    with CorralClient(fake.address) as client:
        real = client.watch_deployment
        calls: list[int] = []

        def flaky(*args: Any, **kwargs: Any) -> tuple[pb.Deployment, int]:
            calls.append(1)
            if len(calls) == 1:
                raise APIError("cannot reach a corral server", grpc.StatusCode.UNAVAILABLE)
            answer: tuple[pb.Deployment, int] = real(*args, **kwargs)
            return answer

        monkeypatch.setattr(client, "watch_deployment", flaky)
        seen: list[str] = []
        follow = functools.partial(
            monitor.follow_deployment,
            client,
            d.id,
            out=seen.append,
            clock=clock.monotonic,
            sleep=clock.sleep,
        )
        assert follow() == 1
        assert len(calls) == 2
        assert clock.sleeps == [monitor.DEPLOYMENT_RETRY_DELAY]
        assert any("retrying (1/5)" in line for line in seen)
        assert any("cancelled: Cancelled due to newer version" in line for line in seen)

        def interrupted(*args: Any, **kwargs: Any) -> tuple[pb.Deployment, int]:
            raise KeyboardInterrupt

        monkeypatch.setattr(client, "watch_deployment", interrupted)
        seen.clear()
        assert follow() == 130
        assert f"deployment status --monitor {d.id[:8]}" in seen[-1]
