"""Nomad's e2e ``affinities`` suite (``e2e/affinities/affinities.go``) on corral.

One server and Nomad's four e2e clients (c0 dc1/r1, c1 dc1/r2, c2 dc2/r1, c3 dc2/r2),
raw_exec tasks. Each test registers a job file of ``input/affinities/`` under a unique
ID (as ``e2eutil.RegisterAndWaitForAllocs`` does; here the ``job "..." {`` line is
rewritten), reads every allocation (``corral alloc status <id> --json``) and its
``Metrics.ScoreMetaData``, asserts what the Go test asserts, then purges the job and
waits until its tasks are gone (the Go ``AfterEach``).

The Go tests read the ``node-affinity`` score Nomad records per scored node
(``NodeAffinityIterator``: the sum of the matching weights over the sum of their
absolute values); corral keeps the top 5 scored nodes of groups with affinities or
spreads, with each scorer's part under Nomad's names.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.multinode import MultiNode, nomad_e2e_cluster
from tests.support.wait import wait_for

INPUT = Path(__file__).parent / "input" / "affinities"

TERMINAL_CLIENT = ("complete", "failed", "lost")


class MissingScoreMetaData(AssertionError):
    """An allocation without ``Metrics.ScoreMetaData`` (Nomad always fills it on placement)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiNode]:
    with nomad_e2e_cluster(tmp_path_factory.mktemp("cluster")) as c:
        # BeforeAll: WaitForLeader, WaitForNodesReady(4).
        nodes = c.server.cli_json("node", "status")
        assert sorted(n["Status"] for n in nodes) == ["ready"] * 4, nodes
        yield c


@pytest.fixture
def jobs(cluster: MultiNode, tmp_path: Path) -> Iterator[Callable[[str, str], list[str]]]:
    """``register(prefix, file)``: the job file under ``<prefix><8 hex>``; returns the
    IDs of its allocations once they are placed. Every job is purged afterwards."""
    registered: list[tuple[str, list[str]]] = []

    def register(prefix: str, file: str) -> list[str]:
        job_id = prefix + uuid.uuid4().hex[:8]
        text = re.sub(r'(?m)^job ".*" \{', f'job "{job_id}" {{', (INPUT / file).read_text())
        path = tmp_path / file
        path.write_text(text)
        out = cluster.server.cli("job", "run", "-detach", str(path))
        assert out.returncode == 0, out.stdout + out.stderr
        alloc_ids: list[str] = []
        registered.append((job_id, alloc_ids))
        count = int(re.search(r"(?m)^\s*count\s*=\s*(\d+)", text).group(1))  # type: ignore[union-attr]

        def placed() -> list[str]:
            allocs = cluster.server.cli_json("job", "status", job_id)["Allocations"]
            return [a["ID"] for a in allocs] if len(allocs) >= count else []

        alloc_ids.extend(wait_for(placed, timeout=30, message=f"{count} allocations of {job_id}"))
        return alloc_ids

    yield register
    for job_id, alloc_ids in registered:
        cleanup_job(cluster, job_id, alloc_ids)


def cleanup_job(cluster: MultiNode, job_id: str, alloc_ids: list[str]) -> None:
    """``AfterEach``: deregister with purge; then wait until no allocation of the job is
    left running (the tasks must not outlive the cluster)."""
    out = cluster.server.cli("job", "stop", "-purge", "-detach", job_id)
    assert out.returncode == 0, out.stdout + out.stderr

    def gone() -> bool:
        for alloc_id in alloc_ids:
            out = cluster.server.cli("alloc", "status", alloc_id, "--json")
            # Not found: purged (as Nomad's purge does); else wait for a terminal status.
            if (
                out.returncode == 0
                and json.loads(out.stdout)["ClientStatus"] not in TERMINAL_CLIENT
            ):
                return False
        return True

    wait_for(gone, timeout=30, message=f"the allocations of {job_id} stopped")


def alloc_status(cluster: MultiNode, alloc_id: str) -> dict[str, Any]:
    return cluster.server.cli_json("alloc", "status", alloc_id)  # type: ignore[no-any-return]


