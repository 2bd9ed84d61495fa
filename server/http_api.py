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
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from corral import structs
from corral.api.jsonmap import to_json
from corral.proto import pb
from corral.server.raft import NotLeaderError, ProposalError
from corral.server.server import Ambiguous, InvalidRequest, NotFound, Server

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
# Event stream heartbeats (Nomad: 30s); CORRAL_EVENT_HEARTBEAT ("1s", "500ms")
# shortens it, for tests.
EVENT_HEARTBEAT = 30.0
EVENT_BUFFER_FRAMES = 1024


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
                if j.id.startswith(prefix) and (ns == "*" or j.namespace == ns)
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
                return _job_json(s.with_status(job)), idx
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
        if rest == ["services"] and method == "GET":
            return self._services(query, ns)
        if rest[0] == "service" and len(rest) >= 2 and method == "GET":
            return self._service(query, ns, unquote("/".join(rest[1:])))
        if rest == ["system", "gc"] and method in ("PUT", "POST"):
            return None, s.system_gc().index
        if rest == ["status", "leader"]:
            return s.raft.leader(), state.index
        if rest == ["status", "peers"]:
            return sorted(s.raft_peers()), state.index
        if rest == ["agent", "self"]:
            return self._agent_self(), state.index
        raise HTTPError(404, f"no such endpoint: {method} {path}")

    # ------------------------------------------------------------ services
    def _services(self, query: dict[str, str], ns: str) -> tuple[Any, int]:
        """``[{"Namespace", "Services": [{"ServiceName", "Tags"}]}]``: services with
        at least one listed (passing) instance, tags the union over those."""
        idx = max(self._block(query, "services"), 1)
        any_health = query.get("health", "") == "any"
        by_ns: dict[str, dict[str, set[str]]] = {}
        for svc in self.server.state.services():
            if ns != "*" and svc.namespace != ns:
                continue
            if not (any_health or listed(svc)):
                continue
            by_ns.setdefault(svc.namespace, {}).setdefault(svc.service_name, set()).update(svc.tags)
        out = [
            {
                "Namespace": name,
                "Services": [
                    {"ServiceName": sname, "Tags": sorted(tags)}
                    for sname, tags in sorted(services.items())
                ],
            }
            for name, services in sorted(by_ns.items())
        ]
        return out, idx

    def _service(self, query: dict[str, str], ns: str, name: str) -> tuple[Any, int]:
        """The instances of one service (passing ones unless ``health=any``),
        through ``filter``; an unknown service is ``[]``."""
        match = compile_filter(query.get("filter", ""))
        idx = max(self._block(query, "services"), 1)
        any_health = query.get("health", "") == "any"
        state = self.server.state
        if ns == "*":
            found = [s for s in state.services() if s.service_name == name]
        else:
            found = state.services_by_name(ns, name)
        found.sort(key=lambda s: (s.create_index, s.id))
        out = []
        for svc in found:
            if not (any_health or listed(svc)):
                continue
            data = to_json(svc)
            if match(data):
                out.append(data)
        return out, idx

    def _agent_self(self) -> dict[str, Any]:
        """Enough of Nomad's ``/v1/agent/self`` for tools that probe it (the Go
        client decodes ``stats`` as map[string]map[string]string)."""
        s = self.server
        addr = s.raft.self_address()
        host, _, port = addr.rpartition(":")
        raft = {k: str(v) for k, v in s.raft.status().items()}
        return {
            "config": {
                "Region": structs.DEFAULT_REGION,
                "Datacenter": "dc1",
                "NodeName": addr,
                "Version": {"Version": "corral", "VersionPrerelease": "", "Revision": ""},
                "Server": {"Enabled": True},
                "Client": {"Enabled": False},
            },
            "member": {
                "Name": addr,
                "Addr": host,
                "Port": int(port) if port.isdigit() else 0,
                "Status": "alive",
                "Tags": {"role": "nomad", "region": structs.DEFAULT_REGION, "dc": "dc1"},
            },
            "stats": {
                "raft": raft,
                "nomad": {
                    "leader": str(s.is_leader()).lower(),
                    "known_leader": str(bool(s.raft.leader())).lower(),
                    "leader_addr": s.raft.leader(),
                },
            },
        }

    # ------------------------------------------------------------ event stream
    def stream_events(self, handler: _Handler, query: dict[str, list[str]]) -> None:
        """``/v1/event/stream``: chunked ndjson frames until the client goes away."""
        ns = (query.get("namespace") or [""])[-1] or structs.DEFAULT_NAMESPACE
        topics = parse_topics(query.get("topic", []))
        try:
            start = int((query.get("index") or ["0"])[-1] or 0)
        except ValueError:
            handler.send_text(400, "invalid index")
            return
        events = self.service_events
        cursor = start if start > 0 else events.last_index()
        handler.begin_chunked()
        try:
            handler.write_chunk(b"{}\n")
            next_beat = time.monotonic() + self.event_heartbeat
            while not self.stopping.is_set():
                wait = min(1.0, max(next_beat - time.monotonic(), 0.0))
                for index, frame_events in events.frames_after(cursor, wait):
                    cursor = index
                    shown = [e for e in frame_events if event_matches(e, ns, topics)]
                    if shown:
                        frame = {"Index": index, "Events": shown}
                        handler.write_chunk(json.dumps(frame).encode() + b"\n")
                if time.monotonic() >= next_beat:
                    handler.write_chunk(b"{}\n")
                    next_beat = time.monotonic() + self.event_heartbeat
                if handler.peer_closed():
                    return
            handler.write_chunk(b"")  # the last chunk: a clean end on shutdown
        except OSError:
            return  # the client went away mid-write

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


