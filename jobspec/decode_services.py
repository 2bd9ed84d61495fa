"""The jobspec decoder's ``service`` blocks, with their ``check`` and ``check_restart``.

A group or a task may hold any number of services, each any number of checks; both
are named by a ``name`` attribute rather than a label, so their problems are placed
by that name (``_named_label``). Apart from ``decode.py`` because services are the
largest nested block and are decoded the same way for groups and tasks.
"""

from __future__ import annotations

from typing import Any

from corral.jobspec.decode_body import Body, set_field, update_map
from corral.jobspec.errors import item_label
from corral.jobspec.hcl import Block
from corral.proto import pb


def decode_services(parent: Body, out: Any) -> None:
    parent.gate("service")
    blocks = parent.take("service")
    for i, block in enumerate(blocks):
        body = Body(parent.dec, block, parent.where + (_named_label(blocks, "service", i),))
        svc = out.add()
        set_field(svc, "name", body.string("name"))
        set_field(svc, "port_label", body.string("port"))
        tags = body.strings("tags")
        if tags is not None:
            svc.tags.extend(tags)
        canary = body.strings("canary_tags")
        if canary is not None:
            svc.canary_tags.extend(canary)
        set_field(svc, "provider", body.string("provider"))
        set_field(svc, "address_mode", body.string("address_mode"))
        set_field(svc, "task_name", body.string("task"))
        update_map(svc.meta, body.string_map("meta"))
        body.gate("check")
        checks = body.take("check")
        for j, cblock in enumerate(checks):
            _check(body, cblock, _named_label(checks, "check", j), svc.checks.add())
        body.finish()


def _check(parent: Body, block: Block, label: str, check: pb.ServiceCheck) -> None:
    body = Body(parent.dec, block, parent.where + (label,))
    set_field(check, "name", body.string("name"))
    set_field(check, "type", body.string("type"))
    set_field(check, "path", body.string("path"))
    set_field(check, "method", body.string("method"))
    set_field(check, "protocol", body.string("protocol"))
    set_field(check, "port_label", body.string("port"))
    set_field(check, "interval", body.duration("interval"))
    set_field(check, "timeout", body.duration("timeout"))
    set_field(check, "task_name", body.string("task"))
    body.gate("check_restart")
    cr = body.single("check_restart")
    if cr is not None:
        crbody = Body(parent.dec, cr, body.where + ("check_restart",))
        check.check_restart.SetInParent()
        set_field(check.check_restart, "limit", crbody.integer("limit"))
        set_field(check.check_restart, "grace", crbody.duration("grace"))
        set_field(check.check_restart, "ignore_warnings", crbody.boolean("ignore_warnings"))
        crbody.finish()
    body.finish()


def _named_label(blocks: list[Block], kind: str, index: int) -> str:
    """Like ``decode._label`` for blocks named by a ``name`` attribute (service, check)."""
    names: list[str] = []
    for b in blocks:
        attr = next((a for a in b.attrs if a.name == "name"), None)
        names.append(attr.value if attr is not None and isinstance(attr.value, str) else "")
    label: str = item_label(kind, names, index)
    return label
