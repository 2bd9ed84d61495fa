"""A Nomad-style diff of two job versions: ``diff_jobs(old, new) -> list[str]``.

Why here and pure: ``corral job history -p`` shows what changed between consecutive
versions, and the server's ``JobService.Plan`` shows what a job file would change
against the registered version. Both should print the same lines, so this module
has no I/O and no dependency beyond the contract (``corral.proto``) and its JSON
mapping, and lives in ``corral.api`` beside that mapping: the server's plan endpoint
and the CLI both import it.

The output follows Nomad's ``formatJobDiff`` (non-verbose): a header per job, task
group and task with a marker (``+`` added, ``-`` deleted, ``+/-`` edited, none when
unchanged), then the changed fields (``+/- Count: "1" => "3"``) and nested objects
(``+/- Resources { ... }``), markers and values aligned the way Nomad aligns them.
Every task group and task of either version is listed, changed or not, so that a
caller can append scheduler annotations to a group's line
(``Task Group: "web" (1 create, 2 ignore)``).

What is compared is the job as the user wrote it (after canonicalization): the
fields the server sets (Version, Stable, SubmitTime, Status, the indexes) are not
part of a diff. Values are compared as Nomad's flattened strings: numbers and
durations (nanoseconds) as decimals, booleans as ``true``/``false``.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from corral.api.jsonmap import from_json, struct_to_python
from corral.proto import pb

ADDED = "Added"
DELETED = "Deleted"
EDITED = "Edited"
NONE = "None"

_STRUCT = "google.protobuf.Struct"

# Fields the server sets: never part of a spec diff.
_JOB_SKIP = frozenset(
    {
        "ID",
        "TaskGroups",
        "Status",
        "StatusDescription",
        "Version",
        "Stable",
        "SubmitTime",
        "CreateIndex",
        "ModifyIndex",
        "JobModifyIndex",
    }
)
_GROUP_SKIP = frozenset({"Name", "Tasks"})
_TASK_SKIP = frozenset({"Name"})

# What one item of a repeated block is called, as Nomad names it.
_SINGULAR = {
    "Affinities": "Affinity",
    "ReservedPorts": "Static Port",
    "DynamicPorts": "Dynamic Port",
    "SpreadTarget": "SpreadTarget",
}


@dataclass
class FieldDiff:
    """One scalar field: ``old``/``new`` are Nomad's flattened strings."""

    type: str
    name: str
    old: str = ""
    new: str = ""


@dataclass
class ObjectDiff:
    """A nested block (``Resources``, ``Constraint``, ``Config``...)."""

    type: str
    name: str
    fields: list[FieldDiff] = field(default_factory=list)
    objects: list[ObjectDiff] = field(default_factory=list)


@dataclass
class TaskDiff(ObjectDiff):
    """A task: the shape of a block (Nomad names it apart)."""


@dataclass
class TaskGroupDiff(ObjectDiff):
    """A group: a block plus its tasks."""

    tasks: list[TaskDiff] = field(default_factory=list)


@dataclass
class JobDiff:
    """The whole diff; ``type`` is ``None`` when the two specs are the same."""

    type: str
    id: str
    fields: list[FieldDiff] = field(default_factory=list)
    objects: list[ObjectDiff] = field(default_factory=list)
    task_groups: list[TaskGroupDiff] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.type != NONE


JobLike = pb.Job | Mapping[str, Any] | None


# ---------------------------------------------------------------- public API


def diff_jobs(old: JobLike, new: JobLike, *, verbose: bool = False) -> list[str]:
    """The lines of a Nomad-style diff from ``old`` to ``new``.

    Either side may be a ``pb.Job``, Nomad API JSON of a job (``{"Job": {...}}`` or
    the job object itself) or None (a job being created or removed). With
    ``verbose``, the fields of added or removed groups and tasks are listed too.
    """
    return format_job_diff(job_diff(old, new), verbose=verbose)


def job_diff(old: JobLike, new: JobLike) -> JobDiff:
    """The structured diff behind :func:`diff_jobs` (``.changed`` tells if any)."""
    a, b = _as_job(old), _as_job(new)
    if a is None and b is None:
        raise ValueError("diff_jobs needs at least one job")
    job_id = (b if b is not None else a).id  # type: ignore[union-attr]
    fields, objects = _diff_message(a, b, _JOB_SKIP)
    groups = _diff_named(
        list(a.task_groups) if a is not None else [],
        list(b.task_groups) if b is not None else [],
        _group_diff,
    )
    if a is None:
        kind = ADDED
    elif b is None:
        kind = DELETED
    elif fields or objects or any(g.type != NONE for g in groups):
        kind = EDITED
    else:
        kind = NONE
    return JobDiff(kind, job_id, fields, objects, groups)


