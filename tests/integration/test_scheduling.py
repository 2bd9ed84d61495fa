"""Scheduling with real processes: one server, several client agents (mock driver).

Client loss, late joiners for system jobs, drains and blocked placements, driven
through the CLI as an operator would. Heartbeat TTLs are short (1 s + 1 s grace).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.agent import run_cli
from tests.support.multinode import Client, ServerOnly
from tests.support.wait import wait_for


def cli(server: ServerOnly, *args: str):  # type: ignore[no-untyped-def]
    return run_cli(*args, addr=server.rpc_addr)


def live_allocs(server: ServerOnly, job_id: str) -> list[dict]:  # type: ignore[type-arg]
    out = cli(server, "job", "status", job_id, "--json")
    assert out.returncode == 0, out.stderr
    return [a for a in json.loads(out.stdout)["Allocations"] if a["DesiredStatus"] == "run"]


def running_on(server: ServerOnly, job_id: str) -> dict[str, int]:
    """Running allocations per node ID."""
    per: dict[str, int] = {}
    for a in live_allocs(server, job_id):
        if a["ClientStatus"] == "running":
            per[a["NodeID"]] = per.get(a["NodeID"], 0) + 1
    return per


def write_job(
    path: Path, job_id: str, count: int, job_type: str = "service", cpu: int = 100
) -> Path:
    count_line = "" if job_type == "system" else f"count = {count}"
    path.write_text(
        f"""
job "{job_id}" {{
  type = "{job_type}"
  group "g" {{
    {count_line}
    task "t" {{
      driver = "mock"
      config {{
        run_for = "1h"
      }}
      resources {{
        cpu    = {cpu}
        memory = 32
      }}
    }}
  }}
}}
"""
    )
    return path


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    with ServerOnly(tmp_path) as s:
        yield s


def test_killed_client_allocations_move_to_the_survivors(
    server: ServerOnly, tmp_path: Path
) -> None:
    a = Client(tmp_path, server, "node-a").start()
    b = Client(tmp_path, server, "node-b").start()
    try:
        job = write_job(tmp_path / "web.hcl", "web", 4)
        assert cli(server, "job", "run", str(job)).returncode == 0
        wait_for(
            lambda: sum(running_on(server, "web").values()) == 4, timeout=30, message="4 running"
        )
        node_a = a.node()
        assert node_a is not None
        a.kill()
        # TTL 1-2 s + grace 1 s, then replacements on node-b.
        wait_for(
            lambda: running_on(server, "web") == {b.node().id: 4},  # type: ignore[union-attr]
            timeout=30,
            message="all 4 allocations running on the surviving node",
        )
        lost = [
            x
            for x in json.loads(cli(server, "job", "status", "web", "--json").stdout)["Allocations"]
            if x["ClientStatus"] == "lost"
        ]
        assert lost and all(x["NodeID"] == node_a.id for x in lost)
    finally:
        a.stop()
        b.stop()


def test_system_job_lands_on_a_node_that_joins_later(server: ServerOnly, tmp_path: Path) -> None:
    a = Client(tmp_path, server, "node-a").start()
    late = Client(tmp_path, server, "node-late")
    try:
        job = write_job(tmp_path / "agentd.hcl", "agentd", 1, job_type="system")
        assert cli(server, "job", "run", str(job)).returncode == 0
        wait_for(lambda: len(running_on(server, "agentd")) == 1, timeout=30, message="one per node")
        late.start()
        wait_for(
            lambda: set(running_on(server, "agentd")) == {a.node().id, late.node().id},  # type: ignore[union-attr]
            timeout=30,
            message="the late node gets its system allocation",
        )
        assert all(v == 1 for v in running_on(server, "agentd").values())
    finally:
        late.stop()
        a.stop()


def test_drain_moves_every_allocation_off_a_node(server: ServerOnly, tmp_path: Path) -> None:
    a = Client(tmp_path, server, "node-a").start()
    try:
        job = write_job(tmp_path / "web.hcl", "web", 3)
        assert cli(server, "job", "run", str(job)).returncode == 0
        wait_for(
            lambda: sum(running_on(server, "web").values()) == 3, timeout=30, message="3 running"
        )
        b = Client(tmp_path, server, "node-b").start()
        try:
            node_a = a.node()
            assert node_a is not None
            out = cli(server, "node", "drain", "--enable", node_a.id, "--yes", "--deadline", "1m")
            assert out.returncode == 0, out.stdout + out.stderr
            wait_for(
                lambda: running_on(server, "web") == {b.node().id: 3},  # type: ignore[union-attr]
                timeout=60,
                message="every allocation moved to node-b",
            )
            drained = a.node()
            assert drained is not None and drained.scheduling_eligibility == "ineligible"
        finally:
            b.stop()
    finally:
        a.stop()


def test_job_that_cannot_fit_explains_why_then_places_when_room_appears(
    server: ServerOnly, tmp_path: Path
) -> None:
    small = Client(tmp_path, server, "small", "--cpu-total", "1000").start()
    big = Client(tmp_path, server, "big", "--cpu-total", "8000")
    try:
        job = write_job(tmp_path / "heavy.hcl", "heavy", 2, cpu=3000)
        run = cli(server, "job", "run", str(job))
        assert run.returncode == 2, run.stdout + run.stderr  # Nomad: placement failures exit 2
        evals = json.loads(cli(server, "eval", "list", "--job", "heavy", "--json").stdout)
        failed = next(e for e in evals if e.get("FailedTGAllocs"))
        shown = cli(server, "eval", "status", failed["ID"][:8])
        assert "cpu" in shown.stdout and "exhausted" in shown.stdout.lower(), shown.stdout
        big.start()
        wait_for(
            lambda: sum(running_on(server, "heavy").values()) == 2,
            timeout=30,
            message="the blocked job is placed on the new node",
        )
        assert set(running_on(server, "heavy")) == {big.node().id}  # type: ignore[union-attr]
    finally:
        big.stop()
        small.stop()


def test_a_client_offers_raw_exec_only_when_enabled(server: ServerOnly, tmp_path: Path) -> None:
    """raw_exec runs commands as the agent's user, unisolated: a client offers it
    only with --enable-raw-exec (security issue, row 2); a job that needs it is not
    placed elsewhere, and says why."""
    plain = Client(tmp_path, server, "plain").start()
    try:
        job = tmp_path / "shell.hcl"
        job.write_text(
            """
