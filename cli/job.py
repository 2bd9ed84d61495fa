"""``corral job run|status|stop``: submit, inspect and stop jobs."""

from __future__ import annotations

import sys
from collections import Counter

import click

from corral import structs
from corral.api.client import APIError, CorralClient
from corral.cli import monitor
from corral.cli.common import echo_json, get_client, json_option, resolve_job, verbose_option
from corral.cli.format import (
    ALLOC_HEADER,
    alloc_rows,
    format_kv,
    format_list,
    format_time,
    placement_failures,
)
from corral.proto import pb

STDIN_NAME = "<stdin>"


@click.group()
def job() -> None:
    """Submit, inspect and stop jobs."""


# ---------------------------------------------------------------- parsing


def _parse_job_file(path: str, exit_code: int = 1) -> pb.Job:
    """Parse a job file (``-`` = stdin) with corral.jobspec; exit with its errors.

    The parser's errors are already ``FILE:LINE:COL: message`` lines, which editors
    and terminals can jump to, so they are printed as they are, without ``Error:``.
    """
    from corral import jobspec  # lazily: only job run pays for the HCL parser

    try:
        if path == "-":
            return jobspec.parse(sys.stdin.read(), STDIN_NAME)
        return jobspec.parse_file(path)
    except jobspec.JobspecError as err:
        for line in str(err).splitlines():
            click.echo(line, err=True)
        raise click.exceptions.Exit(exit_code) from None


# ---------------------------------------------------------------- run


@job.command("run")
@click.argument("file", type=click.Path(allow_dash=True, dir_okay=False, exists=True))
@click.option(
    "--detach", "-detach", "detach", is_flag=True, help="Return after submitting; do not monitor."
)
@click.option(
    "--check-index",
    "-check-index",
    "check_index",
    type=click.IntRange(min=0),
    default=None,
    help="Register only if the job's modify index is N (0: only if it does not exist).",
)
@verbose_option
@click.pass_context
def run(
    ctx: click.Context, file: str, detach: bool, check_index: int | None, verbose: bool
) -> None:
    """Submit FILE (HCL or JSON; - for stdin) and follow its evaluation, then the
    deployment (rolling update) it started, until that ends.

    Exit 0 when every allocation was placed and the deployment, if any, succeeded;
    1 when the deployment failed or was rolled back, and on errors; 2 when placement
    failed. --detach returns right after submitting.
    """
    spec = _parse_job_file(file)
    client = get_client(ctx)
    resp = client.register_job(
        spec, enforce_index=check_index is not None, job_modify_index=check_index or 0
    )
    if resp.warnings:
        click.echo("Job Warnings:", err=True)
        click.echo(resp.warnings, err=True)
        click.echo("", err=True)
    if detach or not resp.eval_id:
        click.echo("Job registration successful")
        if resp.eval_id:
            click.echo(f"Evaluation ID: {resp.eval_id}")
        return
    ctx.exit(monitor.monitor_register(client, spec.id, resp, verbose=verbose))


# ---------------------------------------------------------------- stop


@job.command("stop")
@click.argument("job_id", metavar="JOB")
@click.option(
    "--purge",
    "-purge",
    "purge",
    is_flag=True,
    help="Remove the job from the state, not just stop it.",
)
@click.option(
    "--detach", "-detach", "detach", is_flag=True, help="Return after submitting; do not monitor."
)
@verbose_option
@click.pass_context
def stop(ctx: click.Context, job_id: str, purge: bool, detach: bool, verbose: bool) -> None:
    """Stop JOB's allocations (and with --purge forget the job)."""
    client = get_client(ctx)
    target = resolve_job(client, job_id)
    resp = client.deregister_job(target.id, purge=purge)
    if detach or not resp.eval_id:
        if resp.eval_id:
            click.echo(resp.eval_id)
        return
    ctx.exit(monitor.monitor_eval(client, resp.eval_id, verbose=verbose))


# ---------------------------------------------------------------- status


@job.command("status")
@click.argument("job_id", metavar="[JOB]", required=False)
@json_option
@verbose_option
@click.pass_context
def status(ctx: click.Context, job_id: str | None, as_json: bool, verbose: bool) -> None:
    """List jobs, or show one job: its summary, placement failures and allocations."""
    client = get_client(ctx)
    if not job_id:
        _list_jobs(client, as_json)
        return
    target = resolve_job(client, job_id)
    allocs = client.job_allocations(target.id)
    if as_json:
        echo_json({"Job": target, "Allocations": allocs})
        return
    try:
        evals = client.job_evaluations(target.id)
    except APIError as err:
        if not err.not_found:
            raise
        evals = []
    click.echo(render_job(target, allocs, evals, verbose))


