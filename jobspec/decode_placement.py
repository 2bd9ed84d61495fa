"""The jobspec decoder's placement rules: ``constraint``, ``affinity``, ``spread``.

A job, a group and a task may each hold any number of these. Constraints and
affinities share their attribute/operator/value fields and Nomad's shorthands
(``distinct_hosts = true``, ``version = ">= 1.2"``, ...); the operator defaults to
``=`` and weights to 50, which only the decoder can do (it alone knows "absent" from
"zero"). Apart from ``decode.py`` because the three are decoded the same way at
every level of the job tree.
"""

from __future__ import annotations

from typing import Any

from corral.jobspec.decode_body import Body, set_field
from corral.jobspec.support import CONSTRAINT_SHORTHANDS
from corral.proto import pb


def _operator_fields(body: Body, target: pb.Constraint | pb.Affinity) -> None:
    """attribute/operator/value plus Nomad's shorthands (``distinct_hosts = true``...)."""
    set_field(target, "l_target", body.string("attribute"))
    set_field(target, "operand", body.string("operator"))
    set_field(target, "r_target", body.string("value"))
    for short in CONSTRAINT_SHORTHANDS:
        value = body.string(short)
        if value is not None:
            target.operand = short
            target.r_target = value
    if isinstance(target, pb.Constraint):
        if body.boolean("distinct_hosts"):
            target.operand = "distinct_hosts"
        prop = body.string("distinct_property")
        if prop is not None:
            target.operand = "distinct_property"
            target.l_target = prop
    if not target.operand:
        target.operand = "="


def decode_constraints(parent: Body, out: Any) -> None:
    parent.gate("constraint")
    for i, block in enumerate(parent.take("constraint")):
        body = Body(parent.dec, block, parent.where + (f"constraint #{i + 1}",))
        c = out.add()
        _operator_fields(body, c)
        body.finish()


def decode_affinities(parent: Body, out: Any) -> None:
    parent.gate("affinity")
    for i, block in enumerate(parent.take("affinity")):
        body = Body(parent.dec, block, parent.where + (f"affinity #{i + 1}",))
        a = out.add()
        _operator_fields(body, a)
        weight = body.integer("weight")
        a.weight = 50 if weight is None else weight
        body.finish()


def decode_spreads(parent: Body, out: Any) -> None:
    parent.gate("spread")
    for i, block in enumerate(parent.take("spread")):
        body = Body(parent.dec, block, parent.where + (f"spread #{i + 1}",))
        s = out.add()
        set_field(s, "attribute", body.string("attribute"))
        weight = body.integer("weight")
        s.weight = 50 if weight is None else weight
        for tblock in body.take("target"):
            label = body.label(tblock, "value")
            tbody = Body(parent.dec, tblock, body.where + (f'target "{label}"',))
            target = s.spread_target.add(value=label)
            set_field(target, "percent", tbody.integer("percent"))
            tbody.finish()
        body.finish()
