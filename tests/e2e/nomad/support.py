"""What the ported Nomad e2e modules share: Nomad's ``e2eutil`` helpers, as far as
corral needs them (a job file registered under a unique ID, the job's allocations,
an allocation's JSON, and the clean-up after a test)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

from tests.support.agent import run_cli
from tests.support.multinode import MultiNode
from tests.support.wait import wait_for

Alloc = dict[str, Any]
TERMINAL_CLIENT = ("complete", "failed", "lost")


def unique_id(prefix: str) -> str:
    """``e2eutil``'s job IDs: a prefix and 8 random hex digits."""
    return prefix + uuid.uuid4().hex[:8]


def renamed(path: Path, job_id: str) -> str:
    """The job file's text with its ``job "..." {`` block renamed to ``job_id``."""
    return re.sub(r'(?m)^job ".*" \{', f'job "{job_id}" {{', path.read_text())


def register(cluster: MultiNode, path: Path, job_id: str) -> str:
    """``e2eutil.Register``: ``job run -detach -`` of the file under ``job_id``; its text."""
    spec = renamed(path, job_id)
    out = run_cli("job", "run", "-detach", "-", addr=cluster.server.rpc_addr, input=spec)
    assert out.returncode == 0, out.stdout + out.stderr
    return spec


def job_allocs(cluster: MultiNode, job_id: str) -> list[Alloc]:
    allocs: list[Alloc] = cluster.server.cli_json("job", "status", job_id)["Allocations"]
    return allocs


def alloc_status(cluster: MultiNode, alloc_id: str) -> Alloc:
    alloc: Alloc = cluster.server.cli_json("alloc", "status", alloc_id)
    return alloc


def stop_and_purge(cluster: MultiNode, job_id: str) -> None:
    """``e2eutil.CleanupJobsAndGC``: stop, wait until the clients say every allocation
    ended, then purge. A purge alone deletes the allocations at once (as Nomad's does)
    and the clients leave tasks running when the cluster stops: the wait keeps tasks
    from outliving the test."""
    cluster.server.cli("job", "stop", "-detach", job_id)
    wait_for(
        lambda: all(a["ClientStatus"] in TERMINAL_CLIENT for a in job_allocs(cluster, job_id)),
        timeout=30,
        message=f"the allocations of {job_id} to end",
    )
    out = cluster.server.cli("job", "stop", "-purge", "-detach", job_id)
    assert out.returncode == 0, out.stdout + out.stderr


def register_and_wait_for_allocs(cluster: MultiNode, path: Path, job_id: str) -> list[str]:
    """``e2eutil.RegisterAndWaitForAllocs``: register, wait until the group's count of
    allocations is placed, return their IDs."""
    spec = register(cluster, path, job_id)
    count = int(re.search(r"(?m)^\s*count\s*=\s*(\d+)", spec).group(1))  # type: ignore[union-attr]

    def placed() -> list[str]:
        allocs = job_allocs(cluster, job_id)
        return [a["ID"] for a in allocs] if len(allocs) >= count else []

    return wait_for(placed, timeout=30, message=f"{count} allocations of {job_id}")
