"""Text formatting shared by the CLI commands, in the look of Nomad's CLI.

Why copy Nomad's look: the people using corral read Nomad's output every day and
have scripts and habits built on it (``awk '{print $1}'`` over a table, eyeballing
``Status = running``). So tables are left-aligned columns separated by two spaces
with empty cells shown as ``<none>``, key-value blocks align on `` = ``, IDs are
shortened to 8 characters unless ``--verbose``, "Created"/"Modified" read as
relative times ("12s ago") and event times as RFC3339.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from corral.api.jsonmap import to_json
from corral.proto import pb

EMPTY = "<none>"
SHORT_ID = 8


def short_id(value: str, verbose: bool = False) -> str:
    """The first 8 characters of an ID (Nomad's ``limit(id, 8)``), or all of it."""
    return value if verbose else value[:SHORT_ID]


def _columnize(rows: Sequence[Sequence[str]], glue: str) -> str:
    """Left-aligned columns; the last column is not padded (no trailing blanks)."""
    if not rows:
        return ""
    cells = [[c if c != "" else EMPTY for c in row] for row in rows]
    ncols = max(len(r) for r in cells)
    widths = [0] * ncols
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = []
    for row in cells:
        parts = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        lines.append(glue.join(parts).rstrip())
    return "\n".join(lines)


def format_list(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A table with a header row, columns separated by two spaces."""
    body = [[str(c) for c in row] for row in rows]
    return _columnize([list(header), *body], "  ")


def format_kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """``Key = value`` lines with the ``=`` aligned, as Nomad's ``formatKV``."""
    return _columnize([[k, str(v)] for k, v in pairs], " = ")


def format_time(ns: int) -> str:
    """RFC3339 local time of a nanosecond timestamp (``Z`` when local is UTC)."""
    if not ns:
        return "N/A"
    text = datetime.fromtimestamp(ns / 1e9).astimezone().isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def now_rfc3339() -> str:
    """The current local time in RFC3339, the stamp of monitor lines."""
    return format_time(time.time_ns())


def format_duration(ns: int) -> str:
    """A duration the way Go prints one rounded to seconds: ``1h2m3s``, ``45s``."""
    seconds = round(ns / 1e9)
    if seconds <= 0:
        return "0s"
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    out = ""
    if h:
        out += f"{h}h"
    if h or m:
        out += f"{m}m"
    return out + f"{s}s"


def time_ago(ns: int, now_ns: int | None = None) -> str:
    """How long ago ``ns`` was, in at most two units: ``12s ago``, ``1h5m ago``.

    Nomad's ``prettyTimeDiff``: two units are enough to tell a fresh allocation
    from a day-old one, and anything longer is noise in a table.
    """
    if not ns:
        return "N/A"
    now = time.time_ns() if now_ns is None else now_ns
    diff = round((now - ns) / 1e9)
    suffix = "ago"
    if diff < 0:
        diff, suffix = -diff, "from now"
    days, rem = divmod(diff, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, seconds = divmod(rem, 60)
    values = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")]
    first = next((i for i, (v, _) in enumerate(values) if v), None)
    if first is None:
        return f"0s {suffix}"
    shown = [f"{v}{unit}" for v, unit in values[first : first + 2] if v]
    return f"{''.join(shown)} {suffix}"


def print_json(value: Any) -> str:
    """Indented JSON of a message, a list of messages or plain data."""
    return json.dumps(_jsonable(value), indent=4, sort_keys=False)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "DESCRIPTOR"):
        return to_json(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def format_alloc_metrics(metric: pb.AllocMetric, prefix: str = "  ") -> list[str]:
    """Why placement failed, one ``* ...`` line per reason (Nomad's formatAllocMetrics)."""
    out: list[str] = []
    if metric.nodes_evaluated == 0:
        out.append(f"{prefix}* No nodes were eligible for evaluation")
    for dc, available in sorted(metric.nodes_available.items()):
        if available == 0:
            out.append(f'{prefix}* No nodes are available in datacenter "{dc}"')
    for cls, n in sorted(metric.class_filtered.items()):
        out.append(f'{prefix}* Class "{cls}" filtered {n} nodes')
    for cons, n in sorted(metric.constraint_filtered.items()):
        out.append(f'{prefix}* Constraint "{cons}" filtered {n} nodes')
    if metric.nodes_exhausted > 0:
        out.append(f"{prefix}* Resources exhausted on {metric.nodes_exhausted} nodes")
    for cls, n in sorted(metric.class_exhausted.items()):
        out.append(f'{prefix}* Class "{cls}" exhausted on {n} nodes')
    for dim, n in sorted(metric.dimension_exhausted.items()):
        out.append(f'{prefix}* Dimension "{dim}" exhausted on {n} nodes')
    return out


def failed_group_header(group: str, metric: pb.AllocMetric) -> str:
    """``Task Group "web" (failed to place 2 allocations):``."""
    count = metric.coalesced_failures + 1
    noun = "allocation" if count == 1 else "allocations"
    return f'Task Group "{group}" (failed to place {count} {noun}):'


def placement_failures(ev: pb.Evaluation, prefix: str = "") -> list[str]:
    """The per-group failure block of an evaluation, sorted by group name."""
    lines: list[str] = []
    for group in sorted(ev.failed_tg_allocs):
        metric = ev.failed_tg_allocs[group]
        lines.append(prefix + failed_group_header(group, metric))
        lines.extend(format_alloc_metrics(metric, prefix + "  "))
    return lines


def event_description(event: pb.TaskEvent) -> str:
    """What a task event says: the display message, else the raw message/error."""
    if event.display_message:
        return event.display_message
    parts = [p for p in (event.message, event.driver_error) if p]
    if parts:
        return ": ".join(parts)
    if event.exit_code or event.signal:
        return f"Exit Code: {event.exit_code}, Signal: {event.signal}"
    return ""


def alloc_rows(
    allocs: Iterable[pb.Allocation], verbose: bool = False, now_ns: int | None = None
) -> list[list[str]]:
    """Rows of Nomad's allocation table, newest first."""
    ordered = sorted(allocs, key=lambda a: (a.create_index, a.create_time), reverse=True)
    return [
        [
            short_id(a.id, verbose),
            short_id(a.node_id, verbose),
            a.task_group,
            str(a.job_version),
            a.desired_status,
            a.client_status,
            time_ago(a.create_time, now_ns),
            time_ago(a.modify_time, now_ns),
        ]
        for a in ordered
    ]


ALLOC_HEADER = (
    "ID",
    "Node ID",
    "Task Group",
    "Version",
    "Desired",
    "Status",
    "Created",
    "Modified",
)
