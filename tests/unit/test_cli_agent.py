"""``corral agent``'s flags: the AgentConfig the command builds, and the
contradictions it refuses before starting anything.

No server: ``corral.agent`` is replaced by a recorder of the config it is given.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from corral.agentconfig import AgentConfig
from corral.cli.main import cli
from tests.support.cluster import CLUSTER_KEY as KEY


@pytest.fixture
def agent_calls(monkeypatch: pytest.MonkeyPatch) -> list[AgentConfig]:
    """Record the AgentConfig the command hands to ``corral.agent.run_agent``."""
    calls: list[AgentConfig] = []
    module = types.ModuleType("corral.agent")

    def run_agent(cfg: AgentConfig) -> int:
        calls.append(cfg)
        return 0

    module.run_agent = run_agent  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "corral.agent", module)
    return calls


def test_agent_dev(agent_calls: list[AgentConfig]) -> None:
    result = CliRunner().invoke(cli, ["agent", "--dev", "--log-level", "debug"])
    assert result.exit_code == 0, result.output
    (cfg,) = agent_calls
    assert cfg.dev and cfg.server and cfg.client
    assert Path(cfg.data_dir).is_dir() and "corral-dev-" in cfg.data_dir
    assert cfg.log_level == "DEBUG" and cfg.rpc_port == 4647
    Path(cfg.data_dir).rmdir()


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("a", "must be base64"),
        ("k3y", "must be base64"),
        ("c2hvcnQ=", "must be 32 random bytes in base64 (this one is 5 bytes)"),
    ],
)
def test_agent_refuses_a_cluster_key_keygen_would_not_make(
    agent_calls: list[AgentConfig], tmp_path: Path, key: str, why: str
) -> None:
    """A typo must not become a guessable raft key."""
    args = ["agent", "--server", "--data-dir", str(tmp_path), "--encrypt", key]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output  # a usage error, as Nomad's CLI
    assert "Invalid value for '--encrypt'" in result.output and why in result.output
    assert agent_calls == []


def test_agent_server_and_client_flags(agent_calls: list[AgentConfig], tmp_path: Path) -> None:
    server = CliRunner().invoke(
        cli,
        [
            "agent",
            "--server",
            "--data-dir",
            str(tmp_path),
            "--bind",
            "0.0.0.0",
            "--rpc-port",
            "5647",
            "--raft-port",
            "5648",
            "--http-port",
            "5646",
            "--servers",
            "10.0.0.1:5648, 10.0.0.2:5648,10.0.0.3:5648",
            "--encrypt",
            KEY,
            "--min-heartbeat-ttl",
            "500ms",
            "--heartbeat-grace",
            "2",
        ],
    )
    assert server.exit_code == 0, server.output
    cfg = agent_calls[-1]
    assert cfg.server and not cfg.client and not cfg.dev
    assert cfg.servers == ["10.0.0.1:5648", "10.0.0.2:5648", "10.0.0.3:5648"]
    assert (cfg.bind, cfg.rpc_port, cfg.raft_port, cfg.http_port) == ("0.0.0.0", 5647, 5648, 5646)
    assert cfg.encrypt == KEY and cfg.min_heartbeat_ttl == 0.5 and cfg.heartbeat_grace == 2.0

    client = CliRunner().invoke(
        cli,
        [
            "agent",
            "--client",
            "--data-dir",
            str(tmp_path),
            "--servers",
            "127.0.0.1:4647",
            "--datacenter",
            "dc2",
            "--node-class",
            "gpu",
            "--node-name",
            "box1",
            "--meta",
            "rack=r1",
            "--meta",
            "zone=a=b",
            "--cpu-total",
            "2000",
            "--memory-total",
            "1024",
        ],
    )
    assert client.exit_code == 0, client.output
    cfg = agent_calls[-1]
    assert cfg.client and not cfg.server
    assert cfg.servers == ["127.0.0.1:4647"] and cfg.datacenter == "dc2"
    assert (cfg.node_class, cfg.node_name) == ("gpu", "box1")
    assert cfg.meta == {"rack": "r1", "zone": "a=b"}
    assert (cfg.cpu_total, cfg.memory_total) == (2000, 1024)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "say what to run: --dev, --server, --client"),
        (["--servers", "a:1"], "--servers needs --server"),
        (
            ["--dev", "--servers", "a:1"],
            "--dev runs a single-node cluster and cannot join --servers",
        ),
        (["--server"], "--data-dir is required"),
        (
            ["--server", "--data-dir", "D", "--node-class", "x"],
            "--node-class only apply to a client",
        ),
        (["--client", "--data-dir", "D", "--raft-port", "1"], "--raft-port only apply to a server"),
        (["--server", "--data-dir", "D", "--servers", "nope"], "'nope' is not HOST:PORT"),
        (["--client", "--data-dir", "D", "--meta", "novalue"], "'novalue' is not key=value"),
        (["--dev", "--min-heartbeat-ttl", "soon"], "is not a duration"),
        (["--dev", "--rpc-port", "4646"], "must differ"),
    ],
)
def test_agent_rejects_contradictions(
    agent_calls: list[AgentConfig], args: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, ["agent", *args])
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert agent_calls == []


@pytest.mark.parametrize(
    ("args", "raw_exec"),
    [
        (["--client", "--servers", "127.0.0.1:4647"], False),
        (["--client", "--servers", "127.0.0.1:4647", "--enable-raw-exec"], True),
        (["--dev"], True),  # a laptop's dev agent, on loopback
        (["--dev", "--bind", "127.0.0.2"], True),
        (["--dev", "--bind", "10.1.2.3"], False),  # reachable from the network: opt in
        (["--dev", "--bind", "10.1.2.3", "--enable-raw-exec"], True),
    ],
)
def test_raw_exec_is_off_unless_enabled(
    agent_calls: list[AgentConfig], tmp_path: Path, args: list[str], raw_exec: bool
) -> None:
    """raw_exec runs commands as the agent's user with no isolation: whoever can
    submit a job would own the machine (security issue, row 2)."""
    result = CliRunner().invoke(cli, ["agent", "--data-dir", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    assert agent_calls[-1].enable_raw_exec is raw_exec


def test_enable_raw_exec_is_a_client_flag(agent_calls: list[AgentConfig], tmp_path: Path) -> None:
    args = ["agent", "--server", "--data-dir", str(tmp_path), "--enable-raw-exec"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "--enable-raw-exec only apply to a client" in result.output
    assert agent_calls == []


def test_a_server_must_be_among_its_own_servers(
    agent_calls: list[AgentConfig], tmp_path: Path
) -> None:
    """Not listed in --servers, a server starts and never finds a leader (row 13)."""
    args = ["agent", "--server", "--data-dir", str(tmp_path), "--encrypt", KEY]
    peers = "127.0.0.1:5648,127.0.0.1:6648,127.0.0.1:7648"
    result = CliRunner().invoke(cli, [*args, "--servers", peers])  # raft port 4648
    assert result.exit_code == 1
    assert "--servers must list this server's own raft address 127.0.0.1:4648" in result.output
    assert agent_calls == []
    ok = CliRunner().invoke(cli, [*args, "--servers", peers, "--raft-port", "5648"])
    assert ok.exit_code == 0, ok.output
