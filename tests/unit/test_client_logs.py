"""The client's log service turns request fields into paths: nothing outside an
allocation's own log files is reachable (security issue, row 8: ``../`` in alloc
and task names listed /root and read any ``*.stdout.0``). Also: the node's secret
is kept 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import grpc
import pytest

from corral.client.agent import ClientAgent, ClientConfig, _ClientRPC
from corral.client.drivers.mock import MockDriver
from corral.proto import pb

ALLOC = "3f0c2b7e-1111-4222-8333-944455556666"


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code


class FakeContext:
    """The two things the service asks of a gRPC context."""

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)

    def is_active(self) -> bool:
        return True


@pytest.fixture
def service(tmp_path: Path) -> _ClientRPC:
    agent = ClientAgent(
        ClientConfig(data_dir=str(tmp_path / "data"), servers=["127.0.0.1:1"]),
        {"mock": MockDriver()},
    )
    logs = tmp_path / "data" / "alloc" / ALLOC / "alloc" / "logs"
    logs.mkdir(parents=True)
    (tmp_path / "data" / "alloc" / ALLOC / "web").mkdir()
    (logs / "web.stdout.0").write_text("hello from web\n")
    # Bait outside the alloc dir, named as a log would be.
    (tmp_path / "data" / "secret.stdout.0").write_text("SECRET\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.stdout.0").write_text("SECRET\n")
    return _ClientRPC(agent)


def read(service: _ClientRPC, alloc_id: str, task: str = "") -> bytes:
    req = pb.AllocLogsRequest(alloc_id=alloc_id, task=task, type="stdout")
    return b"".join(c.data for c in service.Logs(req, FakeContext()))  # type: ignore[arg-type]


def test_the_allocations_own_log_is_served(service: _ClientRPC) -> None:
    assert read(service, ALLOC, "web") == b"hello from web\n"
    assert read(service, ALLOC) == b"hello from web\n"  # its only task


@pytest.mark.parametrize(
    ("alloc_id", "task"),
    [
        ("..", ""),
        ("../..", "outside/x"),
        (f"{ALLOC}/../..", "secret"),
        ("../outside", "x"),
        (ALLOC, "../../../secret"),
        (ALLOC, "../../../../outside/x"),
        (ALLOC, "."),
        (ALLOC, "nope"),
        ("", "web"),
    ],
)
def test_nothing_outside_the_allocation_is_reachable(
    service: _ClientRPC, alloc_id: str, task: str
) -> None:
    with pytest.raises(Aborted) as err:
        read(service, alloc_id, task)
    assert err.value.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def test_a_symlink_planted_in_the_log_dir_is_not_followed(
    service: _ClientRPC, tmp_path: Path
) -> None:
    logs = tmp_path / "data" / "alloc" / ALLOC / "alloc" / "logs"
    os.remove(logs / "web.stdout.0")
    (logs / "web.stdout.0").symlink_to(tmp_path / "outside" / "x.stdout.0")
    with pytest.raises(Aborted) as err:
        read(service, ALLOC, "web")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_the_node_secret_is_readable_by_root_only(tmp_path: Path) -> None:
    ClientAgent(
        ClientConfig(data_dir=str(tmp_path), servers=["127.0.0.1:1"]), {"mock": MockDriver()}
    )
    node_json = tmp_path / "client" / "node.json"
    assert stat.S_IMODE(node_json.stat().st_mode) == 0o600
    node_json.chmod(0o644)  # as an older version left it
    ClientAgent(
        ClientConfig(data_dir=str(tmp_path), servers=["127.0.0.1:1"]), {"mock": MockDriver()}
    )
    assert stat.S_IMODE(node_json.stat().st_mode) == 0o600


def test_another_directory_shaped_as_an_allocation_is_not_read(
    service: _ClientRPC, tmp_path: Path
) -> None:
    """``../../elsewhere`` laid out as an allocation (another data dir, say) was served."""
    other = tmp_path / "elsewhere"
    (other / "alloc" / "logs").mkdir(parents=True)
    (other / "web").mkdir()
    (other / "alloc" / "logs" / "web.stdout.0").write_text("SECRET\n")
    with pytest.raises(Aborted) as err:
        read(service, "../../elsewhere", "web")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_errors_list_nothing_outside_the_allocation(service: _ClientRPC) -> None:
    """The 'task not found (tasks: ...)' answer listed any directory (/root once)."""
    with pytest.raises(Aborted) as err:
        read(service, "../..", "zzz")
    assert "outside" not in str(err.value) and "data" not in str(err.value)
