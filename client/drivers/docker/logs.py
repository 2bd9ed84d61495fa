"""Log collection of the docker driver: container logs into the task's log files.

One follower thread per container reads the engine's multiplexed log stream
(``follow``, ``timestamps``) and appends stdout and stderr frames to
``cfg.stdout_path`` / ``cfg.stderr_path``. After each batch it records the
timestamp of the last frame written in a small cursor file in the task dir
(at most every 0.2 s). A recovered task resumes from that cursor and skips
frames at or before it: nothing is lost across a client restart, and at most
the last ~0.2 s of output before the crash can appear twice.

Apart from the driver because it is a protocol of its own (the engine's frame
format, timestamps, the cursor file) and runs on its own threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
import time
from calendar import timegm
from typing import TYPE_CHECKING, Any

from corral.client.drivers.docker.errors import is_not_found, short_error

if TYPE_CHECKING:  # pragma: no cover
    import docker
    import requests

log = logging.getLogger(__name__)

CURSOR_FILE = ".docker-logs.cursor"
_CURSOR_EVERY = 0.2  # seconds between cursor writes


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


class LogFollower:
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
                    if self._stopping.is_set() or is_not_found(exc):
                        return
                    failures += 1
                    if failures > 20:
                        log.warning(
                            "giving up on the logs of %s: %s",
                            self.container_id[:12],
                            short_error(exc),
                        )
                        return
                    log.debug(
                        "log stream of %s broke: %s", self.container_id[:12], short_error(exc)
                    )
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