def format_job_diff(diff: JobDiff, *, verbose: bool = False) -> list[str]:
    """Nomad's ``formatJobDiff`` layout of a structured diff, one string per line."""
    marker = _marker(diff.type)
    out = [f"{marker}Job: {_quote(diff.id)}"]
    longest_field, longest_marker = _longest(diff.fields, diff.objects)
    for group in diff.task_groups:
        longest_marker = max(longest_marker, len(_marker(group.type)))
    if diff.type == EDITED or verbose:
        out += _aligned(diff.fields, diff.objects, 0, longest_field, longest_marker)
    for group in diff.task_groups:
        pad = longest_marker - len(_marker(group.type))
        out += _format_group(group, pad, verbose)
    return out


# ---------------------------------------------------------------- diffing


def _as_job(value: JobLike) -> pb.Job | None:
    if value is None:
        return None
    if isinstance(value, pb.Job):
        return value
    data = dict(value)
    if isinstance(data.get("Job"), Mapping):
        data = dict(data["Job"])
    job = pb.Job()
    from_json(data, job, unknown=[])  # fields outside the contract cannot differ here
    return job


def _group_diff(old: pb.TaskGroup | None, new: pb.TaskGroup | None) -> TaskGroupDiff:
    name = (new if new is not None else old).name  # type: ignore[union-attr]
    fields, objects = _diff_message(old, new, _GROUP_SKIP)
    tasks = _diff_named(
        list(old.tasks) if old is not None else [],
        list(new.tasks) if new is not None else [],
        _task_diff,
    )
    return TaskGroupDiff(
        _kind(old, new, bool(fields or objects or _any(tasks))), name, fields, objects, tasks
    )


def _task_diff(old: pb.Task | None, new: pb.Task | None) -> TaskDiff:
    name = (new if new is not None else old).name  # type: ignore[union-attr]
    fields, objects = _diff_message(old, new, _TASK_SKIP)
    return TaskDiff(_kind(old, new, bool(fields or objects)), name, fields, objects)


def _any(items: Iterable[TaskDiff]) -> bool:
    return any(t.type != NONE for t in items)


def _kind(old: object, new: object, edited: bool) -> str:
    if old is None:
        return ADDED
    if new is None:
        return DELETED
    return EDITED if edited else NONE


def _diff_named(old: list[Any], new: list[Any], differ: Any) -> list[Any]:
    """Pair groups/tasks by name; every name of either side, sorted."""
    before = {item.name: item for item in old}
    after = {item.name: item for item in new}
    return [differ(before.get(name), after.get(name)) for name in sorted({*before, *after})]


def _diff_message(
    old: Message | None, new: Message | None, skip: frozenset[str] = frozenset()
) -> tuple[list[FieldDiff], list[ObjectDiff]]:
    """Changed fields and objects between two messages of one type (either may be None)."""
    desc = (new if new is not None else old).DESCRIPTOR  # type: ignore[union-attr]
    fields: list[FieldDiff] = []
    objects: list[ObjectDiff] = []
    # the descriptor's stubs mix the pure-Python and upb FieldDescriptor types
    for fd in cast("list[FieldDescriptor]", list(desc.fields)):
        name = fd.json_name
        if name in skip:
            continue
        mt = fd.message_type
        if mt is not None and mt.GetOptions().map_entry:
            fields += _diff_map(name, _map(old, fd), _map(new, fd))
        elif fd.is_repeated and mt is not None:
            objects += _diff_repeated_messages(name, _items(old, fd), _items(new, fd))
        elif fd.is_repeated:
            obj = _diff_repeated_scalars(name, fd, _items(old, fd), _items(new, fd))
            if obj is not None:
                objects.append(obj)
        elif mt is not None and mt.full_name == _STRUCT:
            obj = _diff_struct(name, _sub(old, fd), _sub(new, fd))
            if obj is not None:
                objects.append(obj)
        elif mt is not None:
            obj = _diff_object(name, _sub(old, fd), _sub(new, fd))
            if obj is not None:
                objects.append(obj)
        else:
            f = _field(name, _scalar(old, fd), _scalar(new, fd), old is None or new is None)
            if f is not None:
                fields.append(f)
    fields.sort(key=lambda f: f.name)
    objects.sort(key=lambda o: o.name)
    return fields, objects


