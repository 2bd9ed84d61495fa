"""Nomad API JSON (``{"Job": {...}}`` or a bare job object) -> ``pb.Job``.

``corral.api.jsonmap.from_json`` does the field mapping; this module adds what Nomad's
API does around it and what a job author needs to hear: blocks corral does not model
are reported with their HCL names (``block "template" is not supported yet``), other
unknown fields by their JSON path, and the defaults that only the raw JSON can tell
apart from zero (a missing ``Count`` is 1; partial restart/reschedule/migrate policies
merge over the defaults of the job type) are applied. Values Nomad fills in itself
(``nomad job inspect`` output: ``LogConfig``, ``EphemeralDisk``, ...) are accepted.

The server should call ``decode_json`` for jobs that arrive over HTTP, then
``structs.canonicalize`` and ``validate``, exactly as ``parse`` does.
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf.message import Message

from corral import structs
from corral.api.jsonmap import JSONMappingError, from_json
from corral.jobspec.errors import Diagnostic, JobspecError, Key, Problem, not_supported, where_text
from corral.jobspec.support import JSON_BLOCK_NAMES, NOMAD_JSON_DEFAULTS, gated
from corral.proto import pb


def load_json(text: str, filename: str) -> dict[str, Any]:
    """The JSON document as a dict; syntax errors carry line and column."""
    try:
        data = json.loads(text.lstrip("\ufeff"))
    except json.JSONDecodeError as e:
        raise JobspecError.syntax(filename, e.lineno, e.colno, f"invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise JobspecError.syntax(filename, 1, 1, 'a JSON job file holds an object: {"Job": {...}}')
    return data


def decode_json(data: dict[str, Any], filename: str = "<input>") -> tuple[pb.Job, list[Problem]]:
    """A Nomad JSON job (not canonicalized) and the problems only the raw JSON shows.

    Raises JobspecError when a value has the wrong type (the job cannot be built).
    """
    if "Job" in data:
        if not isinstance(data["Job"], dict):
            raise JobspecError(
                filename, [Diagnostic(0, 0, '"Job" must be an object: {"Job": {...}}')]
            )
        data = data["Job"]
    elif "job" in data and len(data) == 1:
        raise JobspecError(
            filename,
            [
                Diagnostic(
                    0,
                    0,
                    "this is HCL's JSON syntax; corral reads Nomad API JSON:"
                    ' {"Job": {"ID": ..., "TaskGroups": [...]}} (see `nomad job run -output`)',
                )
            ],
        )
    job = pb.Job()
    unknown: list[str] = []
    try:
        from_json(data, job, unknown=unknown)
    except JSONMappingError as e:
        raise JobspecError(filename, [Diagnostic(0, 0, str(e))]) from None
    problems = [p for path in unknown if (p := _unknown(data, path, job.id)) is not None]
    _defaults(data, job)
    return job, problems


# -------------------------------------------------------------------- unknown fields

_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")
_LIST_LABELS = {
    "TaskGroups": ("group", True),
    "Tasks": ("task", True),
    "Services": ("service", True),
    "Checks": ("check", True),
    "Constraints": ("constraint", False),
    "Affinities": ("affinity", False),
    "Spreads": ("spread", False),
}
_OBJECT_LABELS = {
    "RestartPolicy": "restart",
    "ReschedulePolicy": "reschedule",
    "Update": "update",
    "Migrate": "migrate",
    "Resources": "resources",
    "CheckRestart": "check_restart",
}


def _unknown(data: dict[str, Any], path: str, job_id: str) -> Problem | None:
    """Turn one unknown JSON path into a gate or "unknown field" problem, or None
    when the value is empty or one Nomad fills in by itself."""
    segments = [
        (m.group(1), [int(i) for i in re.findall(r"\d+", m.group(2))])
        for m in _SEGMENT.finditer(path)
    ]
    node: Any = data
    where: Key = ()
    for key, indexes in segments[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        for i in indexes:
            node = node[i] if isinstance(node, list) and i < len(node) else None
            where += (_list_label(key, node, i),)
        if not indexes:
            where += (_OBJECT_LABELS.get(key, key),)
    name, indexes = segments[-1]
    value = node.get(name) if isinstance(node, dict) else None
    if _deep_empty(value) or _strip_empty(value) in NOMAD_JSON_DEFAULTS.get(name, []):
        return None
    block = JSON_BLOCK_NAMES.get(name)
    if block is not None and gated(block):
        return not_supported(block, where, job_id)
    return Problem(where + (name,), f'unknown field "{name}" in {where_text(where, job_id)}')


def _list_label(key: str, item: Any, index: int) -> str:
    word, named = _LIST_LABELS.get(key, (key, False))
    name = item.get("Name") if named and isinstance(item, dict) else None
    return f'{word} "{name}"' if name else f"{word} #{index + 1}"


def _deep_empty(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_deep_empty(v) for v in value.values())
    if isinstance(value, list):
        return all(_deep_empty(v) for v in value)
    return (
        value is None
        or value == ""
        or value is False
        or (value == 0 and not isinstance(value, bool))
    )


def _strip_empty(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_empty(v) for k, v in value.items() if not _deep_empty(v)}
    return value


# -------------------------------------------------------------------- defaults


def _defaults(data: dict[str, Any], job: pb.Job) -> None:
    """Nomad's API defaults that need to know which keys were given."""
    job_type = job.type or structs.JOB_TYPE_SERVICE
    groups = data.get("TaskGroups") or []
    for gdata, group in zip(groups, job.task_groups, strict=False):
        if not isinstance(gdata, dict):
            continue
        if gdata.get("Count") is None:
            group.count = 1
        restart = structs.default_restart_policy(job_type)
        if isinstance(gdata.get("RestartPolicy"), dict):
            _overlay(restart, gdata["RestartPolicy"])
            group.restart_policy.CopyFrom(restart)
        if isinstance(gdata.get("ReschedulePolicy"), dict) and not _deep_empty(
            gdata["ReschedulePolicy"]
        ):
            policy = structs.default_reschedule_policy(job_type)
            _overlay(policy, gdata["ReschedulePolicy"])
            group.reschedule_policy.CopyFrom(policy)
        if isinstance(gdata.get("Migrate"), dict) and not _deep_empty(gdata["Migrate"]):
            strategy = structs.default_migrate_strategy()
            _overlay(strategy, gdata["Migrate"])
            group.migrate.CopyFrom(strategy)
        _weights(gdata.get("Affinities"), group.affinities)
        _weights(gdata.get("Spreads"), group.spreads)
        for tdata, task in zip(gdata.get("Tasks") or [], group.tasks, strict=False):
            if not isinstance(tdata, dict):
                continue
            if isinstance(tdata.get("RestartPolicy"), dict):
                policy_t = pb.RestartPolicy()
                policy_t.CopyFrom(restart)
                _overlay(policy_t, tdata["RestartPolicy"])
                task.restart_policy.CopyFrom(policy_t)
            _weights(tdata.get("Affinities"), task.affinities)
    _weights(data.get("Affinities"), job.affinities)
    _weights(data.get("Spreads"), job.spreads)


def _overlay(base: Message, given: dict[str, Any]) -> None:
    """Copy onto ``base`` the fields that ``given`` sets (not null), zero included."""
    parsed = type(base)()
    from_json(given, parsed, unknown=[])
    for field in base.DESCRIPTOR.fields:
        for key in (field.json_name, field.name):
            if given.get(key) is not None:
                setattr(base, field.name, getattr(parsed, field.name))
                break


def _weights(items: Any, targets: Any) -> None:
    """Nomad gives an affinity or spread without a weight the weight 50."""
    for item, target in zip(items or [], targets, strict=False):
        if isinstance(item, dict) and item.get("Weight") is None:
            target.weight = 50