job "shell" {
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "sleep 600"]
      }
    }
  }
}
"""
        )
        run = cli(server, "job", "run", "-detach", str(job))
        assert run.returncode == 0, run.stdout + run.stderr
        node = plain.node()
        assert node is not None and "raw_exec" not in node.drivers
        evals = wait_for(
            lambda: [
                e
                for e in json.loads(cli(server, "eval", "list", "--job", "shell", "--json").stdout)
                if e.get("FailedTGAllocs")
            ],
            timeout=30,
            message="a placement failure",
        )
        shown = cli(server, "eval", "status", evals[0]["ID"][:8])
        assert 'Constraint "missing drivers" filtered 1 nodes' in shown.stdout, shown.stdout
        enabled = Client(tmp_path, server, "enabled", "--enable-raw-exec").start()
        try:
            wait_for(
                lambda: sum(running_on(server, "shell").values()) == 1,
                timeout=30,
                message="placed once a client offers raw_exec",
            )
            assert set(running_on(server, "shell")) == {enabled.node().id}  # type: ignore[union-attr]
            # Stop, and let the client end the task, before its agent stops (clients
            # leave tasks running when they stop, for a restarted agent to reattach).
            assert cli(server, "job", "stop", "shell").returncode == 0
            wait_for(lambda: not running_on(server, "shell"), timeout=30, message="task ended")
            wait_for(
                lambda: all(
                    a["ClientStatus"] in ("complete", "failed")
                    for a in json.loads(cli(server, "job", "status", "shell", "--json").stdout)[
                        "Allocations"
                    ]
                ),
                timeout=30,
                message="the client reports the task ended",
            )
        finally:
            enabled.stop()
    finally:
        plain.stop()