def _map(msg: Message | None, fd: FieldDescriptor) -> dict[str, Any]:
    return dict(getattr(msg, fd.name)) if msg is not None else {}


def _items(msg: Message | None, fd: FieldDescriptor) -> list[Any]:
    return list(getattr(msg, fd.name)) if msg is not None else []


def _sub(msg: Message | None, fd: FieldDescriptor) -> Message | None:
    if msg is None or not msg.HasField(fd.name):
        return None
    sub: Message = getattr(msg, fd.name)
    return sub


def _scalar(msg: Message | None, fd: FieldDescriptor) -> str:
    """Nomad's flattened string of a scalar; "" for an absent or unset value."""
    if msg is None or (fd.has_presence and not msg.HasField(fd.name)):
        return ""
    return _text(getattr(msg, fd.name), fd.type == FieldDescriptor.TYPE_BYTES)


def _text(value: Any, is_bytes: bool = False) -> str:
    if is_bytes:
        return base64.b64encode(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:
        return ""
    return str(value)


def _field(name: str, old: str, new: str, whole_object: bool) -> FieldDiff | None:
    """Nomad's fieldDiff; inside an added/removed object, zero values are left out."""
    if whole_object and (old in ("", "0", "false") and new in ("", "0", "false")):
        return None
    if old == new:
        return None
    if old == "":
        return FieldDiff(ADDED, name, old, new)
    if new == "":
        return FieldDiff(DELETED, name, old, new)
    return FieldDiff(EDITED, name, old, new)


def _diff_map(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[FieldDiff]:
    """``Meta[key]``/``Env[KEY]`` fields, as Nomad flattens maps."""
    out = []
    for key in sorted({*old, *new}):
        f = _field(
            f"{name}[{key}]",
            _text(old[key]) if key in old else "",
            _text(new[key]) if key in new else "",
            False,
        )
        if f is not None:
            out.append(f)
    return out


def _diff_object(name: str, old: Message | None, new: Message | None) -> ObjectDiff | None:
    if old is None and new is None:
        return None
    fields, objects = _diff_message(old, new)
    if old is not None and new is not None and not fields and not objects:
        return None
    if old is None or new is None:
        if not fields and not objects:
            return None  # an empty block added or removed changes nothing
        kind = ADDED if old is None else DELETED
    else:
        kind = EDITED
    return ObjectDiff(kind, name, fields, objects)


def _diff_repeated_messages(name: str, old: list[Message], new: list[Message]) -> list[ObjectDiff]:
    """Blocks that repeat: paired by Name/Label when they have one, else as a set.

    A service or a port keeps its identity when edited (``+/- Service {``); a
    constraint has no name, so a changed one reads as one removed and one added,
    which is also how Nomad shows it.
    """
    label = _SINGULAR.get(name) or (name[:-1] if name.endswith("s") else name)
    out: list[ObjectDiff] = []
    before = _keyed(old)
    after = _keyed(new)
    for key in [k for k in before if k not in after] + [k for k in after]:
        a, b = before.get(key), after.get(key)
        obj = _diff_object(label, a, b)
        if obj is not None:
            out.append(obj)
    return out


def _keyed(items: list[Message]) -> dict[str, Message]:
    """Items by identity: ``name:<Name>#n`` or ``label:<Label>#n``, else their content."""
    out: dict[str, Message] = {}
    seen: Counter[str] = Counter()
    for item in items:
        ident = ""
        for attr in ("name", "label"):
            if attr in item.DESCRIPTOR.fields_by_name and getattr(item, attr):
                ident = f"{attr}:{getattr(item, attr)}"
                break
        if not ident:
            ident = "value:" + item.SerializeToString(deterministic=True).hex()
        seen[ident] += 1
        out[f"{ident}#{seen[ident]}"] = item
    return out


def _diff_repeated_scalars(
    name: str, fd: FieldDescriptor, old: list[Any], new: list[Any]
) -> ObjectDiff | None:
    """A list of strings (Datacenters, Tags) as a set: added and removed values."""
    is_bytes = fd.type == FieldDescriptor.TYPE_BYTES
    a = Counter(_text(v, is_bytes) for v in old)
    b = Counter(_text(v, is_bytes) for v in new)
    fields = [FieldDiff(DELETED, name, v, "") for v in sorted((a - b).elements())]
    fields += [FieldDiff(ADDED, name, "", v) for v in sorted((b - a).elements())]
    if not fields:
        return None
    if not old:
        kind = ADDED
    elif not new:
        kind = DELETED
    else:
        kind = EDITED
    return ObjectDiff(kind, name, fields, [])


def _diff_struct(name: str, old: Message | None, new: Message | None) -> ObjectDiff | None:
    """A driver ``config``: flattened as Nomad does (``args[0]``, ``mounts[0].target``)."""
    a = _flatten(struct_to_python(old) if old is not None else {})
    b = _flatten(struct_to_python(new) if new is not None else {})
    fields = []
    for key in sorted({*a, *b}):
        f = _field(key, a.get(key, ""), b.get(key, ""), False)
        if f is not None:
            fields.append(f)
    if not fields:
        return None
    if not a:
        kind = ADDED
    elif not b:
        kind = DELETED
    else:
        kind = EDITED
    return ObjectDiff(kind, name, fields, [])


def _flatten(value: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = _text(value)
    return out


# ---------------------------------------------------------------- formatting


def _marker(kind: str) -> str:
    return {ADDED: "+ ", DELETED: "- ", EDITED: "+/- "}.get(kind, "")


def _quote(value: str) -> str:
    """Go's ``%q`` for the strings a job holds."""
    return json.dumps(value, ensure_ascii=False)


def _longest(fields: list[FieldDiff], objects: list[ObjectDiff]) -> tuple[int, int]:
    longest_field = max((len(f.name) for f in fields), default=0)
    markers = [f.type for f in fields] + [o.type for o in objects]
    longest_marker = max((len(_marker(kind)) for kind in markers), default=0)
    return longest_field, longest_marker


def _format_field(f: FieldDiff, start: int, key_pad: int, value_pad: int) -> str:
    if f.type == EDITED:
        value = f"{_quote(f.old)} => {_quote(f.new)}"
    elif f.type == DELETED:
        value = _quote(f.old)
    else:
        value = _quote(f.new)
    return f"{' ' * start}{_marker(f.type)}{' ' * key_pad}{f.name}: {' ' * value_pad}{value}"


def _format_object(o: ObjectDiff, start: int, key_pad: int) -> list[str]:
    marker = _marker(o.type)
    out = [f"{' ' * start}{marker}{' ' * key_pad}{o.name} {{"]
    longest_field, longest_marker = _longest(o.fields, o.objects)
    out += _aligned(o.fields, o.objects, start + key_pad + 2, longest_field, longest_marker)
    out.append(" " * (start + len(marker) + key_pad) + "}")
    return out


def _aligned(
    fields: list[FieldDiff],
    objects: list[ObjectDiff],
    start: int,
    longest_field: int,
    longest_marker: int,
) -> list[str]:
    out = []
    for f in fields:
        key_pad = longest_marker - len(_marker(f.type))
        out.append(_format_field(f, start, key_pad, longest_field - len(f.name)))
    for o in objects:
        out += _format_object(o, start, longest_marker - len(_marker(o.type)))
    return out


def _format_group(group: TaskGroupDiff, group_pad: int, verbose: bool) -> list[str]:
    out = [f"{_marker(group.type)}{' ' * group_pad}Task Group: {_quote(group.name)}"]
    longest_field, longest_marker = _longest(group.fields, group.objects)
    for task in group.tasks:
        longest_marker = max(longest_marker, len(_marker(task.type)))
    sub = group_pad + 2
    if group.type == EDITED or verbose:
        out += _aligned(group.fields, group.objects, sub, longest_field, longest_marker)
    for task in group.tasks:
        out += _format_task(task, sub, longest_marker - len(_marker(task.type)), verbose)
    return out


def _format_task(task: TaskDiff, start: int, task_pad: int, verbose: bool) -> list[str]:
    out = [f"{' ' * start}{_marker(task.type)}{' ' * task_pad}Task: {_quote(task.name)}"]
    if task.type == NONE or (task.type in (ADDED, DELETED) and not verbose):
        return out
    longest_field, longest_marker = _longest(task.fields, task.objects)
    return out + _aligned(task.fields, task.objects, start + 2, longest_field, longest_marker)
