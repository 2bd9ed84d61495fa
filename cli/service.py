"""``corral service list|info``: the service catalog, as clients registered it.

``list`` shows the services that have at least one passing instance (what a proxy
would route to), ``info NAME`` every instance of one service with its health, so a
failing instance shows up as ``critical`` instead of silently missing.
"""

from __future__ import annotations

import click

from corral.cli.common import echo_json, get_client, json_option, verbose_option
from corral.cli.format import format_list, short_id
from corral.proto import pb

HEALTH_SHOWN = {"": "passing (no checks)", "passing": "passing", "critical": "critical"}


@click.group()
def service() -> None:
    """Inspect the service catalog."""


@service.command("list")
@json_option
@click.pass_context
def list_services(ctx: click.Context, as_json: bool) -> None:
    """Services with at least one passing instance, and their tags."""
    resp = get_client(ctx).list_services()
    if as_json:
        echo_json([{"Namespace": resp.namespace, "Services": list(resp.services)}])
        return
    if not resp.services:
        click.echo("No services found")
        return
    rows = [[s.service_name, "[" + ",".join(s.tags) + "]"] for s in resp.services]
    click.echo(format_list(["Service Name", "Tags"], rows))


@service.command("info")
@click.argument("name")
@json_option
@verbose_option
@click.option("--passing", is_flag=True, help="Only instances whose checks pass.")
@click.pass_context
def info(ctx: click.Context, name: str, as_json: bool, verbose: bool, passing: bool) -> None:
    """Every instance of service NAME: allocation, node, address:port, health."""
    instances = get_client(ctx).get_service(name, any_health=not passing)
    if as_json:
        echo_json(instances)
        return
    if not instances:
        click.echo("No service registrations found")
        return
    click.echo(render_instances(instances, verbose))


def _addr(reg: pb.ServiceRegistration) -> str:
    host = f"[{reg.address}]" if ":" in reg.address else reg.address
    return f"{host}:{reg.port}"


def render_instances(instances: list[pb.ServiceRegistration], verbose: bool = False) -> str:
    rows = [
        [
            short_id(r.alloc_id, verbose),
            short_id(r.node_id, verbose),
            r.job_id,
            _addr(r),
            HEALTH_SHOWN.get(r.health, r.health),
            "[" + ",".join(r.tags) + "]",
        ]
        for r in instances
    ]
    return format_list(["Alloc ID", "Node ID", "Job ID", "Address", "Health", "Tags"], rows)
