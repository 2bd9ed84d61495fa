"""``corral job plan|validate|inspect|history|revert|scale``: the operator's job verbs.

They live apart from ``job.py`` (run/status/stop) only to keep files short; they
register on the same ``job`` group and follow Nomad's flags, output and exit codes,
because the people who use them bring Nomad habits and CI scripts:

* ``plan`` is a dry run whose exit code a pipeline tests: 0 = nothing would
  change, 1 = something would (allocations or the spec), 255 = error;
* ``inspect`` prints ``{"Job": {...}}``, which ``job run`` accepts back as a file;
* ``history -p`` shows what changed between versions (``corral.api.jobdiff``), so
  that an operator can pick the version to ``revert`` to;
* ``scale`` and ``revert`` follow their evaluation like ``job run``.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import click
import grpc

from corral import structs
from corral.api.client import APIError
from corral.api.jobdiff import diff_jobs
from corral.cli import monitor
from corral.cli.common import echo_json, get_client, json_option, resolve_job, verbose_option
from corral.cli.format import (
    failed_group_header,
    format_alloc_metrics,
    format_kv,
    format_time,
    print_json,
)
from corral.cli.job import _parse_job_file, job
from corral.proto import pb

PLAN_NO_CHANGES = 0
PLAN_CHANGES = 1
PLAN_ERROR = 255

#: The message a scaling carries, as Nomad's CLI sets "submitted using the Nomad CLI".
SCALE_MESSAGE = "submitted using the corral CLI"

CHECK_INDEX_HELP = """\
To submit the job with version verification run:

corral job run --check-index {index} {path}

When running the job with the check-index flag, the job will only be run if the
job modify index given matches the server-side version. If the index has
changed, another user has modified the job and the plan's results are
potentially invalid."""


def _warnings(text: str) -> None:
    if text:
        click.echo("Job Warnings:", err=True)
        click.echo(text, err=True)
        click.echo("", err=True)


# ---------------------------------------------------------------- plan


class NomadExitCodeCommand(click.Command):
    """A command whose usage errors exit with ``usage_exit_code`` instead of 1.

    ``job plan`` answers 1 for "changes", so a mistyped flag must not look like a
    plan with changes to a script: Nomad exits 255 there, and so does this.
    """

    usage_exit_code = PLAN_ERROR

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as err:
            err.corral_exit_code = self.usage_exit_code  # type: ignore[attr-defined]  # read by CorralGroup
            err.exit_code = self.usage_exit_code  # type: ignore[misc]  # click's default is 2
            raise


@job.command("plan", cls=NomadExitCodeCommand)
@click.argument("file", type=click.Path(allow_dash=True, dir_okay=False, exists=True))
@click.option(
    "--diff/--no-diff",
    "show_diff",
    default=True,
    show_default=True,
    help="Show the diff between the registered job and FILE.",
)
@json_option
@click.pass_context
def plan(ctx: click.Context, file: str, show_diff: bool, as_json: bool) -> None:
    """Dry-run FILE: the diff against the registered job and what the scheduler
    would do. Nothing is changed.

    Exit 0 when nothing would change, 1 when allocations would be created, stopped
    or updated (or the spec changed), 255 on errors.
    """
    spec = _parse_job_file(file, exit_code=PLAN_ERROR)
    try:
        resp = get_client(ctx).plan_job(spec, diff=True)
    except APIError as err:
        from corral.cli.main import error_lines

        for line in error_lines(err.message):
            click.echo(line, err=True)
        ctx.exit(PLAN_ERROR)
    code = plan_exit_code(resp)
    if as_json:
        echo_json(resp)
    else:
        click.echo(render_plan(spec, resp, file, show_diff=show_diff))
    ctx.exit(code)


def plan_exit_code(resp: pb.JobPlanResponse) -> int:
    """1 when the plan changes anything: the spec, or an allocation placed, stopped,
    updated or made a canary (a group that only keeps its allocations is no change)."""
    if resp.changed:
        return PLAN_CHANGES
    for a in resp.annotations.values():
        if a.place or a.stop or a.in_place_update or a.destructive_update or a.canary:
            return PLAN_CHANGES
    return PLAN_NO_CHANGES


def annotation_text(a: pb.PlanAnnotation) -> str:
    """``1 create, 2 in-place update``: Nomad's update types, sorted by name."""
    counts = {
        "canary": a.canary,
        "create": a.place,
        "create/destroy update": a.destructive_update,
        "destroy": a.stop,
        "ignore": a.ignore,
        "in-place update": a.in_place_update,
    }
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()) if n)


