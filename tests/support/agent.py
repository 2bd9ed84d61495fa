"""Real ``corral agent`` processes for integration tests (and benchmarks).

``AgentProcess`` runs any ``corral agent ...`` command line as a subprocess with
its output in a log file, and knows how to wait until it is ready, stop it
(SIGTERM, then SIGKILL after a deadline), kill it, and restart it with the same
data dir. ``DevAgent`` is ``corral agent --dev`` (server and client in one
process) on free ports of 127.0.0.1, ready once the server answers gRPC and at
least one node is ``ready``. Server-only and client-only flavours derive from
``AgentProcess`` the same way (override ``build_args`` and ``is_ready``).

    with DevAgent("--min-heartbeat-ttl", "1") as agent:
        out = agent.cli("job", "run", "examples/hello.hcl")
        assert out.returncode == 0, out.stderr

``run_cli`` runs the ``corral`` CLI as a subprocess against an address given
through ``CORRAL_ADDR``, as a user would.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import grpc

from corral.proto import pb, rpc
from tests.support.env import free_port
from tests.support.wait import WaitTimeout, wait_for

LOG_TAIL_LINES = 50

# Messages with which a server that lost the race for a "free" port dies.
_PORT_IN_USE = ("address already in use", "address in use", "errno 98", "failed to bind")


def corral_command() -> list[str]:
    """How to run the CLI with this interpreter: ``python -m corral`` when the
    package has a ``__main__``, else ``python -m corral.cli.main``."""
    try:
        has_main = importlib.util.find_spec("corral.__main__") is not None
    except (ImportError, ValueError):
        has_main = False
    module = "corral" if has_main else "corral.cli.main"
    return [sys.executable, "-m", module]


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # A test run's own address must never leak into the child by accident.
    env.pop("CORRAL_ADDR", None)
    if extra:
        env.update(extra)
    return env


def run_cli(
    *args: str,
    addr: str,
    timeout: float = 60,
    input: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``corral <args>`` as a subprocess with ``CORRAL_ADDR=addr``.

    Returns the CompletedProcess (text stdout/stderr); never raises on a non-zero
    exit, so tests can assert on exit codes and messages.
    """
    child_env = _child_env(env)
    child_env["CORRAL_ADDR"] = addr
    return subprocess.run(
        [*corral_command(), *args],
        env=child_env,
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class AgentError(RuntimeError):
    """The agent did not start, or not in time; the message carries its log tail."""


class AgentProcess:
    """One ``corral agent <args>`` subprocess.

    Subclasses build the command line in ``build_args`` (called at every start, so
    ports may be re-picked) and say when the agent is ready in ``is_ready``.
    """

    name = "agent"

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        base_dir: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self._args = list(args)
        self._owns_base_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix=f"corral-{self.name}-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.base_dir / f"{self.name}.log"
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # ------------------------------------------------------------ overridables

    def build_args(self) -> list[str]:
        """The arguments after ``corral agent``."""
        return list(self._args)

    def is_ready(self) -> bool:
        """Polled after start until true; the base class is ready once started."""
        return True

    def on_stopped(self) -> None:
        """Called after the process is gone (close channels and the like)."""

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, log {self.log_path})"

    # ------------------------------------------------------------ lifecycle

    def command(self) -> list[str]:
        return [*corral_command(), "agent", *self.build_args()]

    def spawn(self) -> None:
        """Start the process without waiting for it to be ready."""
        if self.running:
            raise AgentError(f"{self.describe()} is already running")
        self.starts += 1
        cmd = self.command()
        log: IO[bytes]
        with open(self.log_path, "ab") as log:
            log.write(
                f"\n===== start #{self.starts} at {time.strftime('%H:%M:%S')}: "
                f"{' '.join(cmd)}\n".encode()
            )
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=_child_env(self.env),
                # Deliberately in pytest's process group: whatever a crashed test run
                # leaves behind dies with it (.ci/run kills each step's group).
            )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll ``is_ready`` until true; raise AgentError (with the log tail) if the
        process exits or the deadline passes."""
        timeout = self.start_timeout if timeout is None else timeout

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise AgentError(self._failure(f"exited with code {self.returncode} during start"))
            return self.is_ready()

        try:
            wait_for(ready, timeout=timeout, interval=0.1, message=f"{self.name} to be ready")
        except WaitTimeout as exc:
            raise AgentError(self._failure(f"not ready after {timeout:g}s ({exc})")) from None

    def start(self) -> AgentProcess:
        self.spawn()
        try:
            self.wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait up to ``timeout`` (default stop_timeout), then SIGKILL.
        Returns the exit code (None if it was not started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=10)
        self.on_stopped()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL at once (a crash, as far as the cluster can tell)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
        self.on_stopped()
        return proc.returncode

    def restart(self, *, graceful: bool = True) -> AgentProcess:
        """Stop (or kill) and start again with the same data dir and ports."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start()

    def cleanup(self) -> None:
        """Stop, then remove the base dir if this object created it (logs included)."""
        self.stop()
        if self._owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def send_signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    # ------------------------------------------------------------ introspection

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)

    def _failure(self, what: str) -> str:
        return (
            f"{self.describe()} {what}\ncommand: {' '.join(self.command())}\n"
            f"----- last {LOG_TAIL_LINES} lines of {self.log_path} -----\n{self.log_tail()}"
        )

    # ------------------------------------------------------------ context manager

    def __enter__(self) -> AgentProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class DevAgent(AgentProcess):
    """``corral agent --dev``: a server and a client in one process, on free ports.

    Extra arguments pass through (``DevAgent("--min-heartbeat-ttl", "1")``).
    Ports default to free ones; when the agent dies at first start because another
    process took a port meanwhile, new ports are picked (up to 3 tries).
    """

    name = "dev-agent"

    def __init__(
        self,
        *extra_args: str,
        base_dir: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        bind: str = "127.0.0.1",
        http_port: int | None = None,
        rpc_port: int | None = None,
        raft_port: int | None = None,
        env: dict[str, str] | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__(
            extra_args,
            base_dir=base_dir,
            env=env,
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )
        self.bind = bind
        self._fixed_ports = (http_port, rpc_port, raft_port)
        self.http_port, self.rpc_port, self.raft_port = self._pick_ports()
        self._data_dir = Path(data_dir) if data_dir is not None else self.base_dir / "data"
        self._channel: grpc.Channel | None = None

    def _pick_ports(self) -> tuple[int, int, int]:
        chosen: list[int] = []
        for fixed in self._fixed_ports:
            port = fixed
            while port is None or port in chosen:
                port = free_port()
            chosen.append(port)
        return chosen[0], chosen[1], chosen[2]

    # ------------------------------------------------------------ addresses

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def rpc_addr(self) -> str:
        return f"{self.bind}:{self.rpc_port}"

    @property
    def http_addr(self) -> str:
        return f"{self.bind}:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_addr}"

    @property
    def raft_addr(self) -> str:
        return f"{self.bind}:{self.raft_port}"

    def describe(self) -> str:
        return (
            f"{self.name} (pid {self.pid}, rpc {self.rpc_addr}, http {self.http_addr}, "
            f"log {self.log_path})"
        )

    # ------------------------------------------------------------ process

    def build_args(self) -> list[str]:
        return [
            "--dev",
            "--data-dir",
            str(self.data_dir),
            "--bind",
            self.bind,
            "--http-port",
            str(self.http_port),
            "--rpc-port",
            str(self.rpc_port),
            "--raft-port",
            str(self.raft_port),
            *self._args,
        ]

    def start(self) -> DevAgent:
        first_start = self.starts == 0
        for attempt in range(3):
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                super().start()
                return self
            except AgentError as exc:
                lost_port_race = (
                    first_start
                    and None in self._fixed_ports
                    and not self.running
                    and any(s in self._last_start_log().lower() for s in _PORT_IN_USE)
                )
                if not lost_port_race or attempt == 2:
                    raise exc from None
                # Fresh ports and a fresh data dir (nothing acknowledged was written).
                self._wipe_data_dir()
                self.http_port, self.rpc_port, self.raft_port = self._pick_ports()
        raise AssertionError("unreachable")

    def _last_start_log(self) -> str:
        text = self.log_text()
        marker = text.rfind("\n===== start #")
        return text[marker:] if marker >= 0 else text

    def _wipe_data_dir(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def on_stopped(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # ------------------------------------------------------------ gRPC

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.rpc_addr)
        return self._channel

    def nodes(self, timeout: float = 2.0) -> list[pb.Node]:
        resp = rpc.NodeServiceStub(self.channel()).List(pb.NodeListRequest(), timeout=timeout)
        return list(resp.nodes)

    def ready_nodes(self) -> list[pb.Node]:
        return [n for n in self.nodes() if n.status == "ready"]

    def is_ready(self) -> bool:
        try:
            return bool(self.ready_nodes())
        except grpc.RpcError:
            return False

    def allocations(self, job_id: str, namespace: str = "", timeout: float = 5.0) -> list[Any]:
        """The job's allocations (pb.Allocation), straight from the server."""
        resp = rpc.JobServiceStub(self.channel()).Allocations(
            pb.JobAllocationsRequest(job_id=job_id, namespace=namespace), timeout=timeout
        )
        return list(resp.allocs)

    def wait_allocs(
        self,
        job_id: str,
        count: int,
        status: str | Iterable[str] = "running",
        timeout: float = 60.0,
    ) -> list[Any]:
        """Wait until ``count`` of the job's allocations that should run have one of
        the given client statuses; returns them."""
        wanted = {status} if isinstance(status, str) else set(status)

        def matching() -> list[Any]:
            allocs = [
                a
                for a in self.allocations(job_id)
                if a.desired_status == "run" and a.client_status in wanted
            ]
            return allocs if len(allocs) >= count else []

        return wait_for(
            matching,
            timeout=timeout,
            interval=0.2,
            message=lambda: (
                f"{count} allocation(s) of {job_id!r} in {sorted(wanted)}\n"
                f"----- last lines of {self.log_path} -----\n{self.log_tail(20)}"
            ),
            ignore=(grpc.RpcError,),
        )

    # ------------------------------------------------------------ CLI

    def cli(
        self, *args: str, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``corral <args>`` against this agent."""
        return run_cli(*args, addr=self.rpc_addr, timeout=timeout, input=input)

    def __enter__(self) -> DevAgent:
        super().__enter__()
        return self