def _job_json(job: pb.Job) -> dict[str, Any]:
    """Nomad's job JSON plus each group's ``Scaling`` (corral always lets a group
    be scaled, so ``Enabled`` is true): Traefik's ``allowEmptyServices`` keeps the
    router of a group scaled to 0 (503, not 404) only when it sees that."""
    data: dict[str, Any] = to_json(job)
    for group in data.get("TaskGroups") or []:
        group.setdefault(
            "Scaling",
            {
                "ID": "",
                "Type": "horizontal",
                "Target": {"Namespace": job.namespace, "Job": job.id, "Group": group["Name"]},
                "Policy": None,
                "Min": 0,
                "Max": max(int(group.get("Count") or 0), 1),
                "Enabled": True,
                "CreateIndex": job.create_index,
                "ModifyIndex": job.modify_index,
            },
        )
    return data


def listed(svc: pb.ServiceRegistration) -> bool:
    """Whether listings show this instance: its checks pass, or it has none."""
    return svc.health in ("", "passing")


# ---------------------------------------------------------------- service events


Event = dict[str, Any]


def service_event(kind: str, svc: pb.ServiceRegistration, index: int) -> Event:
    return {
        "Topic": "Service",
        "Type": kind,
        "Key": svc.service_name,
        "Namespace": svc.namespace,
        "FilterKeys": [svc.job_id, svc.service_name],
        "Index": index,
        "Payload": {"Service": to_json(svc)},
    }


def diff_services(
    before: dict[str, pb.ServiceRegistration],
    after: dict[str, pb.ServiceRegistration],
    index: int,
) -> list[Event]:
    """Events between two views of the listed instances (id -> registration):
    new or changed ones are registrations, vanished ones deregistrations. Pure."""
    events = []
    for sid in sorted(before.keys() - after.keys()):
        events.append(service_event("ServiceDeregistration", before[sid], index))
    for sid in sorted(after.keys()):
        old = before.get(sid)
        new = after[sid]
        if old is None or old.SerializeToString(deterministic=True) != new.SerializeToString(
            deterministic=True
        ):
            events.append(service_event("ServiceRegistration", new, index))
    return events


def listed_view(services: list[pb.ServiceRegistration]) -> dict[str, pb.ServiceRegistration]:
    return {s.id: s for s in services if listed(s)}


