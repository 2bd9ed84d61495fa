"""``/v1/event/stream``: the service events Traefik's Nomad provider watches.

Frames of ``ServiceRegistration``/``ServiceDeregistration`` events, one JSON
document a line, in an HTTP/1.1 chunked response that lasts until the client goes
away; ``{}`` heartbeats at connect and every ``EVENT_HEARTBEAT`` seconds, so
clients and proxies see a live connection. The events are the diff of successive
*listed* views (instances whose checks pass, as ``/v1/service/<name>`` lists them),
so an instance turning critical is a deregistration: Traefik has no health field to
filter on, and this is what keeps it from routing to a failing instance.

The diff and the topic filter are pure functions; ``ServiceEventLog`` is the one
publisher thread; ``EventStream`` is the reply that writes one client's stream,
through a ``ChunkSink`` so that it does not depend on the HTTP server in use.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Any

from corral import structs
from corral.api.jsonmap import to_json
from corral.proto import pb
from corral.server.http_router import ChunkSink, HTTPError, Request, Streaming

log = logging.getLogger(__name__)

# Event stream heartbeats (Nomad: 30s); CORRAL_EVENT_HEARTBEAT ("1s", "500ms")
# shortens it, for tests.
EVENT_HEARTBEAT = 30.0
EVENT_BUFFER_FRAMES = 1024


def listed(svc: pb.ServiceRegistration) -> bool:
    """Whether listings show this instance: its checks pass, or it has none."""
    return svc.health in ("", "passing")


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


class EventStream(Streaming):
    """One client's stream: frames after ``cursor`` that match its namespace and
    topics, heartbeats, until the client goes away or the API stops."""

    def __init__(
        self,
        events: ServiceEventLog,
        namespace: str,
        topics: dict[str, set[str]],
        cursor: int,
        heartbeat: float,
        stopping: threading.Event,
    ) -> None:
        self.events = events
        self.namespace = namespace
        self.topics = topics
        self.cursor = cursor
        self.heartbeat = heartbeat
        self.stopping = stopping

    @classmethod
    def open(
        cls,
        events: ServiceEventLog,
        req: Request,
        heartbeat: float,
        stopping: threading.Event,
    ) -> EventStream:
        """From the request's ``namespace``, ``topic`` (repeatable) and ``index``
        (resume after it; none or 0: from now). A bad index is a 400, raised before
        the stream begins so it is answered like any error."""
        ns = req.query.get("namespace") or structs.DEFAULT_NAMESPACE
        topics = parse_topics(req.query_all.get("topic", []))
        try:
            start = int(req.query.get("index") or 0)
        except ValueError:
            raise HTTPError(400, "invalid index") from None
        cursor = start if start > 0 else events.last_index()
        return cls(events, ns, topics, cursor, heartbeat, stopping)

    def run(self, sink: ChunkSink) -> None:
        events = self.events
        cursor = self.cursor
        sink.begin_chunked()
        try:
            sink.write_chunk(b"{}\n")
            next_beat = time.monotonic() + self.heartbeat
            while not self.stopping.is_set():
                wait = min(1.0, max(next_beat - time.monotonic(), 0.0))
                for index, frame_events in events.frames_after(cursor, wait):
                    cursor = index
                    shown = [
                        e for e in frame_events if event_matches(e, self.namespace, self.topics)
                    ]
                    if shown:
                        frame = {"Index": index, "Events": shown}
                        sink.write_chunk(json.dumps(frame).encode() + b"\n")
                if time.monotonic() >= next_beat:
                    sink.write_chunk(b"{}\n")
                    next_beat = time.monotonic() + self.heartbeat
                if sink.peer_closed():
                    return
            sink.write_chunk(b"")  # the last chunk: a clean end on shutdown
        except OSError:
            return  # the client went away mid-write
