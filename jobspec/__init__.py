"""Job files -> ``pb.Job``: Nomad HCL (jobspec2 semantics) and Nomad API JSON.

``parse`` returns a job that is canonicalized (Nomad's defaults filled in) and valid,
ready to register, or raises ``JobspecError`` with every problem at once, each placed
at its line and column when the file is HCL. ``validate`` is the same check for a job
that did not come from a file (the server runs it on every register).

Blocks that corral does not run yet are listed once, in ``support.NOT_YET_SUPPORTED``.
"""

from __future__ import annotations

import os

from corral import structs
from corral.jobspec import hcl
from corral.jobspec.decode import decode
from corral.jobspec.duration import DurationError, format_duration, parse_duration
from corral.jobspec.errors import Diagnostic, JobspecError, Problem, dedupe
from corral.jobspec.jsonspec import decode_json, load_json
from corral.jobspec.support import KNOWN_DRIVERS, NOT_YET_SUPPORTED
from corral.jobspec.validate import check, validate
from corral.proto import pb

__all__ = [
    "KNOWN_DRIVERS",
    "NOT_YET_SUPPORTED",
    "Diagnostic",
    "DurationError",
    "JobspecError",
    "Problem",
    "check",
    "decode_json",
    "format_duration",
    "parse",
    "parse_duration",
    "parse_file",
    "validate",
]


def parse(text: str, filename: str = "<input>") -> pb.Job:
    """A job file's text -> a canonicalized, valid job; raises JobspecError.

    JSON is recognised by its first character (``{``): an HCL file cannot start so.
    """
    bad_values: set[tuple[str, ...]] = set()
    positions: dict[tuple[str, ...], tuple[int, int]] = {}
    if text.lstrip("\ufeff \t\r\n").startswith("{"):
        job, problems = decode_json(load_json(text, filename), filename)
    else:
        decoded = decode(hcl.read(text, filename))
        problems, positions, bad_values = decoded.problems, decoded.positions, decoded.bad_values
        if decoded.job is None:
            raise JobspecError.from_problems(filename, problems, positions)
        job = decoded.job
    structs.canonicalize(job)
    # a field already reported as unreadable is not blamed again for its zero value
    later = [p for p in check(job) if p.key not in bad_values]
    problems = dedupe([*problems, *later])
    if problems:
        raise JobspecError.from_problems(filename, problems, positions)
    return job


def parse_file(path: str | os.PathLike[str]) -> pb.Job:
    """``parse`` of a file; an unreadable file is a JobspecError too (one error type
    for the CLI to print)."""
    filename = os.fspath(path)
    try:
        with open(filename, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise JobspecError(
            filename, [Diagnostic(0, 0, f"cannot read the job file: {reason}")]
        ) from None
    return parse(text, filename)
