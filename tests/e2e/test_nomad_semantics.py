"""Nomad's semantics end to end, on a real dev agent with raw_exec tasks (the
Nomad-semantics issue): what a Nomad user sees, through the CLI's JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import DevAgent, run_cli
from tests.support.wait import wait_for

RESCHEDULE_JOB = """
job "resched" {
  type = "service"
  group "g" {
    count = 1
    restart {
      attempts = 0
      mode     = "fail"
    }
    reschedule {
      delay          = "1s"
      delay_function = "constant"
      unlimited      = true
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "sleep 0.2; exit 1"]
      }
    }
  }
}
"""


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevAgent]:
    with DevAgent(base_dir=tmp_path_factory.mktemp("dev")) as a:
        yield a


def cli_json(agent: DevAgent, *args: str) -> Any:
    out = run_cli(*args, "--json", addr=agent.rpc_addr)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def run_job(agent: DevAgent, tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / f"{name}.hcl"
    path.write_text(text)
    out = run_cli("job", "run", "-detach", str(path), addr=agent.rpc_addr)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_failed_allocation_is_rescheduled(agent: DevAgent, tmp_path: Path) -> None:
    """Nomad's Node.UpdateAlloc: a failed allocation gets its job an evaluation
    (``alloc-failure``); the reschedule policy places a replacement that links to it."""
    run_job(agent, tmp_path, "resched", RESCHEDULE_JOB)

    def rescheduled_twice() -> list[dict[str, Any]] | None:
        allocs = cli_json(agent, "job", "status", "resched")["Allocations"]
        linked = [a for a in allocs if a.get("PreviousAllocation")]
        return allocs if len(linked) >= 2 else None

    allocs = wait_for(rescheduled_twice, timeout=60, message="two replacements of failed allocs")
    by_id = {a["ID"]: a for a in allocs}
    for alloc in allocs:
        prev = alloc.get("PreviousAllocation")
        if not prev or prev not in by_id:
            continue
        assert by_id[prev]["ClientStatus"] == "failed"
        assert by_id[prev].get("NextAllocation") == alloc["ID"]
        events = alloc["RescheduleTracker"]["Events"]
        assert events and events[-1]["PrevAllocID"] == prev
    evals = cli_json(agent, "eval", "list", "--job", "resched")
    assert any(e["TriggeredBy"] == "alloc-failure" for e in evals), [
        e["TriggeredBy"] for e in evals
    ]
    assert run_cli("job", "stop", "-purge", "resched", addr=agent.rpc_addr).returncode == 0


def versioned_job(job_id: str, value: str, count: int = 2, update: str = "") -> str:
    return f"""
