"""Nomad's ``e2e/scheduler_system`` (``systemsched_test.go``, ``TestSystemScheduler``) on corral.

Ported: testJobUpdateOnIneligibleNode. Left out: testSystemJobAllNodePools
(``node_pool = "all"`` and a system job's deployment), testCanaryUpdate and
testCanaryDeploymentToAllEligibleNodes (system canaries and system deployments,
Nomad >= 1.11): corral has no node pools and deploys system jobs without a deployment.

Nomad's ``jobs3.Submit`` waits for the evaluation, then for the job's deployment to
succeed. corral gives a system job no deployment, so the port waits for what that
deployment stands for: the submitted version running on every eligible node, and
no older allocation still running there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.multinode import MultiNode, nomad_e2e_cluster
from tests.support.wait import wait_for

INPUT = Path(__file__).parent / "input" / "scheduler_system"
JOB_ID = "system_job"  # jobs3.DisableRandomJobID(): the ID in the file
LABEL_JOB = "corral.job_name"  # the docker driver's container label

Alloc = dict[str, Any]


@pytest.fixture(scope="module")
def cluster(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiNode]:
    with nomad_e2e_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c
        # The clients leave tasks running when they stop: wait until the purged job's
        # containers are gone (busybox's sh ignores SIGTERM: kill_timeout, then SIGKILL).
        wait_for(
            lambda: not leftover_containers(),
            timeout=30,
            interval=0.5,
            message=lambda: f"the containers of {JOB_ID} to go: {leftover_containers()}",
        )


def leftover_containers() -> list[str]:
    import docker

    client = docker.from_env()
    try:
        # The low-level list: no inspection of each container (one may go meanwhile).
        found = client.api.containers(all=True, filters={"label": f"{LABEL_JOB}={JOB_ID}"})
        return [name for c in found for name in c["Names"]]
    finally:
        client.close()


def job_allocs(cluster: MultiNode) -> list[Alloc]:
    allocs: list[Alloc] = cluster.server.cli_json("job", "status", JOB_ID)["Allocations"]
    return allocs


def submit(cluster: MultiNode, filename: str, version: int, nodes: set[str]) -> list[Alloc]:
    """``jobs3.Submit``: register (``corral job run`` follows the evaluation), then wait
    until ``version`` runs on every node of ``nodes`` and nothing older runs there."""
    out = cluster.server.cli("job", "run", str(INPUT / filename))
    assert out.returncode == 0, out.stdout + out.stderr

    def rolled_out() -> list[Alloc]:
        allocs = job_allocs(cluster)
        running = [a for a in allocs if a["ClientStatus"] == "running" and a["NodeID"] in nodes]
        current = {a["NodeID"] for a in running if a["JobVersion"] == version}
        older = [a for a in running if a["JobVersion"] != version]
        return allocs if current == nodes and not older else []

    return wait_for(
        rolled_out,
        timeout=60,
        interval=0.5,
        message=lambda: f"version {version} on {sorted(nodes)}: {job_allocs(cluster)}",
    )


@pytest.fixture
def cleanup(cluster: MultiNode) -> Iterator[None]:
    """Go's cleanups, last in first out: purge the job, then every node eligible."""
    yield
    out = cluster.server.cli("job", "stop", "-purge", "-detach", JOB_ID)
    assert out.returncode == 0, out.stdout + out.stderr
    for node in cluster.server.cli_json("node", "status"):
        out = cluster.server.cli("node", "eligibility", "-enable", node["ID"])
        assert out.returncode == 0, out.stdout + out.stderr


def test_SystemScheduler_JobUpdateOnIneligibleNode(cluster: MultiNode, cleanup: None) -> None:
    all_nodes = set(cluster.node_ids().values())
    allocs = submit(cluster, "system_job0.nomad", 0, all_nodes)
    assert len(allocs) >= 3, allocs

    # Mark one node as ineligible.
    disabled_node_id = allocs[0]["NodeID"]
    out = cluster.server.cli("node", "eligibility", "-disable", disabled_node_id)
    assert out.returncode == 0, out.stdout + out.stderr

    # Every allocation still runs.
    allocs = job_allocs(cluster)
    assert allocs
    alloc_for_disabled_node = {a["ID"]: a for a in allocs if a["NodeID"] == disabled_node_id}

    # Update the job.
    allocs = submit(cluster, "system_job1.nomad", 1, all_nodes - {disabled_node_id})
    assert allocs

    found_previous_alloc = False
    for d_alloc in alloc_for_disabled_node.values():
        for alloc in allocs:
            if alloc["ID"] == d_alloc["ID"]:
                found_previous_alloc = True
                assert alloc["JobVersion"] == 0, alloc
            elif alloc["ClientStatus"] == "running":
                # Allocations running on the other nodes are the new version.
                assert alloc["JobVersion"] == 1, alloc
    assert found_previous_alloc, "unable to find previous alloc for ineligible node"
