"""``corral node eligibility|drain``, ``server members`` and ``operator raft``
against the scripted fake server.

Why the fake: a drain ends when clients stop their allocations, and the fake
advances a drain one step per listing (marked for migration, stopped, complete),
so a test sees every line the monitor prints, in order; and a cluster's
membership (peers, failed servers) is scripted, which an in-memory server of one
cannot show. Nomad's flags, output shapes and exit codes, since scripts depend on
them.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from corral import structs
from corral.cli import node as node_cli
from corral.cli.main import cli
from corral.proto import pb
from tests.support.fake_server import FakeServer
from tests.support.inproc_server import sample_job

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@pytest.fixture
def run(fake: FakeServer) -> Any:
    """Invoke ``corral --address <fake> ARGS...``."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None) -> Result:
        return runner.invoke(cli, ["--address", fake.address, *args], input=input)

    return invoke


# ---------------------------------------------------------------- node eligibility and drain


def test_node_eligibility(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    off = run("node", "eligibility", "-disable", n.id[:6])
    assert off.exit_code == 0
    assert off.stdout == f'Node "{n.id}" scheduling eligibility set: ineligible for scheduling\n'
    assert n.scheduling_eligibility == structs.NODE_INELIGIBLE
    on = run("node", "eligibility", "--enable", n.id)
    assert on.stdout == f'Node "{n.id}" scheduling eligibility set: eligible for scheduling\n'
    assert n.scheduling_eligibility == structs.NODE_ELIGIBLE
    assert [r.node_id for r in fake.log.of("SetEligibility")] == [n.id, n.id]
    for flags in ((), ("-enable", "-disable")):
        bad = run("node", "eligibility", *flags, n.id)
        assert bad.exit_code == 1 and "either -enable or -disable" in bad.stderr
    n.drain = True
    refused = run("node", "eligibility", "-enable", n.id)
    assert refused.exit_code == 1 and "while it is draining" in refused.stderr


@pytest.fixture
def fast_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_cli, "DRAIN_POLL_INTERVAL", 0.01)


