"""Benchmark: placements per second end to end, on simulated nodes (issue "The scheduler").

Starts a corral cluster (3 servers by default), a simulated fleet of N virtual nodes
(mock driver, in this process), submits J jobs of C allocations each, concurrently,
and measures the time from the first `job register` to every allocation reported
running by its (virtual) node. Also records the servers' memory per allocation.

    .venv/bin/python bench/scale_bench.py [--servers 3] [--nodes 1000] [--jobs 100] [--count 1000]

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


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def job(job_id: str, count: int, deployments: bool = True) -> pb.Job:
    """A service job of ``count`` mock allocations. Every service job gets Nomad's
    default update strategy, so a deployment per job; ``deployments=False`` says
    ``max_parallel = 0`` (no deployment), the shape measured before that default."""
    j = pb.Job(id=job_id, type="service")
    g = j.task_groups.add(name="g", count=count)
    if not deployments:
        g.update.max_parallel = 0
    t = g.tasks.add(name="t", driver="mock")
    t.resources.cpu = 10
    t.resources.memory_mb = 10
    t.config.update({"run_for": "1h"})
    return j


class CountingFleet(SimulatedFleet):
    """The simulated fleet; its ``running`` counter is the benchmark's stop condition."""


async def submit(addr: str, jobs: int, count: int, deployments: bool = True) -> None:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = rpc.JobServiceStub(ch)
        await asyncio.gather(
            *(
                stub.Register(
                    pb.JobRegisterRequest(job=job(f"scale-{i:04d}", count, deployments)),
                    timeout=120,
                )
                for i in range(jobs)
            )
        )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument(
        "--no-deployments",
        action="store_true",
        help="jobs say update { max_parallel = 0 } (no deployment per job)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    total = args.jobs * args.count
    out: dict[str, object] = {
        "servers": args.servers,
        "nodes": args.nodes,
        "jobs": args.jobs,
        "count": args.count,
        "deployments": not args.no_deployments,
    }
    with (
        tempfile.TemporaryDirectory(prefix="corral-scale-") as tmp,
        make_cluster(args.servers, Path(tmp), "--min-heartbeat-ttl", "30s") as cluster,
    ):
        leader = cluster.wait_leader()
        rss_before = {s.index: rss_mb(s.pid) for s in cluster.servers if s.pid}
        fleet = CountingFleet(cluster.rpc_addrs, args.nodes, cpu=100_000, memory=100_000)
        t0 = time.monotonic()
        fleet.start()
        out["register_nodes_s"] = round(time.monotonic() - t0, 2)
        log(f"{args.nodes} nodes registered in {out['register_nodes_s']}s")
        t0 = time.monotonic()
        asyncio.run(submit(leader.rpc_addr, args.jobs, args.count, not args.no_deployments))
        out["submit_s"] = round(time.monotonic() - t0, 2)
        log(f"{args.jobs} jobs submitted in {out['submit_s']}s")
        last_log = 0.0
        while fleet.running < total:
            now = time.monotonic()
            if now - t0 > args.timeout:
                out["timed_out"] = True
                break
            if now - last_log > 5:
                log(f"{fleet.running}/{total} running after {now - t0:.1f}s")
                last_log = now
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        out["running"] = fleet.running
        out["elapsed_s"] = round(elapsed, 2)
        out["placements_per_s"] = round(fleet.running / elapsed, 1)
        rss_after = {s.index: rss_mb(s.pid) for s in cluster.servers if s.pid}
        out["server_rss_mb"] = {str(k): round(v, 1) for k, v in rss_after.items()}
        out["kb_per_alloc"] = round(
            max(rss_after[k] - rss_before[k] for k in rss_after) * 1024 / max(fleet.running, 1), 2
        )
        fleet.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