_GROUP_LINE = re.compile(r'^(?:\+/- |\+ |- )?\s*Task Group: "(?P<name>(?:[^"\\]|\\.)*)"$')


def plan_diff_lines(spec: pb.Job, resp: pb.JobPlanResponse) -> list[str]:
    """The server's diff with each group's annotation appended to its line.

    The server sends no diff for a job that does not exist yet (JobModifyIndex 0);
    the whole job is then shown as added, computed here from the file.
    """
    text = resp.diff.strip("\n")
    if text:
        lines = text.splitlines()
    elif resp.job_modify_index == 0:
        lines = diff_jobs(None, spec)
    else:
        lines = [f'Job: "{spec.id}"']
    # a group the diff does not list gets its own line, marked like the job
    # (a new job's groups are new too)
    marker = next((m for m in ("+ ", "- ") if lines[0].startswith(m + "Job: ")), "")
    for group in sorted(resp.annotations):
        note = annotation_text(resp.annotations[group])
        if not note:
            continue
        for i, line in enumerate(lines):
            match = _GROUP_LINE.match(line)
            if match and json.loads(f'"{match.group("name")}"') == group:
                lines[i] = f"{line} ({note})"
                break
        else:
            lines.append(f"{marker}Task Group: {json.dumps(group)} ({note})")
    return lines


def dry_run_lines(spec: pb.Job, resp: pb.JobPlanResponse) -> list[str]:
    """Nomad's ``Scheduler dry-run:`` body, with why placement would fail."""
    if not resp.failed_tg_allocs:
        return ["- All tasks successfully allocated."]
    if spec.type == structs.JOB_TYPE_SYSTEM:
        lines = ["- WARNING: Failed to place allocations on all nodes."]
    else:
        lines = ["- WARNING: Failed to place all allocations."]
    for i, group in enumerate(sorted(resp.failed_tg_allocs)):
        metric = resp.failed_tg_allocs[group]
        if i:
            lines.append("")
        lines.append("  " + failed_group_header(group, metric))
        lines.extend(format_alloc_metrics(metric, "    "))
    return lines


def render_plan(spec: pb.Job, resp: pb.JobPlanResponse, path: str, *, show_diff: bool) -> str:
    """Nomad's ``job plan`` output."""
    lines: list[str] = []
    if show_diff:
        lines += plan_diff_lines(spec, resp)
        lines.append("")
    lines.append("Scheduler dry-run:")
    lines += dry_run_lines(spec, resp)
    lines.append("")
    lines.append(f"Job Modify Index: {resp.job_modify_index}")
    lines.append(CHECK_INDEX_HELP.format(index=resp.job_modify_index, path=shlex.quote(path)))
    return "\n".join(lines)


# ---------------------------------------------------------------- validate


@job.command("validate")
@click.argument("file", type=click.Path(allow_dash=True, dir_okay=False, exists=True))
@json_option
@click.pass_context
def validate(ctx: click.Context, file: str, as_json: bool) -> None:
    """Check FILE: parse it here, then ask the server for its checks.

    Exit 0 when the job is valid, 1 otherwise. With no server to ask, the local
    checks decide and the output says so.
    """
    spec = _parse_job_file(file)
    try:
        resp = get_client(ctx).validate_job(spec)
    except APIError as err:
        if not (err.unreachable or err.code == grpc.StatusCode.UNIMPLEMENTED):
            raise
        if as_json:
            echo_json(pb.JobValidateResponse())
            return
        click.echo(f"Server-side checks not run: {err.message}")
        click.echo("")
        click.echo("Job validation successful")
        return
    failed = bool(resp.validation_errors or resp.error)
    if as_json:
        echo_json(resp)
        ctx.exit(1 if failed else 0)
    if failed:
        click.echo("Job validation errors:", err=True)
        errors = list(resp.validation_errors)
        if errors:
            noun = "error" if len(errors) == 1 else "errors"
            click.echo(f"{len(errors)} {noun} occurred:", err=True)
            for e in errors:
                click.echo(f"\t* {e}", err=True)
        else:
            click.echo(resp.error, err=True)
        ctx.exit(1)
    if resp.warnings:
        click.echo("Job Warnings:")
        click.echo(resp.warnings)
        click.echo("")
    click.echo("Job validation successful")


