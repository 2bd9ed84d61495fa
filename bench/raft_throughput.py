"""Benchmark: what the consensus engine commits per second, without the RPC layer.

Three processes on loopback, each one real ``PySyncObjConsensus`` (cluster key set,
so PySyncObj encrypts with Fernet; journal on disk) around the real ``FSM`` and
state store, exactly as a server builds them. In the leader's process, writer
threads propose job registrations (a job plus its evaluation, the command a
``job run`` proposes) for a fixed time, in two modes side by side:

  * ``group_commit``: through ``GroupCommit``, as the server does (concurrent
    writes share one raft entry);
  * ``entry_per_write``: each write its own raft entry (``Consensus.propose``).

A write counts when the leader's FSM applied it (committed by a majority). At the
end every server's state digest must be identical and hold every counted job.

This isolates the engine from gRPC: ``bench/ha_bench.py`` measures the same
registrations end to end, where the Python gRPC server is the limit.

    .venv/bin/python bench/raft_throughput.py [--seconds 10] [--writers 64] [--repeats 3]

Prints one JSON document on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import platform
import secrets
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import factories as f  # noqa: E402
from tests.support.env import free_port  # noqa: E402
from tests.support.factories import command  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def register_command(job_id: str) -> bytes:
    """The command ``Server.register_job`` proposes for a small batch job."""
    from corral import structs
    from corral.proto import pb

    job = f.job(job_id=job_id, count=0, ports=(), job_type=structs.JOB_TYPE_BATCH)
    return command(job_register=pb.JobRegisterCommand(job=job, eval=f.evaluation(job)))


def server_process(
    address: str, peers: list[str], data_dir: str, key: str, conn: Connection
) -> None:
    """One raft member. Answers the parent's requests on ``conn``."""
    from corral.server.fsm import FSM
    from corral.server.group_commit import GroupCommit
    from corral.server.raft import PySyncObjConsensus
    from corral.server.state import StateStore

    fsm = FSM(StateStore())
    raft = PySyncObjConsensus(
        fsm, address, peers, data_dir, password=key, append_entries_period=0.003
    )
    raft.start()
    group = GroupCommit(raft)
    while True:
        req = conn.recv()
        if req[0] == "is_leader":
            conn.send(raft.is_leader())
        elif req[0] == "digest":
            conn.send((fsm.digest(), len(fsm.state.jobs())))
        elif req[0] == "load":
            _, mode, seconds, writers, prefix = req
            conn.send(run_load(raft, group, mode, seconds, writers, prefix))
        elif req[0] == "stop":
            group.stop()
            raft.stop()
            conn.send(True)
            return


def run_load(raft, group, mode: str, seconds: float, writers: int, prefix: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Writers propose until the deadline. A write is ``committed`` once applied;
    ``refused`` when the engine never appended it (its queue was full: safe to
    retry); ``unknown`` when the outcome is unknown (timed out while waiting)."""
    from corral.server.raft import NotLeaderError

    ok = [0] * writers
    refused = [0] * writers
    unknown = [0] * writers
    deadline = time.monotonic() + seconds

    def writer(w: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            data = register_command(f"{prefix}-{w}-{n}")
            try:
                if mode == "group_commit":
                    result = group.propose(data, timeout=10)
                else:
                    result = raft.propose(data, timeout=10)
                if getattr(result, "error", ""):
                    raise SystemExit(f"the FSM rejected a write: {result.error}")
                ok[w] += 1
            except NotLeaderError:
                refused[w] += 1
            except Exception:
                unknown[w] += 1

    t0 = time.monotonic()
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return {
        "committed": sum(ok),
        "refused": sum(refused),
        "unknown": sum(unknown),
        "seconds": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--writers", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    # A cluster key like the one `corral operator keygen` prints.
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    ctx = mp.get_context("spawn")
    addrs = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    out: dict[str, object] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "servers": 3,
        "writers": args.writers,
        "seconds": args.seconds,
    }
    with tempfile.TemporaryDirectory(prefix="corral-raft-bench-") as tmp:
        conns: list[Connection] = []
        procs = []
        for i, addr in enumerate(addrs):
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=server_process,
                args=(addr, addrs, os.path.join(tmp, f"s{i}"), key, child),
                daemon=True,
            )
            p.start()
            conns.append(parent)
            procs.append(p)
        try:
            deadline = time.monotonic() + 30
            leader = None
            while leader is None:
                for c in conns:
                    c.send(("is_leader",))
                    if c.recv():
                        leader = c
                        break
                else:
                    if time.monotonic() > deadline:
                        raise SystemExit("no leader elected in 30 s")
                    time.sleep(0.1)
            runs: dict[str, list[float]] = {"group_commit": [], "entry_per_write": []}
            refused = {mode: 0 for mode in runs}
            unknown = {mode: 0 for mode in runs}
            total = 0
            for r in range(args.repeats):
                # Alternate which mode goes first: the machine is shared and noisy.
                modes = list(runs) if r % 2 == 0 else list(reversed(runs))
                for mode in modes:
                    leader.send(("load", mode, args.seconds, args.writers, f"{mode}-{r}"))
                    res = leader.recv()
                    total += int(res["committed"])
                    refused[mode] += int(res["refused"])
                    unknown[mode] += int(res["unknown"])
                    rate = res["committed"] / res["seconds"]
                    runs[mode].append(rate)
                    log(
                        f"run {r + 1} {mode}: {res['committed']} in {res['seconds']:.2f}s "
                        f"= {rate:.0f}/s (refused {res['refused']}, unknown {res['unknown']})"
                    )
            # Every server applied every committed write, and they agree. Writes of
            # unknown outcome may or may not be there; refused ones never are
            # (not checked one by one: counted).
            deadline = time.monotonic() + 30
            most = total + sum(unknown.values())
            while True:
                states = []
                for c in conns:
                    c.send(("digest",))
                    states.append(c.recv())
                if len(set(states)) == 1 and total <= states[0][1] <= most:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"servers disagree or miss writes: {states}, committed {total}"
                    )
                time.sleep(0.2)
            out["committed_total"] = total
            out["jobs_on_every_server"] = states[0][1]
            for mode, rates in runs.items():
                out[mode] = {
                    "writes_per_s_median": round(statistics.median(rates)),
                    "runs": [round(x) for x in rates],
                    "refused": refused[mode],
                    "unknown": unknown[mode],
                }
            gc = statistics.median(runs["group_commit"])
            out["ratio_group_commit_to_entry_per_write"] = round(
                gc / statistics.median(runs["entry_per_write"]), 2
            )
        finally:
            for c in conns:
                try:
                    c.send(("stop",))
                    c.recv()
                except (OSError, EOFError):
                    pass
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
