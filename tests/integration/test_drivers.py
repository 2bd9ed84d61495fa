"""raw_exec and docker drivers against real processes and the real Docker engine.

Docker tests need the ``docker_engine`` fixture (skip on a dev machine without
Docker, fail under CI=true) and the image built by scripts/build-image.sh.
Every container a test creates carries the label ``corral.test=1`` and is
removed by a fixture finalizer, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.client import taskenv
from corral.client.drivers.base import DriverError, PortMapping, TaskConfig, TaskHandle
from corral.client.drivers.docker import DockerDriver, container_name
from corral.client.drivers.raw_exec import RawExecDriver, read_proc_stat
from corral.proto import pb
from tests.support.env import TEST_IMAGE, free_port
from tests.support.wait import wait_for

TEST_LABEL = "corral.test"
# Per test process: the cleanup removes only this process's containers, not
# those of a parallel pytest worker or of another suite on the same engine.
RUN_LABEL = "corral.test.run"
RUN_ID = uuid.uuid4().hex


def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``check`` until truthy (errors such as connection refused count as
    "not yet"); generous deadline because a loaded CI engine can be slow."""
    return wait_for(check, timeout=timeout, interval=0.05, message=what, ignore=(OSError,))


def read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - local test server
        body: bytes = resp.read()
        return body.decode()


def make_cfg(
    tmp_path: Path,
    config: dict[str, Any],
    *,
    task: str = "web",
    env: dict[str, str] | None = None,
    ports: list[PortMapping] | None = None,
    memory_mb: int = 64,
    memory_max_mb: int = 0,
    alloc_id: str | None = None,
) -> TaskConfig:
    alloc_id = alloc_id or str(uuid.uuid4())
    dirs = taskenv.task_dirs(str(tmp_path / alloc_id), task)
    for d in (dirs.alloc_dir, dirs.local_dir, dirs.secrets_dir, dirs.logs_dir):
        os.makedirs(d, exist_ok=True)
    return TaskConfig(
        alloc_id=alloc_id,
        task_name=task,
        job_name="itest",
        group_name="g",
        node_id="node-test",
        config=config,
        env=dict(env or {}),
        cpu_mhz=100,
        memory_mb=memory_mb,
        memory_max_mb=memory_max_mb,
        ports=list(ports or []),
        alloc_dir=dirs.alloc_dir,
        task_dir=dirs.task_dir,
        stdout_path=f"{dirs.logs_dir}/{task}.stdout.0",
        stderr_path=f"{dirs.logs_dir}/{task}.stderr.0",
        labels={TEST_LABEL: "1", RUN_LABEL: RUN_ID},
    )


# ================================================================ raw_exec


@pytest.fixture
def raw() -> Iterator[RawExecDriver]:
    driver = RawExecDriver()
    started: list[TaskHandle] = []
    original = driver.start_task

    def tracking_start(cfg: TaskConfig) -> TaskHandle:
        handle = original(cfg)
        started.append(handle)
        return handle

    driver.start_task = tracking_start  # type: ignore[method-assign,unused-ignore]
    yield driver
    for handle in started:
        with contextlib.suppress(DriverError):
            driver.destroy_task(handle)


def test_raw_exec_http_server_logs_and_graceful_stop(raw: RawExecDriver, tmp_path: Path) -> None:
    port = free_port()
    cfg = make_cfg(
        tmp_path,
        {
            "command": sys.executable,
            "args": ["-m", "http.server", str(port), "--bind", "127.0.0.1"],
        },
        env={"PYTHONUNBUFFERED": "1"},
    )
    Path(cfg.task_dir, "index.html").write_text("hello from raw_exec")
    handle = raw.start_task(cfg)
    assert handle.state["pid"] > 0 and handle.state["pgid"] == handle.state["pid"]
    assert handle.state["start_time"] > 0

    body = eventually(lambda: http_get(f"http://127.0.0.1:{port}/index.html"), what="http.server")
    assert body == "hello from raw_exec"  # cwd is the task dir
    eventually(lambda: "GET /index.html" in read(cfg.stderr_path), what="access log in stderr")
    assert raw.wait_task(handle, timeout=0.05) is None

    started = time.monotonic()
    raw.stop_task(handle, timeout=10, signal="SIGINT")
    assert time.monotonic() - started < 5  # exited on SIGINT, no SIGKILL needed
    result = raw.wait_task(handle, timeout=0)
    assert result is not None
    assert not result.signal or result.signal == signal.SIGINT
    assert read_proc_stat(handle.state["pid"]) is None  # reaped: no zombie


