"""Benchmark: how long raft log compaction stalls a server (issue "Highly available servers").

PySyncObj compacts the log every 5,000 entries or 300 s by serializing the state
machine. corral runs it in-process (``useFork=False``: gRPC does not survive fork).
Side by side, for states of growing size built through the real FSM:

* ``inline_s``: what PySyncObj's own in-line dump cost the raft thread (our
  ``FSM.snapshot()``, then its pickle and gzip level 9 to a file): the stall
  before ``BackgroundSnapshots``;
* ``freeze_s``: what ``BackgroundSnapshots.serialize`` costs the raft thread now
  (a frozen view of the tables), and ``background_s``, the write on its thread;
* ``max_tick_gap_ms``: the longest gap seen by a thread ticking every 3 ms (like
  raft's) while the background dump runs, against ``idle_max_tick_gap_ms``
  without it: what the GIL still costs raft;
* ``restore_s``: loading a dump (start-up, or a follower installing the leader's).

    .venv/bin/python bench/snapshot_stall.py [--jobs 10000] [--allocs 100000]

Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corral.proto import pb  # noqa: E402
from corral.server.fsm import FSM  # noqa: E402
from corral.server.raft import BackgroundSnapshots  # noqa: E402
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


def inline_dump(fsm: FSM, path: str) -> None:
    """PySyncObj's own path with a custom ``_serialize``: pickle + gzip level 9."""
    import gzip

    from pysyncobj import pickle as raft_pickle

    with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb") as g:
        raft_pickle.dump(([{}, fsm.snapshot()], ("e", 2, 1), ("e", 1, 1), set()), g)


def max_tick_gap(during: Callable[[], None] | None, seconds: float = 0.0) -> float:
    """Longest interval between 3 ms ticks of a thread, while ``during`` runs (or
    for ``seconds`` when idle), in ms."""
    stop = threading.Event()
    gaps: list[float] = []

    def ticker() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.003)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    t = threading.Thread(target=ticker)
    t.start()
    if during is not None:
        during()
    else:
        time.sleep(seconds)
    stop.set()
    t.join()
    return max(gaps) * 1000


def background_dump(fsm: FSM, path: str) -> tuple[float, float, float]:
    """(freeze s, background write s, max tick gap ms) of one ``BackgroundSnapshots`` dump."""
    snaps = BackgroundSnapshots(fsm, path)

    def run() -> None:
        snaps.serialize(path + ".tmp", (("e", 2, 1), ("e", 1, 1), set()))
        while snaps.check() != 2:
            time.sleep(0.005)

    gap = max_tick_gap(run)
    return snaps.last_freeze_s, snaps.last_write_s, gap


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--allocs", type=int, default=100000)
    args = ap.parse_args()
    out = []
    tmp = tempfile.mkdtemp(prefix="corral-snapshot-stall-")
    path = os.path.join(tmp, "raft.snapshot")
    for jobs, allocs in ((1000, 0), (args.jobs, 0), (100, args.allocs // 10), (100, args.allocs)):
        fsm = build(jobs, allocs)
        data = fsm.snapshot()
        runs = [background_dump(fsm, path) for _ in range(3)]
        out.append(
            {
                "jobs": jobs,
                "allocs": allocs,
                "snapshot_bytes": len(data),
                "dump_file_bytes": os.path.getsize(path),
                "inline_s": round(timed(lambda fsm=fsm: inline_dump(fsm, path + ".old")), 3),
                "freeze_s": round(statistics.median(r[0] for r in runs), 4),
                "background_s": round(statistics.median(r[1] for r in runs), 3),
                "max_tick_gap_ms": round(statistics.median(r[2] for r in runs), 1),
                "idle_max_tick_gap_ms": round(max_tick_gap(None, 1.0), 1),
                "restore_s": round(timed(lambda d=data: FSM(StateStore()).restore(d)), 3),
            }
        )
        print(out[-1], file=sys.stderr, flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"benchmark": "snapshot_stall", "results": out}, indent=2))


if __name__ == "__main__":
    main()
