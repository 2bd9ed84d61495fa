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

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.nomad.support import alloc_status, register_and_wait_for_allocs, unique_id
from tests.support.multinode import MultiNode

INPUT = Path(__file__).parent / "input" / "affinities"


class MissingScoreMetaData(AssertionError):
    """An allocation without ``Metrics.ScoreMetaData`` (Nomad always fills it on placement)."""


@pytest.fixture
def jobs(cluster: MultiNode, jobs: list[str]) -> Callable[[str, str], list[str]]:
    """``register(prefix, file)``: the job file under ``<prefix><8 hex>``; returns the
    IDs of its allocations once they are placed. Every job is purged afterwards (the
    shared ``jobs`` fixture this one extends)."""

    def register(prefix: str, file: str) -> list[str]:
        job_id = unique_id(prefix)
        jobs.append(job_id)
        return register_and_wait_for_allocs(cluster, INPUT / file, job_id)

    return register


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
