"""``corral deployment list|status|promote|fail``: inspect and steer rolling updates.

A deployment is the server's record of one job version rolling out (per group:
desired, placed, healthy, unhealthy, canaries). The deployment watcher on the leader
drives it; these verbs let an operator look at it (Nomad's layout and ``--json``),
promote canaries and fail a rollout (which, with ``auto_revert``, brings back the
last stable version). Like ``job run``, ``promote`` and ``fail`` follow what they
started unless ``--detach``: the evaluation, then the deployment.

Exit codes: 0 ok (a followed deployment succeeded or waits for promotion), 1 errors
and failed/cancelled deployments, 2 when the evaluation could not place everything.
"""

from __future__ import annotations

import click

from corral.cli import monitor
from corral.cli.common import echo_json, get_client, json_option, verbose_option
from corral.cli.format import format_list, short_id


@click.group("deployment")
def deployment() -> None:
    """Inspect, promote and fail deployments (rolling updates)."""


@deployment.command("list")
@click.option("--job", "-job", "job_id", default="", metavar="JOB", help="Only JOB's deployments.")
@json_option
@verbose_option
@click.pass_context
def list_deployments(ctx: click.Context, job_id: str, as_json: bool, verbose: bool) -> None:
    """List deployments, newest first."""
    deps = get_client(ctx).list_deployments(job_id)
    if as_json:
        echo_json(deps)
        return
    if not deps:
        click.echo("No deployments found")
        return
    rows = [
        [short_id(d.id, verbose), d.job_id, d.job_version, d.status, d.status_description]
        for d in deps
    ]
    click.echo(format_list(["ID", "Job ID", "Job Version", "Status", "Description"], rows))


@deployment.command("status")
@click.argument("deployment_id", metavar="ID")
@click.option(
    "--monitor", "-monitor", "follow", is_flag=True, help="Follow the deployment until it ends."
)
@json_option
@verbose_option
@click.pass_context
def status(
    ctx: click.Context, deployment_id: str, follow: bool, as_json: bool, verbose: bool
) -> None:
    """Show a deployment (ID or unambiguous prefix) per task group.

    With --monitor, follow it live and exit 0 when it succeeds (or waits for
    promotion), 1 when it fails or is cancelled.
    """
    if follow and as_json:
        raise click.UsageError("--json and --monitor cannot be combined")
    client = get_client(ctx)
    d, index = client.watch_deployment(deployment_id)
    if as_json:
        echo_json(d)
        return
    if follow:
        ctx.exit(monitor.follow_deployment(client, d.id, verbose=verbose, first=(d, index)))
    click.echo(monitor.render_deployment(d, verbose))


@deployment.command("promote")
@click.argument("deployment_id", metavar="ID")
@click.option(
    "--group",
    "-group",
    "groups",
    multiple=True,
    metavar="GROUP",
    help="Promote only this task group's canaries (repeatable; default: all groups).",
)
@click.option("--detach", "-detach", is_flag=True, help="Return after submitting; do not monitor.")
@verbose_option
@click.pass_context
def promote(
    ctx: click.Context, deployment_id: str, groups: tuple[str, ...], detach: bool, verbose: bool
) -> None:
    """Promote the canaries of a running deployment, so the rollout continues."""
    client = get_client(ctx)
    d = client.get_deployment(deployment_id)
    unknown = [g for g in groups if g not in d.task_groups]
    if unknown:
        raise click.UsageError(
            f'deployment "{short_id(d.id, verbose)}" has no task group '
            + ", ".join(f'"{g}"' for g in unknown)
            + "; its groups: "
            + ", ".join(sorted(d.task_groups))
        )
    resp = client.promote_deployment(d.id, groups)
    if detach:
        click.echo(f'Deployment "{short_id(d.id, verbose)}" promoted')
        if resp.eval_id:
            click.echo(f"Evaluation ID: {resp.eval_id}")
        return
    if resp.eval_id:
        code = monitor.monitor_eval(client, resp.eval_id, verbose=verbose)
        if code != monitor.EXIT_OK:
            ctx.exit(code)
    ctx.exit(monitor.follow_deployment(client, d.id, verbose=verbose))


@deployment.command("fail")
@click.argument("deployment_id", metavar="ID")
@click.option("--detach", "-detach", is_flag=True, help="Return after submitting; do not monitor.")
@verbose_option
@click.pass_context
def fail(ctx: click.Context, deployment_id: str, detach: bool, verbose: bool) -> None:
    """Mark a running deployment failed; with auto_revert the last stable job
    version is registered again, and (unless --detach) its rollout is followed."""
    client = get_client(ctx)
    d = client.get_deployment(deployment_id)
    resp = client.fail_deployment(d.id)
    sid = short_id(d.id, verbose)
    if resp.reverted_job_version:
        click.echo(
            f'Deployment "{sid}" failed. Auto-reverted to job version {resp.reverted_job_version}.'
        )
    else:
        click.echo(f'Deployment "{sid}" failed')
    if not resp.eval_id:
        return
    if detach:
        click.echo(f"Evaluation ID: {resp.eval_id}")
        return
    click.echo("")
    code = monitor.monitor_eval(client, resp.eval_id, verbose=verbose)
    if code != monitor.EXIT_OK or not resp.reverted_job_version:
        ctx.exit(code)
    followed = monitor.monitor_job_deployment(
        client, d.job_id, since_index=resp.index, verbose=verbose
    )
    ctx.exit(code if followed is None else followed)
