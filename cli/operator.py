"""``corral server members`` and ``corral operator raft|keygen``: the server cluster.

Why Nomad's shapes: operators of an HA cluster script around ``nomad server
members`` and ``nomad operator raft list-peers`` (is there a leader? is every peer
a voter?), so the tables keep Nomad's columns and ``list-peers --json`` prints
Nomad's ``{"Servers": [...]}``. corral has no gossip layer: the membership shown is
the raft configuration joined with what each server announced about itself, and
"Port" is the raft port (where Nomad shows its serf port, the one peers join on).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

import click

from corral import clusterkey
from corral.cli.common import F, echo_json, get_client, json_option
from corral.cli.format import format_list
from corral.proto import pb

RAFT_VERSION = "3"
DATACENTER = "dc1"
REGION = "global"


def _build() -> str:
    """The corral version, shown where Nomad shows its build."""
    try:
        return metadata.version("corral")
    except metadata.PackageNotFoundError:  # pragma: no cover - always installed
        return "unknown"


def _host_port(address: str) -> tuple[str, str]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address, ""
    return host.strip("[]"), port


# ---------------------------------------------------------------- server members


@click.group("server")
def server_group() -> None:
    """Inspect the servers of the cluster."""


@server_group.command("members")
@json_option
@click.pass_context
def members(ctx: click.Context, as_json: bool) -> None:
    """List the servers: address, health, leader, raft state and last index."""
    resp = get_client(ctx).status()
    if as_json:
        echo_json(resp)
        return
    if not resp.members:
        click.echo("No servers known")
        return
    click.echo(render_members(resp.members))


MEMBERS_HEADER = (
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
)


def render_members(servers: Iterable[pb.ServerMember]) -> str:
    """Nomad's ``server members`` table plus corral's Raft State and Last Index."""
    build = _build()
    rows = []
    for m in sorted(servers, key=lambda m: (m.name, m.raft_address)):
        host, port = _host_port(m.raft_address or m.rpc_address or m.address)
        if m.address:
            host = _host_port(m.address)[0]
        rows.append(
            [
                m.name or m.id,
                host,
                port,
                "alive" if m.healthy else "failed",
                str(m.leader).lower(),
                RAFT_VERSION,
                build,
                DATACENTER,
                REGION,
                m.raft_state,
                m.last_index,
            ]
        )
    return format_list(MEMBERS_HEADER, rows)


# ---------------------------------------------------------------- operator


@click.group()
def operator() -> None:
    """Cluster operations: raft membership, cluster keys."""


@operator.group("raft")
def raft() -> None:
    """Inspect and change the raft peer set of the servers."""


@raft.command("list-peers")
@json_option
@click.pass_context
def list_peers(ctx: click.Context, as_json: bool) -> None:
    """List the raft peers: node, ID, address, state, voter."""
    resp = get_client(ctx).raft_list_peers()
    if as_json:
        echo_json({"Servers": list(resp.servers)})
        return
    rows = [
        [
            s.node,
            s.id,
            s.address,
            "leader" if s.leader else "follower",
            str(s.voter).lower(),
            s.raft_protocol,
        ]
        for s in resp.servers
    ]
    click.echo(format_list(["Node", "ID", "Address", "State", "Voter", "RaftProtocol"], rows))


def _peer_address(positional: str | None, option: str | None) -> str:
    """The peer's raft address from ``-peer-address`` or the positional argument."""
    if positional and option and positional != option:
        raise click.UsageError("give the peer address once (argument or --peer-address)")
    address = (option or positional or "").strip()
    if not address:
        raise click.UsageError("missing the peer's raft address: --peer-address HOST:PORT")
    host, port = _host_port(address)
    if not host or not port:
        raise click.BadParameter(f"{address!r} is not HOST:PORT", param_hint="--peer-address")
    return address


def _peer_options(fn: F) -> F:
    fn = click.option(
        "-peer-address",
        "--peer-address",
        "peer_address",
        metavar="HOST:PORT",
        default=None,
        help="Raft address of the server (as in --servers / list-peers).",
    )(fn)
    # not "address": that name belongs to the --address option of every command
    return click.argument("peer", metavar="[HOST:PORT]", required=False)(fn)


@raft.command("remove-peer")
@_peer_options
@click.pass_context
def remove_peer(ctx: click.Context, peer: str | None, peer_address: str | None) -> None:
    """Remove a server from the raft peer set (a dead or retired server).

    Run it against a server that stays; the cluster keeps its quorum only if
    enough voters remain.
    """
    target = _peer_address(peer, peer_address)
    get_client(ctx).raft_remove_peer(target)
    click.echo(f'Removed peer with address "{target}"')


@raft.command("add-peer")
@_peer_options
@click.pass_context
def add_peer(ctx: click.Context, peer: str | None, peer_address: str | None) -> None:
    """Add a server to the raft peer set of a running cluster.

    Start the new server first (with --servers listing the cluster and itself),
    then add it; it catches up from the leader.
    """
    target = _peer_address(peer, peer_address)
    get_client(ctx).raft_add_peer(target)
    click.echo(f'Added peer with address "{target}"')


@operator.command("keygen")
def keygen() -> None:
    """Print a new random cluster key (32 bytes, base64) for ``agent --encrypt``."""
    click.echo(clusterkey.generate())


# ---------------------------------------------------------------- system gc


@click.group("system")
def system_group() -> None:
    """Cluster-wide maintenance."""


@system_group.command("gc")
@json_option
@click.pass_context
def system_gc(ctx: click.Context, as_json: bool) -> None:
    """Garbage-collect finished evaluations, allocations, deployments now.

    As ``nomad system gc``. The leader also does it every 5 minutes for those older
    than an hour; running allocations, failed ones that may still be rescheduled,
    and a job's latest deployment are never collected.
    """
    resp = get_client(ctx).system_gc()
    if as_json:
        echo_json(
            {
                "EvalsDeleted": resp.evals_deleted,
                "AllocsDeleted": resp.allocs_deleted,
                "DeploymentsDeleted": resp.deployments_deleted,
            }
        )
        return
    click.echo(
        f"Garbage collected {resp.evals_deleted} evaluations, "
        f"{resp.allocs_deleted} allocations and {resp.deployments_deleted} deployments"
    )
