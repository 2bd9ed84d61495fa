"""Benchmark: how long raft log compaction stalls a server (issue "Highly available servers").

PySyncObj compacts the log every 5,000 entries or 300 s by serializing the state
machine. corral runs it in-process (``useFork=False``: gRPC does not survive fork),
so the serialization time is a stall of the raft thread. This measures
``FSM.snapshot()`` (and ``restore``) for states of growing size, built through the
real FSM.

    .venv/bin/python bench/snapshot_stall.py [--jobs 10000] [--allocs 100000]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corral.proto import pb  # noqa: E402
from corral.server.fsm import FSM  # noqa: E402
from corral.server.state import StateStore  # noqa: E402
from tests.support import factories as f  # noqa: E402
from tests.support.factories import command  # noqa: E402


def build(jobs: int, allocs: int) -> FSM:
    fsm = FSM(StateStore())
    nodes = [f.node(cpu=10**7, memory=10**7) for _ in range(1000)]
    for n in nodes:
        fsm.apply(command(node_register=pb.NodeRegisterCommand(node=n)))
    per_job = max(allocs // max(jobs, 1), 0)
    for j in range(jobs):
        job = f.job(job_id=f"job-{j:06d}", count=per_job)
        fsm.apply(command(job_register=pb.JobRegisterCommand(job=job, eval=f.evaluation(job))))
        if per_job:
            plan = pb.Plan()
            for i in range(per_job):
                node = nodes[(j * per_job + i) % len(nodes)]
                a = plan.node_allocation[node.id].allocs.add(
                    id=f.uid("c"),
                    namespace="default",
                    job_id=job.id,
                    task_group="web",
                    node_id=node.id,
                    desired_status="run",
                    alloc_index=i,
                )
                a.allocated_resources.tasks["server"].cpu.cpu_shares = 100
                a.allocated_resources.tasks["server"].memory.memory_mb = 64
                a.allocated_resources.shared.ports.add(label="http", value=20000 + i)
            fsm.apply(command(apply_plan=pb.ApplyPlanCommand(plan=plan)))
    return fsm


def timed(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--allocs", type=int, default=100000)
    args = ap.parse_args()
    out = []
    for jobs, allocs in ((1000, 0), (args.jobs, 0), (100, args.allocs // 10), (100, args.allocs)):
        fsm = build(jobs, allocs)
        data = fsm.snapshot()
        out.append(
            {
                "jobs": jobs,
                "allocs": allocs,
                "snapshot_bytes": len(data),
                "snapshot_s": round(timed(fsm.snapshot), 3),
                "restore_s": round(timed(lambda d=data: FSM(StateStore()).restore(d)), 3),
            }
        )
        print(out[-1], file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "snapshot_stall", "results": out}, indent=2))


if __name__ == "__main__":
    main()
