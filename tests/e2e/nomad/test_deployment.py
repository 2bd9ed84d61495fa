"""Nomad's e2e ``deployment`` suite (``e2e/deployment/deployment.go``) on corral.

One server and Nomad's four e2e clients (c0 dc1/r1, c1 dc1/r2, c2 dc2/r1, c3 dc2/r2),
raw_exec tasks; the job runs in dc1. The test registers ``deployment_auto0.nomad`` and
then ``deployment_auto1.nomad`` (a destructive change of both groups, each with
``canary = 2`` and ``auto_promote``) under one unique ID (as
``e2eutil.RegisterAllocs`` does; here the ``job "..." {`` line is rewritten), follows
the deployments through ``corral deployment list --json`` and ``corral deployment
status <id> --json``, then purges the job and waits until its tasks are gone (the Go
``AfterEach``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.nomad.support import renamed, stop_and_purge, unique_id
from tests.support.multinode import MultiNode
from tests.support.wait import wait_for

INPUT = Path(__file__).parent / "input" / "deployment"


# nomad/structs: DeploymentStatusRunning and the descriptions the test waits for.
RUNNING = "running"
DESC_RUNNING = "Deployment is running"
DESC_RUNNING_AUTO_PROMOTION = "Deployment is running pending automatic promotion"


@pytest.fixture
def job_ids(cluster: MultiNode) -> Iterator[list[str]]:
    """The tests' job IDs; each is purged afterwards (``AfterEach``)."""
    ids: list[str] = []
    yield ids
    for job_id in ids:
        stop_and_purge(cluster, job_id)


def register(cluster: MultiNode, tmp_path: Path, file: str, job_id: str) -> None:
    """``nomad job run -detach`` of the job file under ``job_id``."""
    text = renamed(INPUT / file, job_id)
    path = tmp_path / file
    path.write_text(text)
    out = cluster.server.cli("job", "run", "-detach", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def deployments_for_job(cluster: MultiNode, job_id: str) -> list[dict[str, Any]]:
    """``e2eutil.DeploymentsForJob``: every deployment, filtered by job ID."""
    return [d for d in cluster.server.cli_json("deployment", "list") if d["JobID"] == job_id]


def deployment_info(cluster: MultiNode, deployment_id: str) -> dict[str, Any]:
    return cluster.server.cli_json("deployment", "status", deployment_id)  # type: ignore[no-any-return]


def wait_for_deployment(cluster: MultiNode, deployment_id: str, status: str, desc: str) -> None:
    """``e2eutil.WaitForDeployment``: until the deployment has this status and description."""
    seen: list[tuple[str, str]] = []

    def reached() -> bool:
        d = deployment_info(cluster, deployment_id)
        now = (d["Status"], d["StatusDescription"])
        if not seen or seen[-1] != now:
            seen.append(now)
        return now == (status, desc)

    wait_for(
        reached,
        timeout=60,
        message=lambda: f"deployment {deployment_id[:8]} {status} {desc!r}; seen {seen}",
    )


def test_deployment_auto_promote(cluster: MultiNode, tmp_path: Path, job_ids: list[str]) -> None:
    """``TestDeploymentAutoPromote``: the first version has exactly one deployment; the
    update's deployment waits "pending automatic promotion" for its canaries, then,
    promoted, is "Deployment is running" while it rolls out the rest."""
    job_id = unique_id("deployment")
    job_ids.append(job_id)

    # RegisterAndWaitForAllocs: register, then wait until allocations exist.
    register(cluster, tmp_path, "deployment_auto0.nomad", job_id)
    wait_for(
        lambda: cluster.server.cli_json("job", "status", job_id)["Allocations"],
        timeout=30,
        message=f"allocations of {job_id}",
    )
    ds = deployments_for_job(cluster, job_id)
    assert len(ds) == 1, ds
    deploy = ds[0]

    # Upgrade
    register(cluster, tmp_path, "deployment_auto1.nomad", job_id)

    # Find the deployment we don't already have
    def new_deployment() -> dict[str, Any] | None:
        return next(
            (d for d in deployments_for_job(cluster, job_id) if d["ID"] != deploy["ID"]), None
        )

    update = wait_for(new_deployment, timeout=30, message=f"the update deployment of {job_id}")
    assert update is not None
    deploy = update

    # Deployment is auto pending the upgrade of "two" which has a longer time to health
    wait_for_deployment(cluster, deploy["ID"], RUNNING, DESC_RUNNING_AUTO_PROMOTION)

    # Deployment is eventually running
    wait_for_deployment(cluster, deploy["ID"], RUNNING, DESC_RUNNING)

    info = deployment_info(cluster, deploy["ID"])
    assert info["Status"] == RUNNING, info
    assert info["StatusDescription"] == DESC_RUNNING, info
