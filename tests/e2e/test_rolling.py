"""End to end: zero-downtime rolling updates of ``examples/rolling.hcl`` behind the
real Traefik binary, under sustained load, with real containers and a dev agent.

Each test runs its own copy of the example (its own job, service and Host rule,
on one shared agent and one Traefik), changes ``VERSION`` (and ``HEALTH``,
``count``, ``canary``) the way a user edits the file, and keeps a load generator
sending requests through Traefik without pause the whole time: a connection
error, a timeout or any non-2xx answer is a failed request.

Traefik runs with its default providers throttle (2s), as a user would run it:
the example's ``shutdown_delay`` (3s) must cover it.

Every wait polls with a deadline; the load generator is bounded in count and time;
everything listens on 127.0.0.1 only; containers are removed even when a test fails.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.api.client import CorralClient
from corral.proto import pb
from corral.server.fsm import spec_changed
from tests.e2e.test_traefik import Traefik
from tests.support.agent import DevAgent
from tests.support.wait import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.traefik]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "rolling.hcl"
RUN_TIMEOUT = 240  # one `corral job run` that follows a rollout to its end
#: Traefik's default: what a user gets without --providers.providersThrottleDuration.
TRAEFIK_THROTTLE = "2s"

# ---------------------------------------------------------------- the load generator


@dataclass
class Answer:
    at: float  # seconds since the load started
    version: str
    alloc: str


@dataclass
class LoadResult:
    sent: int
    failed: int
    duration: float
    latencies: list[float]  # seconds, every request (failed ones included)
    failures: list[str]  # the first few, for the assertion message
    answers: list[Answer] = field(repr=False)

    def percentile(self, p: float) -> float:
        """The p-th percentile latency in milliseconds (nearest rank)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[rank] * 1000

    def versions(self) -> list[str]:
        """The versions that answered, in the order they first answered."""
        seen: dict[str, None] = {}
        for a in self.answers:
            seen.setdefault(a.version, None)
        return list(seen)

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "duration_s": round(self.duration, 2),
            "rps": round(self.sent / self.duration, 1) if self.duration else 0.0,
            "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 2) if self.latencies else 0.0,
        }


_BODY = re.compile(r"^rolling (\S+) \S+ (\S+)")


