"""Benchmark: `corral job run` to every allocation running, docker driver.

For each count N (default 1 and 20) it submits a service job of N busybox httpd
containers (the local corral-busybox:latest image) to a dev agent that it starts
itself, and measures the time from launching `corral job run` to the moment the
server reports all N allocations `running`. Side by side, in the same run, it
measures the time to start the same N containers with plain `docker run -d` in
parallel (N threads), and prints the ratio corral / docker. Each measurement is
repeated (default 3) and medians are reported. Everything it started (jobs,
agent, containers) is cleaned up at the end.

    .venv/bin/python bench/job_run_docker.py [--counts 1,20] [--repeats 3]

Prints one JSON document on stdout (progress goes to stderr); record results in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.agent import DevAgent, corral_command  # noqa: E402
from tests.support.env import TEST_IMAGE  # noqa: E402

CONTAINER_PORT = 8080
BASELINE_LABEL = "corral-bench"

JOB_HCL = """\
job "{job_id}" {{
  datacenters = ["dc1"]
  type        = "service"

  group "web" {{
    count = {count}

    network {{
      port "http" {{
        to = {port}
      }}
    }}

    task "httpd" {{
      driver       = "docker"
      # busybox httpd as PID 1 ignores SIGTERM: do not wait 5s per stop.
      kill_timeout = "1s"

      config {{
        image   = "{image}"
        command = "httpd"
        args    = ["-f", "-p", "{port}", "-h", "/www"]
        ports   = ["http"]
      }}

      resources {{
        cpu    = {cpu}
        memory = {memory}
      }}
    }}
  }}
}}
"""


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def summary(runs: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(runs), 3),
        "min_s": round(min(runs), 3),
        "max_s": round(max(runs), 3),
        "runs_s": [round(r, 3) for r in runs],
    }


# ---------------------------------------------------------------- corral


def running_count(agent: DevAgent, job_id: str) -> int:
    return sum(
        1
        for a in agent.allocations(job_id)
        if a.desired_status == "run" and a.client_status == "running"
    )


def failed_allocs(agent: DevAgent, job_id: str) -> list[str]:
    return [
        f"{a.id[:8]}: {a.client_status} {a.client_description}"
        for a in agent.allocations(job_id)
        if a.client_status in ("failed", "lost")
    ]


def time_corral(
    agent: DevAgent, workdir: Path, count: int, args: argparse.Namespace, run: int
) -> float:
    job_id = f"bench-{count}-{run}-{uuid.uuid4().hex[:6]}"
    jobfile = workdir / f"{job_id}.hcl"
    jobfile.write_text(
        JOB_HCL.format(
            job_id=job_id,
            count=count,
            image=args.image,
            port=CONTAINER_PORT,
            cpu=args.cpu,
            memory=args.memory,
        )
    )
    env = dict(os.environ, CORRAL_ADDR=agent.rpc_addr)
    started = time.monotonic()
    # The CLI may monitor the evaluation; the clock stops when the server says all
    # N allocations run, whether or not the CLI has returned yet.
    cli = subprocess.Popen(
        [*corral_command(), "job", "run", str(jobfile)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = started + args.timeout
    elapsed = None
    try:
        while time.monotonic() < deadline:
            if running_count(agent, job_id) >= count:
                elapsed = time.monotonic() - started
                break
            if cli.poll() not in (None, 0):
                out = cli.stdout.read() if cli.stdout else ""
                raise RuntimeError(f"corral job run exited {cli.returncode}:\n{out}")
            failed = failed_allocs(agent, job_id)
            if failed:
                raise RuntimeError(f"allocations of {job_id} failed: {failed}")
            time.sleep(0.02)
        if elapsed is None:
            raise RuntimeError(
                f"{job_id}: not all {count} allocations running after {args.timeout}s "
                f"({running_count(agent, job_id)} are)\n{agent.log_tail(30)}"
            )
        try:
            cli.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cli.kill()
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        stop_job(agent, job_id, env)
    return elapsed


def stop_job(agent: DevAgent, job_id: str, env: dict[str, str]) -> None:
    subprocess.run(
        [*corral_command(), "job", "stop", job_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        active = [a for a in agent.allocations(job_id) if a.client_status in ("pending", "running")]
        if not active:
            return
        time.sleep(0.2)
    log(f"warning: allocations of {job_id} still running 120s after job stop")


# ---------------------------------------------------------------- plain docker


def time_docker(count: int, args: argparse.Namespace, run: int) -> float:
    tag = f"{BASELINE_LABEL}-{uuid.uuid4().hex[:6]}"

    def one(i: int) -> None:
        res = docker(
            "run",
            "-d",
            "--name",
            f"{tag}-{i}",
            "--label",
            f"{BASELINE_LABEL}={tag}",
            "--memory",
            f"{args.memory}m",
            "--cpu-shares",
            str(args.cpu),
            "-p",
            f"127.0.0.1::{CONTAINER_PORT}",
            args.image,
            "httpd",
            "-f",
            "-p",
            str(CONTAINER_PORT),
            "-h",
            "/www",
        )
        if res.returncode != 0:
            raise RuntimeError(f"docker run failed: {res.stderr.strip()}")

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            list(pool.map(one, range(count)))
        return time.monotonic() - started
    finally:
        remove_baseline_containers(f"{BASELINE_LABEL}={tag}")


def remove_baseline_containers(label: str = BASELINE_LABEL) -> int:
    ids = docker("ps", "-aq", "--filter", f"label={label}").stdout.split()
    if ids:
        docker("rm", "-f", *ids, timeout=300)
    return len(ids)


def containers_of_nodes(node_ids: list[str]) -> set[str]:
    """Containers that corral's docker driver started for these nodes (label
    corral.node_id): only the benchmark's own, never another run's."""
    found: set[str] = set()
    for node_id in node_ids:
        out = docker("ps", "-aq", "--no-trunc", "--filter", f"label=corral.node_id={node_id}")
        found.update(out.stdout.split())
    return found


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,20", help="comma-separated job counts [1,20]")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement [3]")
    parser.add_argument("--image", default=TEST_IMAGE)
    parser.add_argument("--cpu", type=int, default=50, help="MHz per task [50]")
    parser.add_argument("--memory", type=int, default=32, help="MB per task [32]")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per run [180]")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c.strip()]

    if docker("info", timeout=20).returncode != 0:
        log("no Docker engine answers; run scripts/ensure-docker.sh")
        return 1
    if docker("image", "inspect", args.image).returncode != 0:
        log(f"image {args.image} missing; run scripts/build-image.sh")
        return 1
    server_version = docker("version", "--format", "{{.Server.Version}}").stdout.strip()

    node_ids: list[str] = []
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        workdir = Path(tmp)
        agent = DevAgent(base_dir=workdir / "agent", start_timeout=60)
        try:
            agent.start()
            node_ids = [n.id for n in agent.nodes()]
            log(f"dev agent ready at {agent.rpc_addr}")
            for count in counts:
                corral_runs: list[float] = []
                docker_runs: list[float] = []
                for run in range(args.repeats):
                    # Alternate the order so that neither side always runs warm.
                    if run % 2 == 0:
                        corral_runs.append(time_corral(agent, workdir, count, args, run))
                        docker_runs.append(time_docker(count, args, run))
                    else:
                        docker_runs.append(time_docker(count, args, run))
                        corral_runs.append(time_corral(agent, workdir, count, args, run))
                    log(
                        f"count={count} run={run}: corral {corral_runs[-1]:.2f}s, "
                        f"docker run -d {docker_runs[-1]:.2f}s"
                    )
                corral = summary(corral_runs)
                plain = summary(docker_runs)
                results.append(
                    {
                        "count": count,
                        "corral_job_run_to_running": corral,
                        "docker_run_parallel": plain,
                        "ratio_median": round(corral["median_s"] / plain["median_s"], 2)
                        if plain["median_s"]
                        else None,
                    }
                )
        finally:
            agent.stop()
            removed = remove_baseline_containers()
            leftovers = containers_of_nodes(node_ids)
            if leftovers:
                docker("rm", "-f", *sorted(leftovers), timeout=300)
            if removed or leftovers:
                log(f"cleaned up {removed + len(leftovers)} leftover container(s)")

    print(
        json.dumps(
            {
                "benchmark": "job_run_docker",
                "what": "seconds from launching `corral job run` to all N allocations "
                "running, vs. N parallel `docker run -d` of the same container",
                "machine": {
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "docker_server": server_version,
                },
                "image": args.image,
                "repeats": args.repeats,
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
