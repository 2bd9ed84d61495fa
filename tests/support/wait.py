"""Polling with a deadline: the only way tests wait for a condition (no bare sleeps)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    ``message`` (a string, or a callable for details computed only on failure,
    such as the tail of a log) names what was awaited in the error. Exceptions of
    the ``ignore`` types count as "not yet"; the last one is shown on timeout.
    Any other exception propagates at once.
    """
    deadline = time.monotonic() + timeout
    last_value: object = None
    last_exc: BaseException | None = None
    attempts = 0
    while True:
        attempts += 1
        try:
            value = predicate()
        except ignore as exc:
            last_exc = exc
        else:
            if value:
                return value
            last_value = value
            last_exc = None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval, remaining))
    what = message() if callable(message) else message
    detail = (
        f"last error: {last_exc.__class__.__name__}: {last_exc}"
        if last_exc is not None
        else f"last value: {last_value!r}"
    )
    raise WaitTimeout(
        f"timed out after {timeout:g}s ({attempts} tries) waiting for {what}; {detail}"
    )
