"""Nomad's ``e2e/nodedrain`` (``node_drain_test.go``, ``TestNodeDrain``) on corral.

Ported: IgnoreSystem, KeepIneligible, DeadlineFlag, ForceFlag, through the CLI with
Nomad's flag spellings (``corral node drain -enable -ignore-system -deadline 1s
-force -keep-ineligible -yes -detach``, ``corral node eligibility -disable``).
Left out: EphemeralMigrate (needs ``ephemeral_disk { migrate = true }`` and ``alloc
fs``) and KillTimeout (its job traps SIGINT through a ``template``); corral has neither.

The docker jobs run ``corral-busybox:latest`` (``input/nodedrain/*.nomad`` say what
changed). Every test purges its jobs and restores every node (drain off, eligible)
afterwards, as Nomad's ``cleanupJobState`` and ``cleanupDrainState``; the module
waits for the purged jobs' containers to go before it stops the cluster.

Note on DeadlineFlag and ForceFlag: they pass on corral, but corral would also pass
them without ``-deadline``/``-force``: its migrations count a replacement as done
once it runs (``scheduler/reconcile.py::_migrate_budget``), while Nomad's drainer
waits for it to be healthy (``migrate.min_healthy_time`` = 30s here;
``nomad/drainer/watch_jobs.go::handleTaskGroup``), so without the flags Nomad takes
~30 s more for the second allocation and corral does not.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import run_cli
from tests.support.multinode import MultiNode, nomad_e2e_cluster
from tests.support.wait import wait_for

INPUT = Path(__file__).parent / "input" / "nodedrain"
LABEL_JOB = "corral.job_name"  # the docker driver's container label

Alloc = dict[str, Any]


@pytest.fixture(scope="module")
def registered() -> list[str]:
    """Every job ID the module registered."""
    return []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, registered: list[str]) -> Iterator[MultiNode]:
    with nomad_e2e_cluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c
        # The clients leave tasks running when they stop: wait until the purged jobs'
        # containers are gone (busybox's sh ignores SIGTERM: kill_timeout, then SIGKILL).
        wait_for(
            lambda: not leftover_containers(registered),
            timeout=30,
            interval=0.5,
            message=lambda: (
                f"the containers of {registered} to go: {leftover_containers(registered)}"
            ),
        )


def leftover_containers(job_ids: list[str]) -> list[str]:
    if not job_ids:
        return []
    import docker

    client = docker.from_env()
    try:
        # The low-level list: no inspection of each container (one may go meanwhile).
        return [
            name
            for job_id in job_ids
            for c in client.api.containers(all=True, filters={"label": f"{LABEL_JOB}={job_id}"})
            for name in c["Names"]
        ]
    finally:
        client.close()


@pytest.fixture
def restore_nodes(cluster: MultiNode) -> Iterator[None]:
    """Nomad's ``cleanupDrainState``: after the test, every node undrained and eligible
    (the CLI is called only for the nodes that are not)."""
    yield
    for node in cluster.server.cli_json("node", "status"):
        if node["Drain"] or node.get("DrainStrategy"):
            out = cluster.server.cli("node", "drain", "-disable", "-yes", node["ID"])
            assert out.returncode == 0, out.stdout + out.stderr
        if node["SchedulingEligibility"] != "eligible":
            out = cluster.server.cli("node", "eligibility", "-enable", node["ID"])
            assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def jobs(cluster: MultiNode, restore_nodes: None, registered: list[str]) -> Iterator[list[str]]:
    """Nomad's ``cleanupJobState`` (deregister with purge) for the job IDs a test
    registered, before the nodes are restored (Go runs cleanups last-in first-out)."""
    ids: list[str] = []
    yield ids
    registered.extend(ids)
    for job_id in ids:
        out = cluster.server.cli("job", "stop", "-purge", "-detach", job_id)
        assert out.returncode == 0, out.stdout + out.stderr


def register(cluster: MultiNode, jobs: list[str], job_id: str, filename: str) -> None:
    """``e2eutil.Register``: ``job run -detach -`` with the job block renamed to ``job_id``."""
    spec = re.sub(r'(?m)^job ".*" \{', f'job "{job_id}" {{', (INPUT / filename).read_text())
    out = run_cli("job", "run", "-detach", "-", addr=cluster.server.rpc_addr, input=spec)
    assert out.returncode == 0, out.stdout + out.stderr
    jobs.append(job_id)


def short() -> str:
    return uuid.uuid4().hex[:8]


def job_allocs(cluster: MultiNode, job_id: str) -> list[Alloc]:
    allocs: list[Alloc] = cluster.server.cli_json("job", "status", job_id)["Allocations"]
    return allocs


def drain(cluster: MultiNode, *args: str) -> None:
    out = cluster.server.cli("node", "drain", *args)
    assert out.returncode == 0, f"corral node drain {' '.join(args)}: {out.stdout}{out.stderr}"


def eligibility(cluster: MultiNode, *args: str) -> None:
    out = cluster.server.cli("node", "eligibility", *args)
    assert out.returncode == 0, (
        f"corral node eligibility {' '.join(args)}: {out.stdout}{out.stderr}"
    )


def wait_for_running_allocs(cluster: MultiNode, job_id: str, count: int) -> list[Alloc]:
    """Nomad's ``waitForRunningAllocs`` (60 s): at least ``count`` running allocations."""

    def running() -> list[Alloc]:
        allocs = [a for a in job_allocs(cluster, job_id) if a["ClientStatus"] == "running"]
        return allocs if len(allocs) >= count else []

    return wait_for(
        running,
        timeout=60,
        interval=0.5,
        message=lambda: f"{count} running allocations of {job_id}: {job_allocs(cluster, job_id)}",
    )


