"""Nomad's e2e ``overlap`` suite (``e2e/overlap/overlap_test.go``) on corral.

One server and Nomad's four e2e clients, raw_exec tasks. As the Go test does, the job
file ``input/overlap/overlap.nomad`` is parsed (``/v1/jobs/parse``), given a unique
ID, and registered through the Nomad-compatible HTTP API (``PUT /v1/jobs``); the
second job gets a constraint on the first one's node and no ``shutdown_delay``.
Allocations and evaluations are read from ``/v1/allocation/<id>``,
``/v1/job/<id>/allocations`` and ``/v1/evaluation/<id>``. Both jobs are purged at the
end, and the test waits until their tasks are gone.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.multinode import MultiNode
from tests.support.wait import wait_for

INPUT = Path(__file__).parent / "input" / "overlap"

TERMINAL_CLIENT = ("complete", "failed", "lost")


class NoBlockedEval(AssertionError):
    """The follow-up job's evaluation completed without a blocked evaluation."""


class API:
    """The few Nomad HTTP API calls the Go test makes."""

    def __init__(self, cluster: MultiNode) -> None:
        self.base = cluster.server.http_url

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def parse(self, hcl: str) -> dict[str, Any]:
        return self.call("POST", "/v1/jobs/parse", {"JobHCL": hcl})  # type: ignore[no-any-return]

    def register(self, job: dict[str, Any]) -> dict[str, Any]:
        return self.call("PUT", "/v1/jobs", {"Job": job})  # type: ignore[no-any-return]

    def deregister(self, job_id: str, purge: bool) -> None:
        self.call("DELETE", f"/v1/job/{job_id}?purge={'true' if purge else 'false'}")

    def job_allocations(self, job_id: str) -> list[dict[str, Any]]:
        try:
            return self.call("GET", f"/v1/job/{job_id}/allocations")  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return []
            raise

    def allocation(self, alloc_id: str) -> dict[str, Any] | None:
        try:
            return self.call("GET", f"/v1/allocation/{alloc_id}")  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def evaluation(self, eval_id: str) -> dict[str, Any] | None:
        try:
            return self.call("GET", f"/v1/evaluation/{eval_id}")  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise


@pytest.fixture
def api(cluster: MultiNode) -> Iterator[tuple[API, Callable[[str], None]]]:
    """The API, and ``stopped_later(job_id)``: the Go test's ``defer
    e2eutil.WaitForJobStopped`` (deregister with purge), plus a wait until the job's
    tasks are gone so that none outlives the cluster."""
    client = API(cluster)
    later: list[str] = []
    yield client, later.append
    for job_id in reversed(later):
        alloc_ids = [a["ID"] for a in client.job_allocations(job_id)]
        client.deregister(job_id, purge=True)

        def gone(alloc_ids: list[str] = alloc_ids) -> bool:
            for alloc_id in alloc_ids:
                a = client.allocation(alloc_id)
                if a is not None and a["ClientStatus"] not in TERMINAL_CLIENT:
                    return False
            return True

        wait_for(gone, timeout=30, message=f"the allocations of {job_id} stopped")


def test_overlap(api: tuple[API, Callable[[str], None]]) -> None:
    """``TestOverlap``: the resources of an allocation are not free until its client
    status is terminal (hashicorp/nomad#10440). A job stopped during its task's 8 s
    ``shutdown_delay`` still holds static port 7234, so a second job pinned to the same
    node gets a blocked evaluation, and runs once the first allocation is complete."""
    client, stopped_later = api
    hcl = (INPUT / "overlap.nomad").read_text()

    def get_job() -> tuple[dict[str, Any], str]:
        job = client.parse(hcl)
        job["ID"] = job["ID"] + uuid.uuid4().hex[:8]
        return job, job["ID"]

    job1, job_id1 = get_job()

    # Register initial job that should block subsequent job's placement until
    # its shutdown_delay is up.
    client.register(job1)
    stopped_later(job_id1)

    def running1() -> dict[str, Any] | None:
        allocs = client.job_allocations(job_id1)
        if not allocs:
            return None
        assert len(allocs) == 1, allocs
        return allocs[0] if allocs[0]["ClientStatus"] == "running" else None

    found = wait_for(running1, timeout=30, message=f"the allocation of {job_id1} running")
    assert found is not None
    orig_alloc: dict[str, Any] = found

    # Stop job but don't wait for ClientStatus terminal
    client.deregister(job_id1, purge=False)
    shutdown_delay_s = job1["TaskGroups"][0]["Tasks"][0]["ShutdownDelay"] / 1e9
    min_stop_time = time.monotonic() + shutdown_delay_s

    def stop_running() -> bool:
        a = client.allocation(orig_alloc["ID"])
        assert a is not None
        return (a["DesiredStatus"], a["ClientStatus"]) == ("stop", "running")

    wait_for(stop_running, timeout=10, message=f"alloc {orig_alloc['ID'][:8]} stop|running")

    # Start replacement job on same node and assert it is blocked because the
    # static port is already in use.
    job2, job_id2 = get_job()
    job2["Constraints"].append(
        {"LTarget": "${node.unique.id}", "RTarget": orig_alloc["NodeID"], "Operand": "="}
    )
    job2["TaskGroups"][0]["Tasks"][0]["ShutdownDelay"] = 0  # no need on the followup
    resp = client.register(job2)
    stopped_later(job_id2)

    # testutil.Wait until e.BlockedEval != "": once the evaluation is complete its
    # BlockedEval is final, so stop waiting there.
    def evaluated() -> dict[str, Any] | None:
        e = client.evaluation(resp["EvalID"])
        if e is None:
            return None
        return e if e["BlockedEval"] or e["Status"] not in ("pending", "") else None

    ev = wait_for(evaluated, timeout=30, message=f"evaluation {resp['EvalID'][:8]}")
    assert ev is not None
    if not ev["BlockedEval"]:
        placed = [(a["NodeID"][:8], a["ClientStatus"]) for a in client.job_allocations(job_id2)]
        orig = client.allocation(orig_alloc["ID"])
        raise NoBlockedEval(
            f"expected a blocked eval to be created but found: {ev}; {job_id2} placed {placed} "
            f"while {orig_alloc['ID'][:8]} is {orig and (orig['DesiredStatus'], orig['ClientStatus'])}"
        )

    # Wait for job1's ShutdownDelay for origAlloc.ClientStatus to go terminal
    def orig_complete() -> bool:
        a = client.allocation(orig_alloc["ID"])
        assert a is not None
        return bool(a["ClientStatus"] == "complete")

    remaining = max(0.0, min_stop_time - time.monotonic())
    wait_for(orig_complete, timeout=remaining + 30, message="the original allocation complete")

    # Assert replacement job unblocked and running
    def running2() -> bool:
        allocs = client.job_allocations(job_id2)
        if not allocs:
            return False
        assert len(allocs) == 1, allocs
        return bool(allocs[0]["ClientStatus"] == "running")

    wait_for(running2, timeout=30, message=f"the allocation of {job_id2} running")