class Load:
    """Requests through a proxy without pause, from ``workers`` threads.

    Bounded: it stops after ``max_requests`` requests or ``max_seconds``, whichever
    comes first, or at ``stop()``. Loopback only. With ``keepalive`` each worker
    keeps one HTTP/1.1 connection open to the proxy (and opens a new one after an
    error); without, every request opens its own connection. Answers are expected
    to be the example's page (``rolling <version> <alloc name> <alloc id>``).
    """

    MAX_FAILURES_KEPT = 20

    def __init__(
        self,
        port: int,
        host: str,
        *,
        workers: int = 1,
        max_requests: int = 500_000,
        max_seconds: float = 300.0,
        keepalive: bool = True,
        timeout: float = 5.0,
        path: str = "/",
    ) -> None:
        self.port = port
        self.host = host
        self.workers = workers
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.keepalive = keepalive
        self.timeout = timeout
        self.path = path
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sent = 0
        self._failed = 0
        self._failures: list[str] = []
        self._latencies: list[float] = []
        self._answers: list[Answer] = []
        self._started = 0.0
        self._ended = 0.0

    # ------------------------------------------------------------ control
    def start(self) -> Load:
        self._started = time.monotonic()
        for n in range(self.workers):
            t = threading.Thread(target=self._worker, name=f"load-{n}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        if not self._ended:
            self._ended = time.monotonic()
        return self.result()

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ live views
    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    @property
    def sent(self) -> int:
        with self._lock:
            return self._sent

    @property
    def failed(self) -> int:
        with self._lock:
            return self._failed

    def answers_since(self, since: float) -> list[Answer]:
        """Answers at or after ``since`` (seconds since the start)."""
        with self._lock:
            answers = list(self._answers)
        return [a for a in answers if a.at >= since]

    def result(self) -> LoadResult:
        with self._lock:
            end = self._ended or time.monotonic()
            return LoadResult(
                sent=self._sent,
                failed=self._failed,
                duration=end - self._started,
                latencies=list(self._latencies),
                failures=list(self._failures),
                answers=list(self._answers),
            )

    # ------------------------------------------------------------ workers
    def _budget_left(self) -> bool:
        if self._stop.is_set() or self.elapsed >= self.max_seconds:
            return False
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _worker(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {"Host": self.host}
        if not self.keepalive:
            headers["Connection"] = "close"
        try:
            while self._budget_left():
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                began = time.monotonic()
                status, body, error = 0, "", ""
                try:
                    conn.request("GET", self.path, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read().decode(errors="replace")
                    status = resp.status
                    if not self.keepalive or resp.will_close:
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as exc:
                    error = f"{exc.__class__.__name__}: {exc}"
                    if conn is not None:
                        conn.close()
                    conn = None
                now = time.monotonic()
                self._record(began - self._started, now - began, status, body, error)
        finally:
            if conn is not None:
                conn.close()
            with self._lock:
                self._ended = max(self._ended, time.monotonic())

    def _record(self, at: float, latency: float, status: int, body: str, error: str) -> None:
        ok = not error and 200 <= status < 300
        m = _BODY.match(body) if ok else None
        with self._lock:
            self._latencies.append(latency)
            if ok:
                if m:
                    self._answers.append(Answer(at, m.group(1), m.group(2)))
                return
            self._failed += 1
            if len(self._failures) < self.MAX_FAILURES_KEPT:
                what = error or f"HTTP {status} {body.strip()[:80]!r}"
                self._failures.append(f"+{at:.2f}s {what}")


# ---------------------------------------------------------------- job files


def job_spec(
    name: str,
    version: str,
    *,
    count: int = 4,
    healthy: bool = True,
    canary: int = 0,
    max_parallel: int = 1,
) -> str:
    """examples/rolling.hcl as a user edits it: another job name and Host rule,
    another VERSION, HEALTH emptied (no /health page), a count, canaries,
    max_parallel."""
    text = EXAMPLE.read_text()
    edits = [
        ('job "rolling"', f'job "{name}"'),
        ('name     = "rolling"', f'name     = "{name}"'),
        (
            "traefik.http.routers.rolling.rule=Host(`rolling.localhost`)",
            f"traefik.http.routers.{name}.rule=Host(`{host_of(name)}`)",
        ),
        ('VERSION = "v1"', f'VERSION = "{version}"'),
        ("count = 4", f"count = {count}"),
    ]
    if max_parallel != 1:
        edits.append(("max_parallel      = 1", f"max_parallel      = {max_parallel}"))
    if not healthy:
        edits.append(('HEALTH  = "ok"', 'HEALTH  = ""'))
    if canary:
        edits.append(
            (
                "auto_revert       = true",
                f"auto_revert       = true\n      canary            = {canary}",
            )
        )
    for old, new in edits:
        assert text.count(old) == 1, f"{old!r} not found once in {EXAMPLE}"
        text = text.replace(old, new)
    return text


def host_of(name: str) -> str:
    return f"{name}.test"


# ---------------------------------------------------------------- fixtures

#: Jobs the tests of this module started: their containers are removed at the end
#: even when a test failed half-way (the agent leaves containers for reattachment).
_STARTED: set[str] = set()


def _remove_containers(jobs: set[str]) -> None:
    import docker

    client = docker.from_env(timeout=30)
    try:
        for job in jobs:
            for c in client.containers.list(
                all=True, sparse=True, filters={"label": f"corral.job_name={job}"}
            ):
                with contextlib.suppress(Exception):
                    c.remove(force=True)
    finally:
        client.close()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[DevAgent]:
    with DevAgent(base_dir=tmp_path_factory.mktemp("rolling-agent")) as a:
        try:
            yield a
        finally:
            for job in sorted(_STARTED):
                with contextlib.suppress(Exception):
                    a.cli("job", "stop", "--purge", "--detach", job, timeout=30)
    _remove_containers(_STARTED)


@pytest.fixture(scope="module")
def traefik(
    agent: DevAgent, traefik_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traefik]:
    proxy = Traefik(
        traefik_bin,
        agent.http_url,
        tmp_path_factory.mktemp("rolling-traefik"),
        throttle=TRAEFIK_THROTTLE,
    )
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def api(agent: DevAgent) -> Iterator[CorralClient]:
    with CorralClient(agent.rpc_addr) as client:
        yield client


# ---------------------------------------------------------------- helpers


class Job:
    """One test's copy of the example: run it, read its state, stop it."""

    def __init__(
        self, name: str, agent: DevAgent, api: CorralClient, traefik: Traefik, tmp: Path
    ) -> None:
        self.name = name
        self.agent = agent
        self.api = api
        self.traefik = traefik
        self.tmp = tmp
        self.host = host_of(name)
        _STARTED.add(name)

    def run(self, version: str, *args: str, **edits: Any) -> Any:
        """``corral job run`` of this version of the file (returns the process)."""
        path = self.tmp / f"{self.name}-{version}.hcl"
        path.write_text(job_spec(self.name, version, **edits))
        return self.agent.cli("job", "run", *args, str(path), timeout=RUN_TIMEOUT)

    def cli(self, *args: str, timeout: float = RUN_TIMEOUT) -> Any:
        return self.agent.cli(*args, timeout=timeout)

    def deploy(self, version: str, **edits: Any) -> None:
        """Run a version and wait until Traefik routes to every instance of it."""
        out = self.run(version, **edits)
        assert out.returncode == 0, out.stdout + out.stderr
        self.wait_serving({version}, edits.get("count", 4))

    # ------------------------------------------------------------ state
    def allocs(self) -> list[pb.Allocation]:
        return list(self.api.job_allocations(self.name, all=True))

    def live(self) -> list[pb.Allocation]:
        """Allocations that should run and do."""
        return [
            a for a in self.allocs() if a.desired_status == "run" and a.client_status == "running"
        ]

    def deployments(self) -> list[pb.Deployment]:
        """Newest first."""
        found = self.api.list_deployments(self.name)
        return sorted(found, key=lambda d: d.create_index, reverse=True)

    def latest_deployment(self) -> pb.Deployment:
        deps = self.deployments()
        assert deps, f"no deployment of {self.name}"
        return deps[0]

    def versions(self) -> list[pb.Job]:
        """Newest first."""
        return sorted(self.api.job_versions(self.name), key=lambda j: j.version, reverse=True)

    def version_of(self, label: str) -> pb.Job:
        """The newest job version whose VERSION env is ``label``."""
        for job in self.versions():
            if env_version(job) == label:
                return job
        raise AssertionError(f"no version of {self.name} with VERSION={label}")

    def labels(self, allocs: list[pb.Allocation]) -> set[str]:
        """The VERSION labels the allocations run (allocation listings carry the
        job version, not the job)."""
        by_version = {j.version: env_version(j) for j in self.versions()}
        return {by_version.get(a.job_version, f"?{a.job_version}") for a in allocs}

    def containers(self) -> list[Any]:
        import docker

        client = docker.from_env(timeout=30)
        try:
            return list(
                client.containers.list(
                    sparse=True, filters={"label": f"corral.job_name={self.name}"}
                )
            )
        finally:
            client.close()

    def wait_serving(self, versions: set[str], count: int, timeout: float = 60) -> set[str]:
        return wait_serving(self.traefik, self.host, versions, count, timeout)


def answered(traefik: Traefik, host: str, rounds: int) -> list[tuple[str, str]]:
    """(version, instance) of ``rounds`` requests through Traefik."""
    out = []
    for _ in range(rounds):
        status, body = traefik.get(host)
        m = _BODY.match(body) if status == 200 else None
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def wait_serving(
    traefik: Traefik, host: str, versions: set[str], count: int, timeout: float = 60
) -> set[str]:
    """Wait until Traefik spreads requests over exactly ``count`` instances, all of
    ``versions`` (round robin: a few rounds per instance see every one)."""
    rounds = 3 * count + 2

    def check() -> set[str]:
        seen = answered(traefik, host, rounds)
        instances = {i for _, i in seen}
        if len(seen) == rounds and len(instances) == count and {v for v, _ in seen} <= versions:
            return instances
        return set()

    found: set[str] = wait_for(
        check,
        timeout=timeout,
        interval=0.2,
        message=lambda: (
            f"{count} instances of {sorted(versions)} behind {host}; "
            f"answers: {sorted(set(answered(traefik, host, rounds)))}\n{traefik.log_tail(10)}"
        ),
    )
    return found


def env_version(job: pb.Job) -> str:
    return str(job.task_groups[0].tasks[0].env.get("VERSION", ""))


def wait_answers(
    load: Load, since: float, predicate: Callable[[list[Answer]], bool], what: str, timeout: float
) -> list[Answer]:
    """Wait until the load's answers since ``since`` satisfy ``predicate``."""

    def check() -> list[Answer]:
        answers = load.answers_since(since)
        return answers if answers and predicate(answers) else []

    found: list[Answer] = wait_for(
        check,
        timeout=timeout,
        interval=0.1,
        message=lambda: f"{what}; answers since +{since:.1f}s: {tally(load.answers_since(since))}",
    )
    return found


def tally(answers: list[Answer]) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in answers:
        key = f"{a.version}/{a.alloc[:8]}"
        out[key] = out.get(key, 0) + 1
    return out


def only_version(version: str, at_least: int = 50) -> Callable[[list[Answer]], bool]:
    def ok(answers: list[Answer]) -> bool:
        return len(answers) >= at_least and all(a.version == version for a in answers)

    return ok


def assert_no_failures(result: LoadResult, during: str) -> None:
    assert result.sent > 0, "the load generator sent nothing"
    assert result.failed == 0, (
        f"{result.failed} of {result.sent} requests failed {during}: {result.failures}\n"
        f"{result.summary()}"
    )


@pytest.fixture
def job(
    request: pytest.FixtureRequest,
    agent: DevAgent,
    api: CorralClient,
    traefik: Traefik,
    tmp_path: Path,
) -> Iterator[Job]:
    name = "roll-" + request.node.name.removeprefix("test_").split("_")[0]
    j = Job(name, agent, api, traefik, tmp_path)
    try:
        yield j
    finally:
        agent.cli("job", "stop", "--purge", "--detach", name, timeout=30)


# ---------------------------------------------------------------- tests

#: scheduler/generic.py gives in-place updated allocations (same tasks, new job
#: version) no deployment, and server/fsm.py counts only allocations a plan creates
#: into a deployment: a deployment whose version needs in-place updates never
#: reaches its desired healthy count and fails at its progress deadline (then
#: auto_revert rolls the job back). Reported to the lead with issue 6.


def test_update_v1_to_v2_under_load_drops_no_request(job: Job) -> None:
    job.deploy("v1")
    v1_allocs = {a.id for a in job.live()}
    with Load(job.traefik.web_port, job.host) as load:
        wait_answers(load, 0, only_version("v1", 20), "v1 answering under load", 15)
        out = job.run("v2")
        assert out.returncode == 0, out.stdout + out.stderr
        done = load.elapsed
        # Every v1 instance left the proxy: from now on only v2 answers.
        wait_answers(load, done + 3.5, only_version("v2", 200), "only v2 answering", 30)
    result = load.stop()
    assert_no_failures(result, "during the v1 -> v2 rollout")
    assert result.versions() == ["v1", "v2"], tally(result.answers)

    d = job.latest_deployment()
    assert d.status == "successful", d
    assert d.job_version == job.version_of("v2").version
    live = job.live()
    assert len(live) == 4 and not {a.id for a in live} & v1_allocs
    assert job.labels(live) == {"v2"}
    # Each v1 instance was replaced after the previous v2 one was healthy (max_parallel 1).
    assert {a.alloc_index for a in live} == {0, 1, 2, 3}
    assert len(job.containers()) == 4


def test_failed_v3_is_reverted_to_v2_without_dropping_a_request(job: Job) -> None:
    job.deploy("v2")
    v2 = job.version_of("v2")
    with Load(job.traefik.web_port, job.host) as load:
        wait_answers(load, 0, only_version("v2", 20), "v2 answering under load", 15)
        started = time.monotonic()
        out = job.run("v3", healthy=False)
        took = time.monotonic() - started
        text = out.stdout + out.stderr
        assert out.returncode == 1, text
        # The monitor names the version it rolls back to.
        assert f"rolled back to version {v2.version}" in text, text
        # The reverted version rolls out (replacing the failed v3 instance) and the
        # four instances serve v2 again.
        rollback = wait_for(
            lambda: (d := job.latest_deployment()).status != "running" and d,
            timeout=90,  # progress_deadline (1m) ends it at the latest
            interval=0.5,
            message=lambda: f"the rollback's deployment to end: {job.latest_deployment()}",
        )
        job.wait_serving({"v2"}, 4)
    result = load.stop()
    assert_no_failures(result, "during the failed v3 rollout and its rollback")
    assert result.versions() == ["v2"], tally(result.answers)  # v3 never served
    assert 25 < took < 90, f"the failed rollout took {took:.1f}s (healthy_deadline 30s)"
    assert rollback.status == "successful", rollback

    versions = job.versions()
    v3, latest = job.version_of("v3"), versions[0]
    assert latest.version > v3.version > v2.version
    assert not spec_changed(latest, v2), "the job's latest version is not v2's spec"
    failed = [d for d in job.deployments() if d.job_version == v3.version]
    assert [d.status for d in failed] == ["failed"], failed
    assert f"rolling back to job version {v2.version}" in failed[0].status_description
    live = job.live()
    assert len(live) == 4 and job.labels(live) == {"v2"}
    # The replaced v3 container goes once its shutdown_delay (3 s) and kill are over.
    wait_for(
        lambda: len(job.containers()) == 4,
        timeout=30,
        message=lambda: f"4 containers, not {len(job.containers())}",
    )


def test_canary_serves_beside_the_old_version_until_promoted(job: Job) -> None:
    job.deploy("v3")
    with Load(job.traefik.web_port, job.host) as load:
        wait_answers(load, 0, only_version("v3", 20), "v3 answering under load", 15)
        out = job.run("v4", canary=1)
        # Canaries healthy: `job run` stops following and says how to promote.
        assert out.returncode == 0, out.stdout + out.stderr
        assert "corral deployment promote" in out.stdout, out.stdout
        d = job.latest_deployment()
        assert d.status == "running" and d.job_version == job.version_of("v4").version
        state = d.task_groups["web"]
        assert len(state.placed_canaries) == 1 and not state.promoted, d

        # The canary takes a share of the traffic beside the four v3 instances.
        mark = load.elapsed
        answers = wait_answers(
            load,
            mark,
            lambda a: (
                len({x.alloc for x in a if x.version == "v3"}) == 4
                and len({x.alloc for x in a if x.version == "v4"}) == 1
            ),
            "4 v3 instances and 1 v4 canary answering",
            30,
        )
        assert {x.alloc for x in answers if x.version == "v4"} == set(state.placed_canaries)
        assert len(job.live()) == 5

        out = job.cli("deployment", "promote", d.id)
        assert out.returncode == 0, out.stdout + out.stderr
        done = load.elapsed
        wait_answers(load, done + 3.5, only_version("v4", 200), "only v4 after promotion", 30)
    result = load.stop()
    assert_no_failures(result, "during the canary rollout")
    assert result.versions() == ["v3", "v4"], tally(result.answers)

    d = job.api.get_deployment(d.id)
    assert d.status == "successful", d
    assert d.task_groups["web"].promoted
    # Promotion kept the canary and replaced only the rest: four instances, not five.
    live = job.live()
    assert len(live) == 4 and job.labels(live) == {"v4"}
    assert set(state.placed_canaries) <= {a.id for a in live}
    wait_for(lambda: len(job.containers()) == 4, timeout=30, message="4 containers left")


def test_scale_during_a_rollout_ends_cleanly(job: Job) -> None:
    job.deploy("v1")
    with Load(job.traefik.web_port, job.host) as load:
        wait_answers(load, 0, only_version("v1", 20), "v1 answering under load", 15)
        out = job.run("v2", "--detach")
        assert out.returncode == 0, out.stdout + out.stderr
        v2 = job.version_of("v2")
        wait_for(
            lambda: any(
                d.job_version == v2.version
                and d.status == "running"
                and d.task_groups["web"].healthy_allocs >= 1
                for d in job.deployments()
            ),
            timeout=60,
            interval=0.2,
            message=lambda: f"v2's rollout half-way: {job.deployments()[:1]}",
        )
        # A count change in the middle of the rollout: a new job version whose
        # deployment takes over (the running one is cancelled) and finishes.
        out = job.cli("job", "scale", job.name, "6")
        assert out.returncode == 0, out.stdout + out.stderr
        done = load.elapsed
        wait_answers(load, done + 3.5, only_version("v2", 200), "only v2 after the scale", 30)
        job.wait_serving({"v2"}, 6)
    result = load.stop()
    assert_no_failures(result, "during a rollout that was scaled from 4 to 6")

    by_version = {d.job_version: d for d in job.deployments()}
    assert by_version[v2.version].status == "cancelled", by_version[v2.version]
    latest = job.latest_deployment()
    assert latest.status == "successful" and latest.job_version > v2.version, latest
    assert latest.task_groups["web"].desired_total == 6
    live = job.live()
    assert len(live) == 6 and job.labels(live) == {"v2"}
    assert sorted(a.alloc_index for a in live) == list(range(6))
    assert len(job.containers()) == 6


def test_stop_during_a_rollout_ends_cleanly(job: Job) -> None:
    job.deploy("v2")
    out = job.run("v3", "--detach")
    assert out.returncode == 0, out.stdout + out.stderr
    v3 = job.version_of("v3")
    wait_for(
        lambda: any(
            d.job_version == v3.version and d.task_groups["web"].placed_allocs >= 1
            for d in job.deployments()
        ),
        timeout=60,
        interval=0.2,
        message="v3's rollout to start",
    )
    out = job.cli("job", "stop", job.name)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(
        lambda: all(d.status != "running" for d in job.deployments()),
        timeout=30,
        interval=0.2,
        message=lambda: f"no deployment left running: {job.deployments()[:2]}",
    )
    d3 = next(d for d in job.deployments() if d.job_version == v3.version)
    assert d3.status in ("cancelled", "successful"), d3
    wait_for(
        lambda: all(a.client_status in ("complete", "failed", "lost") for a in job.allocs()),
        timeout=60,
        interval=0.2,
        message=lambda: (
            "every allocation stopped: "
            + str(sorted((a.id[:8], a.desired_status, a.client_status) for a in job.allocs()))
        ),
    )
    assert not [a for a in job.allocs() if a.desired_status == "run"]
    wait_for(lambda: not job.containers(), timeout=30, message="no container left running")
    wait_for(
        lambda: job.traefik.get(job.host)[0] == 404,
        timeout=15,
        message="the router removed once the job stopped",
    )


def test_job_restart_replaces_every_allocation_without_dropping_a_request(job: Job) -> None:
    job.deploy("v1")
    before = {a.id for a in job.live()}
    with Load(job.traefik.web_port, job.host) as load:
        wait_answers(load, 0, only_version("v1", 20), "v1 answering under load", 15)
        out = job.cli("job", "restart", job.name)
        assert out.returncode == 0, out.stdout + out.stderr
        done = load.elapsed
        answers = wait_answers(
            load,
            done + 3.5,
            lambda a: len(a) >= 200 and not {x.alloc for x in a} & before,
            "only new allocations answering",
            30,
        )
        assert len({x.alloc for x in answers}) == 4
    result = load.stop()
    assert_no_failures(result, "during `corral job restart`")
    assert result.versions() == ["v1"]
    after = {a.id for a in job.live()}
    assert len(after) == 4 and not after & before
    assert job.latest_deployment().status == "successful"