# ---------------------------------------------------------------- inspect


def _version_option(fn: Any) -> Any:
    return click.option(
        "--version",
        "-version",
        "version",
        type=click.IntRange(min=0),
        default=None,
        help="A past version of the job instead of the current one.",
    )(fn)


def _find_version(versions: list[pb.Job], job_id: str, version: int) -> pb.Job:
    for v in versions:
        if v.version == version:
            return v
    known = ", ".join(str(v.version) for v in sorted(versions, key=lambda v: -v.version))
    raise click.ClickException(f'job "{job_id}" has no version {version} (known: {known})')


@job.command("inspect")
@click.argument("job_id", metavar="JOB")
@_version_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the default; as Nomad).")
@click.pass_context
def inspect(ctx: click.Context, job_id: str, version: int | None, as_json: bool) -> None:
    """Print JOB (or one of its versions) as Nomad's API JSON.

    The shape is ``{"Job": {...}}``, which ``corral job run`` accepts back as a job
    file: inspect, edit, run.
    """
    client = get_client(ctx)
    target = resolve_job(client, job_id)
    if version is not None and version != target.version:
        target = _find_version(client.job_versions(target.id), target.id, version)
    echo_json({"Job": target})


# ---------------------------------------------------------------- history


@job.command("history")
@click.argument("job_id", metavar="JOB")
@click.option(
    "-p", "show_diff", is_flag=True, help="Show the difference of each version from the previous."
)
@click.option("--full", "-full", "full", is_flag=True, help="Show each version's full JSON.")
@_version_option
@json_option
@click.pass_context
def history(
    ctx: click.Context,
    job_id: str,
    show_diff: bool,
    full: bool,
    version: int | None,
    as_json: bool,
) -> None:
    """List the versions of JOB that the servers keep, newest first."""
    if as_json and (show_diff or full):
        raise click.UsageError("--json cannot be combined with -p or --full")
    client = get_client(ctx)
    target = resolve_job(client, job_id)
    versions = sorted(client.job_versions(target.id), key=lambda v: v.version, reverse=True)
    previous = {v.version: versions[i + 1] for i, v in enumerate(versions[:-1])}
    if version is not None:
        shown = [_find_version(versions, target.id, version)]
        if as_json:
            echo_json(shown[0])
            return
    else:
        shown = versions
        if as_json:
            echo_json(shown)
            return
    blocks = [
        render_version(v, previous.get(v.version) if show_diff else None, full=full) for v in shown
    ]
    click.echo("\n\n".join(blocks))


def render_version(v: pb.Job, prev: pb.Job | None, *, full: bool = False) -> str:
    """One version in Nomad's ``job history`` layout (with its diff and JSON if asked)."""
    text = format_kv(
        [
            ("Version", v.version),
            ("Stable", str(v.stable).lower()),
            ("Submit Date", format_time(v.submit_time)),
        ]
    )
    width = len("Submit Date")
    if prev is not None:
        text += f"\n{'Diff'.ljust(width)} =\n" + "\n".join(diff_jobs(prev, v))
    if full:
        text += f"\n{'Full'.ljust(width)} = JSON Job:\n" + print_json(v)
    return text


# ---------------------------------------------------------------- revert


@job.command("revert")
@click.argument("job_id", metavar="JOB")
@click.argument("version", type=click.IntRange(min=0))
@click.option("--detach", "-detach", is_flag=True, help="Return after submitting; do not monitor.")
@verbose_option
@click.pass_context
def revert(ctx: click.Context, job_id: str, version: int, detach: bool, verbose: bool) -> None:
    """Register VERSION of JOB again (as a new version) and follow its evaluation.

    Exit codes as ``job run``: 0 placed, 2 placement failed, 1 error.
    """
    client = get_client(ctx)
    target = resolve_job(client, job_id)
    resp = client.revert_job(target.id, version)
    _warnings(resp.warnings)
    if not resp.eval_id:
        return
    if detach:
        click.echo(f"Evaluation ID: {resp.eval_id}")
        return
    ctx.exit(monitor.monitor_register(client, target.id, resp, verbose=verbose))


