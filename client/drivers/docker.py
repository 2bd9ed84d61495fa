"""The ``docker`` driver: one container per task run, through the Docker SDK.

Task config keys (Nomad's names):

``image``         required; must exist locally (one pull is tried, briefly)
``command``       overrides the image's CMD; with ``args`` appended
``args``          list of strings; without ``command`` they replace the CMD
``entrypoint``    list of strings (or one string) overriding the ENTRYPOINT
``ports``         list of port labels from the group's network block: each
                  publishes ``host_ip:host_port`` -> container port ``to``
                  (``host_port`` when ``to`` is 0), tcp and udp like Nomad
``labels``        extra container labels (dict)
``work_dir``      the container's working directory
``network_mode``  e.g. ``bridge`` (default), ``host``, ``none``
``init``          bool: run docker's tiny init as PID 1 (reaps, forwards signals)

Resources: ``memory_mb`` is the hard limit (``memory_max_mb``, when larger,
becomes the hard limit and ``memory_mb`` the reservation, as in Nomad); swap is
disabled by setting memory+swap to the same limit; ``cpu_mhz`` becomes
``cpu_shares`` (Nomad's convention). Env is ``cfg.env``. Labels carry
``corral.alloc_id``, ``corral.task_name``, ``corral.job_name``,
``corral.node_id`` plus ``cfg.labels``. The container is named
``<task>-<alloc_id>`` like Nomad's, so a leftover from a crashed attempt is
found (and replaced) by name.

Task directories: when they exist on the host, ``cfg.alloc_dir`` is mounted at
``/alloc``, ``<task_dir>/local`` at ``/local`` and ``<task_dir>/secrets`` at
``/secrets`` (Nomad's layout; ``taskenv.build_env(driver="docker")`` gives the
matching ``NOMAD_*_DIR`` values).

Logs: one follower thread per container reads the engine's multiplexed log
stream (``follow``, ``timestamps``) and appends stdout and stderr frames to
``cfg.stdout_path`` / ``cfg.stderr_path``. After each batch it records the
timestamp of the last frame written in a small cursor file in the task dir
(at most every 0.2 s). A recovered task resumes from that cursor and skips
frames at or before it: nothing is lost across a client restart, and at most
the last ~0.2 s of output before the crash can appear twice.

Reattach: ``handle.state`` keeps the container id and name, the alloc id, task
name and log paths. ``recover_task`` inspects the container by id and, if that
id is gone, finds it by the labels ``corral.alloc_id`` + ``corral.task_name``.

Every engine call has a timeout; the engine client is created on first use, so
a machine without Docker still starts (fingerprint then says undetected).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
import threading
import time
import uuid
from calendar import timegm
from typing import TYPE_CHECKING, Any

from corral.client.drivers.base import (
    DriverError,
    ExitResult,
    Fingerprint,
    TaskConfig,
    TaskHandle,
)
from corral.client.drivers.signals import parse_signal, signal_name

if TYPE_CHECKING:  # pragma: no cover
    import docker
    import requests

log = logging.getLogger(__name__)

_KNOWN_KEYS = frozenset(
    {
        "image",
        "command",
        "args",
        "entrypoint",
        "ports",
        "labels",
        "work_dir",
        "network_mode",
        "init",
    }
)
LABEL_ALLOC_ID = "corral.alloc_id"
LABEL_TASK_NAME = "corral.task_name"
LABEL_JOB_NAME = "corral.job_name"
LABEL_NODE_ID = "corral.node_id"

_CURSOR_FILE = ".docker-logs.cursor"
_CURSOR_EVERY = 0.2  # seconds between cursor writes
_KILL_GRACE = 30.0  # how long to wait for a container after SIGKILL
_WAIT_CHUNK = 30.0  # longest single wait request: bounds a call on a silent engine
_PULL_RETRY_AFTER = 30.0  # do not re-try a failed pull of the same image sooner


def container_name(task_name: str, alloc_id: str) -> str:
    """Nomad's container name: ``<task>-<alloc_id>``."""
    return f"{task_name}-{alloc_id}"


