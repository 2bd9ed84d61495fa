"""Nomad's ``e2e/clientstate`` on corral.

Ported: ``TestClientAllocs/testAllocZombie`` (``allocs_test.go``): restarting an
allocation that failed and was rescheduled must not bring it back to life
(hashicorp/nomad#17079). Left out: ``TestClientState_Kill``, ``_KillDuringRestart``
and ``_Corrupt`` (``clientstate.go``): they need ``NOMAD_TEST_STATE``, a local
binary of the agent under test, ``alloc fs`` and deleting the client's task-state
bucket; and ``sleeper.nomad`` uses the job-level ``task`` shorthand.

The job (``input/clientstate/alloc_zombie.nomad``, unchanged) is a python http
server whose http check fails; ``check_restart { limit = 1 }`` with no restart
attempts fails the allocation, which is rescheduled (3 attempts, 5 s apart).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from tests.e2e.nomad import support
from tests.e2e.nomad.support import alloc_status, job_allocs
from tests.support.multinode import MultiNode
from tests.support.wait import wait_for

INPUT = Path(__file__).parent / "input" / "clientstate"


def register(cluster: MultiNode, jobs: list[str], job_id: str, filename: str) -> None:
    support.register(cluster, INPUT / filename, job_id)
    jobs.append(job_id)


def alloc_statuses_rescheduled(cluster: MultiNode, job_id: str) -> list[str]:
    """``e2eutil.AllocStatusesRescheduled``: the client statuses of the allocations
    that have reschedule events or a follow-up evaluation (from ``alloc status --json``)."""
    statuses = []
    for stub in job_allocs(cluster, job_id):
        alloc = alloc_status(cluster, stub["ID"])
        tracker = alloc.get("RescheduleTracker") or {}
        if tracker.get("Events") or alloc.get("FollowupEvalID"):
            statuses.append(alloc["ClientStatus"])
    return statuses


def test_ClientAllocs_AllocZombie(cluster: MultiNode, jobs: list[str]) -> None:
    job_id = "alloc-zombie-" + uuid.uuid4().hex[:8]
    register(cluster, jobs, job_id, "alloc_zombie.nomad")

    # e2eutil.SingleAllocID(version 0): the first allocation.
    alloc_id = wait_for(
        lambda: next((a["ID"] for a in job_allocs(cluster, job_id) if a["JobVersion"] == 0), ""),
        timeout=10,
        message=f"an allocation of {job_id}",
    )

    # The allocation fails (its check fails, check_restart restarts it, the restart
    # policy allows no restart).
    wait_for(
        lambda: alloc_status(cluster, alloc_id)["ClientStatus"] == "failed",
        timeout=30,
        interval=0.5,
        message=lambda: f"{alloc_id[:8]} failed: {alloc_status(cluster, alloc_id)}",
    )

    # More failures: it was rescheduled.
    wait_for(
        lambda: len(alloc_statuses_rescheduled(cluster, job_id)) > 2,
        timeout=60,
        interval=1,
        message=lambda: f"3 rescheduled allocations: {job_allocs(cluster, job_id)}",
    )

    # Restarting the first allocation must do nothing but give an error.
    out = cluster.server.cli("alloc", "restart", alloc_id)
    output = out.stdout + out.stderr
    assert out.returncode != 0, f"restarting a failed allocation succeeded: {output}"
    # ... and it stays dead (the zombie of #17079 came back half alive).
    alloc = alloc_status(cluster, alloc_id)
    assert alloc["ClientStatus"] == "failed", alloc
    assert all(s["State"] == "dead" for s in alloc["TaskStates"].values()), alloc["TaskStates"]

    # Nomad's words: must.ErrorContains(err, "restart of an alloc that should not run")
    # and must.StrContains(output, "Failed to restart allocation").
    assert "restart of an alloc that should not run" in output, output
    assert "Failed to restart allocation" in output, output
