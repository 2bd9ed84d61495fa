"""Benchmark: a rolling update under load through Traefik, corral beside Docker Swarm.

For each instance count N (default 4 and 20) it measures, while a load generator
sends requests through Traefik without pause (``tests/e2e/test_rolling.py``'s
``Load``: loopback only, bounded in count and time, a connection error, timeout or
any non-2xx answer is a failed request):

* corral: ``examples/rolling.hcl`` with ``count = N`` (busybox httpd, an http
  check every 1s, ``min_healthy_time`` 2s, ``shutdown_delay`` 3s) on a dev agent,
  behind Traefik's Nomad provider (watch mode, default 2s providers throttle),
  updated v1 -> v2 with ``corral job run``. The deployment duration is the wall
  time of ``corral job run`` (it returns when the deployment succeeded).
* Docker Swarm: the same image, script and instance count as a Swarm service
  (``docker service create --init``, a health check every 1s), updated v1 -> v2
  with ``docker service update --update-order start-first --env-add VERSION=v2``
  and the same parallelism. Its duration is both the wall time of the (attached)
  ``docker service update`` and the ``UpdateStatus`` StartedAt -> CompletedAt
  span the manager records.

Swarm's own front door, the routing mesh (ingress overlay + IPVS), needs the
kernel's ip_vs; where it is missing (``/proc/net/ip_vs`` absent, as in the sandbox
this was written in) a published port answers nothing. Then, and by default, the
Swarm service's failed requests are measured through the same Traefik process with
its Docker provider: the service's task containers (``--container-label``
traefik labels) on a swarm-scoped *bridge* network, whose container IPs the proxy
on this host reaches without overlay networking. (Traefik's Swarm provider finds
no task IP on such a network, and its VIP mode needs the routing mesh.) The Docker
provider follows container events and skips a container until its health check
passes, so Swarm is measured with the best proxy it can have here. ``--swarm-front
mesh`` measures through the published port instead when the routing mesh works.

The max_parallel (Swarm: ``--update-parallelism``) per count is given by
``--parallel`` (default ``4:1,20:4``: 20 instances one at a time would take about
a minute and a half).

    .venv/bin/python bench/rolling.py [--counts 4,20] [--parallel 4:1,20:4]
        [--workers 2] [--no-swarm] [--swarm-front traefik|mesh]

Prints one JSON document on stdout (progress on stderr). It leaves the Docker
engine as it found it: its corral jobs are purged and their containers removed,
its Swarm services and network are removed, and ``docker swarm leave --force``
runs only when the benchmark initialised the swarm (with the
``docker_gwbridge`` network that ``swarm init`` creates).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from corral.api.client import CorralClient  # noqa: E402
from tests.e2e.test_rolling import (  # noqa: E402
    Job,
    Load,
    LoadResult,
    only_version,
    wait_answers,
    wait_serving,
)
from tests.e2e.test_traefik import Traefik  # noqa: E402
from tests.support.agent import DevAgent  # noqa: E402
from tests.support.env import TEST_IMAGE, docker_available, free_port, traefik_binary  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

PREFIX = "bench-roll"
#: After the update ends, how long the load goes on (the last old instance leaves
#: the proxy: shutdown_delay / Traefik's refresh) and how many answers of the new
#: version only must follow.
DRAIN = 3.5
SETTLE_ANSWERS = 200
DOCKER_TIMEOUT = 300  # seconds, any one docker CLI call
SWARM_SCRIPT = (
    'mkdir -p /www && echo "rolling $VERSION swarm $HOSTNAME" > /www/index.html && '
    'if [ -n "$HEALTH" ]; then echo "$HEALTH" > /www/health; fi && '
    "exec httpd -f -p 8080 -h /www"
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def docker(*args: str, timeout: float = DOCKER_TIMEOUT, check: bool = True) -> str:
    out = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and out.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def parse_parallel(text: str) -> dict[int, int]:
    out = {}
    for part in text.split(","):
        if part.strip():
            count, _, parallel = part.partition(":")
            out[int(count)] = int(parallel)
    return out


def load_numbers(result: LoadResult) -> dict[str, Any]:
    return {
        "requests_sent": result.sent,
        "requests_failed": result.failed,
        "p50_ms": round(result.percentile(50), 2),
        "p99_ms": round(result.percentile(99), 2),
        "max_ms": round(max(result.latencies, default=0.0) * 1000, 2),
        "load_window_s": round(result.duration, 2),
        "versions_seen": result.versions(),
        "first_failures": result.failures[:5],
    }


# ---------------------------------------------------------------- corral


def bench_corral(
    agent: DevAgent,
    api: CorralClient,
    traefik: Traefik,
    tmp: Path,
    n: int,
    parallel: int,
    workers: int,
) -> dict[str, Any]:
    job = Job(f"{PREFIX}-{n}", agent, api, traefik, tmp)
    try:
        log(f"corral: {n} instances v1")
        out = job.run("v1", count=n, max_parallel=parallel)
        if out.returncode != 0:
            raise RuntimeError(f"corral job run v1: {out.stdout}{out.stderr}")
        job.wait_serving({"v1"}, n, timeout=120)
        with Load(traefik.web_port, job.host, workers=workers, max_seconds=900) as load:
            wait_answers(load, 0, only_version("v1", 50), "v1 under load", 30)
            log(f"corral: v1 -> v2, max_parallel {parallel}")
            started = time.monotonic()
            out = job.run("v2", count=n, max_parallel=parallel)
            duration = time.monotonic() - started
            done = load.elapsed
            settled = True
            try:
                wait_answers(load, done + DRAIN, only_version("v2", SETTLE_ANSWERS), "v2", 60)
            except AssertionError:
                settled = False
        result = load.stop()
        d = job.latest_deployment()
        return {
            "instances": n,
            "max_parallel": parallel,
            "job_run_exit": out.returncode,
            "deployment_status": d.status,
            "deployment_duration_s": round(duration, 2),
            "only_v2_after": settled,
            **load_numbers(result),
        }
    finally:
        agent.cli("job", "stop", "--purge", job.name, timeout=120)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not job.containers(), timeout=60, message="corral containers gone")


# ---------------------------------------------------------------- swarm


class Swarm:
    """The engine's swarm for the benchmark, and what to undo at the end."""

    def __init__(self) -> None:
        self.created_swarm = False
        self.had_gwbridge = False
        self.network = f"{PREFIX}-net"
        self.services: list[str] = []
        self.network_created = False

    def state(self) -> str:
        return docker("info", "--format", "{{.Swarm.LocalNodeState}}", timeout=30)

    def setup(self) -> None:
        self.had_gwbridge = bool(
            docker("network", "ls", "-q", "--filter", "name=^docker_gwbridge$", timeout=30)
        )
        state = self.state()
        if state == "inactive":
            log("swarm: docker swarm init --advertise-addr 127.0.0.1")
            docker("swarm", "init", "--advertise-addr", "127.0.0.1", timeout=120)
            self.created_swarm = True
        elif state != "active":
            raise RuntimeError(f"this engine's swarm is {state!r}: not touching it")
        elif docker("info", "--format", "{{.Swarm.ControlAvailable}}", timeout=30) != "true":
            raise RuntimeError("this engine is in a swarm but not a manager")
        # A swarm-scoped bridge network: the tasks get IPs on a local bridge that
        # the proxy on this host reaches without overlay networking.
        docker("network", "create", "--scope", "swarm", "--driver", "bridge", self.network)
        self.network_created = True

    def mesh_works(self) -> bool:
        return Path("/proc/net/ip_vs").exists()

    def create(self, name: str, n: int, parallel: int, publish: int | None) -> None:
        args = [
            "service",
            "create",
            "--detach=false",
            "--quiet",
            "--name",
            name,
            "--replicas",
            str(n),
            "--init",
            "--network",
            self.network,
            "--env",
            "VERSION=v1",
            "--env",
            "HEALTH=ok",
            "--health-cmd",
            "wget -q -O /dev/null http://127.0.0.1:8080/health",
            "--health-interval",
            "1s",
            "--health-timeout",
            "1s",
            "--health-retries",
            "1",
            "--update-order",
            "start-first",
            "--update-parallelism",
            str(parallel),
            "--container-label",
            "traefik.enable=true",
            "--container-label",
            f"traefik.http.routers.{name}.rule=Host(`{name}.test`)",
            "--container-label",
            f"traefik.http.services.{name}.loadbalancer.server.port=8080",
        ]
        if publish is not None:
            args += ["--publish", f"published={publish},target=8080"]
        self.services.append(name)
        docker(*args, TEST_IMAGE, "/bin/sh", "-c", SWARM_SCRIPT)

    def update_status(self, name: str) -> dict[str, Any]:
        raw = docker("service", "inspect", name, "--format", "{{json .UpdateStatus}}", timeout=30)
        return json.loads(raw) if raw and raw != "null" else {}

    def remove(self, name: str) -> None:
        docker("service", "rm", name, check=False, timeout=60)
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: (
                    not docker(
                        "ps",
                        "-aq",
                        "--filter",
                        f"label=com.docker.swarm.service.name={name}",
                        timeout=30,
                    )
                ),
                timeout=60,
                interval=0.5,
                message=f"the containers of {name} gone",
            )
        if name in self.services:
            self.services.remove(name)

    def teardown(self) -> None:
        for name in list(self.services):
            with contextlib.suppress(Exception):
                self.remove(name)
        if self.network_created:
            with contextlib.suppress(Exception):
                docker("network", "rm", self.network, check=False, timeout=60)
        if self.created_swarm:
            log("swarm: docker swarm leave --force")
            with contextlib.suppress(Exception):
                docker("swarm", "leave", "--force", check=False, timeout=120)
            if not self.had_gwbridge:
                with contextlib.suppress(Exception):
                    wait_for(
                        lambda: (
                            not docker(
                                "ps", "-aq", "--filter", "network=docker_gwbridge", timeout=30
                            )
                        ),
                        timeout=30,
                        interval=0.5,
                        message="no container left on docker_gwbridge",
                    )
                    docker("network", "rm", "docker_gwbridge", check=False, timeout=60)


