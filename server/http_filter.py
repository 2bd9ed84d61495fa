"""Nomad's ``filter=`` expressions (go-bexpr), as the HTTP API applies them.

Parsed once into a predicate (``compile_filter``), then evaluated against each
candidate's Nomad JSON (a plain dict): parsing is where every error is found, so a
bad filter answers 400 before any work, and evaluation cannot fail. Pure: no I/O,
no server state, so it is tested on dicts alone (tests/unit/test_http_filter.py).

The grammar is the part of go-bexpr that tools send (Traefik's Nomad provider:
``Tags contains "traefik.enable=true"``): ``and``/``or``/``not``, parentheses,
``Sel == v``, ``!=``, ``[not] contains``, ``[not] matches``, ``v [not] in Sel``,
``Sel is [not] empty``. Selectors are JSON field names, dotted for maps
(``Meta.key``), matched case-insensitively when the exact name is absent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from corral.server.http_router import HTTPError

__all__ = ["FilterError", "Predicate", "compile_filter"]


class FilterError(HTTPError):
    """A filter that does not parse: the client's mistake, so a 400 with Nomad's
    wording (tools show the text to the user)."""

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
