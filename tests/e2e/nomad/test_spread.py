"""Nomad's e2e ``spread`` suite (``e2e/spread/spread_test.go``) on corral.

One server and Nomad's four e2e clients (c0 dc1/r1, c1 dc1/r2, c2 dc2/r1, c3 dc2/r2),
raw_exec tasks. Each test registers a job file of ``input/spread/`` under a unique ID
(as ``e2eutil.RegisterAndWaitForAllocs`` does; here the ``job "..." {`` line is
rewritten), reads every allocation (``corral alloc status <id> --json``) and the node
it runs on (``corral node status --json``), asserts what the Go test asserts, then
purges the job and waits until its tasks are gone (the Go ``cleanupJob``).

The distribution is asserted first, then ``Metrics.ScoreMetaData`` (the top 5 scored
nodes, which corral keeps for groups with affinities or spreads).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.nomad.support import alloc_status, register_and_wait_for_allocs, unique_id
from tests.support.multinode import MultiNode

INPUT = Path(__file__).parent / "input" / "spread"


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


def require_score_metadata(allocs: list[dict[str, Any]]) -> None:
    """``must.Greater(t, 0, len(alloc.Metrics.ScoreMetaData))`` for every allocation."""
    for alloc in allocs:
        if not ((alloc.get("Metrics") or {}).get("ScoreMetaData") or []):
            raise MissingScoreMetaData(f"allocation {alloc['ID']} has no Metrics.ScoreMetaData")


def report(allocs: list[dict[str, Any]], nodes: dict[str, dict[str, Any]]) -> str:
    """Where each allocation went (the Go test's failure report, minus the metrics)."""
    return "\n".join(
        f"{a['ID'][:8]} {a['Name']} on {nodes[a['NodeID']]['Name']} "
        f"({nodes[a['NodeID']]['Datacenter']}, rack {nodes[a['NodeID']]['Meta'].get('rack')})"
        for a in allocs
    )


def test_spread_even(cluster: MultiNode, jobs: Callable[[str, str], list[str]]) -> None:
    """``TestSpread/TestSpread_Even``: count 6 spread over ``${node.datacenter}`` gives
    3 allocations per datacenter, each with score metadata."""
    allocs = [alloc_status(cluster, i) for i in jobs("spread-", "even_spread.nomad")]
    nodes = nodes_by_id(cluster)
    dc_to_allocs: dict[str, int] = {}
    for alloc in allocs:
        dc = nodes[alloc["NodeID"]]["Datacenter"]
        dc_to_allocs[dc] = dc_to_allocs.get(dc, 0) + 1
    assert dc_to_allocs == {"dc1": 3, "dc2": 3}, report(allocs, nodes)
    require_score_metadata(allocs)


def test_spread_multiple(cluster: MultiNode, jobs: Callable[[str, str], list[str]]) -> None:
    """``TestSpread/TestSpread_Multiple``: count 10, a job spread over the datacenter and
    a group spread over ``${meta.rack}`` (r1 70%, r2 30%) give {dc1: 5, dc2: 5} and
    {r1: 7, r2: 3}, each allocation with score metadata."""
    allocs = [alloc_status(cluster, i) for i in jobs("spread-", "multiple_spread.nomad")]
    nodes = nodes_by_id(cluster)
    dc_to_allocs: dict[str, int] = {}
    rack_to_allocs: dict[str, int] = {}
    for alloc in allocs:
        node = nodes[alloc["NodeID"]]
        dc_to_allocs[node["Datacenter"]] = dc_to_allocs.get(node["Datacenter"], 0) + 1
        rack = (node.get("Meta") or {}).get("rack", "")
        if rack:
            rack_to_allocs[rack] = rack_to_allocs.get(rack, 0) + 1
    assert dc_to_allocs == {"dc1": 5, "dc2": 5}, report(allocs, nodes)
    assert rack_to_allocs == {"r1": 7, "r2": 3}, report(allocs, nodes)
    require_score_metadata(allocs)