class ServiceEventLog:
    """One thread turns every change of the services table into a frame of events
    (the diff between successive listed views); streams read the frames after
    their cursor. The last ``EVENT_BUFFER_FRAMES`` frames are kept, so a client
    reconnecting with ``?index=`` gets what it missed."""

    def __init__(self, state: Any, stopping: threading.Event) -> None:
        self._state = state
        self._stopping = stopping
        self._cond = threading.Condition()
        self._frames: collections.deque[tuple[int, list[Event]]] = collections.deque(
            maxlen=EVENT_BUFFER_FRAMES
        )
        self._index = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="service-events", daemon=True)
        self._thread.start()

    def last_index(self) -> int:
        with self._cond:
            return self._index

    def frames_after(self, index: int, timeout: float) -> list[tuple[int, list[Event]]]:
        """Frames with an index above ``index``; waits up to ``timeout`` for one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [f for f in self._frames if f[0] > index]
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                self._cond.wait(remaining)

    def publish(self, index: int, events: list[Event]) -> None:
        with self._cond:
            self._index = max(self._index, index)
            if events:
                self._frames.append((index, events))
            self._cond.notify_all()

    def _loop(self) -> None:
        state = self._state
        with self._cond:
            last = state.table_index("services")
            self._index = last
        view = listed_view(state.services())
        while not self._stopping.is_set():
            try:
                state.wait_for_index(last, 1.0, "services")
                index = state.table_index("services")
                if index == last:
                    continue
                new = listed_view(state.services())
                self.publish(index, diff_services(view, new, index))
                view, last = new, index
            except Exception:  # never let the publisher die: streams would hang
                log.exception("service event publisher")
                time.sleep(0.5)


def parse_topics(values: list[str]) -> dict[str, set[str]]:
    """``topic=Service:*`` (repeatable) -> {"Service": {"*"}}; none = everything."""
    topics: dict[str, set[str]] = {}
    for value in values:
        topic, _, key = value.partition(":")
        topics.setdefault(topic or "*", set()).add(key or "*")
    return topics or {"*": {"*"}}


def event_matches(event: Event, namespace: str, topics: dict[str, set[str]]) -> bool:
    if namespace != "*" and event["Namespace"] != namespace:
        return False
    keys = topics.get(event["Topic"], set()) | topics.get("*", set())
    if "*" in keys:
        return True
    return event["Key"] in keys or any(k in keys for k in event["FilterKeys"])


# ---------------------------------------------------------------- filter expressions


class FilterError(HTTPError):
    def __init__(self, message: str) -> None:
        super().__init__(400, f"failed to read filter expression: {message}")


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<op>==|!=|\(|\))
      | (?P<word>[^\s()"`=!]+)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "contains", "matches", "is", "empty"}


def _tokens(expr: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"unexpected {expr[pos : pos + 10]!r} at column {pos + 1}")
        pos = m.end()
        if m.group("str") is not None:
            out.append(("value", json.loads(m.group("str"))))
        elif m.group("raw") is not None:
            out.append(("value", m.group("raw")[1:-1]))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        else:
            word = m.group("word")
            out.append(("kw", word) if word in _KEYWORDS else ("word", word))
    return out


Predicate = Callable[[dict[str, Any]], bool]


class _FilterParser:
    """go-bexpr's grammar, the part tools use: ``and``/``or``/``not``, parentheses,
    ``Sel == v``, ``!=``, ``[not] contains``, ``[not] matches``, ``v [not] in Sel``,
    ``Sel is [not] empty``. Selectors are JSON field names, dotted for maps
    (``Meta.key``)."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise FilterError("unexpected end of expression")
        self.pos += 1
        return tok

    def accept(self, kind: str, text: str) -> bool:
        tok = self.peek()
        if tok == (kind, text):
            self.pos += 1
            return True
        return False

    def parse(self) -> Predicate:
        pred = self.or_expr()
        if self.peek() is not None:
            raise FilterError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return pred

    def or_expr(self) -> Predicate:
        left = self.and_expr()
        while self.accept("kw", "or"):
            right = self.and_expr()
            left = (lambda a, b: lambda d: a(d) or b(d))(left, right)
        return left

    def and_expr(self) -> Predicate:
        left = self.unary()
        while self.accept("kw", "and"):
            right = self.unary()
            left = (lambda a, b: lambda d: a(d) and b(d))(left, right)
        return left

    def unary(self) -> Predicate:
        if self.accept("kw", "not"):
            inner = self.unary()
            return lambda d: not inner(d)
        if self.accept("op", "("):
            inner = self.or_expr()
            if not self.accept("op", ")"):
                raise FilterError("missing )")
            return inner
        return self.match()

    def value(self) -> str:
        kind, text = self.take()
        if kind in ("value", "word"):
            return text
        raise FilterError(f"expected a value, got {text!r}")

    def match(self) -> Predicate:
        first = self.take()
        nxt = self.peek()
        # Value [not] in Selector
        if (
            first[0] == "value"
            or nxt in (("kw", "in"), ("kw", "not"))
            and (nxt == ("kw", "in") or self.peek(1) == ("kw", "in"))
        ):
            if first[0] not in ("value", "word"):
                raise FilterError(f"unexpected {first[1]!r}")
            negate = self.accept("kw", "not")
            if not self.accept("kw", "in"):
                raise FilterError(f"expected 'in' after {first[1]!r}")
            sel = self.selector()
            value = first[1]
            return lambda d: _contains(_select(d, sel), value) != negate
        if first[0] != "word":
            raise FilterError(f"expected a selector, got {first[1]!r}")
        sel = first[1]
        if self.accept("op", "=="):
            value = self.value()
            return lambda d: _equals(_select(d, sel), value)
        if self.accept("op", "!="):
            value = self.value()
            return lambda d: not _equals(_select(d, sel), value)
        if self.accept("kw", "is"):
            negate = self.accept("kw", "not")
            if not self.accept("kw", "empty"):
                raise FilterError("expected 'empty' after 'is'")
            return lambda d: _empty(_select(d, sel)) != negate
        negate = self.accept("kw", "not")
        if self.accept("kw", "contains"):
            value = self.value()
            return lambda d: _contains(_select(d, sel), value) != negate
        if self.accept("kw", "matches"):
            pattern = self.value()
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise FilterError(f"invalid regular expression {pattern!r}: {exc}") from None
            return lambda d: _matches(_select(d, sel), rx) != negate
        tok = self.peek()
        raise FilterError(f"expected an operator after {sel!r}, got {tok[1] if tok else 'end'!r}")

    def selector(self) -> str:
        kind, text = self.take()
        if kind != "word":
            raise FilterError(f"expected a selector, got {text!r}")
        return text


