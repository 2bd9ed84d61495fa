"""``corral alloc status|logs|stop|restart``: look into one allocation, act on it."""

from __future__ import annotations

import sys

import click

from corral.api.client import APIError, CorralClient
from corral.cli import monitor
from corral.cli.common import echo_json, get_client, json_option, verbose_option
from corral.cli.format import (
    event_description,
    format_kv,
    format_list,
    format_time,
    short_id,
    time_ago,
)
from corral.proto import pb

MAX_EVENTS = 10
DEFAULT_TAIL_LINES = 10
# Bytes requested from the end of the log per wanted line; lines beyond the
# wanted count are dropped locally (Nomad does the same estimate).
BYTES_PER_LINE = 256


@click.group()
def alloc() -> None:
    """Inspect allocations, read their logs, stop or restart them."""


# ---------------------------------------------------------------- status


@alloc.command("status")
@click.argument("alloc_id", metavar="ALLOC")
@json_option
@verbose_option
@click.pass_context
def status(ctx: click.Context, alloc_id: str, as_json: bool, verbose: bool) -> None:
    """Show ALLOC (full ID or unambiguous prefix): status, addresses, task events."""
    a = get_client(ctx).get_alloc(alloc_id)
    if as_json:
        echo_json(a)
        return
    click.echo(render_alloc(a, verbose))


def render_alloc(a: pb.Allocation, verbose: bool = False) -> str:
    """Nomad's ``alloc status`` layout."""

    def sid(value: str) -> str:
        return short_id(value, verbose)

    kv: list[tuple[str, object]] = [
        ("ID", sid(a.id)),
        ("Eval ID", sid(a.eval_id)),
        ("Name", a.name),
        ("Node ID", sid(a.node_id)),
        ("Node Name", a.node_name),
        ("Job ID", a.job_id),
        ("Job Version", a.job_version),
        ("Client Status", a.client_status),
        ("Client Description", a.client_description),
        ("Desired Status", a.desired_status),
        ("Desired Description", a.desired_description),
        ("Created", time_ago(a.create_time)),
        ("Modified", time_ago(a.modify_time)),
    ]
    if a.deployment_id:
        kv.append(("Deployment ID", sid(a.deployment_id)))
        health = "unset"
        if a.HasField("deployment_status") and a.deployment_status.HasField("healthy"):
            health = "healthy" if a.deployment_status.healthy else "unhealthy"
        kv.append(("Deployment Health", health))
    if a.next_allocation:
        kv.append(("Replacement Alloc ID", sid(a.next_allocation)))
    if a.previous_allocation:
        kv.append(("Previous Alloc ID", sid(a.previous_allocation)))
    parts = [format_kv(kv)]

    ports = list(a.allocated_resources.shared.ports)
    if ports:
        rows = []
        for p in ports:
            addr = f"{p.host_ip or '0.0.0.0'}:{p.value}"
            if p.to and p.to != p.value:
                addr += f" -> {p.to}"
            rows.append([p.label, addr])
        parts.append("Allocation Addresses:\n" + format_list(["Label", "Address"], rows))

    for name in task_names(a):
        parts.append(_render_task(a, name))
    return "\n\n".join(parts)


def _render_task(a: pb.Allocation, name: str) -> str:
    state = a.task_states.get(name)
    lines = [f'Task "{name}" is "{state.state if state else "pending"}"']
    res = a.allocated_resources.tasks.get(name)
    if res is not None:
        lines.append("Task Resources:")
        lines.append(
            format_list(
                ["CPU", "Memory"],
                [[f"{res.cpu.cpu_shares} MHz", f"{res.memory.memory_mb} MiB"]],
            )
        )
    if state is None:
        return "\n".join(lines)
    lines.append("")
    lines.append("Task Events:")
    lines.append(
        format_kv(
            [
                ("Started At", format_time(state.started_at)),
                ("Finished At", format_time(state.finished_at)),
                ("Total Restarts", state.restarts),
                ("Last Restart", format_time(state.last_restart)),
            ]
        )
    )
    # Newest first; events with the same timestamp keep their recorded order.
    ordered = sorted(enumerate(state.events), key=lambda p: (p[1].time, p[0]), reverse=True)
    events = [e for _, e in ordered][:MAX_EVENTS]
    lines.append("")
    lines.append("Recent Events:")
    rows = [[format_time(e.time), e.type, event_description(e)] for e in events]
    lines.append(format_list(["Time", "Type", "Description"], rows))
    return "\n".join(lines)


def task_names(a: pb.Allocation) -> list[str]:
    """The allocation's tasks, from what the server and client recorded."""
    names = set(a.allocated_resources.tasks) | set(a.task_states)
    if not names and a.HasField("job"):
        for group in a.job.task_groups:
            if group.name == a.task_group:
                names = {t.name for t in group.tasks}
    return sorted(names)


def _tasks_from_job(client: CorralClient, a: pb.Allocation) -> list[str]:
    """Fallback when the allocation carries no task names: the job version it runs."""
    try:
        versions = client.job_versions(a.job_id)
    except APIError:
        return []
    for version in versions:
        if version.version == a.job_version:
            for group in version.task_groups:
                if group.name == a.task_group:
                    return sorted(t.name for t in group.tasks)
    return []


