"""Benchmark: a 3-server corral cluster on loopback (issue "Highly available servers").

Measures, in one run, on real server processes:
  * failover: SIGKILL of the leader -> the next acknowledged write (median, max);
  * write latency of single job registrations (p50, p99), one writer;
  * throughput of concurrent writes (many in-flight registrations, asyncio gRPC);
  * resident memory of a server holding N jobs.

    .venv/bin/python bench/ha_bench.py [--kills 20] [--latency-writes 300]
        [--throughput-seconds 10] [--concurrency 256] [--memory-jobs 10000]

Prints one JSON document on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corral.proto import pb, rpc  # noqa: E402
from tests.support.cluster import Cluster, make_cluster  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def job(job_id: str) -> pb.Job:
    j = pb.Job(id=job_id, type="batch")
    g = j.task_groups.add(name="g", count=0)
    t = g.tasks.add(name="t", driver="mock")
    t.config.update({"run_for": "1s"})
    return j


def register(addr: str, job_id: str, timeout: float = 5) -> None:
    with grpc.insecure_channel(addr) as ch:
        rpc.JobServiceStub(ch).Register(pb.JobRegisterRequest(job=job(job_id)), timeout=timeout)


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def bench_failover(cluster: Cluster, kills: int) -> dict[str, object]:
    samples = []
    n = 0
    for k in range(kills):
        leader = cluster.wait_leader()
        others = [s for s in cluster.servers if s is not leader]
        t0 = time.monotonic()
        leader.kill()
        while True:
            n += 1
            try:
                register(others[n % 2].rpc_addr, f"failover-{k}-{n}", timeout=2)
                break
            except grpc.RpcError:
                if time.monotonic() - t0 > 60:
                    raise
        samples.append(time.monotonic() - t0)
        log(f"failover {k + 1}/{kills}: {samples[-1]:.2f}s")
        leader.start()
        cluster.wait_converged(timeout=60)
    return {
        "kills": kills,
        "median_s": round(statistics.median(samples), 3),
        "max_s": round(max(samples), 3),
        "samples_s": [round(x, 3) for x in samples],
    }


def bench_latency(cluster: Cluster, writes: int) -> dict[str, object]:
    leader = cluster.wait_leader()
    results = {}
    for label, server in (
        ("leader", leader),
        ("follower (forwarded)", next(s for s in cluster.servers if s is not leader)),
    ):
        with grpc.insecure_channel(server.rpc_addr) as ch:
            stub = rpc.JobServiceStub(ch)
            for i in range(20):  # warm up the channel
                stub.Register(pb.JobRegisterRequest(job=job(f"warm-{label[:3]}-{i}")), timeout=5)
            lat = []
            for i in range(writes):
                t = time.perf_counter()
                stub.Register(pb.JobRegisterRequest(job=job(f"lat-{label[:3]}-{i}")), timeout=5)
                lat.append(time.perf_counter() - t)
        results[label] = {
            "writes": writes,
            "p50_ms": round(percentile(lat, 50) * 1000, 2),
            "p99_ms": round(percentile(lat, 99) * 1000, 2),
        }
        log(f"latency via {label}: {results[label]}")
    return results


async def _throughput(addr: str, seconds: float, concurrency: int) -> tuple[int, int, float]:
    ok = 0
    failed = 0
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = rpc.JobServiceStub(ch)
        counter = 0

        async def worker(w: int) -> None:
            nonlocal ok, failed, counter
            while time.monotonic() < deadline:
                counter += 1
                try:
                    await stub.Register(
                        pb.JobRegisterRequest(job=job(f"tp-{w}-{counter}")), timeout=10
                    )
                    ok += 1
                except grpc.aio.AioRpcError:
                    failed += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return ok, failed, time.monotonic() - t0


def bench_throughput(cluster: Cluster, seconds: float, concurrency: int) -> dict[str, object]:
    leader = cluster.wait_leader()
    ok, failed, elapsed = asyncio.run(_throughput(leader.rpc_addr, seconds, concurrency))
    out = {
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "committed": ok,
        "failed": failed,
        "writes_per_s": round(ok / elapsed, 1),
    }
    log(f"throughput: {out}")
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench_memory(cluster: Cluster, jobs: int) -> dict[str, object]:
    leader = cluster.wait_leader()
    before = {s.index: rss_mb(s.pid) for s in cluster.servers if s.pid}
    asyncio.run(_fill(leader.rpc_addr, jobs))
    cluster.wait_converged(timeout=120)
    after = {s.index: rss_mb(s.pid) for s in cluster.servers if s.pid}
    out = {
        "jobs": jobs,
        "rss_mb_before": {k: round(v, 1) for k, v in before.items()},
        "rss_mb_after": {k: round(v, 1) for k, v in after.items()},
        "kb_per_job": round(
            statistics.median((after[k] - before[k]) * 1024 / jobs for k in after), 2
        ),
    }
    log(f"memory: {out}")
    return out


async def _fill(addr: str, jobs: int) -> None:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = rpc.JobServiceStub(ch)
        sem = asyncio.Semaphore(128)

        async def one(i: int) -> None:
            async with sem:
                await stub.Register(pb.JobRegisterRequest(job=job(f"mem-{i:06d}")), timeout=30)

        await asyncio.gather(*(one(i) for i in range(jobs)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--latency-writes", type=int, default=300)
    ap.add_argument("--throughput-seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--memory-jobs", type=int, default=10000)
    args = ap.parse_args()
    out: dict[str, object] = {
        "machine": {"cores": __import__("os").cpu_count(), "python": platform.python_version()},
        "servers": 3,
    }
    with tempfile.TemporaryDirectory(prefix="corral-ha-bench-") as tmp:
        with make_cluster(3, Path(tmp)) as cluster:
            out["write_latency"] = bench_latency(cluster, args.latency_writes)
            out["throughput"] = bench_throughput(cluster, args.throughput_seconds, args.concurrency)
            if args.kills:
                out["failover"] = bench_failover(cluster, args.kills)
        with make_cluster(3, Path(tmp) / "mem") as cluster:
            if args.memory_jobs:
                out["memory"] = bench_memory(cluster, args.memory_jobs)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