def test_raw_exec_env_cwd_path_and_appended_logs(raw: RawExecDriver, tmp_path: Path) -> None:
    script = 'echo "greeting=$GREETING"; echo "cwd=$(pwd)"; echo "path=$PATH" >&2; exit 7'
    cfg = make_cfg(tmp_path, {"command": "sh", "args": ["-c", script]}, env={"GREETING": "hi"})
    for _ in range(2):
        handle = raw.start_task(cfg)
        result = raw.wait_task(handle, timeout=10)
        assert result is not None and result.exit_code == 7 and result.signal == 0
        raw.destroy_task(handle)
    out = read(cfg.stdout_path)
    assert out.count("greeting=hi\n") == 2  # appended, not truncated
    assert f"cwd={cfg.task_dir}\n" in out
    assert "path=" + os.environ["PATH"] in read(cfg.stderr_path)  # PATH from the agent


def test_raw_exec_exit_by_signal(raw: RawExecDriver, tmp_path: Path) -> None:
    handle = raw.start_task(make_cfg(tmp_path, {"command": "sh", "args": ["-c", "kill -9 $$"]}))
    result = raw.wait_task(handle, timeout=10)
    assert result is not None
    assert (result.exit_code, result.signal) == (137, 9)


def test_raw_exec_kill_after_timeout_kills_the_group(raw: RawExecDriver, tmp_path: Path) -> None:
    # The shell and its background child ignore SIGTERM (ignored dispositions
    # are inherited); only the SIGKILL after the timeout ends them.
    script = 'trap "" TERM; sleep 1000 & echo "child=$!"; echo ready; while :; do sleep 0.1; done'
    cfg = make_cfg(tmp_path, {"command": "sh", "args": ["-c", script]})
    handle = raw.start_task(cfg)
    eventually(lambda: "ready" in read(cfg.stdout_path), what="trap installed")
    child_pid = int(read(cfg.stdout_path).split("child=")[1].split()[0])
    assert read_proc_stat(child_pid) is not None

    started = time.monotonic()
    raw.stop_task(handle, timeout=0.5, signal="SIGTERM")
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5
    result = raw.wait_task(handle, timeout=0)
    assert result is not None and (result.exit_code, result.signal) == (137, 9)

    def child_gone() -> bool:
        st = read_proc_stat(child_pid)
        return st is None or st.state == "Z"

    eventually(child_gone, what="background child killed with its group")


def test_raw_exec_command_errors(raw: RawExecDriver, tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="command not found: no-such-command-xyz"):
        raw.start_task(make_cfg(tmp_path, {"command": "no-such-command-xyz"}))
    with pytest.raises(DriverError, match="command not found: .*/bin/missing"):
        raw.start_task(make_cfg(tmp_path, {"command": "bin/missing"}))
    cfg = make_cfg(tmp_path, {"command": "local/not-executable"})
    Path(cfg.task_dir, "local", "not-executable").write_text("#!/bin/sh\n")
    with pytest.raises(DriverError, match="command not executable"):
        raw.start_task(cfg)
    with pytest.raises(DriverError, match="command is required"):
        raw.start_task(make_cfg(tmp_path, {"args": ["x"]}))
    assert raw.validate_config({"command": "x", "args": "notalist"}) == [
        "args must be a list of strings"
    ]


def test_raw_exec_relative_command_in_task_dir(raw: RawExecDriver, tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"command": "local/run.sh", "args": ["arg1"]})
    script = Path(cfg.task_dir, "local", "run.sh")
    script.write_text('#!/bin/sh\necho "ran with $1"\n')
    script.chmod(0o755)
    handle = raw.start_task(cfg)
    result = raw.wait_task(handle, timeout=10)
    assert result is not None and result.successful
    assert read(cfg.stdout_path) == "ran with arg1\n"


def test_raw_exec_reaps_children_nobody_waits_for(raw: RawExecDriver, tmp_path: Path) -> None:
    pids = [
        raw.start_task(make_cfg(tmp_path, {"command": "true"}, task=f"t{i}")).state["pid"]
        for i in range(20)
    ]
    eventually(lambda: all(read_proc_stat(pid) is None for pid in pids), what="all children reaped")


_START_IN_OTHER_PROCESS = """
import json, sys
from corral.client.drivers.base import TaskConfig
from corral.client.drivers.raw_exec import RawExecDriver
cfg = TaskConfig(**json.loads(sys.argv[1]))
print(json.dumps(RawExecDriver().start_task(cfg).to_dict()))
"""


