"""Nomad's ``e2e/servicediscovery`` on corral: the Nomad-provider check tests.

Ported: ``TestServiceDiscovery_ChecksHappy`` and ``_ChecksSad`` (``nomad_checks_test.go``).
Left out: ``MultiProvider`` and ``UpdateProvider`` (Consul), ``SimpleLoadBalancing``
(bridge networking and a ``nomadService`` template), and
``ServiceRegisterAfterCheckRestart`` (HCL ``variable`` blocks, ``jobs3.Var`` and
``${node.unique.id}``).

Nomad reads the check results with ``nomad alloc checks <alloc>`` (Status, StatusCode,
Output). corral has no such command and keeps a check's status code and output on
the client (its log); what it publishes is the verdict, as the ``Health`` of the
service registration (``passing`` or ``critical``; a registration appears only once
every check of the service ran, ``client/services/hook.py::AllocServices._publish``).
So the tests assert the same facts through that verdict, read both ways a user
can: ``corral service info <name> --json`` and ``GET /v1/service/<name>?health=any``.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.e2e.nomad import support
from tests.e2e.nomad.support import Alloc, alloc_status, job_allocs
from tests.support.multinode import MultiNode
from tests.support.wait import wait_for

INPUT = Path(__file__).parent / "input" / "servicediscovery"
SERVICE = "http-server"  # the service both job files declare


def register_and_wait_for_allocs(
    cluster: MultiNode, jobs: list[str], filename: str, job_id: str
) -> list[Alloc]:
    """``e2eutil.RegisterAndWaitForAllocs``: register under ``job_id``, wait until the
    evaluation placed allocations, return them."""
    support.register(cluster, INPUT / filename, job_id)
    jobs.append(job_id)
    return wait_for(
        lambda: job_allocs(cluster, job_id), timeout=30, message=f"allocations of {job_id}"
    )


def wait_for_alloc_running(cluster: MultiNode, alloc_id: str) -> None:
    wait_for(
        lambda: alloc_status(cluster, alloc_id)["ClientStatus"] == "running",
        timeout=30,
        interval=0.2,
        message=f"allocation {alloc_id[:8]} running",
    )


def registration(cluster: MultiNode, alloc_id: str) -> dict[str, Any]:
    """The allocation's registration of SERVICE, read through the CLI and the HTTP
    API (which must agree); {} while there is none."""
    cli = [
        r for r in cluster.server.cli_json("service", "info", SERVICE) if r["AllocID"] == alloc_id
    ]
    url = f"{cluster.server.http_url}/v1/service/{SERVICE}?health=any"
    with urllib.request.urlopen(url, timeout=5) as resp:
        http = [r for r in json.load(resp) if r["AllocID"] == alloc_id]
    assert [r["Health"] for r in cli] == [r["Health"] for r in http], (cli, http)
    assert len(http) <= 1, http
    return http[0] if http else {}


def passing(cluster: MultiNode, alloc_id: str) -> dict[str, Any]:
    """The registration once its health is ``passing``, else {} (for ``wait_for``)."""
    reg = registration(cluster, alloc_id)
    return reg if reg.get("Health") == "passing" else {}


def listed_passing(cluster: MultiNode, alloc_id: str) -> bool:
    """Whether the default listing (passing instances only) shows the allocation."""
    with urllib.request.urlopen(f"{cluster.server.http_url}/v1/service/{SERVICE}", timeout=5) as r:
        return any(reg["AllocID"] == alloc_id for reg in json.load(r))


def test_ServiceDiscovery_ChecksHappy(cluster: MultiNode, jobs: list[str]) -> None:
    job_id = "nsd-check-happy-" + uuid.uuid4().hex[:8]
    alloc_stubs = register_and_wait_for_allocs(cluster, jobs, "checks_happy.nomad", job_id)
    assert len(alloc_stubs) == 1, alloc_stubs
    alloc_id = alloc_stubs[0]["ID"]

    wait_for_alloc_running(cluster, alloc_id)

    # Nomad: `nomad alloc checks` shows Status = success, StatusCode = 200 and
    # "nomad: http ok" within 5 s. corral: the http check passed (a 2xx answer).
    reg = wait_for(
        lambda: passing(cluster, alloc_id),
        timeout=5,
        interval=0.2,
        message=lambda: f"a passing check: {registration(cluster, alloc_id)}",
    )
    assert reg["JobID"] == job_id
    assert listed_passing(cluster, alloc_id)


def test_ServiceDiscovery_ChecksSad(cluster: MultiNode, jobs: list[str]) -> None:
    job_id = "nsd-check-sad-" + uuid.uuid4().hex[:8]
    alloc_stubs = register_and_wait_for_allocs(cluster, jobs, "checks_sad.nomad", job_id)
    assert len(alloc_stubs) == 1, alloc_stubs
    alloc_id = alloc_stubs[0]["ID"]

    wait_for_alloc_running(cluster, alloc_id)

    # Nomad: `nomad alloc checks` shows Status = failure, StatusCode = 501 and
    # python's "Error code explanation: 501 ..." within 5 s. corral: the http check
    # (POST /) ran and failed.
    reg = wait_for(
        lambda: registration(cluster, alloc_id),
        timeout=5,
        interval=0.2,
        message=lambda: f"a check result: {registration(cluster, alloc_id)}",
    )
    assert reg["Health"] == "critical", reg
    assert not listed_passing(cluster, alloc_id)
    # The server itself is up (GET / answers 200): the check fails on its method,
    # as Nomad's 501 says, not on a dead port.
    with urllib.request.urlopen(f"http://{reg['Address']}:{reg['Port']}/", timeout=5) as resp:
        assert resp.status == 200