# ---------------------------------------------------------------- restart

RESTART_META = "corral.restart"


@job.command("restart")
@click.argument("job_id", metavar="JOB")
@click.option("--group", "groups", multiple=True, help="Only these groups (repeatable).")
@click.option("--detach", "-detach", is_flag=True, help="Return after submitting; do not monitor.")
@verbose_option
@click.pass_context
def restart(
    ctx: click.Context, job_id: str, groups: tuple[str, ...], detach: bool, verbose: bool
) -> None:
    """Restart every allocation of JOB as a rolling update, with no spec change.

    corral registers the job again with a fresh ``corral.restart`` group meta value:
    a destructive change, so the allocations are replaced through the group's
    ``update`` block (``max_parallel`` at a time, each new one healthy before the
    next, old ones deregistered before they stop): a restart without downtime.
    Groups without an ``update`` block are replaced all at once, as Nomad would.
    Exit codes as ``job run``.
    """
    import time as _time

    client = get_client(ctx)
    target = resolve_job(client, job_id)
    names = [g.name for g in target.task_groups]
    unknown = [g for g in groups if g not in names]
    if unknown:
        raise click.ClickException(
            f'job "{target.id}" has no task group {", ".join(repr(u) for u in unknown)}; '
            "its groups: " + ", ".join(names)
        )
    if target.stop:
        raise click.ClickException(f'job "{target.id}" is stopped; run it first')
    job = pb.Job()
    job.CopyFrom(target)
    stamp = str(_time.time_ns())
    for group in job.task_groups:
        if not groups or group.name in groups:
            group.meta[RESTART_META] = stamp
    resp = client.register_job(job, enforce_index=True, job_modify_index=target.job_modify_index)
    _warnings(resp.warnings)
    if detach:
        click.echo(f"Evaluation ID: {resp.eval_id}")
        return
    ctx.exit(monitor.monitor_register(client, target.id, resp, verbose=verbose))


# ---------------------------------------------------------------- scale


def _parse_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise click.BadParameter(f"{text!r} is not a non-negative integer", param_hint="COUNT")
    return count


@job.command("scale")
@click.argument("job_id", metavar="JOB")
@click.argument("args", nargs=-1, metavar="[GROUP] COUNT")
@click.option("--detach", "-detach", is_flag=True, help="Return after submitting; do not monitor.")
@verbose_option
@click.pass_context
def scale(
    ctx: click.Context, job_id: str, args: tuple[str, ...], detach: bool, verbose: bool
) -> None:
    """Set the count of GROUP in JOB to COUNT (GROUP may be left out when the job
    has one group) and follow the evaluation.

    Exit codes as ``job run``: 0 placed, 2 placement failed, 1 error.
    """
    if not args:
        raise click.UsageError("missing COUNT: corral job scale JOB [GROUP] COUNT")
    if len(args) > 2:
        raise click.UsageError("too many arguments: corral job scale JOB [GROUP] COUNT")
    count = _parse_count(args[-1])
    client = get_client(ctx)
    target = resolve_job(client, job_id)
    groups = [g.name for g in target.task_groups]
    if len(args) == 2:
        group = args[0]
        if group not in groups:
            raise click.ClickException(
                f'job "{target.id}" has no task group "{group}"; its groups: ' + ", ".join(groups)
            )
    elif len(groups) == 1:
        group = groups[0]
    else:
        raise click.ClickException(
            f'job "{target.id}" has {len(groups)} task groups, name one '
            f"(corral job scale {target.id} GROUP {count}): " + ", ".join(groups)
        )
    resp = client.scale_job(target.id, group, count, message=SCALE_MESSAGE)
    _warnings(resp.warnings)
    if detach or not resp.eval_id:
        click.echo("Job scale successful")
        if resp.eval_id:
            click.echo(f"Evaluation ID: {resp.eval_id}")
        return
    ctx.exit(monitor.monitor_register(client, target.id, resp, verbose=verbose))
