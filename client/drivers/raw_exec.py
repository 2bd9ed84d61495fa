"""The ``raw_exec`` driver: a host process in its own process group, no isolation.

Task config: ``command`` (string, required) and ``args`` (list of strings).

What it does, and why:

- The process starts with ``start_new_session=True``: it leads its own session
  and process group, so signals to the agent (Ctrl-C) do not reach tasks, a
  stop signal reaches the whole group (a shell and its children), and the task
  survives a client restart.
- cwd is the task dir; env is ``cfg.env`` (the full environment), plus the
  agent's PATH when ``cfg.env`` has none, so that ``command = "python3"`` works.
- stdout/stderr are appended to ``cfg.stdout_path`` / ``cfg.stderr_path``: the
  child writes to the files directly, so logs keep flowing while the client is
  down and nothing has to be re-attached after a restart.
- Exits are observed by one reaper thread per driver, woken by pidfds
  (``os.pidfd_open``; a 0.25 s poll where pidfds are missing). It reaps our
  children (no zombies) and, when a group leader exits, SIGKILLs what is left of
  its process group (stragglers such as a shell's background jobs), as Nomad
  does when a raw_exec task ends.
- ``handle.state`` holds ``pid``, ``pgid``, ``start_time`` (field 22 of
  /proc/<pid>/stat, in clock ticks since boot) and ``boot_id``: together they
  identify the process, so that a restarted client never mistakes a recycled pid
  for its task and never signals a stranger's process group.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import selectors
import shutil
import signal as _signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from corral.client.drivers.base import (
    DriverError,
    ExitResult,
    Fingerprint,
    TaskConfig,
    TaskHandle,
)
from corral.client.drivers.signals import parse_signal, signal_name

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_KNOWN_KEYS = frozenset({"command", "args"})
# How long stop_task waits for a process after SIGKILL before giving up (a
# process stuck in uninterruptible sleep cannot be killed at all).
_KILL_GRACE = 30.0
_POLL_INTERVAL = 0.25


# ---------------------------------------------------------------- /proc helpers


@dataclass(frozen=True)
class ProcStat:
    """The few fields of /proc/<pid>/stat the driver needs."""

    state: str  # R, S, D, Z, X, ...
    pgid: int
    start_time: int  # clock ticks after boot
    exit_status: int | None  # raw wait status; only meaningful for zombies


def read_proc_stat(pid: int) -> ProcStat | None:
    """The process's stat line, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces or ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    try:
        exit_status = int(rest[52 - 3]) if len(rest) >= 52 - 2 else None
        return ProcStat(
            state=rest[0],
            pgid=int(rest[5 - 3]),
            start_time=int(rest[22 - 3]),
            exit_status=exit_status,
        )
    except (IndexError, ValueError):
        return None


