"""Signal names as jobs spell them (``kill_signal = "SIGINT"``) -> numbers.

Shared by raw_exec (os.killpg needs a number) and docker (the engine takes a
name; we normalise it so that a typo fails here with a clear message instead
of as an opaque engine error).
"""

from __future__ import annotations

import signal as _signal


def parse_signal(name: str | int | None, default: str = "SIGINT") -> int:
    """The signal number for ``"SIGTERM"``, ``"term"``, ``"15"`` or ``15``; empty -> ``default``.

    Raises ValueError naming the bad value.
    """
    if name is None or name == "":
        name = default
    if isinstance(name, int) and not isinstance(name, bool):
        return _check_number(name, name)
    text = str(name).strip()
    if text.isdigit():
        return _check_number(int(text), name)
    upper = text.upper()
    if not upper.startswith("SIG"):
        upper = "SIG" + upper
    try:
        return int(_signal.Signals[upper])
    except KeyError:
        raise ValueError(f"unknown signal {name!r} (expected e.g. SIGINT, SIGTERM)") from None


def signal_name(number: int) -> str:
    """``"SIGTERM"`` for 15; ``"15"`` for numbers without a name."""
    try:
        return _signal.Signals(number).name
    except ValueError:
        return str(number)


def _check_number(number: int, original: object) -> int:
    if number <= 0 or number >= _signal.NSIG:
        raise ValueError(f"unknown signal {original!r}")
    return number
