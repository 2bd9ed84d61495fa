"""``corral eval status|list``: what the scheduler decided, and why it could not place."""

from __future__ import annotations

import click

from corral.cli.common import echo_json, get_client, json_option, verbose_option
from corral.cli.format import format_kv, format_list, placement_failures, short_id, time_ago
from corral.proto import pb


@click.group("eval")
def eval_group() -> None:
    """Inspect evaluations (the scheduler's units of work)."""


@eval_group.command("status")
@click.argument("eval_id", metavar="EVAL")
@json_option
@verbose_option
@click.pass_context
def status(ctx: click.Context, eval_id: str, as_json: bool, verbose: bool) -> None:
    """Show EVAL (full ID or unambiguous prefix) and its placement failures."""
    ev = get_client(ctx).get_eval(eval_id)
    if as_json:
        echo_json(ev)
        return
    click.echo(render_eval(ev, verbose))


def render_eval(ev: pb.Evaluation, verbose: bool = False) -> str:
    """Nomad's ``eval status`` layout."""
    kv: list[tuple[str, object]] = [
        ("ID", short_id(ev.id, verbose)),
        ("Create Time", time_ago(ev.create_time)),
        ("Modify Time", time_ago(ev.modify_time)),
        ("Status", ev.status),
        ("Status Description", ev.status_description),
        ("Type", ev.type),
        ("TriggeredBy", ev.triggered_by),
        ("Job ID", ev.job_id),
        ("Namespace", ev.namespace),
        ("Priority", ev.priority),
        ("Placement Failures", str(bool(ev.failed_tg_allocs)).lower()),
    ]
    if ev.node_id:
        kv.insert(7, ("Node ID", short_id(ev.node_id, verbose)))
    if ev.deployment_id:
        kv.append(("Deployment ID", short_id(ev.deployment_id, verbose)))
    for label, value in (
        ("Previous Eval", ev.previous_eval),
        ("Next Eval", ev.next_eval),
        ("Blocked Eval", ev.blocked_eval),
    ):
        if value:
            kv.append((label, short_id(value, verbose)))
    parts = [format_kv(kv)]
    if ev.failed_tg_allocs:
        parts.append("Failed Placements\n" + "\n".join(placement_failures(ev)))
        if ev.blocked_eval:
            parts.append(
                f'Evaluation "{short_id(ev.blocked_eval, verbose)}" waiting for additional '
                "capacity to place remainder"
            )
    return "\n\n".join(parts)


@eval_group.command("list")
@click.option("--job", "job_id", default="", help="Only the evaluations of this job.")
@json_option
@verbose_option
@click.pass_context
def list_evals(ctx: click.Context, job_id: str, as_json: bool, verbose: bool) -> None:
    """List evaluations, newest first."""
    evals = sorted(
        get_client(ctx).list_evals(job_id=job_id),
        key=lambda e: (e.create_index, e.create_time),
        reverse=True,
    )
    if as_json:
        echo_json(evals)
        return
    if not evals:
        click.echo("No evals found")
        return
    rows = [
        [
            short_id(e.id, verbose),
            e.priority,
            e.triggered_by,
            e.job_id,
            e.status,
            str(bool(e.failed_tg_allocs)).lower(),
        ]
        for e in evals
    ]
    header = ["ID", "Priority", "Triggered By", "Job ID", "Status", "Placement Failures"]
    click.echo(format_list(header, rows))
