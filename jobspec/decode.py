"""HCL block tree -> ``pb.Job``, with Nomad's jobspec2 meaning for each block.

The decoder never stops at the first mistake: every unknown or not-yet-supported
block, every value of the wrong type, is collected as a ``Problem`` with its key, and
the position of every block and attribute is recorded so that ``validate``'s problems
can be placed too. Blocks that the proto models are decoded in full even when they are
gated by ``NOT_YET_SUPPORTED``, so that enabling one is only removing its name there.

Nomad defaults that only a parser can apply (it alone knows "absent" from "zero") are
applied here: ``count`` is 1 when not given, a partial ``restart``/``reschedule``/
``migrate`` block is merged over the defaults of the job type, a task's ``restart``
over its group's, a constraint's operator defaults to ``=`` and weights to 50.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corral import structs
from corral.jobspec.duration import DurationError, parse_duration
from corral.jobspec.errors import (
    Key,
    Problem,
    item_label,
    not_supported,
    where_prefix,
    where_text,
)
from corral.jobspec.hcl import Attr, Block, Expr
from corral.jobspec.support import CONSTRAINT_SHORTHANDS, gated
from corral.proto import pb


class _Decoder:
    """Shared state of one decode: problems found and positions seen."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.positions: dict[Key, tuple[int, int]] = {}
        self.bad_values: set[Key] = set()  # fields whose value could not be read
        self.job_id = ""

    def add(self, key: Key, text: str, pos: tuple[int, int] | None = None) -> None:
        self.problems.append(Problem(key, text, pos))

    def mark(self, key: Key, line: int, col: int) -> None:
        self.positions.setdefault(key, (line, col))


