"""``corral node status``: the client nodes and what runs on them."""

from __future__ import annotations

import click

from corral import structs
from corral.cli.common import echo_json, get_client, json_option, verbose_option
from corral.cli.format import ALLOC_HEADER, alloc_rows, format_kv, format_list, time_ago
from corral.proto import pb


@click.group()
def node() -> None:
    """Inspect client nodes."""


@node.command("status")
@click.argument("node_id", metavar="[NODE]", required=False)
@json_option
@verbose_option
@click.pass_context
def status(ctx: click.Context, node_id: str | None, as_json: bool, verbose: bool) -> None:
    """List nodes, or show one node (full ID or unambiguous prefix) in detail."""
    client = get_client(ctx)
    if not node_id:
        nodes = sorted(client.list_nodes(), key=lambda n: (n.name, n.id))
        for n in nodes:
            n.ClearField("secret_id")
        if as_json:
            echo_json(nodes)
            return
        if not nodes:
            click.echo("No nodes registered")
            return
        rows = [
            [
                n.id if verbose else n.id[:8],
                n.name,
                n.node_class,
                n.datacenter,
                str(n.drain).lower(),
                n.scheduling_eligibility,
                n.status,
            ]
            for n in nodes
        ]
        header = ["ID", "Name", "Class", "DC", "Drain", "Eligibility", "Status"]
        click.echo(format_list(header, rows))
        return
    n = client.get_node(node_id)
    n.ClearField("secret_id")
    allocs = client.list_allocs(node_id=n.id)
    if as_json:
        echo_json(n)
        return
    click.echo(render_node(n, allocs, verbose))


def render_node(n: pb.Node, allocs: list[pb.Allocation], verbose: bool = False) -> str:
    """Nomad's ``node status NODE`` layout (attributes shown, as with -verbose)."""
    drivers = sorted(d for d, info in n.drivers.items() if info.detected and info.healthy)
    parts = [
        format_kv(
            [
                ("ID", n.id if verbose else n.id[:8]),
                ("Name", n.name),
                ("Class", n.node_class),
                ("DC", n.datacenter),
                ("Drain", str(n.drain).lower()),
                ("Eligibility", n.scheduling_eligibility),
                ("Status", n.status),
                ("Status Description", n.status_description),
                ("Status Updated", time_ago(n.status_updated_at)),
                ("Address", n.http_addr),
                ("Drivers", ",".join(drivers)),
            ]
        )
    ]
    if n.drivers:
        rows = [
            [
                name,
                str(info.detected).lower(),
                str(info.healthy).lower(),
                info.health_description,
            ]
            for name, info in sorted(n.drivers.items())
        ]
        parts.append("Drivers\n" + format_list(["Driver", "Detected", "Healthy", "Message"], rows))

    live = [a for a in allocs if not structs.is_alloc_terminal(a)]
    cpu = sum(t.cpu.cpu_shares for a in live for t in a.allocated_resources.tasks.values())
    mem = sum(t.memory.memory_mb for a in live for t in a.allocated_resources.tasks.values())
    res = n.node_resources
    parts.append(
        "Allocated Resources\n"
        + format_list(
            ["CPU", "Memory"],
            [[f"{cpu}/{res.cpu.cpu_shares} MHz", f"{mem}/{res.memory.memory_mb} MiB"]],
        )
    )
    if allocs:
        parts.append("Allocations\n" + format_list(ALLOC_HEADER, alloc_rows(allocs, verbose)))
    else:
        parts.append("Allocations\nNo allocations placed")
    if n.attributes:
        parts.append("Attributes\n" + format_kv(sorted(n.attributes.items())))
    if n.meta:
        parts.append("Meta\n" + format_kv(sorted(n.meta.items())))
    return "\n\n".join(parts)