# ---------------------------------------------------------------- logs


@alloc.command("logs")
@click.argument("alloc_id", metavar="ALLOC")
@click.argument("task", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output until Ctrl-C.")
@click.option("--stderr", "use_stderr", is_flag=True, help="Show stderr instead of stdout.")
@click.option("--tail", is_flag=True, help="Show the end of the log (last 10 lines by default).")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(min=0),
    default=None,
    help="With --tail: how many lines from the end (implies --tail).",
)
@click.option(
    "-c",
    "--bytes",
    "nbytes",
    type=click.IntRange(min=0),
    default=None,
    help="With --tail: how many bytes from the end (implies --tail).",
)
@click.pass_context
def logs(
    ctx: click.Context,
    alloc_id: str,
    task: str | None,
    follow: bool,
    use_stderr: bool,
    tail: bool,
    lines: int | None,
    nbytes: int | None,
) -> None:
    """Print TASK's stdout (or stderr) in ALLOC. TASK may be left out when the group
    has a single task."""
    client = get_client(ctx)
    a = client.get_alloc(alloc_id)
    names = task_names(a) or _tasks_from_job(client, a)
    if task is None:
        if len(names) == 1:
            task = names[0]
        elif not names:
            raise click.ClickException(
                f'cannot tell which tasks allocation "{short_id(a.id)}" runs; name the task'
            )
        else:
            raise click.ClickException(
                f'allocation "{short_id(a.id)}" runs several tasks, name one: ' + ", ".join(names)
            )
    elif names and task not in names:
        raise click.ClickException(
            f'no task "{task}" in allocation "{short_id(a.id)}"; its tasks: ' + ", ".join(names)
        )

    offset, origin, keep_lines = 0, "start", None
    if nbytes is not None:
        offset, origin = nbytes, "end"
    elif tail or lines is not None:
        keep_lines = DEFAULT_TAIL_LINES if lines is None else lines
        offset, origin = max(keep_lines, 1) * BYTES_PER_LINE, "end"

    # Raw bytes: logs are not necessarily UTF-8 and must pass through untouched.
    out = sys.stdout.buffer
    stream = client.alloc_logs(
        a.id, task, stderr=use_stderr, follow=follow, offset=offset, origin=origin
    )
    try:
        if keep_lines is None:
            for chunk in stream:
                out.write(chunk)
                out.flush()
        elif follow:
            first = True
            for chunk in stream:
                out.write(_last_lines(chunk, keep_lines) if first else chunk)
                out.flush()
                first = False
        else:
            out.write(_last_lines(b"".join(stream), keep_lines))
            out.flush()
    except KeyboardInterrupt:
        # Ctrl-C is how one stops following: not an error.
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        ctx.exit(0)


def _last_lines(data: bytes, n: int) -> bytes:
    if n <= 0:
        return b""
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-n:])


# ---------------------------------------------------------------- stop


@alloc.command("stop")
@click.argument("alloc_id", metavar="ALLOC")
@click.option("--detach", is_flag=True, help="Return after submitting; do not monitor.")
@verbose_option
@click.pass_context
def stop(ctx: click.Context, alloc_id: str, detach: bool, verbose: bool) -> None:
    """Stop ALLOC; the scheduler replaces it (on another node if it can)."""
    client = get_client(ctx)
    resp = client.stop_alloc(alloc_id)
    if detach or not resp.eval_id:
        if resp.eval_id:
            click.echo(resp.eval_id)
        return
    ctx.exit(monitor.monitor_eval(client, resp.eval_id, verbose=verbose))


# ---------------------------------------------------------------- restart


@alloc.command("restart")
@click.argument("alloc_id", metavar="ALLOC")
@click.argument("task_arg", metavar="[TASK]", required=False)
@click.option("--task", "-task", "task_opt", default=None, help="The task to restart (as TASK).")
@click.pass_context
def restart(ctx: click.Context, alloc_id: str, task_arg: str | None, task_opt: str | None) -> None:
    """Restart ALLOC's tasks in place (or only TASK), on the same node.

    Unlike ``alloc stop``, nothing is rescheduled: the client restarts the task
    processes, which counts as a restart in the task's events. Silent on success,
    as Nomad's ``alloc restart``.
    """
    if task_arg and task_opt and task_arg != task_opt:
        raise click.UsageError("give the task once (argument or --task)")
    task = task_opt or task_arg or ""
    client = get_client(ctx)
    a = client.get_alloc(alloc_id)
    if task:
        names = task_names(a) or _tasks_from_job(client, a)
        if names and task not in names:
            raise click.ClickException(
                f'no task "{task}" in allocation "{short_id(a.id)}"; its tasks: ' + ", ".join(names)
            )
    try:
        client.restart_alloc(a.id, task)
    except APIError as err:
        # Nomad's wording, which scripts match on.
        click.echo(f"Failed to restart allocation:\n\n{err}", err=True)
        ctx.exit(1)