def wait_for_alloc_drain_complete(
    cluster: MultiNode, job_id: str, old_alloc_id: str, timeout: float
) -> list[Alloc]:
    """Nomad's ``waitForAllocDrainComplete``: the old allocation complete, every other
    one running; returns the others."""

    def drained() -> list[Alloc]:
        allocs = job_allocs(cluster, job_id)
        if len(allocs) == 1:
            return []  # no new alloc started
        new = []
        for a in allocs:
            if a["ID"] == old_alloc_id:
                if a["ClientStatus"] != "complete":
                    return []
            elif a["ClientStatus"] != "running":
                return []
            else:
                new.append(a)
        return new

    return wait_for(
        drained,
        timeout=timeout,
        interval=0.5,
        message=lambda: f"the drain of {old_alloc_id[:8]}: {job_allocs(cluster, job_id)}",
    )


def wait_for_allocs_stop(cluster: MultiNode, timeout: float, *alloc_ids: str) -> None:
    """Nomad's ``waitForAllocsStop``: each allocation client-complete within ``timeout``."""

    def statuses() -> dict[str, str]:
        return {
            i[:8]: cluster.server.cli_json("alloc", "status", i)["ClientStatus"] for i in alloc_ids
        }

    wait_for(
        lambda: all(s == "complete" for s in statuses().values()),
        timeout=timeout,
        interval=0.5,
        message=lambda: f"allocations complete: {statuses()}",
    )


@pytest.mark.docker
def test_NodeDrain_IgnoreSystem(docker_engine: None, cluster: MultiNode, jobs: list[str]) -> None:
    # Every node is linux: the system job runs everywhere.
    nodes = [
        n
        for n in cluster.server.cli_json("node", "status")
        if n["Attributes"].get("kernel.name") == "linux"
    ]
    count = len(nodes)

    system_job_id = "test-node-drain-system-" + short()
    register(cluster, jobs, system_job_id, "drain_ignore_system.nomad")
    wait_for_running_allocs(cluster, system_job_id, count)

    service_job_id = "test-node-drain-service-" + short()
    register(cluster, jobs, service_job_id, "drain_simple.nomad")
    service_allocs = wait_for_running_allocs(cluster, service_job_id, 1)
    old_alloc_id, old_node_id = service_allocs[0]["ID"], service_allocs[0]["NodeID"]

    drain(cluster, "-ignore-system", "-enable", "-yes", "-detach", old_node_id)

    new_allocs = wait_for_alloc_drain_complete(cluster, service_job_id, old_alloc_id, 120)
    assert len(new_allocs) == 1, f"expected 1 new service job alloc: {new_allocs}"

    got = job_allocs(cluster, system_job_id)
    assert len(got) == count, f"expected {count} system allocs: {got}"
    for system_alloc in got:
        assert system_alloc["ClientStatus"] == "running", (
            f"expected all system allocs to be left client=running: {got}"
        )
        assert system_alloc["DesiredStatus"] == "run", (
            f"expected all system allocs to be left desired=run: {got}"
        )


def test_NodeDrain_KeepIneligible(cluster: MultiNode, restore_nodes: None) -> None:
    node_id = cluster.server.cli_json("node", "status")[0]["ID"]

    drain(cluster, "-enable", "-yes", "-detach", node_id)
    drain(cluster, "-disable", "-keep-ineligible", "-yes", node_id)

    node = next(n for n in cluster.server.cli_json("node", "status") if n["ID"] == node_id)
    assert node["SchedulingEligibility"] == "ineligible", node
    assert node["Drain"] is False, node


def _drain_two_ineligible_nodes(cluster: MultiNode, jobs: list[str], *drain_flags: str) -> None:
    """DeadlineFlag and ForceFlag: ``drain_deadline.nomad`` (count 2, migrate
    max_parallel 1, min_healthy_time 30s) is drained off its two nodes, made
    ineligible first, with ``drain_flags``: the old allocations stop within 10 s
    instead of the ~60 s the migrate block would take, and 2 run again."""
    job_id = "test-node-drain-" + short()
    register(cluster, jobs, job_id, "drain_deadline.nomad")
    allocs = wait_for_running_allocs(cluster, job_id, 2)
    old_alloc_id1, old_node_id1 = allocs[0]["ID"], allocs[0]["NodeID"]
    old_alloc_id2, old_node_id2 = allocs[1]["ID"], allocs[1]["NodeID"]

    eligibility(cluster, "-disable", old_node_id1)
    eligibility(cluster, "-disable", old_node_id2)

    drain(cluster, *drain_flags, "-enable", "-yes", "-detach", old_node_id1)
    drain(cluster, *drain_flags, "-enable", "-yes", "-detach", old_node_id2)

    wait_for_allocs_stop(cluster, 10, old_alloc_id1, old_alloc_id2)
    wait_for_running_allocs(cluster, job_id, 2)


@pytest.mark.docker
def test_NodeDrain_DeadlineFlag(docker_engine: None, cluster: MultiNode, jobs: list[str]) -> None:
    _drain_two_ineligible_nodes(cluster, jobs, "-deadline", "1s")


@pytest.mark.docker
def test_NodeDrain_ForceFlag(docker_engine: None, cluster: MultiNode, jobs: list[str]) -> None:
    _drain_two_ineligible_nodes(cluster, jobs, "-force")
