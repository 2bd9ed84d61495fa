"""Nomad's HTTP API (port 4646), for tools that speak it: scripts, Traefik.

Same ``Server`` methods as the gRPC endpoints, JSON through ``jsonmap`` so the
shapes are Nomad's. Blocking queries (``?index=&wait=``) and the ``X-Nomad-*``
headers are answered as Nomad does.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from corral import structs
from corral.api.jsonmap import to_json
from corral.proto import pb
from corral.server.raft import NotLeaderError, ProposalError
from corral.server.server import Ambiguous, InvalidRequest, NotFound, Server

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_wait(value: str) -> float:
    """Nomad's wait values: "5s", "1m", "300ms" (Go durations)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", value.strip())
    if not m:
        raise HTTPError(400, f"invalid wait value {value!r}")
    n = float(m.group(1))
    unit = m.group(2) or "s"
    return n * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


class HTTPAPI:
    def __init__(self, server: Server, host: str, port: int) -> None:
        self.server = server
        api = self

        class Handler(_Handler):
            owner = api

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------ routes
    def route(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[Any, int]:
        """Returns (JSON-able payload, index for X-Nomad-Index)."""
        s = self.server
        state = s.state
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2 or parts[0] != "v1":
            raise HTTPError(404, f"no such endpoint: {path}")
        ns = query.get("namespace") or structs.DEFAULT_NAMESPACE
        rest = parts[1:]

        if rest == ["jobs"] and method == "GET":
            idx = self._block(query, "jobs", "allocs")
            from corral.server.endpoints import job_stub

            prefix = query.get("prefix", "")
            return [
                to_json(job_stub(s, j))
                for j in sorted(state.jobs(), key=lambda j: j.id)
                if j.id.startswith(prefix)
            ], idx
        if rest == ["jobs"] and method in ("PUT", "POST"):
            return self._register(body), state.index
        if rest == ["jobs", "parse"] and method in ("PUT", "POST"):
            return self._parse(body), state.index
        if rest[0] == "job" and len(rest) >= 2:
            job_id = rest[1]
            sub = rest[2] if len(rest) > 2 else ""
            if method in ("PUT", "POST") and sub == "":
                return self._register(body), state.index
            if method == "DELETE" and sub == "":
                purge = query.get("purge", "false").lower() == "true"
                resp = s.deregister_job(ns, job_id, purge)
                return to_json(resp), resp.index
            job = state.job(ns, job_id)
            if sub == "":
                idx = self._block(query, "jobs")
                job = state.job(ns, job_id)
                if job is None:
                    raise HTTPError(404, "job not found")
                return to_json(s.with_status(job)), idx
            if job is None:
                raise HTTPError(404, "job not found")
            if sub == "allocations":
                idx = self._block(query, "allocs")
                return [to_json(a) for a in state.allocs_by_job(ns, job_id)], idx
            if sub == "evaluations":
                idx = self._block(query, "evals")
                return [to_json(e) for e in state.evals_by_job(ns, job_id)], idx
            if sub == "versions":
                idx = self._block(query, "jobs")
                return {"Versions": [to_json(v) for v in state.job_versions(ns, job_id)]}, idx
        if rest == ["allocations"]:
            idx = self._block(query, "allocs")
            prefix = query.get("prefix", "")
            return [to_json(a) for a in state.allocs() if a.id.startswith(prefix)], idx
        if rest[0] == "allocation" and len(rest) == 2:
            idx = self._block(query, "allocs")
            return to_json(s.resolve_alloc(rest[1])), idx
        if rest == ["evaluations"]:
            idx = self._block(query, "evals")
            return [to_json(e) for e in state.evals()], idx
        if rest[0] == "evaluation" and len(rest) == 2:
            idx = self._block(query, "evals")
            return to_json(s.resolve_eval(rest[1])), idx
        if rest == ["nodes"]:
            idx = self._block(query, "nodes")
            return [_node_json(n) for n in state.nodes()], idx
        if rest[0] == "node" and len(rest) >= 2:
            node = s.resolve_node(rest[1])
            if len(rest) == 3 and rest[2] == "allocations":
                idx = self._block(query, "allocs")
                return [to_json(a) for a in state.allocs_by_node(node.id)], idx
            idx = self._block(query, "nodes")
            return _node_json(node), idx
        if rest == ["status", "leader"]:
            return s.raft.leader(), state.index
        if rest == ["status", "peers"]:
            return [s.raft.self_address()], state.index
        if rest == ["agent", "self"]:
            return {
                "config": {
                    "Region": structs.DEFAULT_REGION,
                    "Datacenter": "dc1",
                    "Version": {"Version": "corral"},
                },
                "member": {"Name": s.raft.self_address(), "Status": "alive"},
                "stats": {"raft": s.raft.status()},
            }, state.index
        raise HTTPError(404, f"no such endpoint: {method} {path}")

    def _block(self, query: dict[str, str], *tables: str) -> int:
        index = int(query.get("index", "0") or 0)
        if index:
            wait = min(parse_wait(query["wait"]) if "wait" in query else DEFAULT_WAIT, MAX_WAIT)
            self.server.state.wait_for_index(index, wait, *tables)
        return self.server.state.table_index(*tables)

    def _decode_job(self, body: bytes) -> pb.Job:
        """Nomad JSON through the jobspec reader: same defaults and the same
        problems as a job file (every one reported, nothing stored)."""
        from corral import jobspec
        from corral.jobspec.jsonspec import decode_json

        try:
            data = json.loads(body or b"{}")
        except ValueError as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "request body must be a JSON object")
        try:
            job, problems = decode_json(data, "<request>")
        except jobspec.JobspecError as exc:
            raise HTTPError(400, str(exc)) from None
        if problems:
            raise HTTPError(400, "\n".join(p.text for p in problems))
        return job

    def _register(self, body: bytes) -> Any:
        job = self._decode_job(body)
        return to_json(self.server.register_job(job))

    def _parse(self, body: bytes) -> Any:
        from corral import jobspec

        data = json.loads(body or b"{}")
        try:
            job = jobspec.parse(data.get("JobHCL", ""), "<request>")
        except jobspec.JobspecError as exc:
            raise HTTPError(400, str(exc)) from None
        return to_json(job)


def _node_json(node: pb.Node) -> dict[str, Any]:
    n = pb.Node()
    n.CopyFrom(node)
    n.secret_id = ""
    return to_json(n)


class _Handler(BaseHTTPRequestHandler):
    owner: HTTPAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def _handle(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": "request body too large"}, 0)
            return
        body = self.rfile.read(length) if length else b""
        try:
            payload, index = self.owner.route(method, url.path, query, body)
            self._send(200, payload, index)
        except HTTPError as exc:
            self._send(exc.status, str(exc), 0)
        except InvalidRequest as exc:
            self._send(400, "\n".join(exc.problems), 0)
        except (NotFound, KeyError) as exc:
            self._send(404, str(exc), 0)
        except Ambiguous as exc:
            self._send(400, str(exc), 0)
        except (NotLeaderError, ProposalError) as exc:
            self._send(503, str(exc), 0)
        except Exception as exc:
            log.exception("HTTP %s %s failed", method, self.path)
            self._send(500, f"internal error: {exc}", 0)

    def _send(self, status: int, payload: Any, index: int) -> None:
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
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
