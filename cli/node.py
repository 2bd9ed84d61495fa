"""``corral node status|eligibility|drain``: the client nodes and what runs on them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from corral import structs
from corral.api.client import APIError, CorralClient
from corral.cli.common import F, echo_json, get_client, json_option, verbose_option
from corral.cli.format import (
    ALLOC_HEADER,
    alloc_rows,
    format_kv,
    format_list,
    now_rfc3339,
    time_ago,
)
from corral.proto import pb


@click.group()
def node() -> None:
    """Inspect client nodes; drain them or change their eligibility."""


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


# ---------------------------------------------------------------- eligibility and drain

#: Nomad's default drain deadline.
DEFAULT_DRAIN_DEADLINE = "1h"
#: How long the drain monitor waits past the drain deadline before giving up (the
#: servers force the remaining allocations off at the deadline; they then need a
#: moment to stop).
DRAIN_MONITOR_MARGIN = 60.0
DRAIN_POLL_INTERVAL = 0.5


class GoDuration(click.ParamType):  # type: ignore[type-arg]  # generic only since click 8.5
    """A positive Go duration (``90s``, ``1h30m``), as Nomad's ``-deadline``; -> ns."""

    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        from corral.jobspec.duration import DurationError, parse_duration

        try:
            ns = parse_duration(str(value).strip())
        except DurationError as err:
            self.fail(str(err), param, ctx)
        if ns <= 0:
            self.fail("a positive drain duration must be given", param, ctx)
        return ns


def _enable_disable(enable: bool, disable: bool) -> bool:
    """True for -enable, False for -disable; exactly one of them must be given."""
    if enable == disable:
        raise click.UsageError("either -enable or -disable must be given (not both)")
    return enable


def _enable_options(fn: F) -> F:
    fn = click.option("--disable", "-disable", "disable", is_flag=True, help="Turn it off.")(fn)
    return click.option("--enable", "-enable", "enable", is_flag=True, help="Turn it on.")(fn)


@node.command("eligibility")
@_enable_options
@click.argument("node_id", metavar="NODE")
@click.pass_context
def eligibility(ctx: click.Context, enable: bool, disable: bool, node_id: str) -> None:
    """Allow (-enable) or forbid (-disable) new placements on NODE.

    Allocations already on the node keep running; use ``node drain`` to move them.
    """
    eligible = _enable_disable(enable, disable)
    client = get_client(ctx)
    target = client.get_node(node_id)
    client.set_node_eligibility(target.id, eligible)
    state = "eligible" if eligible else "ineligible"
    click.echo(f'Node "{target.id}" scheduling eligibility set: {state} for scheduling')


def _confirm_prefix(verb: str, node_id: str) -> int | None:
    """Nomad's confirmation when NODE was a prefix: an exact ``y`` goes on (None);
    anything else stops with the returned exit code."""
    answer = click.prompt(
        f'Are you sure you want to {verb} drain mode for node "{node_id}"? [y/N]',
        default="",
        show_default=False,
        prompt_suffix=" ",
    ).strip()
    if answer == "y":
        return None
    if not answer or answer.lower().startswith("n"):
        click.echo("Canceling drain toggle")
        return 0
    if answer.lower().startswith("y"):
        click.echo("For confirmation, an exact 'y' is required.")
        return 0
    click.echo("No confirmation detected. For confirmation, an exact 'y' is required.")
    return 1


@node.command("drain")
@_enable_options
@click.argument("node_id", metavar="NODE")
@click.option(
    "--deadline",
    "-deadline",
    "deadline",
    type=GoDuration(),
    default=None,
    help=f"Force the remaining allocations off after this long [default {DEFAULT_DRAIN_DEADLINE}].",
)
@click.option("--force", "-force", is_flag=True, help="Force every allocation off at once.")
@click.option("--no-deadline", "-no-deadline", is_flag=True, help="Never force allocations off.")
@click.option(
    "--ignore-system",
    "-ignore-system",
    "ignore_system",
    is_flag=True,
    help="Leave system jobs' allocations on the node.",
)
@click.option(
    "--keep-ineligible",
    "-keep-ineligible",
    "keep_ineligible",
    is_flag=True,
    help="With -disable: leave the node ineligible for scheduling.",
)
@click.option("--yes", "-yes", "yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--detach", "-detach", "detach", is_flag=True, help="Return without monitoring.")
@click.pass_context
def drain(
    ctx: click.Context,
    enable: bool,
    disable: bool,
    node_id: str,
    deadline: int | None,
    force: bool,
    no_deadline: bool,
    ignore_system: bool,
    keep_ineligible: bool,
    yes: bool,
    detach: bool,
) -> None:
    """Move every allocation off NODE (-enable) or cancel a drain (-disable).

    A drained node is ineligible for new placements; its allocations are migrated
    (honouring each group's migrate block) and those left at the deadline are
    stopped. Without --detach the command follows the drain until no allocation
    runs on the node (Ctrl-C stops following, not the drain).
    """
    on = _enable_disable(enable, disable)
    if not on and (deadline is not None or force or no_deadline or ignore_system):
        raise click.UsageError("-disable cannot be combined with flags that configure a drain")
    if sum((deadline is not None, force, no_deadline)) > 1:
        raise click.UsageError("-deadline, -force and -no-deadline are mutually exclusive")
    if force:
        deadline_ns = -1
    elif no_deadline:
        deadline_ns = 0
    else:
        deadline_ns = GoDuration().convert(DEFAULT_DRAIN_DEADLINE, None, None)
        if deadline is not None:
            deadline_ns = deadline

    client = get_client(ctx)
    target = client.get_node(node_id)
    if target.id != node_id and not yes:
        code = _confirm_prefix("enable" if on else "disable", target.id)
        if code is not None:
            ctx.exit(code)
    client.set_node_drain(
        target.id,
        on,
        deadline=deadline_ns if on else 0,
        ignore_system_jobs=ignore_system,
        mark_eligible=not on and not keep_ineligible,
    )
    if not on or detach:
        state = "set" if on else "unset"
        click.echo(f'Node "{target.id}" drain strategy {state}')
        return
    click.echo(f"{now_rfc3339()}: Ctrl-C to stop monitoring: will not cancel the node drain")
    click.echo(f'{now_rfc3339()}: Node "{target.id}" drain strategy set')
    timeout = None if deadline_ns == 0 else max(deadline_ns, 0) / 1e9 + DRAIN_MONITOR_MARGIN
    try:
        ctx.exit(monitor_drain(client, target.id, ignore_system=ignore_system, timeout=timeout))
    except KeyboardInterrupt:
        ctx.exit(0)