@pytest.mark.usefixtures("fast_drain")
def test_drain_monitors_until_the_node_is_empty(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    fake.run_job(sample_job("web", count=2))
    allocs = sorted(fake.state.allocs)
    result = run("node", "drain", "-enable", "-yes", n.id)
    assert result.exit_code == 0, result.output
    expected = [
        "Ctrl-C to stop monitoring: will not cancel the node drain",
        f'Node "{n.id}" drain strategy set',
        *[f'Alloc "{a}" marked for migration' for a in allocs],
        *[f'Alloc "{a}" draining' for a in allocs],
        *[f'Alloc "{a}" status running -> complete' for a in allocs],
        f'Drain complete for node "{n.id}"',
        f'All allocations on node "{n.id}" have stopped',
    ]
    out = result.stdout.splitlines()
    assert len(out) == len(expected)
    for line, want in zip(out, expected, strict=True):
        assert re.fullmatch(rf"{STAMP}: {re.escape(want)}", line), line
    (req,) = fake.log.of("SetDrain")
    assert req.enable and req.deadline == 3600 * structs.SECOND and not req.ignore_system_jobs
    assert n.scheduling_eligibility == structs.NODE_INELIGIBLE


@pytest.mark.usefixtures("fast_drain")
def test_drain_empty_node_and_ignore_system(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    result = run("node", "drain", "--enable", "--yes", n.id)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1].endswith(f'All allocations on node "{n.id}" have stopped')
    run("node", "drain", "-disable", "-yes", n.id)
    system = sample_job("agent")
    system.type = "system"
    fake.run_job(system)
    fake.run_job(sample_job("web"))
    sys_alloc = next(a for a in fake.state.allocs.values() if a.job_id == "agent")
    result = run("node", "drain", "-enable", "-ignore-system", "-yes", n.id)
    assert result.exit_code == 0, result.output
    assert sys_alloc.id not in result.stdout
    assert sys_alloc.client_status == structs.ALLOC_CLIENT_RUNNING
    assert fake.log.of("SetDrain")[-1].ignore_system_jobs


def test_drain_detach_disable_and_deadlines(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    on = run("node", "drain", "-enable", "-detach", "-deadline", "1h30m", "-yes", n.id)
    assert on.exit_code == 0 and on.stdout == f'Node "{n.id}" drain strategy set\n'
    off = run("node", "drain", "--disable", "--yes", n.id)
    assert off.exit_code == 0 and off.stdout == f'Node "{n.id}" drain strategy unset\n'
    assert n.scheduling_eligibility == structs.NODE_ELIGIBLE
    run("node", "drain", "-enable", "-detach", "-force", "-yes", n.id)
    run("node", "drain", "-enable", "-detach", "-no-deadline", "-yes", n.id)
    run("node", "drain", "-disable", "-keep-ineligible", "-yes", n.id)
    reqs = fake.log.of("SetDrain")
    assert [(r.enable, r.deadline, r.mark_eligible) for r in reqs] == [
        (True, 90 * 60 * structs.SECOND, False),
        (False, 0, True),
        (True, -1, False),
        (True, 0, False),
        (False, 0, False),
    ]
    assert n.scheduling_eligibility == structs.NODE_INELIGIBLE


def test_drain_usage_errors(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    for flags in (
        (),
        ("-enable", "-disable"),
        ("-disable", "-deadline", "1h"),
        ("-enable", "-force", "-no-deadline"),
        ("-enable", "-deadline", "0s"),
        ("-enable", "-deadline", "soon"),
    ):
        result = run("node", "drain", *flags, "-yes", n.id)
        assert result.exit_code == 1, flags
        assert result.stderr, flags
    assert not fake.log.of("SetDrain")


def test_drain_asks_when_node_was_a_prefix(fake: FakeServer, run: Any) -> None:
    n = fake.state.add_node("n1")
    question = f'Are you sure you want to enable drain mode for node "{n.id}"? [y/N] '
    no = run("node", "drain", "-enable", "-detach", n.id[:4], input="n\n")
    assert no.exit_code == 0 and no.stdout == question + "n\nCanceling drain toggle\n"
    sloppy = run("node", "drain", "-enable", "-detach", n.id[:4], input="yes\n")
    assert sloppy.exit_code == 0 and "an exact 'y' is required" in sloppy.stdout
    other = run("node", "drain", "-enable", "-detach", n.id[:4], input="what\n")
    assert other.exit_code == 1 and "No confirmation detected" in other.stdout
    assert not fake.log.of("SetDrain")
    yes = run("node", "drain", "-enable", "-detach", n.id[:4], input="y\n")
    assert yes.exit_code == 0 and yes.stdout.endswith(f'Node "{n.id}" drain strategy set\n')
    # the full ID needs no confirmation
    assert run("node", "drain", "-disable", n.id).exit_code == 0


@pytest.mark.usefixtures("fast_drain")
def test_drain_monitor_gives_up_after_the_deadline(
    fake: FakeServer, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_cli, "DRAIN_MONITOR_MARGIN", 0.2)
    fake.state.drain_progress = False
    n = fake.state.add_node("n1")
    fake.run_job(sample_job("web"))
    result = run("node", "drain", "-enable", "-deadline", "100ms", "-yes", n.id)
    assert result.exit_code == 1
    assert result.stderr == (
        f'Error: 1 allocation still running on node "{n.id}" 0.3s after the drain started; '
        f"see corral node status {n.id[:8]}\n"
    )


@pytest.mark.usefixtures("fast_drain")
def test_drain_monitor_stops_when_the_drain_is_cancelled(fake: FakeServer, run: Any) -> None:
    fake.state.drain_progress = False
    n = fake.state.add_node("n1")
    fake.run_job(sample_job("web"))
    # someone runs "node drain -disable" while this one follows the drain
    cancel = threading.Timer(
        0.2, fake.state.set_drain, args=(pb.NodeDrainRequest(node_id=n.id, enable=False),)
    )
    cancel.start()
    try:
        result = run("node", "drain", "-enable", "-yes", n.id)
    finally:
        cancel.cancel()
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[-2].endswith(f'Drain complete for node "{n.id}"')
    assert out[-1].endswith(f'Node "{n.id}" is no longer draining; 1 allocation still running')


# ---------------------------------------------------------------- server members, raft


def test_server_members(fake: FakeServer, run: Any) -> None:
    fake.state.members.append(
        pb.ServerMember(
            id="s2",
            name="server-2",
            address="10.0.0.2",
            raft_address="10.0.0.2:4648",
            rpc_address="10.0.0.2:4647",
            raft_state="follower",
            voter=True,
            healthy=False,
            last_index=7,
        )
    )
    result = run("server", "members")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert re.split(r"\s{2,}", header) == [
        "Name",
        "Address",
        "Port",
        "Status",
        "Leader",
        "Raft Version",
        "Build",
        "Datacenter",
        "Region",
        "Raft State",
        "Last Index",
    ]
    leader_port = fake.state.members[0].raft_address.rsplit(":", 1)[1]
    assert re.split(r"\s+", rows[0])[:5] == [
        "fake-server",
        "127.0.0.1",
        leader_port,
        "alive",
        "true",
    ]
    cells = re.split(r"\s+", rows[1])
    assert cells[:6] == ["server-2", "10.0.0.2", "4648", "failed", "false", "3"]
    assert cells[7:] == ["dc1", "global", "follower", "7"]
    data = json.loads(run("server", "members", "--json").stdout)
    assert data["Leader"] == fake.address
    assert [m["Name"] for m in data["Members"]] == ["fake-server", "server-2"]
    assert data["Members"][1]["Healthy"] is False


def test_raft_list_peers_table_and_json(fake: FakeServer, run: Any) -> None:
    fake.state.members.append(
        pb.ServerMember(name="server-2", raft_address="10.0.0.2:4648", voter=True)
    )
    raft = fake.state.members[0].raft_address
    result = run("operator", "raft", "list-peers")
    assert result.exit_code == 0
    assert [re.split(r"\s{2,}", line) for line in result.stdout.splitlines()] == [
        ["Node", "ID", "Address", "State", "Voter", "RaftProtocol"],
        ["fake-server", raft, raft, "leader", "true", "3"],
        ["server-2", "10.0.0.2:4648", "10.0.0.2:4648", "follower", "true", "3"],
    ]
    data = json.loads(run("operator", "raft", "list-peers", "--json").stdout)
    assert list(data) == ["Servers"]
    assert data["Servers"][1] == {
        "ID": "10.0.0.2:4648",
        "Node": "server-2",
        "Address": "10.0.0.2:4648",
        "Leader": False,
        "Voter": True,
        "RaftProtocol": "3",
    }


def test_raft_add_and_remove_peer(fake: FakeServer, run: Any) -> None:
    added = run("operator", "raft", "add-peer", "-peer-address", "10.0.0.9:4648")
    assert added.exit_code == 0 and added.stdout == 'Added peer with address "10.0.0.9:4648"\n'
    assert "10.0.0.9:4648" in [m.raft_address for m in fake.state.members]
    removed = run("operator", "raft", "remove-peer", "--peer-address", "10.0.0.9:4648")
    assert removed.stdout == 'Removed peer with address "10.0.0.9:4648"\n'
    assert run("operator", "raft", "add-peer", "10.0.0.8:4648").exit_code == 0
    assert run("operator", "raft", "remove-peer", "10.0.0.8:4648").exit_code == 0
    assert [r.address for r in fake.log.of("RaftAddPeer")] == ["10.0.0.9:4648", "10.0.0.8:4648"]
    assert len(fake.state.members) == 1

    missing = run("operator", "raft", "remove-peer")
    assert missing.exit_code == 1 and "missing the peer's raft address" in missing.stderr
    bad = run("operator", "raft", "remove-peer", "-peer-address", "nohost")
    assert bad.exit_code == 1 and "is not HOST:PORT" in bad.stderr
    leader = run("operator", "raft", "remove-peer", fake.state.members[0].raft_address)
    assert leader.exit_code == 1
    assert leader.stderr == "Error: a server cannot remove itself; remove it from another server\n"
    gone = run("operator", "raft", "remove-peer", "10.0.0.77:4648")
    assert gone.exit_code == 1 and gone.stderr == "Error: 10.0.0.77:4648 is not a raft peer\n"
