"""The fixtures the ported Nomad e2e modules share (a module may define its own
``cluster`` where its Go test needs more, e.g. Docker first)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.nomad.support import stop_and_purge
from tests.support.multinode import MultiNode, nomad_e2e_cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiNode]:
    """One server and Nomad's four e2e clients, once per module; every node ready
    (the Go tests' ``WaitForLeader`` and ``WaitForNodesReady(4)``)."""
    with nomad_e2e_cluster(tmp_path_factory.mktemp("cluster")) as c:
        nodes = c.server.cli_json("node", "status")
        assert sorted(n["Status"] for n in nodes) == ["ready"] * len(nodes) == ["ready"] * 4, nodes
        yield c


@pytest.fixture
def jobs(cluster: MultiNode) -> Iterator[list[str]]:
    """The job IDs a test registered: stopped and purged after it."""
    ids: list[str] = []
    yield ids
    for job_id in ids:
        stop_and_purge(cluster, job_id)
