"""The ``corral`` command: a click group with Nomad's verbs.

Exit codes, as Nomad's CLI uses them:

* 0 - success;
* 1 - any error: bad usage, a job file that does not parse, a server that refuses
  the request or cannot be reached (one line ``Error: ...`` on stderr, no traceback);
* 2 - ``job run``/``job stop``/``job scale``/``job revert``/``alloc stop`` reached
  the server, but the scheduler could not place every allocation (a script can tell
  "try again later" from "you made a mistake").

``job plan`` keeps Nomad's own codes instead, because CI scripts test them: 0 = no
changes, 1 = changes, 255 = error (usage errors included). A command chooses such a
code for usage errors by setting ``corral_exit_code`` on the error (see
:func:`usage_exit_code`).

Click's default exit code for usage errors is 2; it is moved to 1 here so that 2
keeps its single meaning.
"""

from __future__ import annotations

from typing import Any

import click

from corral.api.client import APIError
from corral.cli.common import CLIState, address_option

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PLACEMENT_FAILURE = 2


def error_lines(message: str) -> list[str]:
    """``Error: first line`` and further lines indented (e.g. validation problems)."""
    lines = [line for line in message.splitlines() if line.strip()] or ["unknown error"]
    return [f"Error: {lines[0]}", *(f"    {line.strip()}" for line in lines[1:])]


def usage_exit_code(err: click.UsageError) -> int:
    """The exit code of a usage error: the command's own choice, else 1."""
    code = getattr(err, "corral_exit_code", EXIT_ERROR)
    return code if isinstance(code, int) else EXIT_ERROR


class CorralGroup(click.Group):
    """The root group: turns APIError into ``Error: ...`` and usage errors into exit 1."""

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
            err.exit_code = usage_exit_code(err)  # type: ignore[misc]  # click: usage errors exit 2
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            err.exit_code = usage_exit_code(err)  # type: ignore[misc]  # click: usage errors exit 2
            raise
        except APIError as err:
            for line in error_lines(err.message):
                click.echo(line, err=True)
            ctx.exit(EXIT_ERROR)


@click.group(
    name="corral", cls=CorralGroup, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--address",
    envvar="CORRAL_ADDR",
    default=None,
    metavar="HOST:PORT",
    help="gRPC address of a corral server [env CORRAL_ADDR; default 127.0.0.1:4647].",
)
@click.option(
    "--stale",
    envvar="CORRAL_STALE",
    is_flag=True,
    help="Let any server answer reads from its own state, without the leader (may lag).",
)
@click.version_option(package_name="corral", prog_name="corral")
@click.pass_context
def cli(ctx: click.Context, address: str | None, stale: bool) -> None:
    """corral: run containers on a cluster, the Nomad way."""
    state = CLIState(address, stale=stale)
    ctx.obj = state
    ctx.call_on_close(state.close)


def _add_address_option(command: click.Command) -> None:
    """``--address`` on every leaf command under ``command`` (nested groups too)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _add_address_option(sub)
    else:
        command.params.append(address_option())


def _register() -> None:
    from corral.cli import (
        agent,
        alloc,
        deployment,
        eval,
        job,
        jobops,  # noqa: F401  # its commands register on job.job
        node,
        operator,
        service,
    )

    cli.add_command(agent.agent)
    cli.add_command(job.job)
    cli.add_command(alloc.alloc)
    cli.add_command(node.node)
    cli.add_command(eval.eval_group)
    cli.add_command(operator.server_group)
    cli.add_command(operator.operator)
    cli.add_command(operator.system_group)
    for group in (job.job, alloc.alloc, node.node, eval.eval_group):
        for command in group.commands.values():
            command.params.append(address_option())
    for group in (operator.server_group, operator.operator, operator.system_group):
        _add_address_option(group)
    cli.add_command(service.service)
    _add_address_option(service.service)
    cli.add_command(deployment.deployment)
    _add_address_option(deployment.deployment)


_register()

#: The root group under the name users type.
corral = cli


def main() -> None:
    """Console-script entry point (``corral = corral.cli.main:main``)."""
    cli.main(prog_name="corral")


if __name__ == "__main__":  # pragma: no cover
    main()