def nodes_by_id(cluster: MultiNode) -> dict[str, dict[str, Any]]:
    return {n["ID"]: n for n in cluster.server.cli_json("node", "status")}


def score_metadata(alloc: dict[str, Any]) -> list[dict[str, Any]]:
    """``require.NotEmpty(alloc.Metrics.ScoreMetaData)``, then the list."""
    meta = (alloc.get("Metrics") or {}).get("ScoreMetaData") or []
    if not meta:
        raise MissingScoreMetaData(f"allocation {alloc['ID']} has no Metrics.ScoreMetaData")
    return list(meta)


def chosen_node_affinity(alloc: dict[str, Any]) -> float:
    """The ``node-affinity`` score recorded for the node the allocation runs on (0.0
    when none is recorded, as the Go tests default it)."""
    score = 0.0
    for sm in score_metadata(alloc):
        if "node-affinity" in (sm.get("Scores") or {}) and sm["NodeID"] == alloc["NodeID"]:
            score = float(sm["Scores"]["node-affinity"])
    return score


def expected_affinity(node: dict[str, Any], weight_sign: float) -> float:
    """1.0 (or -1.0) when both affinities (dc1, rack r1) match, half of it when one does."""
    dc_match = node["Datacenter"] == "dc1"
    rack_match = (node.get("Meta") or {}).get("rack") == "r1"
    if dc_match and rack_match:
        return 1.0 * weight_sign
    if dc_match or rack_match:
        return 0.5 * weight_sign
    return 0.0


def test_single_affinities(cluster: MultiNode, jobs: Callable[[str, str], list[str]]) -> None:
    """``TestSingleAffinities``: with one affinity for dc1 (weight 100), the node each
    allocation runs on has a ``node-affinity`` score of 1.0 and the highest NormScore."""
    alloc_ids = jobs("aff", "single_affinity.nomad")
    nodes = nodes_by_id(cluster)
    allocs = [alloc_status(cluster, i) for i in alloc_ids]
    # Implied by the Go assertions (only a dc1 node scores node-affinity 1.0), and
    # checkable without the metadata.
    placed_in = sorted(nodes[a["NodeID"]]["Datacenter"] for a in allocs)
    assert placed_in == ["dc1"] * len(allocs), placed_in
    for alloc in allocs:
        picked_norm_score = 0.0
        norm_scores = []
        for sm in score_metadata(alloc):
            norm_scores.append(float(sm["NormScore"]))
            scores = sm.get("Scores") or {}
            if "node-affinity" in scores and sm["NodeID"] == alloc["NodeID"]:
                assert scores["node-affinity"] == 1.0, sm
                picked_norm_score = float(sm["NormScore"])
        assert picked_norm_score == max(norm_scores), alloc["Metrics"]["ScoreMetaData"]


def test_multiple_affinities(cluster: MultiNode, jobs: Callable[[str, str], list[str]]) -> None:
    """``TestMultipleAffinities``: a job affinity for rack r1 and a group affinity for
    dc1 (weight 100 each): the chosen node's ``node-affinity`` score is 1.0 when both
    match, 0.5 when one does, 0 otherwise."""
    alloc_ids = jobs("multiaff", "multiple_affinities.nomad")
    nodes = nodes_by_id(cluster)
    for alloc_id in alloc_ids:
        alloc = alloc_status(cluster, alloc_id)
        node = nodes[alloc["NodeID"]]
        assert chosen_node_affinity(alloc) == expected_affinity(node, 1.0), (node["Name"], alloc)


def test_anti_affinities(cluster: MultiNode, jobs: Callable[[str, str], list[str]]) -> None:
    """``TestAntiAffinities``: the same with weights -50: -1.0, -0.5 or 0."""
    alloc_ids = jobs("antiaff", "anti_affinities.nomad")
    nodes = nodes_by_id(cluster)
    for alloc_id in alloc_ids:
        alloc = alloc_status(cluster, alloc_id)
        node = nodes[alloc["NodeID"]]
        assert chosen_node_affinity(alloc) == expected_affinity(node, -1.0), (node["Name"], alloc)
