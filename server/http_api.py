"""Nomad's HTTP API (port 4646), for tools that speak it: scripts, Traefik.

Same ``Server`` methods as the gRPC endpoints, JSON through ``jsonmap`` so the
shapes are Nomad's. Blocking queries (``?index=&wait=``) and the ``X-Nomad-*``
headers are answered as Nomad does.

Service discovery, as Traefik's Nomad provider (the Go ``nomad/api`` client) reads
it: ``/v1/services``, ``/v1/service/<name>`` (with go-bexpr ``filter``s such as
``Tags contains "traefik.enable=true"``), and ``/v1/event/stream`` (chunked
newline-delimited JSON frames of ``ServiceRegistration``/``ServiceDeregistration``
events, ``{}`` heartbeats). Listings show only instances whose checks pass
(``Health`` ``passing`` or ``""``) unless ``?health=any``; the event stream follows
the same view, so an instance turning critical is a deregistration.

Split by purpose, so that the transport (this module: the server, the request
handler, the mapping of errors to statuses) can be replaced without touching what
is answered:

- ``http_router``: the route table's machinery (``Route``, ``RouteTable``,
  ``Request``, ``HTTPError``); 404 for unknown paths, 405 for wrong methods;
- ``http_routes``: the Nomad endpoints (``ROUTES``) and their handlers;
- ``http_filter``: the ``filter=`` language, pure;
- ``http_events``: the service event log and ``/v1/event/stream``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from corral.server.http_events import (
    EVENT_HEARTBEAT,
    ServiceEventLog,
    diff_services,
    event_matches,
    listed_view,
    parse_topics,
)
from corral.server.http_filter import compile_filter
from corral.server.http_router import HTTPError, Reply, Request, Streaming
from corral.server.http_routes import ROUTES, parse_wait
from corral.server.raft import NotLeaderError, ProposalError
from corral.server.server import Ambiguous, InvalidRequest, NotFound, Server

# Re-exported: these lived here before the split, and callers import them from here.
__all__ = [
    "HTTPAPI",
    "HTTPError",
    "compile_filter",
    "diff_services",
    "error_status",
    "event_matches",
    "listed_view",
    "parse_topics",
    "parse_wait",
]

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024


class HTTPAPI:
    def __init__(
        self, server: Server, host: str, port: int, event_heartbeat: float | None = None
    ) -> None:
        self.server = server
        api = self

        class Handler(_Handler):
            owner = api

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        if event_heartbeat is None:
            env = os.environ.get("CORRAL_EVENT_HEARTBEAT", "")
            event_heartbeat = parse_wait(env) if env else EVENT_HEARTBEAT
        self.event_heartbeat = max(event_heartbeat, 0.05)
        self.stopping = threading.Event()
        self.service_events = ServiceEventLog(server.state, self.stopping)

    def start(self) -> None:
        self.service_events.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def dispatch(self, method: str, path: str, raw_query: str, body: bytes) -> Reply:
        """The route table's answer to one request (``HTTPError`` for 404/405)."""
        route, params = ROUTES.resolve(method, path)
        query_all = parse_qs(raw_query)
        query = {k: v[-1] for k, v in query_all.items()}
        req = Request(method, path, params, query, query_all, body)
        return route.handler(self, req)


def error_status(exc: Exception) -> tuple[int, str, dict[str, str]] | None:
    """(status, text, extra headers) that answer an error, or None for a bug
    (answered 500 and logged). Never KeyError -> 404: a KeyError is a bug, and a
    404 would hide it as a missing object."""
    if isinstance(exc, HTTPError):
        return exc.status, str(exc), exc.headers
    if isinstance(exc, InvalidRequest):
        return 400, "\n".join(exc.problems), {}
    if isinstance(exc, NotFound):
        return 404, str(exc), {}
    if isinstance(exc, Ambiguous):
        return 400, str(exc), {}
    if isinstance(exc, NotLeaderError | ProposalError):
        return 503, str(exc), {}
    return None


class _Handler(BaseHTTPRequestHandler):
    owner: HTTPAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": "request body too large"}, 0)
            return
        body = self.rfile.read(length) if length else b""
        try:
            reply = self.owner.dispatch(method, url.path, url.query, body)
            if not isinstance(reply, Streaming):
                payload, index = reply
                self._send(200, payload, index)
                return
        except Exception as exc:
            self._send_error(method, exc)
            return
        # A stream runs outside the error mapping: once its first chunk is out,
        # an error can no longer be answered with a status.
        with contextlib.suppress(OSError):  # the client went away before it began
            reply.run(self)
        self.close_connection = True

    def _send_error(self, method: str, exc: Exception) -> None:
        answer = error_status(exc)
        if answer is None:
            log.exception("HTTP %s %s failed", method, self.path, exc_info=exc)
            answer = 500, f"internal error: {exc}", {}
        status, text, headers = answer
        self._send(status, text, 0, headers)

    def _send(
        self, status: int, payload: Any, index: int, headers: dict[str, str] | None = None
    ) -> None:
        if isinstance(payload, str) and status != 200:
            data = payload.encode() + b"\n"
            ctype = "text/plain; charset=utf-8"
        else:
            data = json.dumps(payload).encode()
            ctype = "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Nomad-Index", str(index))
        self.send_header(
            "X-Nomad-KnownLeader", "true" if self.owner.server.raft.leader() else "false"
        )
        self.send_header("X-Nomad-LastContact", "0")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    # ------------------------------------------------------------ streaming (ChunkSink)
    def begin_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data: bytes) -> None:
        """One HTTP/1.1 chunk (b"" writes the terminating chunk)."""
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        if not data:
            self.wfile.write(b"\r\n")
        self.wfile.flush()

    def peer_closed(self) -> bool:
        """Whether the client closed its side (readable and at EOF)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return bool(self.connection.recv(1, socket.MSG_PEEK) == b"")
        except (OSError, ValueError):
            return True

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