class _Body:
    """One block's body: hands out typed attributes and sub-blocks, and reports the
    ones nobody asked for (unknown, or gated) when ``finish`` is called."""

    def __init__(self, dec: _Decoder, block: Block, where: Key) -> None:
        self.dec = dec
        self.block = block
        self.where = where
        self.prefix = where_prefix(where)
        self.attrs: dict[str, Attr] = {}
        self.blocks: dict[str, list[Block]] = {}
        self.used: set[str] = set()
        dec.mark(where, block.line, block.col)
        for a in block.attrs:
            if a.name in self.attrs:
                dec.add(
                    where + (a.name,),
                    f'{self.prefix}attribute "{a.name}" is set more than once',
                    (a.line, a.col),
                )
                continue
            self.attrs[a.name] = a
            dec.mark(where + (a.name,), a.line, a.col)
        for b in block.blocks:
            self.blocks.setdefault(b.type, []).append(b)
            dec.mark(where + (b.type,), b.line, b.col)
            if b.type in self.attrs:
                dec.add(
                    where + (b.type,),
                    f'{self.prefix}"{b.type}" is set both as an attribute and as a block',
                    (b.line, b.col),
                )

    # ---------------------------------------------------------------- values

    def problem(self, name: str, detail: str) -> None:
        self.dec.add(self.where + (name,), f"{self.prefix}{name}: {detail}")
        self.dec.bad_values.add(self.where + (name,))

    def raw(self, name: str) -> Any:
        """The attribute's literal value, or None when absent or not a literal."""
        self.used.add(name)
        attr = self.attrs.get(name)
        if attr is None:
            return None
        bad = _find_expr(attr.value)
        if bad is not None:
            self.problem(name, _expr_message(bad))
            return None
        return attr.value

    def string(self, name: str) -> str | None:
        v = self.raw(name)
        if v is None:
            return None
        s = _as_string(v)
        if s is None:
            self.problem(name, f"expected a string, got {_show(v)}")
        return s

    def integer(self, name: str) -> int | None:
        v = self.raw(name)
        if v is None:
            return None
        n = _as_int(v)
        if n is None:
            self.problem(name, f"expected a whole number, got {_show(v)}")
        return n

    def boolean(self, name: str) -> bool | None:
        v = self.raw(name)
        if v is None:
            return None
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v in ("true", "false"):
            return v == "true"
        self.problem(name, f"expected true or false, got {_show(v)}")
        return None

    def duration(self, name: str) -> int | None:
        v = self.raw(name)
        if v is None:
            return None
        if isinstance(v, str):
            try:
                ns: int = parse_duration(v)
                return ns
            except DurationError as e:
                self.problem(name, str(e))
                return None
        if isinstance(v, int | float) and not isinstance(v, bool) and v == 0:
            return 0
        self.problem(name, f'a duration is a string with a unit, like "30s", got {_show(v)}')
        return None

    def strings(self, name: str) -> list[str] | None:
        v = self.raw(name)
        if v is None:
            return None
        if isinstance(v, list):
            out = [_as_string(x) for x in v]
            if all(x is not None for x in out):
                return [x for x in out if x is not None]
        self.problem(name, f'expected a list of strings, like ["a", "b"], got {_show(v)}')
        return None

    def string_map(self, name: str) -> dict[str, str] | None:
        """``env``/``meta``: a block or a map attribute, values turned into strings."""
        self.used.add(name)
        blocks = self.blocks.get(name, [])
        merged: dict[str, Any] = {}
        if name in self.attrs:
            v = self.raw(name)
            if v is None:
                return None
            if not isinstance(v, dict):
                self.problem(name, f'expected a map, like {{ KEY = "value" }}, got {_show(v)}')
                return None
            merged.update(v)
        for b in blocks:
            if b.labels or b.blocks:
                self.problem(name, "expected only KEY = value lines in this block")
            for a in b.attrs:
                bad = _find_expr(a.value)
                if bad is not None:
                    self.dec.add(
                        self.where + (name, a.name),
                        f"{self.prefix}{name}.{a.name}: {_expr_message(bad)}",
                    )
                    continue
                merged[a.name] = a.value
        out: dict[str, str] = {}
        for k, v in merged.items():
            s = _as_string(v)
            if s is None:
                self.problem(name, f"{k}: expected a string, got {_show(v)}")
                continue
            out[str(k)] = s
        return out

    def free(self, name: str) -> dict[str, Any] | None:
        """``config``: free-form, checked by ``validate`` per driver."""
        self.used.add(name)
        if name in self.attrs:
            v = self.raw(name)
            if v is None:
                return None
            if not isinstance(v, dict):
                self.problem(name, f"expected a block, got {_show(v)}")
                return None
            config: dict[str, Any] = _drop_nulls(v)
            return config
        blocks = self.blocks.get(name, [])
        if not blocks:
            return None
        if len(blocks) > 1:
            self.problem(name, "only one block is allowed")
        return self._free_block(blocks[0], (name,))

    def _free_block(self, block: Block, path: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for a in block.attrs:
            bad = _find_expr(a.value)
            if bad is not None:
                dotted = ".".join(path + (a.name,))
                self.dec.add(self.where + path, f"{self.prefix}{dotted}: {_expr_message(bad)}")
                continue
            if a.value is not None:
                out[a.name] = _drop_nulls(a.value)
        for b in block.blocks:
            item: Any = self._free_block(b, path + (b.type,))
            for label in reversed(b.labels):
                item = {label: item}
            out.setdefault(b.type, []).append(item)
        return out

    # ---------------------------------------------------------------- blocks

    def take(self, name: str) -> list[Block]:
        self.used.add(name)
        return self.blocks.get(name, [])

    def single(self, name: str) -> Block | None:
        blocks = self.take(name)
        for extra in blocks[1:]:
            self.dec.add(
                self.where + (name,),
                f'{self.prefix}only one "{name}" block is allowed here',
                (extra.line, extra.col),
            )
        return blocks[0] if blocks else None

    def gate(self, name: str) -> None:
        """Report a block the proto models but corral does not run yet."""
        if gated(name) and (self.blocks.get(name) or name in self.attrs):
            self.dec.problems.append(not_supported(name, self.where, self.dec.job_id))

    def label(self, block: Block, what: str) -> str:
        if len(block.labels) != 1:
            self.dec.add(
                self.where + (block.type,),
                f'{self.prefix}a "{block.type}" block needs exactly one label, its {what}'
                f' (like {block.type} "name" {{ ... }})',
                (block.line, block.col),
            )
        return block.labels[0] if block.labels else ""

    def finish(self) -> None:
        """Report every attribute and block that no decoder step consumed."""
        here = where_text(self.where, self.dec.job_id)
        for name, attr in self.attrs.items():
            if name in self.used:
                continue
            if gated(name):
                p = not_supported(name, self.where, self.dec.job_id, kind="attribute")
                self.dec.add(p.key, p.text, (attr.line, attr.col))
            else:
                self.dec.add(
                    self.where + (name,),
                    f'unknown attribute "{name}" in {here}',
                    (attr.line, attr.col),
                )
        for name, blocks in self.blocks.items():
            if name in self.used:
                continue
            b = blocks[0]
            if gated(name):
                p = not_supported(name, self.where, self.dec.job_id)
                self.dec.add(p.key, p.text, (b.line, b.col))
            else:
                self.dec.add(
                    self.where + (name,), f'unknown block "{name}" in {here}', (b.line, b.col)
                )


# -------------------------------------------------------------------- job


@dataclass
class Decoded:
    """What the decoder learnt from a file.

    ``job`` is None when the file has no job block; ``bad_values`` are the keys of
    fields whose value was unreadable (their zero value must not be blamed again).
    """

    job: pb.Job | None
    problems: list[Problem]
    positions: dict[Key, tuple[int, int]]
    bad_values: set[Key]


def decode(root: Block) -> Decoded:
    """The job of an HCL file, the problems found, and block positions by key."""
    dec = _Decoder()
    jobs = [b for b in root.blocks if b.type == "job"]
    for b in root.blocks:
        if b.type == "job":
            continue
        hint = " (HCL variables are not supported yet)" if b.type in ("variable", "locals") else ""
        dec.add((), f'unknown block "{b.type}" at the top level of the file{hint}', (b.line, b.col))
    for a in root.attrs:
        dec.add((), f'unknown attribute "{a.name}" at the top level of the file', (a.line, a.col))
    if not jobs:
        dec.add((), 'no job block: a job file holds one job "<id>" { ... } block', (1, 1))
        return Decoded(None, dec.problems, dec.positions, dec.bad_values)
    for extra in jobs[1:]:
        dec.add((), "only one job block is allowed per file", (extra.line, extra.col))
    job = _job(dec, jobs[0])
    return Decoded(job, dec.problems, dec.positions, dec.bad_values)


def _job(dec: _Decoder, block: Block) -> pb.Job:
    job = pb.Job()
    if len(block.labels) > 1:
        dec.add(
            (), 'a job block has one label, its ID: job "<id>" { ... }', (block.line, block.col)
        )
    job.id = block.labels[0] if block.labels else ""
    dec.job_id = job.id
    body = _Body(dec, block, ())
    _set(job, "name", body.string("name"))
    _set(job, "region", body.string("region"))
    _set(job, "namespace", body.string("namespace"))
    _set(job, "type", body.string("type"))
    priority = body.integer("priority")
    if priority is not None:
        if priority == 0:  # 0 would silently become the default 50
            body.problem("priority", "must be between 1 and 100, got 0")
        job.priority = priority
    dcs = body.strings("datacenters")
    if dcs is not None:
        job.datacenters.extend(dcs)
    _set(job, "all_at_once", body.boolean("all_at_once"))
    _update_map(job.meta, body.string_map("meta"))
    _constraints(body, job.constraints)
    _affinities(body, job.affinities)
    _spreads(body, job.spreads)
    body.gate("update")
    upd = body.single("update")
    if upd is not None:
        _update(_Body(dec, upd, ("update",)), job.update)
    job_type = job.type or structs.JOB_TYPE_SERVICE
    for i, g in enumerate(body.take("group")):
        _group(dec, body, g, _label(body, "group", i), job_type, job.task_groups.add())
    body.finish()
    return job


def _label(parent: _Body, kind: str, index: int) -> str:
    """The where-label of the index-th ``kind`` block of ``parent`` (see item_label)."""
    names = [b.labels[0] if b.labels else "" for b in parent.blocks.get(kind, [])]
    label: str = item_label(kind, names, index)
    return label


def _named_label(blocks: list[Block], kind: str, index: int) -> str:
    """Like ``_label`` for blocks named by a ``name`` attribute (service, check)."""
    names: list[str] = []
    for b in blocks:
        attr = next((a for a in b.attrs if a.name == "name"), None)
        names.append(attr.value if attr is not None and isinstance(attr.value, str) else "")
    label: str = item_label(kind, names, index)
    return label


def _group(
    dec: _Decoder, parent: _Body, block: Block, label: str, job_type: str, group: pb.TaskGroup
) -> None:
    group.name = parent.label(block, "name")
    where = (label,)
    body = _Body(dec, block, where)
    count = body.integer("count")
    group.count = 1 if count is None else count
    for i, net in enumerate(body.take("network")):
        if i == 1:
            dec.add(
                where + ("network",),
                f"{body.prefix}only one network block is allowed per group",
                (net.line, net.col),
            )
        _network(dec, where, net, i, group.networks.add())
    restart = structs.default_restart_policy(job_type)
    rblock = body.single("restart")
    if rblock is not None:
        _restart(_Body(dec, rblock, where + ("restart",)), restart)
        group.restart_policy.CopyFrom(restart)
    body.gate("reschedule")
    resched = body.single("reschedule")
    if resched is not None:
        policy = structs.default_reschedule_policy(job_type)
        _reschedule(_Body(dec, resched, where + ("reschedule",)), policy)
        group.reschedule_policy.CopyFrom(policy)
    body.gate("migrate")
    mig = body.single("migrate")
    if mig is not None:
        strategy = structs.default_migrate_strategy()
        _migrate(_Body(dec, mig, where + ("migrate",)), strategy)
        group.migrate.CopyFrom(strategy)
    body.gate("update")
    upd = body.single("update")
    if upd is not None:
        _update(_Body(dec, upd, where + ("update",)), group.update)
    _update_map(group.meta, body.string_map("meta"))
    _constraints(body, group.constraints)
    _affinities(body, group.affinities)
    _spreads(body, group.spreads)
    _set(group, "shutdown_delay", body.duration("shutdown_delay"))
    _services(body, group.services)
    for i, t in enumerate(body.take("task")):
        _task(dec, body, t, _label(body, "task", i), restart, group.tasks.add())
    body.finish()


def _task(
    dec: _Decoder,
    parent: _Body,
    block: Block,
    label: str,
    group_restart: pb.RestartPolicy,
    task: pb.Task,
) -> None:
    task.name = parent.label(block, "name")
    where = parent.where + (label,)
    body = _Body(dec, block, where)
    _set(task, "driver", body.string("driver"))
    _set(task, "user", body.string("user"))
    config = body.free("config")
    if config is not None:
        task.config.update(config)
    _update_map(task.env, body.string_map("env"))
    res = body.single("resources")
    if res is not None:
        _resources(_Body(dec, res, where + ("resources",)), task.resources)
    _update_map(task.meta, body.string_map("meta"))
    _constraints(body, task.constraints)
    _affinities(body, task.affinities)
    _set(task, "kill_timeout", body.duration("kill_timeout"))
    _set(task, "kill_signal", body.string("kill_signal"))
    _set(task, "shutdown_delay", body.duration("shutdown_delay"))
    _set(task, "leader", body.boolean("leader"))
    rblock = body.single("restart")
    if rblock is not None:
        restart = pb.RestartPolicy()
        restart.CopyFrom(group_restart)
        _restart(_Body(dec, rblock, where + ("restart",)), restart)
        task.restart_policy.CopyFrom(restart)
    _services(body, task.services)
    body.finish()


def _resources(body: _Body, res: pb.Resources) -> None:
    _set(res, "cpu", body.integer("cpu"))
    _set(res, "cores", body.integer("cores"))
    _set(res, "memory_mb", body.integer("memory"))
    _set(res, "memory_max_mb", body.integer("memory_max"))
    for net in body.take("network"):
        body.dec.add(
            body.where + ("network",),
            f"{body.prefix}a network block inside resources is deprecated in Nomad and not"
            " supported: put it in the group",
            (net.line, net.col),
        )
    body.finish()


def _network(
    dec: _Decoder, group_where: Key, block: Block, index: int, net: pb.NetworkResource
) -> None:
    where = group_where + (("network",) if index == 0 else (f"network #{index + 1}",))
    body = _Body(dec, block, where)
    _set(net, "mode", body.string("mode"))
    _set(net, "mbits", body.integer("mbits"))
    for pblock in body.take("port"):
        label = body.label(pblock, "label")
        pbody = _Body(dec, pblock, where + (f'port "{label}"',))
        port = pb.Port(label=label)
        static = pbody.integer("static")
        _set(port, "to", pbody.integer("to"))
        _set(port, "host_network", pbody.string("host_network"))
        pbody.finish()
        if static is not None:
            port.value = static
            net.reserved_ports.append(port)
        else:
            net.dynamic_ports.append(port)
    body.finish()


def _restart(body: _Body, policy: pb.RestartPolicy) -> None:
    _set(policy, "attempts", body.integer("attempts"))
    _set(policy, "interval", body.duration("interval"))
    _set(policy, "delay", body.duration("delay"))
    _set(policy, "mode", body.string("mode"))
    body.finish()


def _reschedule(body: _Body, policy: pb.ReschedulePolicy) -> None:
    _set(policy, "attempts", body.integer("attempts"))
    _set(policy, "interval", body.duration("interval"))
    _set(policy, "delay", body.duration("delay"))
    _set(policy, "delay_function", body.string("delay_function"))
    _set(policy, "max_delay", body.duration("max_delay"))
    _set(policy, "unlimited", body.boolean("unlimited"))
    body.finish()


def _migrate(body: _Body, strategy: pb.MigrateStrategy) -> None:
    _set(strategy, "max_parallel", body.integer("max_parallel"))
    _set(strategy, "health_check", body.string("health_check"))
    _set(strategy, "min_healthy_time", body.duration("min_healthy_time"))
    _set(strategy, "healthy_deadline", body.duration("healthy_deadline"))
    body.finish()


def _update(body: _Body, strategy: pb.UpdateStrategy) -> None:
    strategy.SetInParent()
    _set(strategy, "stagger", body.duration("stagger"))
    _set(strategy, "max_parallel", body.integer("max_parallel"))
    _set(strategy, "health_check", body.string("health_check"))
    _set(strategy, "min_healthy_time", body.duration("min_healthy_time"))
    _set(strategy, "healthy_deadline", body.duration("healthy_deadline"))
    _set(strategy, "progress_deadline", body.duration("progress_deadline"))
    _set(strategy, "auto_revert", body.boolean("auto_revert"))
    _set(strategy, "auto_promote", body.boolean("auto_promote"))
    _set(strategy, "canary", body.integer("canary"))
    body.finish()


def _operator_fields(body: _Body, target: pb.Constraint | pb.Affinity) -> None:
    """attribute/operator/value plus Nomad's shorthands (``distinct_hosts = true``...)."""
    _set(target, "l_target", body.string("attribute"))
    _set(target, "operand", body.string("operator"))
    _set(target, "r_target", body.string("value"))
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


def _constraints(parent: _Body, out: Any) -> None:
    parent.gate("constraint")
    for i, block in enumerate(parent.take("constraint")):
        body = _Body(parent.dec, block, parent.where + (f"constraint #{i + 1}",))
        c = out.add()
        _operator_fields(body, c)
        body.finish()


def _affinities(parent: _Body, out: Any) -> None:
    parent.gate("affinity")
    for i, block in enumerate(parent.take("affinity")):
        body = _Body(parent.dec, block, parent.where + (f"affinity #{i + 1}",))
        a = out.add()
        _operator_fields(body, a)
        weight = body.integer("weight")
        a.weight = 50 if weight is None else weight
        body.finish()


def _spreads(parent: _Body, out: Any) -> None:
    parent.gate("spread")
    for i, block in enumerate(parent.take("spread")):
        body = _Body(parent.dec, block, parent.where + (f"spread #{i + 1}",))
        s = out.add()
        _set(s, "attribute", body.string("attribute"))
        weight = body.integer("weight")
        s.weight = 50 if weight is None else weight
        for tblock in body.take("target"):
            label = body.label(tblock, "value")
            tbody = _Body(parent.dec, tblock, body.where + (f'target "{label}"',))
            target = s.spread_target.add(value=label)
            _set(target, "percent", tbody.integer("percent"))
            tbody.finish()
        body.finish()


def _services(parent: _Body, out: Any) -> None:
    parent.gate("service")
    blocks = parent.take("service")
    for i, block in enumerate(blocks):
        body = _Body(parent.dec, block, parent.where + (_named_label(blocks, "service", i),))
        svc = out.add()
        _set(svc, "name", body.string("name"))
        _set(svc, "port_label", body.string("port"))
        tags = body.strings("tags")
        if tags is not None:
            svc.tags.extend(tags)
        canary = body.strings("canary_tags")
        if canary is not None:
            svc.canary_tags.extend(canary)
        _set(svc, "provider", body.string("provider"))
        _set(svc, "address_mode", body.string("address_mode"))
        _set(svc, "task_name", body.string("task"))
        _update_map(svc.meta, body.string_map("meta"))
        body.gate("check")
        checks = body.take("check")
        for j, cblock in enumerate(checks):
            _check(body, cblock, _named_label(checks, "check", j), svc.checks.add())
        body.finish()


def _check(parent: _Body, block: Block, label: str, check: pb.ServiceCheck) -> None:
    body = _Body(parent.dec, block, parent.where + (label,))
    _set(check, "name", body.string("name"))
    _set(check, "type", body.string("type"))
    _set(check, "path", body.string("path"))
    _set(check, "method", body.string("method"))
    _set(check, "protocol", body.string("protocol"))
    _set(check, "port_label", body.string("port"))
    _set(check, "interval", body.duration("interval"))
    _set(check, "timeout", body.duration("timeout"))
    _set(check, "task_name", body.string("task"))
    body.gate("check_restart")
    cr = body.single("check_restart")
    if cr is not None:
        crbody = _Body(parent.dec, cr, body.where + ("check_restart",))
        check.check_restart.SetInParent()
        _set(check.check_restart, "limit", crbody.integer("limit"))
        _set(check.check_restart, "grace", crbody.duration("grace"))
        _set(check.check_restart, "ignore_warnings", crbody.boolean("ignore_warnings"))
        crbody.finish()
    body.finish()


# -------------------------------------------------------------------- helpers


def _set(msg: Any, field: str, value: Any) -> None:
    if value is not None:
        setattr(msg, field, value)


def _update_map(target: Any, values: dict[str, str] | None) -> None:
    if values:
        target.update(values)


def _find_expr(value: Any) -> Expr | None:
    if isinstance(value, Expr):
        return value
    if isinstance(value, list):
        for v in value:
            found = _find_expr(v)
            if found is not None:
                return found
    if isinstance(value, dict):
        for v in value.values():
            found = _find_expr(v)
            if found is not None:
                return found
    return None


def _expr_message(expr: Expr) -> str:
    return (
        f"cannot evaluate {expr.source}: corral job files take literal values"
        ' (no variables, functions or arithmetic; "${...}" inside a string is kept for run time)'
    )


def _as_string(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else str(v)
    if isinstance(v, str):
        return v
    return None


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            return None
    return None


def _show(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a map"
    if v is None:
        return "null"
    return str(v)


def _drop_nulls(value: Any) -> Any:
    """HCL ``null`` means "not set": drop such keys from free-form config."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value
