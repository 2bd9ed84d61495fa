"""Benchmark: the pure scheduler on one core (no server, no raft, no I/O).

What it measures, each scenario repeated (default 3 times, median reported):

- ``one_job``: one service job of 10,000 allocations placed on 1,000 nodes by a
  single ``compute_plan`` call (one evaluation), placements per second;
- ``ten_jobs``: ten service jobs of 1,000 allocations each on 1,000 nodes, one
  evaluation per job, each plan committed to the in-memory state before the next
  job is planned (the commit is not timed), placements per second over the ten;
- ``scaling``: on 100, 1,000 and 10,000 nodes: the fixed cost of one evaluation
  (``setup_ms``: listing and shuffling the nodes, for a 1-allocation job), the
  all-in time per placement of a ``--scaling-count`` job (``us_per_placement``,
  which also pays for loading each node's state the first time it is looked at),
  and the marginal time of the next placements once every node is loaded
  (``marginal_us_per_placement``: the sampling loop itself). With node sampling
  (Nomad's LimitIterator) the marginal cost stays about flat: the sample grows as
  log2 of the node count.

Nodes are 4,000 MHz / 8 GB (the scaling nodes are larger, so that room never runs
out); allocations ask 100 MHz / 64 MB and one dynamic port, like the factories'
default job. The state is a real ``StateStore`` filled through the FSM; IDs are real
UUIDs (``structs.new_id``). Prints one JSON document on stdout.

    .venv/bin/python bench/scheduler_bench.py [--repeats 3] [--profile] [--no-gc]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from corral import structs  # noqa: E402
from corral.proto import pb  # noqa: E402
from corral.scheduler import compute_plan  # noqa: E402
from corral.server.fsm import FSM  # noqa: E402
from corral.server.state import StateStore  # noqa: E402
from tests.support import factories as f  # noqa: E402
from tests.support.factories import command  # noqa: E402


def cluster(nodes: int, cpu: int = 4000, memory: int = 8192) -> FSM:
    fsm = FSM(StateStore())
    for _ in range(nodes):
        node = f.node(cpu=cpu, memory=memory)
        fsm.apply(command(node_register=pb.NodeRegisterCommand(node=node)))
    return fsm


def register(fsm: FSM, job: pb.Job) -> pb.Evaluation:
    ev = f.evaluation(job)
    fsm.apply(command(job_register=pb.JobRegisterCommand(job=job, eval=ev)))
    return ev


def timed_plan(fsm: FSM, ev: pb.Evaluation, seed: int = 1) -> tuple[float, int, pb.Plan]:
    snap = fsm.state.snapshot()
    start = time.perf_counter()
    result = compute_plan(snap, ev, seed, structs.new_id)
    elapsed = time.perf_counter() - start
    if result.failed_tg_allocs:
        raise SystemExit(f"placement failed: {dict(result.queued)}")
    return elapsed, result.placed, result.plan


def one_job(nodes: int, count: int) -> dict[str, Any]:
    fsm = cluster(nodes)
    ev = register(fsm, f.job(job_id="big", count=count))
    elapsed, placed, _ = timed_plan(fsm, ev)
    return {"seconds": elapsed, "placed": placed, "placements_per_s": placed / elapsed}


def ten_jobs(nodes: int, jobs: int, count: int) -> dict[str, Any]:
    fsm = cluster(nodes)
    total = 0.0
    placed = 0
    for j in range(jobs):
        ev = register(fsm, f.job(job_id=f"job{j}", count=count))
        elapsed, n, plan = timed_plan(fsm, ev, seed=j)
        total += elapsed
        placed += n
        fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=plan)))
    return {"seconds": total, "placed": placed, "placements_per_s": placed / total}


def scaling(nodes: int, count: int) -> dict[str, Any]:
    """Per-evaluation setup (a 1-allocation job), the all-in cost per placement of a
    ``count`` job, and the marginal cost of the next ``count`` placements once every
    node's state is loaded (the sampling loop proper)."""
    fsm = cluster(nodes, cpu=400_000, memory=800_000)
    one = register(fsm, f.job(job_id="one", count=1))
    small = register(fsm, f.job(job_id="small", count=count))
    big = register(fsm, f.job(job_id="big", count=2 * count))
    setup, _, _ = timed_plan(fsm, one)
    t1, placed, _ = timed_plan(fsm, small)
    t2, _, _ = timed_plan(fsm, big)
    return {
        "setup_ms": setup * 1e3,
        "placed": placed,
        "us_per_placement": t1 / placed * 1e6,
        "marginal_us_per_placement": (t2 - t1) / count * 1e6,
    }


def median_of(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    runs = sorted(runs, key=lambda r: float(r[key]))
    out = dict(runs[len(runs) // 2])
    out["runs"] = [round(float(r[key]), 1) for r in runs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scaling-count", type=int, default=2000)
    ap.add_argument("--profile", action="store_true", help="cProfile the one-job run (stderr)")
    ap.add_argument(
        "--no-gc",
        action="store_true",
        help="disable Python's cyclic GC (its full collections over a large state add noise)",
    )
    args = ap.parse_args()
    if args.no_gc:
        gc.disable()

    if args.profile:
        fsm = cluster(1000)
        ev = register(fsm, f.job(job_id="big", count=10_000))
        snap = fsm.state.snapshot()
        prof = cProfile.Profile()
        prof.enable()
        compute_plan(snap, ev, 1, structs.new_id)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue(), file=sys.stderr)

    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "gc": not args.no_gc,
        },
        "one_job": {
            "shape": "1 service job x 10,000 allocations on 1,000 nodes, one evaluation",
            **median_of([one_job(1000, 10_000) for _ in range(args.repeats)], "placements_per_s"),
        },
        "ten_jobs": {
            "shape": "10 service jobs x 1,000 allocations on 1,000 nodes, one eval per job",
            **median_of(
                [ten_jobs(1000, 10, 1000) for _ in range(args.repeats)], "placements_per_s"
            ),
        },
        "scaling": {},
    }
    for nodes in (100, 1000, 10_000):
        results["scaling"][str(nodes)] = median_of(
            [scaling(nodes, args.scaling_count) for _ in range(args.repeats)], "us_per_placement"
        )
    json.dump(results, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
