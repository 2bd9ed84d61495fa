"""Go's duration syntax (``1m30s``, ``1.5h``, ``250ms``), as Nomad job files use it.

Durations are int64 nanoseconds in the proto, as in Nomad's API JSON, so parsing is
exact (fractions, not floats) and refuses values that do not fit in an int64.
"""

from __future__ import annotations

import re
from fractions import Fraction

_UNITS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # noqa: RUF001 - Go accepts the micro sign
    "μs": 1_000,  # noqa: RUF001 - and the Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([^\d.]*)")
_INT64_MAX = 2**63 - 1
_HINT = "use a number with a unit, like 30s, 1m30s or 250ms (units: ns, us, ms, s, m, h)"


class DurationError(ValueError):
    """A duration string that Go (and so Nomad) would not accept."""


def parse_duration(text: str) -> int:
    """``"1m30s"`` -> 90_000_000_000 nanoseconds; raises DurationError on bad input."""
    if not isinstance(text, str):
        raise DurationError(f"invalid duration {text!r}: expected a string; {_HINT}")
    s = text
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return 0
    if not s:
        raise DurationError(f'invalid duration "{text}": empty; {_HINT}')
    total = Fraction(0)
    pos = 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise DurationError(
                f'invalid duration "{text}": expected a number at "{s[pos:]}"; {_HINT}'
            )
        number, unit = m.group(1), m.group(2)
        if not unit:
            raise DurationError(f'invalid duration "{text}": missing unit after {number}; {_HINT}')
        if unit not in _UNITS:
            raise DurationError(f'invalid duration "{text}": unknown unit "{unit}"; {_HINT}')
        total += Fraction(number) * _UNITS[unit]
        pos = m.end()
    ns = int(total)  # Go truncates fractions of a nanosecond
    if ns > _INT64_MAX:
        raise DurationError(f'invalid duration "{text}": too long (over about 292 years)')
    return sign * ns


def format_duration(ns: int) -> str:
    """Nanoseconds as Go prints them (``1m30s``, ``250ms``, ``0s``), for messages."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(Fraction(ns, 1_000))}us"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(Fraction(ns, 1_000_000))}ms"
    hours, rest = divmod(ns, _UNITS["h"])
    minutes, rest = divmod(rest, _UNITS["m"])
    seconds = _trim(Fraction(rest, _UNITS["s"]))
    out = ""
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return f"{sign}{out}{seconds}s"


def _trim(value: Fraction) -> str:
    """A decimal without trailing zeros: 1.5, 30, 0.25."""
    whole, frac = divmod(value.numerator, value.denominator)
    if not frac:
        return str(whole)
    digits = ""
    rem = Fraction(frac, value.denominator)
    while rem and len(digits) < 9:
        rem *= 10
        d = int(rem)
        digits += str(d)
        rem -= d
    return f"{whole}.{digits.rstrip('0')}"
