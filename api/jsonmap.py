"""Nomad API JSON <-> protobuf messages, through each field's ``json_name``.

Why not ``google.protobuf.json_format``: proto3's JSON mapping writes 64-bit integers
as strings, and Nomad's API (and the Go clients that read it, Traefik's among them)
wants numbers. It also drops zero values, where Nomad prints every field. This walker
keeps integers as numbers and prints every field, and on input accepts Nomad's JSON
(numbers or numeric strings, ``null`` for empty) and reports unknown fields by path
so that callers can reject them by name.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_STRUCT = "google.protobuf.Struct"
_INT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}


class JSONMappingError(ValueError):
    """A JSON value does not fit the message; ``path`` names the field."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


def struct_to_python(value: Any) -> Any:
    """A Struct/Value as plain Python, with integral floats turned back into ints.

    protobuf's Struct stores every number as a double; job config such as
    ``ports = [8080]`` must come back as ints.
    """
    if isinstance(value, Message):
        value = json_format.MessageToDict(value)
    return _ints(value)


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def to_json(msg: Message, *, omit_empty: bool = False) -> dict[str, Any]:
    """The message as Nomad's API JSON (every field, integers as numbers)."""
    out: dict[str, Any] = {}
    desc = msg.DESCRIPTOR
    for field in desc.fields:
        name = field.json_name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            mapping = getattr(msg, field.name)
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                out[name] = {k: to_json(v, omit_empty=omit_empty) for k, v in mapping.items()}
            else:
                out[name] = dict(mapping)
            if omit_empty and not mapping:
                del out[name]
            continue
        if field.is_repeated:
            items = getattr(msg, field.name)
            if field.message_type is not None:
                out[name] = [to_json(v, omit_empty=omit_empty) for v in items]
            else:
                out[name] = list(items)
            if omit_empty and not items:
                del out[name]
            continue
        if field.message_type is not None:
            if not msg.HasField(field.name):
                if not omit_empty:
                    out[name] = None
                continue
            sub = getattr(msg, field.name)
            if field.message_type.full_name == _STRUCT:
                out[name] = struct_to_python(sub)
            else:
                out[name] = to_json(sub, omit_empty=omit_empty)
            continue
        if field.has_presence and not msg.HasField(field.name):
            if not omit_empty:
                out[name] = None
            continue
        value = getattr(msg, field.name)
        if field.type == FieldDescriptor.TYPE_BYTES:
            import base64

            value = base64.b64encode(value).decode()
        if omit_empty and not value and not field.has_presence:
            continue
        out[name] = value
    return out


def _field_index(desc: Any) -> dict[str, FieldDescriptor]:
    """Fields by json_name, by proto name and case-insensitively (HCL-ish keys)."""
    cached: dict[str, FieldDescriptor] | None = _INDEX_CACHE.get(desc.full_name)
    if cached is None:
        cached = {}
        for f in desc.fields:
            cached[f.json_name] = f
            cached[f.name] = f
            cached[f.json_name.lower()] = f
        _INDEX_CACHE[desc.full_name] = cached
    return cached


_INDEX_CACHE: dict[str, dict[str, FieldDescriptor]] = {}


def from_json(
    data: dict[str, Any],
    msg: Message,
    *,
    path: str = "",
    unknown: list[str] | None = None,
) -> Message:
    """Fill ``msg`` from Nomad API JSON; returns ``msg``.

    Unknown keys whose value is not empty (None, "", 0, False, [], {}) are appended to
    ``unknown`` as dotted paths, or raise JSONMappingError when ``unknown`` is None.
    """
    if not isinstance(data, dict):
        raise JSONMappingError(path, f"expected an object, got {type(data).__name__}")
    index = _field_index(msg.DESCRIPTOR)
    for key, value in data.items():
        sub_path = f"{path}.{key}" if path else key
        field = index.get(key) or index.get(key.lower())
        if field is None:
            if _is_empty(value):
                continue
            if unknown is None:
                raise JSONMappingError(sub_path, "unknown field")
            unknown.append(sub_path)
            continue
        if value is None:
            continue
        _set_field(msg, field, value, sub_path, unknown)
    return msg


def _is_empty(value: Any) -> bool:
    return (
        value is None or value == "" or value == 0 or value is False or value == [] or value == {}
    )


def _scalar(field: FieldDescriptor, value: Any, path: str) -> Any:
    t = field.type
    if t in _INT_TYPES:
        if isinstance(value, bool):
            raise JSONMappingError(path, "expected a number, got a boolean")
        if isinstance(value, float):
            if not value.is_integer():
                raise JSONMappingError(path, f"expected an integer, got {value}")
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise JSONMappingError(path, f"expected an integer, got {value!r}") from None
        if isinstance(value, int):
            return value
        raise JSONMappingError(path, f"expected an integer, got {type(value).__name__}")
    if t == FieldDescriptor.TYPE_BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise JSONMappingError(path, f"expected a boolean, got {value!r}")
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise JSONMappingError(path, f"expected a number, got {value!r}")
        return float(value)
    if t == FieldDescriptor.TYPE_STRING:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        if not isinstance(value, str):
            raise JSONMappingError(path, f"expected a string, got {type(value).__name__}")
        return value
    if t == FieldDescriptor.TYPE_BYTES:
        import base64

        return base64.b64decode(value)
    raise JSONMappingError(path, "unsupported field type")


def _set_field(
    msg: Message, field: FieldDescriptor, value: Any, path: str, unknown: list[str] | None
) -> None:
    mt = field.message_type
    if mt is not None and mt.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise JSONMappingError(path, "expected an object")
        target = getattr(msg, field.name)
        value_field = mt.fields_by_name["value"]
        for k, v in value.items():
            if value_field.message_type is not None:
                from_json(v or {}, target[str(k)], path=f"{path}.{k}", unknown=unknown)
            elif v is not None:
                target[str(k)] = _scalar(value_field, v, f"{path}.{k}")
        return
    if field.is_repeated:
        if not isinstance(value, list):
            raise JSONMappingError(path, "expected a list")
        target = getattr(msg, field.name)
        for i, item in enumerate(value):
            item_path = f"{path}[{i}]"
            if mt is not None:
                from_json(item or {}, target.add(), path=item_path, unknown=unknown)
            else:
                target.append(_scalar(field, item, item_path))
        return
    if mt is not None:
        if mt.full_name == _STRUCT:
            if not isinstance(value, dict):
                raise JSONMappingError(path, "expected an object")
            getattr(msg, field.name).update(value)
            return
        from_json(value, getattr(msg, field.name), path=path, unknown=unknown)
        return
    setattr(msg, field.name, _scalar(field, value, path))
