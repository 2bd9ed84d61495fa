"""The scale path at test size: a real 3-server cluster, a simulated fleet (the
same code as ``corral agent --client --simulate N`` and ``bench/scale_bench.py``),
many placements at once. Every allocation runs, no node is overcommitted, and the
three state machines end identical."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import grpc

from corral.client.simulate import SimulatedFleet
from corral.proto import pb, rpc
from tests.support.cluster import make_cluster
from tests.support.wait import wait_for

NODES = 120
JOBS = 6
COUNT = 150
NODE_CPU = 1_000
NODE_MEMORY = 1_000
TASK_CPU = 100  # 10 per node at most: 900 allocations need 90 of the 120 nodes


def job(job_id: str) -> pb.Job:
    j = pb.Job(id=job_id, type="service")
    g = j.task_groups.add(name="g", count=COUNT)
    t = g.tasks.add(name="t", driver="mock")
    t.resources.cpu = TASK_CPU
    t.resources.memory_mb = 10
    t.config.update({"run_for": "1h"})
    return j


async def submit(addr: str) -> None:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = rpc.JobServiceStub(ch)
        await asyncio.gather(
            *(
                stub.Register(pb.JobRegisterRequest(job=job(f"fleet-{i}")), timeout=60)
                for i in range(JOBS)
            )
        )


def test_a_simulated_fleet_runs_every_placement_without_overcommit(tmp_path: Path) -> None:
    with make_cluster(3, tmp_path, "--min-heartbeat-ttl", "30s") as cluster:
        leader = cluster.wait_leader()
        fleet = SimulatedFleet(cluster.rpc_addrs, NODES, cpu=NODE_CPU, memory=NODE_MEMORY)
        try:
            fleet.start()  # registers all nodes concurrently
            with grpc.insecure_channel(leader.rpc_addr) as ch:
                listed = rpc.NodeServiceStub(ch).List(pb.NodeListRequest(), timeout=10).nodes
            assert len(listed) == NODES
            asyncio.run(submit(leader.rpc_addr))
            wait_for(
                lambda: fleet.running == JOBS * COUNT,
                timeout=90,
                message=lambda: f"{fleet.running}/{JOBS * COUNT} running",
            )
        finally:
            fleet.stop()
        cluster.wait_converged(timeout=60)
        with grpc.insecure_channel(leader.rpc_addr) as ch:
            stub = rpc.AllocServiceStub(ch)
            allocs = stub.List(pb.AllocListRequest(), timeout=30).allocs
        live = [a for a in allocs if a.desired_status == "run"]
        assert len(live) == JOBS * COUNT
        cpu_by_node: collections.Counter[str] = collections.Counter()
        for alloc in live:
            cpu_by_node[alloc.node_id] += TASK_CPU
        assert max(cpu_by_node.values()) <= NODE_CPU
        assert sum(cpu_by_node.values()) == JOBS * COUNT * TASK_CPU