def split_image(image: str) -> tuple[str, str]:
    """``("repo", "tag")`` for a reference; digests stay in the repo part."""
    if "@" in image:
        return image, ""
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


def _parse_log_ts(raw: bytes) -> int:
    """Nanoseconds since the epoch for a Docker log timestamp.

    The engine writes RFC 3339 with nanoseconds (``2024-05-01T10:00:00.123456789Z``).
    """
    text = raw.decode("ascii", "replace")
    main, _, frac = text.rstrip("Z").partition(".")
    secs = timegm(time.strptime(main[:19], "%Y-%m-%dT%H:%M:%S"))
    digits = "".join(ch for ch in frac if ch.isdigit())[:9]
    return secs * 1_000_000_000 + int(digits.ljust(9, "0") or "0")


def _format_since(ts_ns: int) -> str:
    return f"{ts_ns // 1_000_000_000}.{ts_ns % 1_000_000_000:09d}"


class _LogFollower:
    """Copies one container's logs into the task's stdout/stderr files."""

    def __init__(
        self,
        api: docker.APIClient,
        container_id: str,
        stdout_path: str,
        stderr_path: str,
        cursor_path: str,
        timeout: float,
    ) -> None:
        self.api = api
        self.container_id = container_id
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.cursor_path = cursor_path
        self.timeout = timeout
        self._response: requests.Response | None = None
        self._stopping = threading.Event()
        self._last_ts = self._read_cursor()
        self._cursor_written_at = 0.0
        self._cursor_dirty = False
        self.thread = threading.Thread(
            target=self._run, name=f"docker-logs-{container_id[:12]}", daemon=True
        )

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def stop(self) -> None:
        """Stop following now (the stream is closed under the reader)."""
        self._stopping.set()
        resp = self._response
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.close()

    def _read_cursor(self) -> int:
        try:
            with open(self.cursor_path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return 0
        if data.get("container_id") != self.container_id:
            return 0  # a cursor of an earlier attempt's container
        return int(data.get("ts_ns", 0))

    def _write_cursor(self, force: bool = False) -> None:
        if not self._cursor_dirty:
            return
        now = time.monotonic()
        if not force and now - self._cursor_written_at < _CURSOR_EVERY:
            return
        tmp = f"{self.cursor_path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump({"container_id": self.container_id, "ts_ns": self._last_ts}, fh)
            os.replace(tmp, self.cursor_path)
        except OSError as exc:
            log.debug("cannot write log cursor %s: %s", self.cursor_path, exc)
        self._cursor_written_at = now
        self._cursor_dirty = False

    def _run(self) -> None:
        """Follow until the container stops; reconnect (from the cursor) when the
        stream breaks while it still runs, e.g. a slow or restarted engine."""
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    self._follow()
                    if not self._container_running():
                        return  # the normal end: the container exited
                except Exception as exc:  # the stream may also be closed under us
                    if self._stopping.is_set() or _is_not_found(exc):
                        return
                    failures += 1
                    if failures > 20:
                        log.warning(
                            "giving up on the logs of %s: %s", self.container_id[:12], _short(exc)
                        )
                        return
                    log.debug("log stream of %s broke: %s", self.container_id[:12], _short(exc))
                self._stopping.wait(min(5.0, 0.1 * (failures + 1)))
        finally:
            self._write_cursor(force=True)

    def _container_running(self) -> bool:
        try:
            state = self.api.inspect_container(self.container_id)["State"]
        except Exception:
            return False
        return bool(state.get("Running") or state.get("Restarting"))

    def _follow(self) -> None:
        params: dict[str, Any] = {
            "stdout": 1,
            "stderr": 1,
            "follow": 1,
            "timestamps": 1,
            "tail": "all",
        }
        if self._last_ts:
            params["since"] = _format_since(self._last_ts)
        api = self.api
        url = api._url("/containers/{0}/logs", self.container_id)
        resp = api._get(url, params=params, stream=True, timeout=self.timeout)
        self._response = resp
        if self._stopping.is_set():
            resp.close()
            return
        api._raise_for_status(resp)
        # A quiet container must not make the read time out: the stream lives
        # as long as the container; stop() closes it when we are done.
        with contextlib.suppress(Exception):
            api._disable_socket_timeout(api._get_raw_response_socket(resp))
        for path in (self.stdout_path, self.stderr_path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        raw = resp.raw
        with (
            open(self.stdout_path, "ab", buffering=0) as out,
            open(self.stderr_path, "ab", buffering=0) as err,
        ):
            while not self._stopping.is_set():
                header = raw.read(8)
                if not header or len(header) < 8:
                    break
                stream, length = struct.unpack(">BxxxL", header)
                if not length:
                    continue
                payload = raw.read(length)
                if not payload:
                    break
                ts_raw, sep, message = payload.partition(b" ")
                ts = 0
                if sep:
                    try:
                        ts = _parse_log_ts(ts_raw)
                    except ValueError:
                        ts, message = 0, payload
                else:
                    message = payload
                if ts and ts <= self._last_ts:
                    continue  # already copied before a client restart
                (err if stream == 2 else out).write(message)
                if ts:
                    self._last_ts = ts
                    self._cursor_dirty = True
                    self._write_cursor()


class DockerDriver:
    """Tasks as Docker containers (see the module doc for config and behaviour)."""

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
        self._followers: dict[str, _LogFollower] = {}
        self._pull_failures: dict[str, tuple[float, str]] = {}

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
                msg = f"Docker engine not reachable: {_short(exc)}"
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
            msg = exc.args[0] if isinstance(exc, DriverError) else f"Docker engine: {_short(exc)}"
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
        problems = [
            f"unknown config key {key!r} for the docker driver"
            for key in sorted(set(config) - _KNOWN_KEYS)
        ]
        image = config.get("image")
        if not isinstance(image, str) or not image.strip():
            problems.append("image is required and must be a non-empty string")
        for key in ("command", "work_dir", "network_mode"):
            if key in config and not isinstance(config[key], str):
                problems.append(f"{key} must be a string")
        for key in ("args", "ports"):
            value = config.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"{key} must be a list of strings")
        entrypoint = config.get("entrypoint", [])
        if not isinstance(entrypoint, str) and (
            not isinstance(entrypoint, list) or not all(isinstance(v, str) for v in entrypoint)
        ):
            problems.append("entrypoint must be a list of strings")
        labels = config.get("labels", {})
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            problems.append("labels must be a map of strings")
        if "init" in config and not isinstance(config["init"], bool):
            problems.append("init must be true or false")
        return problems

    def start_task(self, cfg: TaskConfig) -> TaskHandle:
        problems = self.validate_config(cfg.config)
        if problems:
            raise DriverError("invalid docker config: " + "; ".join(problems))
        conf = cfg.config
        image = str(conf["image"]).strip()
        api = self._api()
        self._ensure_image(api, image)

        name = container_name(cfg.task_name, cfg.alloc_id)
        labels = {
            LABEL_ALLOC_ID: cfg.alloc_id,
            LABEL_TASK_NAME: cfg.task_name,
            LABEL_JOB_NAME: cfg.job_name,
            LABEL_NODE_ID: cfg.node_id,
        }
        labels.update(cfg.labels)
        labels.update(conf.get("labels", {}))

        network_mode = str(conf.get("network_mode", "") or "")
        exposed, bindings = self._port_bindings(cfg, conf.get("ports", []), network_mode)

        args = [str(a) for a in conf.get("args", [])]
        command: list[str] | None = None
        if conf.get("command"):
            command = [str(conf["command"]), *args]
        elif args:
            command = args
        entrypoint = conf.get("entrypoint")
        if isinstance(entrypoint, str):
            entrypoint = [entrypoint]

        host_kwargs: dict[str, Any] = {}
        if bindings:
            host_kwargs["port_bindings"] = bindings
        if network_mode:
            host_kwargs["network_mode"] = network_mode
        hard_mb = max(cfg.memory_mb, cfg.memory_max_mb)
        if hard_mb > 0:
            host_kwargs["mem_limit"] = hard_mb * 1024 * 1024
            host_kwargs["memswap_limit"] = hard_mb * 1024 * 1024
            if cfg.memory_max_mb > cfg.memory_mb > 0:
                host_kwargs["mem_reservation"] = cfg.memory_mb * 1024 * 1024
        if cfg.cpu_mhz > 0:
            host_kwargs["cpu_shares"] = max(2, cfg.cpu_mhz)  # the kernel's minimum is 2
        if conf.get("init"):
            host_kwargs["init"] = True
        binds = self._binds(cfg)
        if binds:
            host_kwargs["binds"] = binds

        create_kwargs: dict[str, Any] = {
            "name": name,
            "labels": labels,
            "environment": dict(cfg.env),
            "detach": True,
            "host_config": api.create_host_config(**host_kwargs),
        }
        if command is not None:
            create_kwargs["command"] = command
        if entrypoint:
            create_kwargs["entrypoint"] = list(entrypoint)
        if exposed:
            create_kwargs["ports"] = exposed
        if conf.get("work_dir"):
            create_kwargs["working_dir"] = str(conf["work_dir"])
        if cfg.user:
            create_kwargs["user"] = cfg.user

        container_id = self._create(api, image, name, create_kwargs)
        try:
            api.start(container_id)
        except Exception as exc:
            with contextlib.suppress(Exception):
                api.remove_container(container_id, force=True, v=True)
            raise DriverError(
                f"failed to start container {name} ({image}): {_short(exc)}",
                recoverable=not _is_api_error(exc),
            ) from exc

        cursor_path = os.path.join(cfg.task_dir or os.path.dirname(cfg.stdout_path), _CURSOR_FILE)
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
                if not _is_not_found(exc):
                    raise DriverError(f"failed to stop container: {_short(exc)}") from exc
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
                if not _is_not_found(exc) and not _is_removal_in_progress(exc):
                    raise DriverError(
                        f"failed to remove container {cid[:12]}: {_short(exc)}"
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
                    if not _is_not_found(exc):
                        raise
            if info is None:
                info = self._find_by_labels(
                    api, handle.state.get("alloc_id", ""), handle.state.get("task_name", "")
                )
        except Exception as exc:
            raise DriverError(
                f"cannot reattach to container: {_short(exc)}", recoverable=True
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

    def _ensure_image(self, api: docker.APIClient, image: str) -> None:
        """The image exists locally, or one bounded pull brings it, or DriverError."""
        try:
            api.inspect_image(image)
            return
        except Exception as exc:
            if not _is_not_found(exc):
                raise DriverError(
                    f"cannot inspect image {image}: {_short(exc)}", recoverable=True
                ) from exc
        with self._lock:
            failed = self._pull_failures.get(image)
        if failed is not None and time.monotonic() - failed[0] < _PULL_RETRY_AFTER:
            raise DriverError(failed[1])
        try:
            self._pull(api, image)
            api.inspect_image(image)
        except Exception as exc:
            msg = (
                f"image {image} not found locally and no registry is reachable: "
                f"failed to pull {image}: {_short(exc)}"
            )
            with self._lock:
                self._pull_failures[image] = (time.monotonic(), msg)
            raise DriverError(msg) from exc

    def _pull(self, api: docker.APIClient, image: str) -> None:
        """One pull attempt (the SDK's pull has no timeout at all): it fails when
        the engine reports no progress for ``pull_stall_timeout`` seconds (an
        unreachable registry) or the whole pull exceeds ``pull_timeout``."""
        repo, tag = split_image(image)
        params = {"fromImage": repo}
        if tag:
            params["tag"] = tag
        deadline = time.monotonic() + self.pull_timeout
        resp = api._post(
            api._url("/images/create"),
            params=params,
            stream=True,
            timeout=self.pull_stall_timeout,
        )
        try:
            api._raise_for_status(resp)
            for line in resp.iter_lines():
                if line:
                    msg = json.loads(line)
                    if msg.get("error"):
                        raise RuntimeError(msg["error"])
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pull took longer than {self.pull_timeout:.0f}s")
        finally:
            resp.close()

    def _create(self, api: docker.APIClient, image: str, name: str, kwargs: dict[str, Any]) -> str:
        """Create the container; a leftover of the same name (an earlier attempt
        of this very task, since the name holds the alloc id) is removed first."""
        for attempt in (1, 2):
            try:
                created = api.create_container(image, **kwargs)
                return str(created["Id"])
            except Exception as exc:
                if attempt == 1 and _status(exc) == 409:
                    log.info("removing leftover container %s", name)
                    with contextlib.suppress(Exception):
                        api.remove_container(name, force=True, v=True)
                    continue
                raise DriverError(
                    f"failed to create container {name} ({image}): {_short(exc)}",
                    recoverable=not _is_api_error(exc),
                ) from exc
        raise AssertionError("unreachable")

    def _port_bindings(
        self, cfg: TaskConfig, labels: list[str], network_mode: str
    ) -> tuple[list[tuple[int, str]], dict[str, tuple[str, int]]]:
        by_label = {p.label: p for p in cfg.ports}
        exposed: list[tuple[int, str]] = []
        bindings: dict[str, tuple[str, int]] = {}
        for label in labels:
            pm = by_label.get(label)
            if pm is None:
                known = ", ".join(sorted(by_label)) or "none"
                raise DriverError(
                    f"port {label!r} in the docker config is not in the group's network "
                    f"block (ports: {known})"
                )
            if network_mode in ("host", "none"):
                continue  # nothing to publish: the task binds the host port itself
            container_port = pm.to if pm.to > 0 else pm.host_port
            host_ip = pm.host_ip or "0.0.0.0"
            for proto in ("tcp", "udp"):
                exposed.append((container_port, proto))
                bindings[f"{container_port}/{proto}"] = (host_ip, pm.host_port)
        return exposed, bindings

    def _binds(self, cfg: TaskConfig) -> list[str]:
        if not self.mount_task_dirs:
            return []
        pairs = [(cfg.alloc_dir, "/alloc")]
        if cfg.task_dir:
            pairs += [
                (os.path.join(cfg.task_dir, "local"), "/local"),
                (os.path.join(cfg.task_dir, "secrets"), "/secrets"),
            ]
        return [f"{host}:{inside}:rw" for host, inside in pairs if host and os.path.isdir(host)]

    def _wait_exit(self, cid: str, timeout: float | None) -> ExitResult | None:
        api = self._api()
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            try:
                state = api.inspect_container(cid)["State"]
            except Exception as exc:
                if _is_not_found(exc):
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
                if _is_not_found(exc):
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
            if _is_not_found(exc) or _status(exc) == 409:
                return False
            raise DriverError(f"failed to signal container {cid[:12]}: {_short(exc)}") from exc

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
            follower = _LogFollower(
                api,
                cid,
                state["stdout_path"],
                state["stderr_path"],
                state.get("log_cursor_path")
                or os.path.join(os.path.dirname(state["stdout_path"]), _CURSOR_FILE),
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


# ---------------------------------------------------------------- error helpers


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return int(code) if code is not None else None


def _is_not_found(exc: BaseException) -> bool:
    try:
        import docker.errors
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, docker.errors.NotFound) or _status(exc) == 404


def _is_api_error(exc: BaseException) -> bool:
    """The engine answered and refused (bad request, port taken...): retrying the
    same start will not help. Connection errors and timeouts are not API errors."""
    try:
        import docker.errors
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, docker.errors.APIError)


def _is_removal_in_progress(exc: BaseException) -> bool:
    return _status(exc) == 409 and "already in progress" in str(exc)


def _short(exc: BaseException) -> str:
    """The engine's own explanation when there is one: what users should read."""
    explanation = getattr(exc, "explanation", None)
    if explanation:
        return str(explanation)
    text = str(exc) or exc.__class__.__name__
    return text if len(text) <= 300 else text[:297] + "..."