_MISSING = object()


def _select(data: Any, selector: str) -> Any:
    cur = data
    for part in selector.split("."):
        if isinstance(cur, dict):
            if part in cur:
                cur = cur[part]
                continue
            lowered = {k.lower(): v for k, v in cur.items() if isinstance(k, str)}
            if part.lower() in lowered:
                cur = lowered[part.lower()]
                continue
        return _MISSING
    return cur


def _equals(field: Any, value: str) -> bool:
    if field is _MISSING or isinstance(field, list | dict):
        return False
    if isinstance(field, bool):
        return str(field).lower() == value.lower()
    if isinstance(field, int | float):
        try:
            return float(value) == float(field)
        except ValueError:
            return False
    return str(field) == value


def _contains(field: Any, value: str) -> bool:
    if isinstance(field, list):
        return any(str(v) == value for v in field)
    if isinstance(field, dict):
        return value in field
    if isinstance(field, str):
        return value in field
    return False


def _empty(field: Any) -> bool:
    if field is _MISSING or field is None:
        return True
    if isinstance(field, list | dict | str):
        return len(field) == 0
    return False


def _matches(field: Any, rx: re.Pattern[str]) -> bool:
    if isinstance(field, str):
        return rx.search(field) is not None
    if isinstance(field, list):
        return any(isinstance(v, str) and rx.search(v) is not None for v in field)
    return False


def compile_filter(expr: str) -> Predicate:
    """A go-bexpr filter as a predicate over Nomad JSON; "" matches everything."""
    if not expr.strip():
        return lambda d: True
    return _FilterParser(_tokens(expr)).parse()


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
        if method == "GET" and url.path.rstrip("/") == "/v1/event/stream":
            # OSError: the client went away before the stream began.
            with contextlib.suppress(OSError):
                self.owner.stream_events(self, parse_qs(url.query))
            self.close_connection = True
            return
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

    # ------------------------------------------------------------ streaming
    def send_text(self, status: int, text: str) -> None:
        self._send(status, text, 0)

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
