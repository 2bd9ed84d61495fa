"""Helpers shared by the command modules: the client of this invocation, JSON out,
and Nomad's job-prefix lookup.

Why a job-prefix lookup here: the server resolves alloc, eval and node prefixes
itself but matches job IDs exactly (job IDs are names, not UUIDs, and a prefix
match on a write would be dangerous). Nomad's CLI still lets a user type
``corral job status we`` for ``web`` when that is the only match, so the CLI does
that lookup for read commands and for ``job stop`` (which shows the full ID it acts
on).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from corral.api.client import APIError, CorralClient, resolve_address
from corral.cli.format import print_json
from corral.proto import pb


class CLIState:
    """Per-invocation settings (the root ``ctx.obj``), and a lazily created client."""

    def __init__(self, address: str | None, stale: bool = False) -> None:
        self.address = resolve_address(address)
        self.stale = stale
        self._client: CorralClient | None = None

    def client(self) -> CorralClient:
        if self._client is None:
            self._client = CorralClient(self.address, stale=self.stale)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def get_client(ctx: click.Context) -> CorralClient:
    """The API client of this invocation (created on first use)."""
    state = ctx.find_object(CLIState)
    if state is None:
        root = ctx.find_root()
        state = CLIState(None)
        root.obj = state
        root.call_on_close(state.close)
    return state.client()


def echo_json(value: Any) -> None:
    click.echo(print_json(value))


def resolve_job(client: CorralClient, job_id: str) -> pb.Job:
    """The job with this exact ID, else the only job whose ID starts with it."""
    try:
        return client.get_job(job_id)
    except APIError as err:
        if not err.not_found:
            raise
        matches = client.list_jobs(prefix=job_id)
        if len(matches) == 1:
            return client.get_job(matches[0].id)
        if len(matches) > 1:
            names = ", ".join(sorted(m.id for m in matches))
            raise APIError(f'prefix "{job_id}" matched multiple jobs: {names}', err.code) from None
        raise APIError(f'no job with ID or prefix "{job_id}" found', err.code) from None


F = TypeVar("F", bound=Callable[..., Any])


def verbose_option(fn: F) -> F:
    """``--verbose``: full IDs instead of 8-character ones (Nomad's ``-verbose``)."""
    return click.option("--verbose", is_flag=True, help="Show full IDs instead of short ones.")(fn)


def json_option(fn: F) -> F:
    """``--json``: print Nomad's API JSON instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print Nomad's API JSON.")(fn)


def _set_address(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        state = ctx.find_object(CLIState)
        if state is None:
            ctx.find_root().obj = state = CLIState(value)
        state.address = resolve_address(value)


def address_option() -> click.Option:
    """``--address`` after the subcommand too (``corral job status --address X``),
    where Nomad users put it; it overrides the root option and ``$CORRAL_ADDR``."""
    return click.Option(
        ["--address"],
        default=None,
        metavar="HOST:PORT",
        expose_value=False,
        is_eager=True,
        callback=_set_address,
        help="gRPC address of a corral server (overrides corral --address).",
    )