def _list_jobs(client: CorralClient, as_json: bool) -> None:
    stubs = sorted(client.list_jobs(), key=lambda s: s.id)
    if as_json:
        echo_json(stubs)
        return
    if not stubs:
        click.echo("No running jobs")
        return
    rows = [
        [s.id, s.type, s.priority, _job_status(s.status, s.stop), format_time(s.submit_time)]
        for s in stubs
    ]
    click.echo(format_list(["ID", "Type", "Priority", "Status", "Submit Date"], rows))


def _job_status(status: str, stop: bool) -> str:
    return f"{status} (stopped)" if stop and status != structs.JOB_STATUS_DEAD else status


def render_job(
    job_msg: pb.Job,
    allocs: list[pb.Allocation],
    evals: list[pb.Evaluation],
    verbose: bool = False,
) -> str:
    """Nomad's ``job status JOB`` layout."""
    status_text = job_msg.status + (" (stopped)" if job_msg.stop else "")
    parts = [
        format_kv(
            [
                ("ID", job_msg.id),
                ("Name", job_msg.name),
                ("Submit Date", format_time(job_msg.submit_time)),
                ("Type", job_msg.type),
                ("Priority", job_msg.priority),
                ("Datacenters", ",".join(job_msg.datacenters)),
                ("Namespace", job_msg.namespace),
                ("Status", status_text),
            ]
        )
    ]
    parts.append("Summary\n" + _summary(job_msg, allocs, evals))
    failure = _latest_failure(evals)
    if failure is not None and not job_msg.stop:
        parts.append("Placement Failure\n" + "\n".join(placement_failures(failure)))
    if allocs:
        rows = alloc_rows(allocs, verbose)
        parts.append("Allocations\n" + format_list(ALLOC_HEADER, rows))
    else:
        parts.append("Allocations\nNo allocations placed")
    return "\n\n".join(parts)


def _summary(job_msg: pb.Job, allocs: list[pb.Allocation], evals: list[pb.Evaluation]) -> str:
    """Per-group counts from the allocations' ClientStatus; Queued from the latest eval."""
    queued: dict[str, int] = {}
    done = [e for e in evals if e.status == structs.EVAL_STATUS_COMPLETE]
    if done:
        latest = max(done, key=lambda e: (e.create_index, e.create_time))
        queued = dict(latest.queued_allocations)
    groups = [g.name for g in job_msg.task_groups]
    for a in allocs:
        if a.task_group not in groups:
            groups.append(a.task_group)
    counts: dict[str, Counter[str]] = {g: Counter() for g in groups}
    for a in allocs:
        counts[a.task_group][a.client_status] += 1
    rows = []
    for g in groups:
        c = counts[g]
        rows.append(
            [
                g,
                0 if job_msg.stop else queued.get(g, 0),
                c[structs.ALLOC_CLIENT_PENDING],
                c[structs.ALLOC_CLIENT_RUNNING],
                c[structs.ALLOC_CLIENT_FAILED],
                c[structs.ALLOC_CLIENT_COMPLETE],
                c[structs.ALLOC_CLIENT_LOST],
            ]
        )
    header = ["Task Group", "Queued", "Starting", "Running", "Failed", "Complete", "Lost"]
    return format_list(header, rows)


def _latest_failure(evals: list[pb.Evaluation]) -> pb.Evaluation | None:
    """The newest eval with placement failures, if its capacity problem is still open.

    As Nomad: shown while a blocked eval waits for capacity; also shown when the
    failing eval is the newest one (a server that does not keep blocked evals).
    """
    failing = [e for e in evals if e.failed_tg_allocs]
    if not failing:
        return None
    latest = max(failing, key=lambda e: (e.create_index, e.create_time))
    newest = max(evals, key=lambda e: (e.create_index, e.create_time))
    blocked = any(e.status == structs.EVAL_STATUS_BLOCKED for e in evals)
    if blocked or newest.id == latest.id or newest.previous_eval == latest.id:
        return latest
    return None
