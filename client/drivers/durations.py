"""Go/Nomad duration values as drivers receive them in a task's ``config`` block.

Why a copy here instead of ``corral.jobspec.parse_duration``: drivers must not
import the jobspec package (they run in the client, against already-parsed
jobs), and a task config is free-form, so a value can arrive as a Go duration
string (``"1m30s"``), as integer nanoseconds (Nomad's JSON API), or as a float
of seconds from a hand-written JSON job.
"""

from __future__ import annotations

import re

# Go's units (time.ParseDuration), in nanoseconds.
_UNITS_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 micro sign
    "μs": 1_000,  # U+03BC Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration_ns(value: str | int | float | None) -> int:
    """Nanoseconds in ``value``.

    Accepts what Go's ``time.ParseDuration`` accepts (``"300ms"``, ``"-1.5h"``,
    ``"2h45m"``, ``"0"``), plus numbers (nanoseconds, as in Nomad's JSON; floats
    too, since protobuf Struct numbers are doubles) and numeric strings without
    a unit (also nanoseconds). ``None`` and ``""`` are 0.
    Raises ValueError with the offending text otherwise.
    """
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: expected a string like '10s'")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        # Task configs travel as google.protobuf.Struct, where every number is a
        # double: an int of nanoseconds in a JSON job arrives here as a float.
        return int(round(value))
    text = str(value).strip()
    if not text:
        return 0
    sign = 1
    if text[0] in "+-":
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text == "0":
        return 0
    if text.isdigit():
        return sign * int(text)
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS_NS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"invalid duration {value!r}: expected e.g. '500ms', '10s', '1m30s'")
    return sign * int(round(total))


def parse_duration(value: str | int | float | None) -> float:
    """Seconds in ``value`` (see ``parse_duration_ns`` for the accepted forms)."""
    return parse_duration_ns(value) / 1e9


def format_duration(seconds: float) -> str:
    """A short Go-style rendering (``1m30s``, ``250ms``) for messages and events."""
    ns = int(round(seconds * 1e9))
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("us", 1_000), ("ns", 1)):
            if ns >= size:
                return f"{sign}{ns / size:g}{unit}"
    hours, rest = divmod(ns, 3600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    secs = rest / 1e9
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{secs:g}s"
