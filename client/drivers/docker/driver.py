"""The ``docker`` driver: one container per task run, through the Docker SDK.

``DockerDriver`` is the ``base.Driver`` the task runner calls: it owns the engine
client and the container lifecycle (create, start, wait, stop, destroy, recover)
and leaves the task config to ``config``, images to ``images`` and log
collection to ``logs``.

Reattach: ``handle.state`` keeps the container id and name, the alloc id, task
name and log paths. ``recover_task`` inspects the container by id and, if that
id is gone, finds it by the labels ``corral.alloc_id`` + ``corral.task_name``.

Every engine call has a timeout; the engine client is created on first use, so
a machine without Docker still starts (fingerprint then says undetected).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from corral.client.drivers.base import (
    DriverError,
    ExitResult,
    Fingerprint,
    TaskConfig,
    TaskHandle,
)
from corral.client.drivers.docker.config import (
    LABEL_ALLOC_ID,
    LABEL_TASK_NAME,
    container_options,
    validate_config,
)
from corral.client.drivers.docker.errors import (
    http_status,
    is_api_error,
    is_not_found,
    is_removal_in_progress,
    short_error,
)
from corral.client.drivers.docker.images import ImagePuller
from corral.client.drivers.docker.logs import CURSOR_FILE, LogFollower
from corral.client.drivers.signals import parse_signal, signal_name

if TYPE_CHECKING:  # pragma: no cover
    import docker

log = logging.getLogger(__name__)

_KILL_GRACE = 30.0  # how long to wait for a container after SIGKILL
_WAIT_CHUNK = 30.0  # longest single wait request: bounds a call on a silent engine


class DockerDriver:
    """Tasks as Docker containers (the task config: see ``config``)."""

    name = "docker"

    def __init__(
        self,
        *,
        api_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        pull_timeout: float = 300.0,
        pull_stall_timeout: float = 15.0,
        mount_task_dirs: bool = True,
        base_url: str | None = None,
    ) -> None:
        self.api_timeout = api_timeout
        self.connect_timeout = connect_timeout
        self.pull_timeout = pull_timeout
        self.pull_stall_timeout = pull_stall_timeout
        self.mount_task_dirs = mount_task_dirs
        self.base_url = base_url
        self._lock = threading.Lock()
        self._api_client: docker.APIClient | None = None
        self._last_connect_error: tuple[float, str] | None = None
        self._followers: dict[str, LogFollower] = {}
        self._images = ImagePuller()

    # ------------------------------------------------------------ engine access

    def _api(self) -> docker.APIClient:
        """The engine client, created on first use (raises DriverError if no engine)."""
        with self._lock:
            if self._api_client is not None:
                return self._api_client
            failed = self._last_connect_error
            if failed is not None and time.monotonic() - failed[0] < 1.0:
                raise DriverError(failed[1], recoverable=True)
            try:
                import docker

                if self.base_url:
                    api = docker.APIClient(
                        base_url=self.base_url,
                        version="auto",
                        timeout=self.connect_timeout,
                        max_pool_size=64,
                    )
                else:
                    api = docker.from_env(timeout=self.connect_timeout, max_pool_size=64).api
            except Exception as exc:
                msg = f"Docker engine not reachable: {short_error(exc)}"
                self._last_connect_error = (time.monotonic(), msg)
                raise DriverError(msg, recoverable=True) from exc
            api.timeout = self.api_timeout
            self._api_client = api
            return api

    # ------------------------------------------------------------ interface

    def fingerprint(self) -> Fingerprint:
        try:
            api = self._api()
            info = api._result(api._get(api._url("/version"), timeout=5), json=True)
        except Exception as exc:
            msg = (
                exc.args[0]
                if isinstance(exc, DriverError)
                else f"Docker engine: {short_error(exc)}"
            )
            socket_present = bool(os.environ.get("DOCKER_HOST")) or os.path.exists(
                "/var/run/docker.sock"
            )
            return Fingerprint(detected=socket_present, healthy=False, description=str(msg))
        attrs = {
            "driver.docker": "1",
            "driver.docker.version": str(info.get("Version", "")),
            "driver.docker.api_version": str(info.get("ApiVersion", "")),
            "driver.docker.os_type": str(info.get("Os", "")),
        }
        return Fingerprint(
            detected=True,
            healthy=True,
            description=f"Docker engine {attrs['driver.docker.version']}",
            attributes=attrs,
        )

    def validate_config(self, config: dict[str, Any]) -> list[str]:
        return validate_config(config)

    def start_task(self, cfg: TaskConfig) -> TaskHandle:
        problems = self.validate_config(cfg.config)
        if problems:
            raise DriverError("invalid docker config: " + "; ".join(problems))
        image = str(cfg.config["image"]).strip()
        api = self._api()
        self._images.ensure(
            api, image, pull_timeout=self.pull_timeout, stall_timeout=self.pull_stall_timeout
        )

        opts = container_options(cfg, mount_task_dirs=self.mount_task_dirs)
        name = opts.name
        create_kwargs = {**opts.create, "host_config": api.create_host_config(**opts.host)}
        container_id = self._create(api, image, name, create_kwargs)
        try:
            api.start(container_id)
        except Exception as exc:
            with contextlib.suppress(Exception):
                api.remove_container(container_id, force=True, v=True)
            raise DriverError(
                f"failed to start container {name} ({image}): {short_error(exc)}",
                recoverable=not is_api_error(exc),
            ) from exc

        cursor_path = os.path.join(cfg.task_dir or os.path.dirname(cfg.stdout_path), CURSOR_FILE)
        state: dict[str, Any] = {
            "container_id": container_id,
            "container_name": name,
            "image": image,
            "alloc_id": cfg.alloc_id,
            "task_name": cfg.task_name,
            "stdout_path": cfg.stdout_path,
            "stderr_path": cfg.stderr_path,
            "log_cursor_path": cursor_path,
        }
        self._follow_logs(api, state)
        return TaskHandle(
            driver=self.name,
            task_id=f"{cfg.alloc_id}/{cfg.task_name}/{uuid.uuid4().hex[:8]}",
            state=state,
        )

    def wait_task(self, handle: TaskHandle, timeout: float | None = None) -> ExitResult | None:
        """The container's exit (code, OOM flag, engine error), or None after ``timeout``.

        Waits in bounded chunks, so a silent engine never blocks one request
        forever; a container that was removed behind our back ends the task
        with exit code -1 and an error saying so.
        """
        cid = self._container_id(handle)
        result = self._wait_exit(cid, timeout)
        if result is not None:
            follower = self._followers.get(cid)
            if follower is not None:
                follower.join(2.0)  # the last lines are in the files when we report
        return result

    def stop_task(self, handle: TaskHandle, timeout: float, signal: str) -> None:
        cid = self._container_id(handle)
        api = self._api()
        timeout = max(0.0, timeout)
        if not signal:
            # No kill_signal: docker's own stop (the image's STOPSIGNAL, then SIGKILL).
            try:
                api.stop(cid, timeout=int(math.ceil(timeout)))
            except Exception as exc:
                if not is_not_found(exc):
                    raise DriverError(f"failed to stop container: {short_error(exc)}") from exc
            return
        try:
            sig = signal_name(parse_signal(signal, default="SIGTERM"))
        except ValueError as exc:
            raise DriverError(str(exc)) from exc
        if not self._kill(api, cid, sig):
            return  # not running (or gone): nothing to stop
        if self._wait_exit(cid, timeout) is not None:
            return
        log.info("container %s ignored %s for %.1fs: killing it", cid[:12], sig, timeout)
        if not self._kill(api, cid, "SIGKILL"):
            return
        if self._wait_exit(cid, _KILL_GRACE) is None:
            raise DriverError(
                f"container {cid[:12]} did not exit {_KILL_GRACE:.0f}s after SIGKILL",
                recoverable=True,
            )

    def destroy_task(self, handle: TaskHandle) -> None:
        cid = handle.state.get("container_id", "")
        follower = self._followers.pop(cid, None) if cid else None
        if follower is not None:
            follower.join(1.0)  # an exited container's stream ends by itself
            follower.stop()
            follower.join(2.0)
        if cid:
            api = self._api()
            try:
                api.remove_container(cid, force=True, v=True)
            except Exception as exc:
                if not is_not_found(exc) and not is_removal_in_progress(exc):
                    raise DriverError(
                        f"failed to remove container {cid[:12]}: {short_error(exc)}"
                    ) from exc
        cursor = handle.state.get("log_cursor_path")
        if cursor:
            with contextlib.suppress(OSError):
                os.unlink(cursor)

    def recover_task(self, handle: TaskHandle) -> bool:
        """Find the task's container again: by id, else by its corral labels.

        Raises DriverError (recoverable) when the engine does not answer, since
        "the engine is down" must not be mistaken for "the container is gone".
        """
        api = self._api()
        info: dict[str, Any] | None = None
        cid = handle.state.get("container_id")
        try:
            if cid:
                try:
                    info = api.inspect_container(cid)
                except Exception as exc:
                    if not is_not_found(exc):
                        raise
            if info is None:
                info = self._find_by_labels(
                    api, handle.state.get("alloc_id", ""), handle.state.get("task_name", "")
                )
        except Exception as exc:
            raise DriverError(
                f"cannot reattach to container: {short_error(exc)}", recoverable=True
            ) from exc
        if info is None:
            return False
        handle.state["container_id"] = info["Id"]
        handle.state.setdefault("container_name", str(info.get("Name", "")).lstrip("/"))
        if handle.state.get("stdout_path") and handle.state.get("stderr_path"):
            self._follow_logs(api, handle.state)
        return True

    # ------------------------------------------------------------ internals

    def _container_id(self, handle: TaskHandle) -> str:
        cid = handle.state.get("container_id")
        if not cid:
            raise DriverError(f"docker task {handle.task_id} has no container id in its state")
        return str(cid)

    def _create(self, api: docker.APIClient, image: str, name: str, kwargs: dict[str, Any]) -> str:
        """Create the container; a leftover of the same name (an earlier attempt
        of this very task, since the name holds the alloc id) is removed first."""
        for attempt in (1, 2):
            try:
                created = api.create_container(image, **kwargs)
                return str(created["Id"])
            except Exception as exc:
                if attempt == 1 and http_status(exc) == 409:
                    log.info("removing leftover container %s", name)
                    with contextlib.suppress(Exception):
                        api.remove_container(name, force=True, v=True)
                    continue
                raise DriverError(
                    f"failed to create container {name} ({image}): {short_error(exc)}",
                    recoverable=not is_api_error(exc),
                ) from exc
        raise AssertionError("unreachable")

    def _wait_exit(self, cid: str, timeout: float | None) -> ExitResult | None:
        api = self._api()
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            try:
                state = api.inspect_container(cid)["State"]
            except Exception as exc:
                if is_not_found(exc):
                    return ExitResult(exit_code=-1, err=f"container {cid[:12]} no longer exists")
                state = None  # engine trouble: retry until the deadline
            if state is not None and not state.get("Running") and not state.get("Restarting"):
                return ExitResult(
                    exit_code=int(state.get("ExitCode", 0)),
                    oom_killed=bool(state.get("OOMKilled", False)),
                    err=str(state.get("Error") or ""),
                )
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            chunk = _WAIT_CHUNK if remaining is None else min(_WAIT_CHUNK, remaining)
            if state is None:
                time.sleep(min(1.0, chunk))
                continue
            started = time.monotonic()
            try:
                api.wait(cid, timeout=max(chunk, 0.05))
            except Exception as exc:
                if is_not_found(exc):
                    return ExitResult(exit_code=-1, err=f"container {cid[:12]} no longer exists")
                # A read timeout is the normal end of a chunk; anything else
                # (engine restarting...) gets a short pause before we re-check.
                if time.monotonic() - started < chunk * 0.9:
                    time.sleep(min(0.5, chunk))
            # loop: inspect gives the exit code and the OOM flag

    def _kill(self, api: docker.APIClient, cid: str, sig: str) -> bool:
        """Send ``sig``; False when the container is not running or is gone."""
        try:
            api.kill(cid, signal=sig)
            return True
        except Exception as exc:
            if is_not_found(exc) or http_status(exc) == 409:
                return False
            raise DriverError(f"failed to signal container {cid[:12]}: {short_error(exc)}") from exc

    def _find_by_labels(
        self, api: docker.APIClient, alloc_id: str, task_name: str
    ) -> dict[str, Any] | None:
        if not alloc_id or not task_name:
            return None
        found = api.containers(
            all=True,
            filters={"label": [f"{LABEL_ALLOC_ID}={alloc_id}", f"{LABEL_TASK_NAME}={task_name}"]},
        )
        if not found:
            return None
        newest = max(found, key=lambda c: c.get("Created", 0))
        info: dict[str, Any] = api.inspect_container(newest["Id"])
        return info

    def _follow_logs(self, api: docker.APIClient, state: dict[str, Any]) -> None:
        cid = state["container_id"]
        with self._lock:
            current = self._followers.get(cid)
            if current is not None and current.thread.is_alive():
                return
            follower = LogFollower(
                api,
                cid,
                state["stdout_path"],
                state["stderr_path"],
                state.get("log_cursor_path")
                or os.path.join(os.path.dirname(state["stdout_path"]), CURSOR_FILE),
                self.api_timeout,
            )
            self._followers[cid] = follower
        follower.start()

    def close(self) -> None:
        """Stop log followers (containers keep running): for agent shutdown."""
        with self._lock:
            followers = list(self._followers.values())
            self._followers.clear()
        for f in followers:
            f.stop()