def monitor_drain(
    client: CorralClient,
    node_id: str,
    *,
    ignore_system: bool = False,
    timeout: float | None = None,
    out: Callable[[str], None] = click.echo,
) -> int:
    """Follow a drain until no allocation runs on the node; Nomad's progress lines.

    Why poll the allocations rather than wait for the node's drain flag to clear:
    what the operator waits for is "nothing runs here any more" (to reboot the
    machine), and that holds whether the drain finished or was forced at its
    deadline. The node is read too, to say when the servers consider the drain
    complete (its allocations may still be stopping then, so following goes on),
    or that it was cancelled: no drain, and nothing running is being stopped,
    means nothing more will move, so following stops. Returns 0 when the node is
    empty (or the drain ended), 1 when ``timeout`` seconds pass first.
    """
    started = time.monotonic()
    seen: dict[str, pb.Allocation] = {}
    job_types: dict[str, str] = {}
    first = True
    drain_done = False

    def say(msg: str) -> None:
        out(f"{now_rfc3339()}: {msg}")

    while True:
        n = client.get_node(node_id)
        allocs = client.list_allocs(node_id=node_id)
        running = stopping = 0
        for a in sorted(allocs, key=lambda a: a.id):
            before = seen.get(a.id)
            seen[a.id] = a
            if before is not None and not first:
                migrating = a.desired_transition.migrate
                if before.client_status != a.client_status:
                    say(f'Alloc "{a.id}" status {before.client_status} -> {a.client_status}')
                elif migrating and not before.desired_transition.migrate:
                    say(f'Alloc "{a.id}" marked for migration')
                elif (
                    migrating
                    and before.desired_status != a.desired_status
                    and a.desired_status == structs.ALLOC_DESIRED_STOP
                ):
                    say(f'Alloc "{a.id}" draining')
            if ignore_system and _job_type(client, a, job_types) == structs.JOB_TYPE_SYSTEM:
                continue
            if a.client_status in (structs.ALLOC_CLIENT_PENDING, structs.ALLOC_CLIENT_RUNNING):
                running += 1
                if a.desired_status != structs.ALLOC_DESIRED_RUN:
                    stopping += 1
        first = False
        draining = n.drain or n.HasField("drain_strategy")
        if not draining and not drain_done:
            drain_done = True
            say(f'Drain complete for node "{node_id}"')
        if running == 0:
            say(f'All allocations on node "{node_id}" have stopped')
            return 0
        if drain_done and not stopping:
            noun = "allocation" if running == 1 else "allocations"
            say(f'Node "{node_id}" is no longer draining; {running} {noun} still running')
            return 0
        if timeout is not None and time.monotonic() - started > timeout:
            noun = "allocation" if running == 1 else "allocations"
            click.echo(
                f'Error: {running} {noun} still running on node "{node_id}" '
                f"{timeout:g}s after the drain started; see corral node status {node_id[:8]}",
                err=True,
            )
            return 1
        time.sleep(DRAIN_POLL_INTERVAL)


def _job_type(client: CorralClient, a: pb.Allocation, cache: dict[str, str]) -> str:
    """The type of the allocation's job (embedded, else looked up once per job)."""
    if a.HasField("job") and a.job.type:
        return a.job.type
    if a.job_id not in cache:
        try:
            cache[a.job_id] = client.get_job(a.job_id).type
        except APIError:
            cache[a.job_id] = ""
    return cache[a.job_id]
