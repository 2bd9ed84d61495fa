"""End to end with the real Docker engine: containers really serve HTTP, stop removes
them, and a client restarted after SIGKILL reattaches to its containers by label."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from tests.support.agent import DevAgent, run_cli
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.docker


def containers_of(alloc_ids: list[str]) -> list[object]:
    import docker

    client = docker.from_env()
    found = []
    for alloc_id in alloc_ids:
        found += client.containers.list(all=True, filters={"label": f"corral.alloc_id={alloc_id}"})
    return found


def cli(agent: DevAgent, *args: str):  # type: ignore[no-untyped-def]
    return run_cli(*args, addr=agent.rpc_addr)


def allocs_of(agent: DevAgent, job_id: str) -> list[dict]:  # type: ignore[type-arg]
    out = cli(agent, "job", "status", job_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["Allocations"]  # type: ignore[no-any-return]


def wait_running(agent: DevAgent, job_id: str, count: int) -> list[dict]:  # type: ignore[type-arg]
    def check() -> list[dict] | None:  # type: ignore[type-arg]
        live = [a for a in allocs_of(agent, job_id) if a["DesiredStatus"] == "run"]
        ok = len(live) == count and all(a["ClientStatus"] == "running" for a in live)
        return live if ok else None

    return wait_for(check, timeout=90, message=lambda: f"{count} running\n{agent.log_tail()}")


def get(port: dict) -> str | None:  # type: ignore[type-arg]
    try:
        url = f"http://{port['HostIP']}:{port['Value']}/"
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.read().decode()
    except OSError:
        return None


@pytest.fixture
def agent(tmp_path: Path, docker_engine: None):  # type: ignore[no-untyped-def]
    with DevAgent(base_dir=tmp_path) as a:
        yield a


def test_docker_job_serves_http_and_stop_removes_containers(agent: DevAgent) -> None:
    run = cli(agent, "job", "run", str(ROOT / "examples" / "hello.hcl"))
    assert run.returncode == 0, run.stdout + run.stderr
    allocs = wait_running(agent, "hello", 2)
    for alloc in allocs:
        port = alloc["AllocatedResources"]["Shared"]["Ports"][0]
        assert port["Label"] == "http" and port["To"] == 8080
        body = wait_for(lambda p=port: get(p), timeout=20, message="container answers")
        assert alloc["ID"] in body and alloc["Name"] in body
    ids = [a["ID"] for a in allocs]
    containers = containers_of(ids)
    assert len(containers) == 2
    labels = containers[0].labels  # type: ignore[attr-defined]
    assert labels["corral.node_id"] and labels["corral.alloc_id"] in ids

    stop = cli(agent, "job", "stop", "hello")
    assert stop.returncode == 0, stop.stderr
    wait_for(lambda: not containers_of(ids), timeout=60, message="containers removed")
    wait_for(
        lambda: all(a["ClientStatus"] == "complete" for a in allocs_of(agent, "hello")),
        timeout=30,
        message="allocations complete",
    )


def test_client_restart_reattaches_to_running_containers(agent: DevAgent) -> None:
    run = cli(agent, "job", "run", str(ROOT / "examples" / "hello.hcl"))
    assert run.returncode == 0, run.stdout + run.stderr
    before = wait_running(agent, "hello", 2)
    ids = [a["ID"] for a in before]
    container_ids = sorted(c.id for c in containers_of(ids))  # type: ignore[attr-defined]

    agent.kill()  # SIGKILL: no cleanup at all
    agent.start()  # same data dir
    after = wait_running(agent, "hello", 2)
    assert sorted(a["ID"] for a in after) == sorted(ids), "allocations were replaced"
    assert sorted(c.id for c in containers_of(ids)) == container_ids  # type: ignore[attr-defined]
    for alloc in after:
        port = alloc["AllocatedResources"]["Shared"]["Ports"][0]
        assert wait_for(lambda p=port: get(p), timeout=20, message="still serving")

    # The reattached client still controls them.
    assert cli(agent, "job", "stop", "hello").returncode == 0
    wait_for(lambda: not containers_of(ids), timeout=60, message="containers removed")


def test_missing_image_fails_the_allocation_with_the_driver_message(
    agent: DevAgent, tmp_path: Path
) -> None:
    job = tmp_path / "noimage.hcl"
    job.write_text(
        """
job "noimage" {
  group "g" {
    restart {
      attempts = 0
    }
    task "t" {
      driver = "docker"
      config {
        image = "corral-does-not-exist:1"
      }
    }
  }
}
"""
    )
    # -detach: the deployment of this job fails (its only allocation cannot start),
    # so a monitoring `job run` would end non-zero, as Nomad's does.
    assert cli(agent, "job", "run", "-detach", str(job)).returncode == 0

    def failed() -> dict | None:  # type: ignore[type-arg]
        allocs = allocs_of(agent, "noimage")
        return allocs[0] if allocs and allocs[0]["ClientStatus"] == "failed" else None

    alloc = wait_for(failed, timeout=60, message="allocation fails")
    shown = cli(agent, "alloc", "status", alloc["ID"][:8])
    assert "corral-does-not-exist:1" in shown.stdout, shown.stdout
    assert cli(agent, "node", "status").returncode == 0
