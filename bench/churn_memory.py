"""Benchmark: server memory under churn, with and without garbage collection.

A 3-server cluster and a simulated fleet of 200 nodes; 50 service jobs are
re-registered with a new version about twice a second (each version replaces their
allocations and starts a deployment), for N minutes. After each minute the bench
prints every server's RSS and, with ``--gc``, runs ``SystemGC`` (``corral system
gc``) first. Without collection every evaluation, allocation and deployment is kept.

    .venv/bin/python bench/churn_memory.py [--minutes 4] [--gc]

Prints one JSON document on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corral.client.simulate import SimulatedFleet  # noqa: E402
from corral.proto import pb, rpc  # noqa: E402
from tests.support.cluster import make_cluster  # noqa: E402

JOBS = 50


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def job(i: int, version: int) -> pb.Job:
    j = pb.Job(id=f"churn-{i}", type="service")
    j.meta["version"] = str(version)
    g = j.task_groups.add(name="g", count=20 if version % 2 else 10)
    t = g.tasks.add(name="t", driver="mock")
    t.resources.cpu = 10
    t.resources.memory_mb = 10
    t.config.update({"run_for": "1h"})
    return j


async def churn(addr: str, seconds: float, start_version: int) -> int:
    version = start_version
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = rpc.JobServiceStub(ch)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            version += 1
            await asyncio.gather(
                *(
                    stub.Register(pb.JobRegisterRequest(job=job(i, version)), timeout=30)
                    for i in range(JOBS)
                )
            )
            await asyncio.sleep(0.5)
    return version


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=4)
    ap.add_argument("--gc", action="store_true", help="run SystemGC after each minute")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    samples = []
    with (
        tempfile.TemporaryDirectory(prefix="corral-churn-") as tmp,
        make_cluster(3, Path(tmp), "--min-heartbeat-ttl", "30s") as cluster,
    ):
        leader = cluster.wait_leader()
        fleet = SimulatedFleet(cluster.rpc_addrs, 200, cpu=100_000, memory=100_000)
        fleet.start()
        version = 0
        try:
            for minute in range(1, args.minutes + 1):
                before = version
                version = asyncio.run(churn(leader.rpc_addr, 60, version))
                sample: dict[str, object] = {"minute": minute, "versions": version - before}
                if args.gc:
                    with grpc.insecure_channel(leader.rpc_addr) as ch:
                        resp = rpc.OperatorServiceStub(ch).SystemGC(pb.StatusRequest(), timeout=120)
                    sample["gc"] = {
                        "evals": resp.evals_deleted,
                        "allocs": resp.allocs_deleted,
                        "deployments": resp.deployments_deleted,
                    }
                sample["rss_mb"] = {
                    ("leader" if s is leader else f"server-{s.index}"): rss_mb(s.pid)
                    for s in cluster.servers
                    if s.pid
                }
                print(json.dumps(sample), file=sys.stderr, flush=True)
                samples.append(sample)
        finally:
            fleet.stop()
    print(json.dumps({"gc": args.gc, "jobs": JOBS, "samples": samples}, indent=2))


if __name__ == "__main__":
    main()