job "{job_id}" {{
  type = "service"
  group "g" {{
    count = {count}
    {update}
    task "t" {{
      driver = "raw_exec"
      env {{
        VERSION = "{value}"
      }}
      config {{
        command = "/bin/sh"
        args    = ["-c", "sleep 600"]
      }}
    }}
  }}
}}
"""


def live_versions(agent: DevAgent, job_id: str) -> dict[str, int]:
    """Running allocations by the job version they run."""
    allocs = cli_json(agent, "job", "status", job_id)["Allocations"]
    out: dict[str, int] = {}
    for a in allocs:
        if a["DesiredStatus"] == "run" and a["ClientStatus"] == "running":
            full = cli_json(agent, "alloc", "status", a["ID"])
            key = str(full["Job"]["TaskGroups"][0]["Tasks"][0]["Env"]["VERSION"])
            out[key] = out.get(key, 0) + 1
    return out


FAST_UPDATE = 'update {\n max_parallel = 2\n min_healthy_time = "0s"\n healthy_deadline = "30s"\n }'


def test_purge_then_register_again_then_update_rolls_out(agent: DevAgent, tmp_path: Path) -> None:
    """``job run p0; job run p1; job stop -purge; job run p0; job run p2``: the last
    update replaces every allocation with p2."""
    for step, value in enumerate(["p0", "p1"]):
        run_job(agent, tmp_path, f"a{step}", versioned_job("pr", value, update=FAST_UPDATE))
        wait_for(lambda v=value: live_versions(agent, "pr") == {v: 2}, timeout=60)
    out = run_cli("job", "stop", "-purge", "pr", addr=agent.rpc_addr)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: not live_versions_or_empty(agent, "pr"), timeout=60)
    for step, value in enumerate(["p0", "p2"]):
        run_job(agent, tmp_path, f"b{step}", versioned_job("pr", value, update=FAST_UPDATE))
        wait_for(
            lambda v=value: live_versions(agent, "pr") == {v: 2},
            timeout=60,
            message=lambda v=value: f"2 allocations of {v}, have {live_versions(agent, 'pr')}",
        )
    job = cli_json(agent, "job", "inspect", "pr")
    job = job.get("Job", job)
    assert job["TaskGroups"][0]["Tasks"][0]["Env"]["VERSION"] == "p2"
    assert run_cli("job", "stop", "-purge", "pr", addr=agent.rpc_addr).returncode == 0


def live_versions_or_empty(agent: DevAgent, job_id: str) -> dict[str, int]:
    out = run_cli("job", "status", job_id, "--json", addr=agent.rpc_addr)
    if out.returncode != 0:
        return {}
    return live_versions(agent, job_id)


CANARY_UPDATE = """update {
      canary           = 1
      auto_promote     = true
      max_parallel     = 1
      min_healthy_time = "0s"
      healthy_deadline = "30s"
      progress_deadline = "60s"
    }"""


def test_a_first_version_with_canaries_completes(agent: DevAgent, tmp_path: Path) -> None:
    """``canary = 1, auto_promote = true`` on a job's first version: Nomad places no
    canary when no older version runs (nothing to compare with); ``job run``
    returns once the deployment succeeded, with every allocation running. The next
    version then goes through a canary, promoted by itself."""
    path = tmp_path / "c0.hcl"
    path.write_text(versioned_job("can", "c0", update=CANARY_UPDATE))
    out = run_cli("job", "run", str(path), addr=agent.rpc_addr, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert live_versions(agent, "can") == {"c0": 2}
    path = tmp_path / "c1.hcl"
    path.write_text(versioned_job("can", "c1", update=CANARY_UPDATE))
    out = run_cli("job", "run", str(path), addr=agent.rpc_addr, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: live_versions(agent, "can") == {"c1": 2}, timeout=60)
    deployments = cli_json(agent, "deployment", "list")
    latest = max((d for d in deployments if d["JobID"] == "can"), key=lambda d: d["JobVersion"])
    assert latest["Status"] == "successful"
    assert latest["TaskGroups"]["g"]["DesiredCanaries"] == 1
    assert latest["TaskGroups"]["g"]["Promoted"] is True
    assert run_cli("job", "stop", "-purge", "can", addr=agent.rpc_addr).returncode == 0


def test_a_service_job_without_an_update_block_gets_a_deployment(
    agent: DevAgent, tmp_path: Path
) -> None:
    """Nomad gives every service job its default update strategy (max_parallel 1,
    min_healthy_time 10s, ...): its versions go through deployments, and ``job run``
    follows the deployment to its end."""
    path = tmp_path / "plain.hcl"
    path.write_text(versioned_job("plain", "v0"))
    out = run_cli("job", "run", str(path), addr=agent.rpc_addr, timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'Deployment "' in out.stdout and "successful" in out.stdout
    job = cli_json(agent, "job", "inspect", "plain")
    job = job.get("Job", job)
    update = job["TaskGroups"][0]["Update"]
    assert update["MaxParallel"] == 1 and update["MinHealthyTime"] == 10_000_000_000
    (dep,) = [d for d in cli_json(agent, "deployment", "list") if d["JobID"] == "plain"]
    assert dep["Status"] == "successful" and dep["TaskGroups"]["g"]["DesiredTotal"] == 2
    assert run_cli("job", "stop", "-purge", "plain", addr=agent.rpc_addr).returncode == 0