def _timestamp(text: str) -> float:
    """Seconds since the epoch for Docker's RFC 3339 (nanoseconds) timestamps."""
    from datetime import datetime

    head, _, frac = text.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(head + "+00:00").timestamp()
    return whole + (float(f"0.{frac}") if frac else 0.0)


class MeshProxy:
    """The routing mesh's published port, spoken to like a Traefik (``web_port``)."""

    def __init__(self, port: int) -> None:
        self.web_port = port


def bench_swarm(
    swarm: Swarm,
    traefik: Traefik,
    n: int,
    parallel: int,
    workers: int,
    front: str,
) -> dict[str, Any]:
    name = f"{PREFIX}-swarm-{n}"
    host = f"{name}.test"
    publish = free_port() if front == "mesh" else None
    proxy: Any = traefik if publish is None else MeshProxy(publish)
    try:
        log(f"swarm: {n} tasks v1")
        swarm.create(name, n, parallel, publish)
        if publish is None:
            wait_serving(traefik, host, {"v1"}, n, timeout=120)
        with Load(proxy.web_port, host, workers=workers, max_seconds=900) as load:
            wait_answers(load, 0, only_version("v1", 50), "v1 under load", 60)
            log(f"swarm: v1 -> v2, start-first, parallelism {parallel}")
            started = time.monotonic()
            out = subprocess.run(
                [
                    "docker",
                    "service",
                    "update",
                    "--detach=false",
                    "--quiet",
                    "--update-order",
                    "start-first",
                    "--update-parallelism",
                    str(parallel),
                    "--env-add",
                    "VERSION=v2",
                    name,
                ],
                capture_output=True,
                text=True,
                timeout=DOCKER_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            duration = time.monotonic() - started
            done = load.elapsed
            settled = True
            try:
                wait_answers(load, done + DRAIN, only_version("v2", SETTLE_ANSWERS), "v2", 60)
            except AssertionError:
                settled = False
        result = load.stop()
        status = swarm.update_status(name)
        span = None
        if status.get("StartedAt") and status.get("CompletedAt"):
            span = round(_timestamp(status["CompletedAt"]) - _timestamp(status["StartedAt"]), 2)
        return {
            "instances": n,
            "update_parallelism": parallel,
            "front": "routing mesh" if publish is not None else "traefik docker provider",
            "update_exit": out.returncode,
            "update_state": status.get("State", ""),
            "update_duration_s": round(duration, 2),
            "update_status_span_s": span,
            "only_v2_after": settled,
            **load_numbers(result),
        }
    finally:
        swarm.remove(name)


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="4,20", help="instance counts (default 4,20)")
    parser.add_argument(
        "--parallel", default="4:1,20:4", help="max_parallel per count (default 4:1,20:4)"
    )
    parser.add_argument("--workers", type=int, default=2, help="load generator threads")
    parser.add_argument("--no-swarm", action="store_true", help="corral only")
    parser.add_argument("--swarm-front", choices=("traefik", "mesh"), default="traefik")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    parallel = parse_parallel(args.parallel)

    ok, reason = docker_available()
    binary = traefik_binary()
    if not ok or binary is None:
        print(json.dumps({"skipped": reason or "no traefik binary"}))
        return 1

    # SIGTERM (a CI step's timeout) unwinds like Ctrl-C, through every cleanup below.
    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)

    report: dict[str, Any] = {
        "benchmark": "rolling",
        "host": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "image": TEST_IMAGE,
        "load": {"workers": args.workers, "keepalive": True, "target": "127.0.0.1 (Traefik)"},
        "corral": [],
        "swarm": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-rolling-"))
    swarm = Swarm()
    swarm_flags: tuple[str, ...] = ()
    try:
        if not args.no_swarm:
            swarm.setup()
            mesh = swarm.mesh_works()
            report["swarm_notes"] = {
                "routing_mesh_available": mesh,
                "front": args.swarm_front,
                "why": (
                    "the routing mesh (ingress overlay + IPVS) needs the kernel's ip_vs; "
                    "/proc/net/ip_vs is "
                    + ("present" if mesh else "absent here, so a published port answers nothing")
                    + "; measured through the same Traefik process (Docker provider: "
                    "task containers on a swarm-scoped bridge network, event-driven, "
                    "unhealthy containers skipped)"
                    if args.swarm_front == "traefik"
                    else "measured through the published port (routing mesh)"
                ),
                "health_check": "wget /health every 1s (no min_healthy_time equivalent)",
            }
            swarm_flags = (
                "--providers.docker=true",
                f"--providers.docker.network={swarm.network}",
                "--providers.docker.exposedByDefault=false",
            )
        with DevAgent(base_dir=tmp / "agent") as agent, CorralClient(agent.rpc_addr) as api:
            # Traefik's default providers throttle (2s), as users run it; the same
            # binary and process routes to corral (Nomad provider) and Swarm.
            traefik = Traefik(binary, agent.http_url, tmp, throttle="2s", extra=swarm_flags)
            try:
                traefik.start()
                report["traefik"] = {"providers_throttle": "2s"}
                for n in counts:
                    p = parallel.get(n, 1)
                    report["corral"].append(
                        bench_corral(agent, api, traefik, tmp, n, p, args.workers)
                    )
                    log(f"corral {n}: {json.dumps(report['corral'][-1])}")
                    if not args.no_swarm:
                        report["swarm"].append(
                            bench_swarm(swarm, traefik, n, p, args.workers, args.swarm_front)
                        )
                        log(f"swarm {n}: {json.dumps(report['swarm'][-1])}")
            finally:
                traefik.stop()
    except BaseException:
        log(f"failed; logs (agent, traefik) kept in {tmp}")
        raise
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        swarm.teardown()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
