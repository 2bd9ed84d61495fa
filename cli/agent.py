"""``corral agent``: run a server, a client, or both (``--dev``) in this process.

The command only turns flags into an :class:`~corral.agentconfig.AgentConfig` and
hands it to ``corral.agent.run_agent``; it rejects combinations that cannot mean
what the user wants before anything starts, because a misconfigured agent that
starts anyway (a client-only flag on a server, a dev agent told to join a cluster)
fails later in confusing ways.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from corral import clusterkey
from corral.agentconfig import AgentConfig

LOG_LEVELS = ("DEBUG", "INFO", "WARN", "WARNING", "ERROR")
_CLIENT_ONLY = (
    "node_class",
    "node_name",
    "meta",
    "cpu_total",
    "memory_total",
    "simulate",
    "enable_raw_exec",
)
_SERVER_ONLY = ("raft_port", "encrypt", "min_heartbeat_ttl", "heartbeat_grace")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: str) -> float:
    """Seconds from ``10``, ``10s``, ``500ms``, ``1.5m`` or ``1h``."""
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a duration (e.g. 10s, 500ms, 1m)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{value!r} must be greater than zero")
    return seconds


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only since click 8.5
    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as err:
            self.fail(str(err), param, ctx)


def _split_servers(value: str | None) -> list[str]:
    if not value:
        return []
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(f"{item!r} is not HOST:PORT", param_hint="--servers")
        out.append(item)
    if not out:
        raise click.BadParameter("no address given", param_hint="--servers")
    return out


def _parse_meta(items: tuple[str, ...]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not key=value", param_hint="--meta")
        meta[key.strip()] = value
    return meta


def _given(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


F = TypeVar("F", bound=Callable[..., Any])


def _port(name: str, help_text: str) -> Callable[[F], F]:
    return click.option(name, type=click.IntRange(0, 65535), default=None, help=help_text)


@click.command("agent")
@click.option("--dev", is_flag=True, help="Server and client in one process, for a laptop.")
@click.option("--server", is_flag=True, help="Run a server (raft, scheduler, APIs).")
@click.option("--client", is_flag=True, help="Run a client (runs allocations).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="State directory (required unless --dev, which uses a temporary one).",
)
@click.option("--bind", default=None, metavar="ADDR", help="Address to listen on [127.0.0.1].")
@_port("--http-port", "HTTP API port [4646].")
@_port("--rpc-port", "gRPC port [4647].")
@_port("--raft-port", "Raft port between servers [4648].")
@click.option(
    "--servers",
    default=None,
    metavar="A,B,C",
    help="Server: raft addresses of all servers. Client: gRPC addresses of the servers.",
)
@click.option(
    "--encrypt",
    default=None,
    metavar="KEY",
    help="Cluster key for raft peers, from `corral operator keygen` (required with "
    "--servers; a single server keeps its own in its data dir).",
)
@click.option("--datacenter", default=None, help="Datacenter of this client [dc1].")
@click.option("--node-class", default=None, help="Node class of this client.")
@click.option("--node-name", default=None, help="Node name [hostname].")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Client node meta (repeatable).")
@click.option("--cpu-total", type=click.IntRange(min=1), default=None, metavar="MHZ")
@click.option("--memory-total", type=click.IntRange(min=1), default=None, metavar="MB")
@click.option(
    "--simulate",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Client: host N simulated nodes (mock driver) instead of this machine, for scale runs.",
)
@click.option(
    "--enable-raw-exec",
    is_flag=True,
    default=None,
    help="Client: offer the raw_exec driver (tasks run as this agent's user, unisolated); "
    "off by default, on with --dev bound to loopback.",
)
@click.option("--min-heartbeat-ttl", type=Duration(), default=None, help="Server: [10s].")
@click.option("--heartbeat-grace", type=Duration(), default=None, help="Server: [10s].")
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.pass_context
def agent(ctx: click.Context, /, **opts: Any) -> None:
    """Run a corral agent until SIGINT/SIGTERM."""
    cfg = build_config(ctx, opts)
    try:
        from corral.agent import run_agent
    except ImportError as err:
        raise click.ClickException(f"the agent is not available in this build: {err}") from None
    ctx.exit(run_agent(cfg))


def ipaddress_is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_config(ctx: click.Context, opts: dict[str, Any]) -> AgentConfig:
    """Flags -> AgentConfig, refusing contradictions with one clear message."""
    dev, server, client = opts["dev"], opts["server"], opts["client"]
    if opts["servers"] is not None and dev:
        raise click.UsageError(
            "--dev runs a single-node cluster and cannot join --servers; "
            "use --server/--client instead"
        )
    if not (dev or server or client):
        if opts["servers"] is not None:
            raise click.UsageError(
                "--servers needs --server (the raft peers to form a cluster with) "
                "or --client (the servers to register with)"
            )
        raise click.UsageError("say what to run: --dev, --server, --client, or both")
    is_server = dev or server
    is_client = dev or client
    if not is_client:
        given = [n for n in _CLIENT_ONLY if _given(ctx, n)]
        if opts["datacenter"] is not None and _given(ctx, "datacenter"):
            given.append("datacenter")
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise click.UsageError(f"{flags} only apply to a client; add --client")
    if not is_server:
        given = [n for n in _SERVER_ONLY if _given(ctx, n)]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            raise click.UsageError(f"{flags} only apply to a server; add --server")

    data_dir = opts["data_dir"]
    if not data_dir:
        if not dev:
            raise click.UsageError(
                "--data-dir is required (the agent keeps its state there); "
                "--dev uses a temporary directory"
            )
        data_dir = tempfile.mkdtemp(prefix="corral-dev-")

    cfg = AgentConfig(
        server=is_server,
        client=is_client,
        dev=dev,
        data_dir=data_dir,
        servers=_split_servers(opts["servers"]),
        meta=_parse_meta(opts["meta"]),
        log_level=opts["log_level"].upper(),
    )
    for name in (
        "bind",
        "http_port",
        "rpc_port",
        "raft_port",
        "encrypt",
        "datacenter",
        "node_class",
        "node_name",
        "cpu_total",
        "memory_total",
        "simulate",
        "enable_raw_exec",
        "min_heartbeat_ttl",
        "heartbeat_grace",
    ):
        if opts[name] is not None:
            setattr(cfg, name, opts[name])
    if cfg.encrypt:
        try:
            cfg.encrypt = clusterkey.validate(cfg.encrypt)
        except clusterkey.ClusterKeyError as exc:
            raise click.BadParameter(str(exc), param_hint="'--encrypt'") from None
    if dev and opts["enable_raw_exec"] is None and ipaddress_is_loopback(cfg.bind):
        # A laptop's dev agent runs raw_exec jobs, reachable from this machine only.
        cfg.enable_raw_exec = True
    if is_server and cfg.servers and cfg.bind not in ("0.0.0.0", "::"):
        me = f"{cfg.bind}:{cfg.raft_port}"
        if me not in cfg.servers:
            raise click.UsageError(
                f"--servers must list this server's own raft address {me} (it never finds "
                "a leader otherwise); give every server's bind address and --raft-port"
            )
    ports = [p for p in (cfg.http_port, cfg.rpc_port, cfg.raft_port if is_server else None) if p]
    if len(ports) != len(set(ports)):
        raise click.UsageError("--http-port, --rpc-port and --raft-port must differ")
    return cfg