def test_raw_exec_recover_after_client_restart(tmp_path: Path) -> None:
    """A client process starts the task and exits; a new driver reattaches."""
    script = "echo started; trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done"
    cfg = make_cfg(tmp_path, {"command": "sh", "args": ["-c", script]})
    out = subprocess.run(
        [sys.executable, "-c", _START_IN_OTHER_PROCESS, json.dumps(cfg.__dict__)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    handle = TaskHandle.from_dict(json.loads(out.stdout))
    pgid = handle.state["pgid"]
    try:
        eventually(lambda: "started" in read(cfg.stdout_path), what="task output")
        driver = RawExecDriver()
        # a recycled pid (other start time) is not our task
        impostor = TaskHandle.from_dict(handle.to_dict())
        impostor.state["start_time"] += 1
        assert not driver.recover_task(impostor)
        assert not RawExecDriver().recover_task(
            TaskHandle(driver="raw_exec", task_id="x", state={"pid": 2**22 + 7, "start_time": 1})
        )

        assert driver.recover_task(handle)
        assert driver.wait_task(handle, timeout=0.1) is None
        driver.stop_task(handle, timeout=5, signal="SIGTERM")
        result = driver.wait_task(handle, timeout=5)
        # Not our child: the code is known only if we caught the zombie.
        assert result is not None and result.exit_code in (0, 143)
        eventually(lambda: "got-term" in read(cfg.stdout_path), what="the task saw SIGTERM")
        driver.destroy_task(handle)
        # Gone, unless init does not reap orphans (some containers): then its
        # zombie still exists and is still, truthfully, our exited task.
        st = read_proc_stat(handle.state["pid"])
        assert driver.recover_task(handle) == (st is not None and st.state == "Z")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def test_raw_exec_recover_in_fresh_instance_same_process(
    raw: RawExecDriver, tmp_path: Path
) -> None:
    cfg = make_cfg(tmp_path, {"command": "sleep", "args": ["1000"]})
    handle = raw.start_task(cfg)
    saved = TaskHandle.from_dict(json.loads(json.dumps(handle.to_dict())))
    fresh = RawExecDriver()
    assert fresh.recover_task(saved)
    fresh.stop_task(saved, timeout=5, signal="SIGTERM")
    result = fresh.wait_task(saved, timeout=5)
    assert result is not None
    # the original instance (the real parent) sees the true cause
    original = raw.wait_task(handle, timeout=5)
    assert original is not None and original.signal == signal.SIGTERM


# ================================================================ docker


@pytest.fixture(scope="module")
def docker_client(docker_engine: None) -> Iterator[Any]:
    import docker

    client = docker.from_env(timeout=30)
    yield client
    client.close()


@pytest.fixture
def dock(docker_client: Any) -> Iterator[DockerDriver]:
    driver = DockerDriver()
    yield driver
    driver.close()
    mine = docker_client.api.containers(
        all=True, filters={"label": [f"{TEST_LABEL}=1", f"{RUN_LABEL}={RUN_ID}"]}
    )
    for container in mine:
        with contextlib.suppress(Exception):  # already gone
            docker_client.api.remove_container(container["Id"], force=True)


def container_exists(client: Any, cid: str) -> bool:
    import docker

    try:
        client.containers.get(cid)
        return True
    except docker.errors.NotFound:
        return False


@pytest.mark.docker
def test_docker_fingerprint(dock: DockerDriver) -> None:
    fp = dock.fingerprint()
    assert fp.detected and fp.healthy
    assert fp.attributes["driver.docker.version"]


@pytest.mark.docker
def test_docker_httpd_on_published_port(
    dock: DockerDriver, docker_client: Any, tmp_path: Path
) -> None:
    host_port = free_port()
    # Build env and config as the task runner does, so NOMAD_PORT_http is the
    # container port (to = 8080) and the host reaches it on the dynamic port.
    alloc = pb.Allocation(id=str(uuid.uuid4()), name="itest.g[0]", job_id="itest", task_group="g")
    alloc.allocated_resources.shared.ports.append(
        pb.AllocatedPortMapping(label="http", value=host_port, to=8080, host_ip="127.0.0.1")
    )
    task = pb.Task(name="web", driver="docker")
    task.env["PAGE"] = "port ${NOMAD_PORT_http} on ${NOMAD_ADDR_http}"
    node = pb.Node(id="node-test", name="n1", datacenter="dc1")
    env = taskenv.build_env(alloc, task, node)
    config = taskenv.interpolate(
        {
            "image": TEST_IMAGE,
            "command": "sh",
            "args": [
                "-c",
                'echo "$PAGE" > /www/index.html && exec httpd -f -p ${NOMAD_PORT_http} -h /www',
            ],
            "ports": ["http"],
            "labels": {"extra": "yes"},
        },
        env,
        taskenv.node_variables(node),
    )
    ports = [
        PortMapping(label=p.label, host_port=p.value, to=p.to, host_ip=p.host_ip)
        for p in alloc.allocated_resources.shared.ports
    ]
    cfg = make_cfg(tmp_path, config, env=env, ports=ports, alloc_id=alloc.id)
    handle = dock.start_task(cfg)
    cid = handle.state["container_id"]

    body = eventually(lambda: http_get(f"http://127.0.0.1:{host_port}/"), what="httpd answers")
    assert body.strip() == f"port 8080 on 127.0.0.1:{host_port}"

    info = docker_client.api.inspect_container(cid)
    assert info["Name"] == "/" + container_name("web", alloc.id)
    labels = info["Config"]["Labels"]
    assert labels["corral.alloc_id"] == alloc.id
    assert labels["corral.task_name"] == "web"
    assert labels["corral.job_name"] == "itest"
    assert labels["corral.node_id"] == "node-test"
    assert labels["extra"] == "yes" and labels[TEST_LABEL] == "1"
    assert info["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert info["HostConfig"]["CpuShares"] == 100
    bindings = info["HostConfig"]["PortBindings"]["8080/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(host_port)}]

    # httpd as PID 1 ignores SIGTERM: stop kills it after the timeout.
    dock.stop_task(handle, timeout=1, signal="SIGTERM")
    result = dock.wait_task(handle, timeout=10)
    assert result is not None and not result.oom_killed
    dock.destroy_task(handle)
    assert not container_exists(docker_client, cid)
    dock.destroy_task(handle)  # idempotent


@pytest.mark.docker
def test_docker_env_logs_exit_code_and_mounts(dock: DockerDriver, tmp_path: Path) -> None:
    script = (
        'echo "out:$GREETING"; echo "err:$NOMAD_TASK_NAME" >&2; '
        'echo shared > "$NOMAD_ALLOC_DIR/from-container"; exit 3'
    )
    cfg = make_cfg(
        tmp_path,
        {"image": TEST_IMAGE, "command": "sh", "args": ["-c", script]},
        env={"GREETING": "hello", "NOMAD_TASK_NAME": "web", "NOMAD_ALLOC_DIR": "/alloc"},
    )
    handle = dock.start_task(cfg)
    result = dock.wait_task(handle, timeout=30)
    assert result is not None and result.exit_code == 3 and not result.oom_killed
    assert read(cfg.stdout_path) == "out:hello\n"
    assert read(cfg.stderr_path) == "err:web\n"
    assert Path(cfg.alloc_dir, "from-container").read_text() == "shared\n"
    dock.destroy_task(handle)


@pytest.mark.docker
def test_docker_memory_max_is_the_hard_limit(
    dock: DockerDriver, docker_client: Any, tmp_path: Path
) -> None:
    cfg = make_cfg(
        tmp_path,
        {"image": TEST_IMAGE, "command": "sleep", "args": ["30"]},
        memory_mb=32,
        memory_max_mb=64,
    )
    handle = dock.start_task(cfg)
    host = docker_client.api.inspect_container(handle.state["container_id"])["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["MemoryReservation"] == 32 * 1024 * 1024
    dock.stop_task(handle, timeout=0, signal="SIGKILL")
    dock.destroy_task(handle)


@pytest.mark.docker
def test_docker_stop_kills_after_timeout(dock: DockerDriver, tmp_path: Path) -> None:
    script = 'trap "" TERM; echo ready; while :; do sleep 1; done'
    cfg = make_cfg(tmp_path, {"image": TEST_IMAGE, "command": "sh", "args": ["-c", script]})
    handle = dock.start_task(cfg)
    eventually(lambda: "ready" in read(cfg.stdout_path), what="trap installed")
    started = time.monotonic()
    dock.stop_task(handle, timeout=0.5, signal="SIGTERM")
    assert 0.5 <= time.monotonic() - started < 15
    result = dock.wait_task(handle, timeout=5)
    assert result is not None and result.exit_code == 137
    dock.destroy_task(handle)


@pytest.mark.docker
def test_docker_graceful_signal(dock: DockerDriver, tmp_path: Path) -> None:
    script = "trap 'echo bye; exit 0' INT; echo ready; while :; do sleep 0.1; done"
    cfg = make_cfg(tmp_path, {"image": TEST_IMAGE, "command": "sh", "args": ["-c", script]})
    handle = dock.start_task(cfg)
    eventually(lambda: "ready" in read(cfg.stdout_path), what="trap installed")
    dock.stop_task(handle, timeout=10, signal="SIGINT")
    result = dock.wait_task(handle, timeout=5)
    assert result is not None and result.exit_code == 0
    assert read(cfg.stdout_path) == "ready\nbye\n"
    dock.destroy_task(handle)


@pytest.mark.docker
def test_docker_missing_image(dock: DockerDriver, tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"image": "corral-no-such-image:v0"})
    with pytest.raises(DriverError) as info:
        dock.start_task(cfg)
    message = str(info.value)
    assert "image corral-no-such-image:v0 not found locally" in message
    assert "failed to pull" in message


@pytest.mark.docker
def test_docker_unknown_port_label(dock: DockerDriver, tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, {"image": TEST_IMAGE, "ports": ["admin"]})
    with pytest.raises(DriverError, match="port 'admin'"):
        dock.start_task(cfg)


@pytest.mark.docker
def test_docker_leftover_container_with_same_name_is_replaced(
    dock: DockerDriver, docker_client: Any, tmp_path: Path
) -> None:
    cfg = make_cfg(tmp_path, {"image": TEST_IMAGE, "command": "sleep", "args": ["30"]})
    first = dock.start_task(cfg)
    second = dock.start_task(cfg)  # e.g. a client that crashed before destroy
    assert second.state["container_id"] != first.state["container_id"]
    assert not container_exists(docker_client, first.state["container_id"])
    dock.stop_task(second, timeout=0, signal="SIGKILL")
    dock.destroy_task(second)


@pytest.mark.docker
def test_docker_recover_by_labels_after_restart(
    dock: DockerDriver, docker_client: Any, tmp_path: Path
) -> None:
    script = "i=0; while [ $i -lt 30 ]; do echo line-$i; i=$((i+1)); sleep 0.05; done; sleep 1000"
    cfg = make_cfg(tmp_path, {"image": TEST_IMAGE, "command": "sh", "args": ["-c", script]})
    handle = dock.start_task(cfg)
    cid = handle.state["container_id"]
    eventually(lambda: "line-5\n" in read(cfg.stdout_path), what="first lines")
    dock.close()  # the client "dies": its log follower stops, the container runs on

    # The restarted client lost the container id (say, state written before it
    # was known): the labels find the container again.
    saved = TaskHandle.from_dict(json.loads(json.dumps(handle.to_dict())))
    del saved.state["container_id"]
    fresh = DockerDriver()
    try:
        assert fresh.recover_task(saved)
        assert saved.state["container_id"] == cid
        eventually(lambda: "line-29\n" in read(cfg.stdout_path), what="the remaining lines")
        lines = read(cfg.stdout_path).splitlines()
        assert lines == [f"line-{i}" for i in range(30)]  # no gap, no duplicate
        assert fresh.wait_task(saved, timeout=0.1) is None
        fresh.stop_task(saved, timeout=0, signal="SIGKILL")
        assert fresh.wait_task(saved, timeout=10) is not None
        fresh.destroy_task(saved)
        assert not container_exists(docker_client, cid)
        assert not fresh.recover_task(saved)
    finally:
        fresh.close()

    unknown = TaskHandle(
        driver="docker",
        task_id="x",
        state={"alloc_id": str(uuid.uuid4()), "task_name": "web", "container_id": "0" * 64},
    )
    assert not fresh.recover_task(unknown)


def test_docker_driver_without_engine_fingerprints_unhealthy(tmp_path: Path) -> None:
    """No engine at the address: the client still starts; docker is unhealthy."""
    driver = DockerDriver(base_url=f"unix://{tmp_path}/no-docker.sock", connect_timeout=2)
    fp = driver.fingerprint()
    assert not fp.healthy
    with pytest.raises(DriverError, match="not reachable") as info:
        driver.start_task(make_cfg(tmp_path, {"image": TEST_IMAGE}))
    assert info.value.recoverable