def boot_id() -> str:
    """This boot's id: a pid and start time mean nothing across reboots."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _result_from_wait_status(status: int) -> ExitResult:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return ExitResult(exit_code=128 + sig, signal=sig)
    if os.WIFEXITED(status):
        return ExitResult(exit_code=os.WEXITSTATUS(status))
    return ExitResult(exit_code=0)


def _result_from_returncode(rc: int) -> ExitResult:
    """Popen's returncode: negative for a signal. Exit code 128+N for signal N,
    as a shell reports it (and as Nomad's executor does)."""
    if rc < 0:
        return ExitResult(exit_code=128 - rc, signal=-rc)
    return ExitResult(exit_code=rc)


# ---------------------------------------------------------------- process records


@dataclass
class _Proc:
    task_id: str
    pid: int
    pgid: int
    start_time: int
    popen: subprocess.Popen[bytes] | None  # None when recovered (not our child)
    done: threading.Event = field(default_factory=threading.Event)
    exit: ExitResult | None = None
    last_signal: int = 0  # the last signal we sent, to explain an unknown exit
    killed: bool = False  # we sent SIGKILL while it was alive
    destroyed: bool = False

    def is_alive(self) -> bool:
        """Our task is still running (not a zombie, not a recycled pid)."""
        if self.done.is_set():
            return False
        st = read_proc_stat(self.pid)
        return st is not None and st.start_time == self.start_time and st.state not in ("Z", "X")


class _Reaper:
    """One thread watching every process of a driver for its exit.

    Why one thread: a client may run hundreds of raw_exec tasks; a thread per
    task blocked in waitpid would work but costs a stack each, and waitpid(-1)
    would steal children of other parts of the agent. pidfds let one epoll
    watch them all and still reap only our own pids.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._polled: dict[str, _Proc] = {}  # no pidfd: checked every _POLL_INTERVAL
        self._thread = threading.Thread(target=self._run, name="raw-exec-reaper", daemon=True)
        self._thread.start()

    def watch(self, proc: _Proc) -> None:
        pidfd = -1
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(proc.pid)
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    pidfd = -1  # already gone: the poll path notices at once
                else:
                    log.debug("pidfd_open(%d) failed: %s; polling instead", proc.pid, exc)
        if pidfd >= 0 and proc.popen is None and not proc.is_alive():
            # Recovered process: the pid may have been recycled between the
            # identity check and pidfd_open; re-check with the fd held.
            os.close(pidfd)
            pidfd = -1
        with self._lock:
            if pidfd >= 0:
                self._sel.register(pidfd, selectors.EVENT_READ, proc)
            else:
                self._polled[proc.task_id] = proc
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while True:
            with self._lock:
                timeout = _POLL_INTERVAL if self._polled else None
            try:
                events = self._sel.select(timeout)
            except OSError:  # pragma: no cover - fd closed under us
                time.sleep(_POLL_INTERVAL)
                continue
            for key, _ in events:
                if key.data is None:
                    with contextlib.suppress(BlockingIOError, OSError):
                        os.read(self._wake_r, 4096)
                    continue
                proc: _Proc = key.data
                with self._lock:
                    self._sel.unregister(key.fd)
                os.close(int(key.fd))
                _finish_exited(proc)
            with self._lock:
                polled = list(self._polled.values())
            for proc in polled:
                if _check_exited(proc):
                    with self._lock:
                        self._polled.pop(proc.task_id, None)


def _check_exited(proc: _Proc) -> bool:
    """Poll path: has ``proc`` exited? If so, record it."""
    if proc.done.is_set():
        return True
    if proc.popen is not None:
        if proc.popen.poll() is None:
            return False
        _finish_exited(proc)
        return True
    if proc.is_alive():
        return False
    _finish_exited(proc)
    return True


def _finish_exited(proc: _Proc) -> None:
    """The group leader has exited: kill stragglers, reap, record the result."""
    if proc.done.is_set():
        return
    if proc.popen is not None:
        # Kill the rest of the group while the zombie leader still pins the
        # pgid, so the id cannot have been recycled by an unrelated group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pgid, _signal.SIGKILL)
        rc = proc.popen.wait()
        result = _result_from_returncode(rc)
    else:
        result = _unknown_exit(proc)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pgid, _signal.SIGKILL)
    proc.exit = result
    proc.done.set()


def _unknown_exit(proc: _Proc) -> ExitResult:
    """The exit of a process that is not our child (recovered after a restart).

    Only its parent (init) learns the exit status. We know it when we catch the
    zombie (the kernel shows the status in /proc/<pid>/stat until init reaps it)
    or when we SIGKILLed it ourselves. Otherwise we cannot know: we report exit
    code 0 with no error, because declaring a task failed on a guess would make
    the restart policy re-run work that probably succeeded.
    """
    st = read_proc_stat(proc.pid)
    if (
        st is not None
        and st.start_time == proc.start_time
        and st.state == "Z"
        and st.exit_status is not None
    ):
        return _result_from_wait_status(st.exit_status)
    if proc.killed:
        return ExitResult(exit_code=128 + _signal.SIGKILL, signal=int(_signal.SIGKILL))
    return ExitResult(exit_code=0, err="")


# ---------------------------------------------------------------- the driver


class RawExecDriver:
    """Runs ``command args...`` as a host process group (see the module doc)."""

    name = "raw_exec"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: dict[str, _Proc] = {}
        self._reaper: _Reaper | None = None
        self._boot_id = boot_id()

    # ------------------------------------------------------------ interface

    def fingerprint(self) -> Fingerprint:
        if not os.path.isdir("/proc/self"):
            return Fingerprint(
                detected=False, healthy=False, description="raw_exec needs Linux /proc"
            )
        return Fingerprint(
            detected=True,
            healthy=True,
            description="raw_exec: host processes, no isolation",
            attributes={"driver.raw_exec": "1"},
        )

    def validate_config(self, config: dict[str, Any]) -> list[str]:
        problems = [
            f"unknown config key {key!r} for the raw_exec driver"
            for key in sorted(set(config) - _KNOWN_KEYS)
        ]
        command = config.get("command")
        if not isinstance(command, str) or not command.strip():
            problems.append("command is required and must be a non-empty string")
        args = config.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            problems.append("args must be a list of strings")
        return problems

    def start_task(self, cfg: TaskConfig) -> TaskHandle:
        problems = self.validate_config(cfg.config)
        if problems:
            raise DriverError("invalid raw_exec config: " + "; ".join(problems))
        env = dict(cfg.env)
        if "PATH" not in env:
            env["PATH"] = os.environ.get("PATH", DEFAULT_PATH)
        command = str(cfg.config["command"])
        argv = [self._resolve_command(command, cfg.task_dir, env["PATH"])]
        argv += [str(a) for a in cfg.config.get("args", [])]
        user_kwargs = self._user_kwargs(cfg.user)

        if cfg.task_dir:
            os.makedirs(cfg.task_dir, exist_ok=True)
        for path in (cfg.stdout_path, cfg.stderr_path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(cfg.stdout_path, "ab") as out, open(cfg.stderr_path, "ab") as err:
            try:
                popen = subprocess.Popen(  # noqa: S603 - running the user's task is the point
                    argv,
                    cwd=cfg.task_dir or None,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                    **user_kwargs,
                )
            except FileNotFoundError as exc:
                missing = exc.filename or argv[0]
                raise DriverError(f"command not found: {missing}") from exc
            except PermissionError as exc:
                raise DriverError(f"command not executable: {argv[0]} ({exc.strerror})") from exc
            except OSError as exc:
                raise DriverError(f"failed to start {argv[0]}: {exc.strerror or exc}") from exc

        st = read_proc_stat(popen.pid)
        proc = _Proc(
            task_id=f"{cfg.alloc_id}/{cfg.task_name}/{uuid.uuid4().hex[:8]}",
            pid=popen.pid,
            pgid=popen.pid,  # session leader == group leader == pid
            start_time=st.start_time if st else 0,
            popen=popen,
        )
        with self._lock:
            self._procs[proc.task_id] = proc
        self._watch(proc)
        return TaskHandle(
            driver=self.name,
            task_id=proc.task_id,
            state={
                "pid": proc.pid,
                "pgid": proc.pgid,
                "start_time": proc.start_time,
                "boot_id": self._boot_id,
                "command": argv[0],
            },
        )

    def wait_task(self, handle: TaskHandle, timeout: float | None = None) -> ExitResult | None:
        """The task's exit, or None after ``timeout`` seconds.

        For a task recovered after a client restart the process is not our
        child: the exit code is then unknown unless we caught its zombie or
        killed it ourselves, and we report ``ExitResult(exit_code=0, err="")``
        (see ``_unknown_exit``).
        """
        proc = self._get(handle)
        if not proc.done.wait(timeout):
            return None
        return proc.exit

    def stop_task(self, handle: TaskHandle, timeout: float, signal: str) -> None:
        proc = self._get(handle)
        try:
            sig = parse_signal(signal, default="SIGINT")
        except ValueError as exc:
            raise DriverError(str(exc)) from exc
        if proc.done.is_set():
            return
        self._signal_group(proc, sig)
        if proc.done.wait(max(0.0, timeout)):
            return
        log.info(
            "task %s ignored %s for %.1fs: sending SIGKILL", proc.task_id, signal_name(sig), timeout
        )
        if self._signal_group(proc, _signal.SIGKILL):
            proc.killed = True
        if not proc.done.wait(_KILL_GRACE):
            raise DriverError(
                f"process {proc.pid} did not exit {_KILL_GRACE:.0f}s after SIGKILL "
                "(stuck in the kernel?)",
                recoverable=True,
            )

    def destroy_task(self, handle: TaskHandle) -> None:
        with self._lock:
            proc = self._procs.pop(handle.task_id, None)
        if proc is None:
            return
        proc.destroyed = True
        if not proc.done.is_set() and self._signal_group(proc, _signal.SIGKILL):
            proc.killed = True
            proc.done.wait(_KILL_GRACE)

    def recover_task(self, handle: TaskHandle) -> bool:
        """Reattach to a task started by an earlier client process.

        The pid, start time and boot id in ``handle.state`` must all match a
        live process (a zombie counts: its exit status is still readable).
        """
        with self._lock:
            if handle.task_id in self._procs:
                return True
        state = handle.state
        try:
            pid = int(state["pid"])
            pgid = int(state.get("pgid", pid))
            start_time = int(state["start_time"])
        except (KeyError, TypeError, ValueError):
            return False
        if state.get("boot_id") and self._boot_id and state["boot_id"] != self._boot_id:
            return False
        st = read_proc_stat(pid)
        if st is None or st.start_time != start_time:
            return False
        proc = _Proc(task_id=handle.task_id, pid=pid, pgid=pgid, start_time=start_time, popen=None)
        with self._lock:
            if handle.task_id in self._procs:
                return True
            self._procs[handle.task_id] = proc
        if st.state in ("Z", "X"):
            _finish_exited(proc)
        else:
            self._watch(proc)
        return True

    # ------------------------------------------------------------ internals

    def _get(self, handle: TaskHandle) -> _Proc:
        with self._lock:
            proc = self._procs.get(handle.task_id)
        if proc is None and self.recover_task(handle):
            with self._lock:
                proc = self._procs.get(handle.task_id)
        if proc is None:
            raise DriverError(f"raw_exec task {handle.task_id} is unknown or no longer running")
        return proc

    def _watch(self, proc: _Proc) -> None:
        with self._lock:
            if self._reaper is None:
                self._reaper = _Reaper()
            reaper = self._reaper
        reaper.watch(proc)

    def _signal_group(self, proc: _Proc, sig: int) -> bool:
        """Signal the task's process group if the task is still ours and alive.

        The identity check (start time) guards against a recycled pid; our own
        unreaped child cannot be recycled, so it needs none.
        """
        if proc.done.is_set():
            return False
        if proc.popen is None and not proc.is_alive():
            return False
        proc.last_signal = sig
        try:
            os.killpg(proc.pgid, sig)
        except ProcessLookupError:
            return False
        except PermissionError as exc:
            raise DriverError(f"cannot signal process group {proc.pgid}: {exc.strerror}") from exc
        return True

    @staticmethod
    def _resolve_command(command: str, task_dir: str, path: str) -> str:
        """An absolute path for ``command``: a bare name is looked up on the
        task's PATH; a relative path is relative to the task dir."""
        if "/" not in command:
            found = shutil.which(command, path=path)
            if found is None:
                raise DriverError(f"command not found: {command} (searched PATH={path})")
            return found
        full = command if os.path.isabs(command) else os.path.join(task_dir, command)
        if not os.path.exists(full):
            raise DriverError(f"command not found: {full}")
        if os.path.isdir(full) or not os.access(full, os.X_OK):
            raise DriverError(f"command not executable: {full}")
        return full

    @staticmethod
    def _user_kwargs(user: str) -> dict[str, Any]:
        """Popen arguments to run as ``user`` (only possible when the agent is root)."""
        if not user:
            return {}
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise DriverError(f"user {user!r} does not exist on this node") from None
        if entry.pw_uid == os.geteuid():
            return {}
        if os.geteuid() != 0:
            raise DriverError(f"cannot run the task as {user!r}: the client agent is not root")
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
