"""The HTTP API's routing, as a table: (methods, path pattern) -> handler.

A table rather than an if-chain because the table knows every path and the
methods each accepts: a known path asked with another method answers 405 with
``Allow`` (Nomad answers 405 "Invalid method"), and only an unknown path answers
404. An if-chain cannot tell the two apart, so wrong methods used to fall through
to some other branch or to 404.

Nothing here knows ``http.server``: a handler gets a ``Request`` and returns a
``Reply`` (a JSON-able payload with its ``X-Nomad-Index``, or a ``Streaming`` that
writes chunks to a ``ChunkSink``). The transport builds the one and sends the
other, so the table moves as it is when the transport changes.

Patterns are "/"-separated segments: literals, ``{name}`` (exactly one segment) and,
last only, ``{name...}`` (one or more segments, joined by "/"). A path is split on
"/" with empty segments dropped (``/v1/jobs/`` is ``/v1/jobs``), then each segment
is percent-decoded, so an ID sent with ``%2F`` stays one segment, as Go's router
(Nomad's) sees it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import unquote

INVALID_METHOD = "Invalid method"  # Nomad's text for a 405


class HTTPError(Exception):
    """An answer other than 200, raised from anywhere under a handler: the
    transport sends ``status`` with the message as plain text, plus ``headers``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers: dict[str, str] = dict(headers or {})


class ChunkSink(Protocol):
    """What a streaming reply writes to: the transport's chunked response."""

    def begin_chunked(self) -> None:
        """Status 200 and the headers of a chunked response."""

    def write_chunk(self, data: bytes) -> None:
        """One chunk; ``b""`` ends the response."""

    def peer_closed(self) -> bool:
        """Whether the client went away (a stream polls this to end)."""


class Streaming(abc.ABC):
    """A reply that is not one JSON document but a stream (``/v1/event/stream``).
    Returned, not run, by its handler: problems found before the first byte are
    still raised as ``HTTPError`` and answered like any other error."""

    @abc.abstractmethod
    def run(self, sink: ChunkSink) -> None:
        """Write the stream until it ends or the client goes away (``OSError``)."""


Reply = tuple[Any, int] | Streaming


@dataclass(frozen=True)
class Request:
    """One request as a handler sees it. ``query`` holds the last value of each
    parameter (what Nomad's handlers read); ``query_all`` every value, for the
    repeatable ones (``topic=``)."""

    method: str
    path: str
    params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    query_all: Mapping[str, list[str]] = field(default_factory=dict)
    body: bytes = b""


C = TypeVar("C")
Handler = Callable[[C, Request], Reply]


def split_path(path: str) -> list[str]:
    """Segments of a path: empty ones dropped, each percent-decoded."""
    return [unquote(p) for p in path.split("/") if p]


class Route(Generic[C]):
    """Methods and a path pattern, answered by ``handler(context, request)``."""

    def __init__(self, methods: str | Iterable[str], pattern: str, handler: Handler[C]) -> None:
        names = (methods,) if isinstance(methods, str) else tuple(methods)
        if not names or any(m != m.upper() or not m for m in names):
            raise ValueError(f"route {pattern}: methods must be upper-case names, got {names}")
        if not pattern.startswith("/"):
            raise ValueError(f"route {pattern}: a pattern starts with /")
        segments = tuple(p for p in pattern.split("/") if p)
        for i, seg in enumerate(segments):
            if seg.startswith("{") != seg.endswith("}") or seg in ("{}", "{...}"):
                raise ValueError(f"route {pattern}: bad segment {seg!r}")
            if seg.endswith("...}") and i != len(segments) - 1:
                raise ValueError(f"route {pattern}: {seg} must be the last segment")
        self.methods = frozenset(names)
        self.pattern = pattern
        self.handler = handler
        self._segments = segments
        self._tail = bool(segments) and segments[-1].endswith("...}")
        # The pattern without its parameter names: two routes of one shape match
        # the same paths.
        self.shape = tuple(
            ("{...}" if s.endswith("...}") else "{}") if s.startswith("{") else s for s in segments
        )

    def __repr__(self) -> str:
        return f"Route({'|'.join(sorted(self.methods))} {self.pattern})"

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The captured parameters if ``segments`` (decoded) fit the pattern."""
        pat = self._segments
        if len(segments) < len(pat) or (len(segments) != len(pat) and not self._tail):
            return None
        params: dict[str, str] = {}
        for i, seg in enumerate(pat):
            if not seg.startswith("{"):
                if segments[i] != seg:
                    return None
            elif seg.endswith("...}"):
                params[seg[1:-4]] = "/".join(segments[i:])
            else:
                params[seg[1:-1]] = segments[i]
        return params


class RouteTable(Generic[C]):
    """Routes in order; the first whose pattern fits and whose methods include the
    request's wins. Two routes of the same pattern (parameter names aside) must not
    share a method: the second could never answer."""

    def __init__(self, routes: Iterable[Route[C]]) -> None:
        self.routes = list(routes)
        seen: dict[tuple[str, ...], set[str]] = {}
        for route in self.routes:
            taken = seen.setdefault(route.shape, set())
            if taken & route.methods:
                raise ValueError(f"{route} repeats {sorted(taken & route.methods)}")
            taken |= route.methods

    def resolve(self, method: str, path: str) -> tuple[Route[C], dict[str, str]]:
        """The route and its parameters; ``HTTPError`` 405 (with ``Allow``) when
        the path is known under other methods only, 404 when it is not known."""
        segments = split_path(path)
        allowed: set[str] = set()
        for route in self.routes:
            params = route.match(segments)
            if params is None:
                continue
            if method in route.methods:
                return route, params
            allowed |= route.methods
        if allowed:
            raise HTTPError(405, INVALID_METHOD, {"Allow": ", ".join(sorted(allowed))})
        raise HTTPError(404, f"no such endpoint: {method} {path}")
