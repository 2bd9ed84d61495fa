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

This module walks the job tree (the file, ``job``, ``group``, ``task``); the rest of
the decoder is split by what it decodes: ``decode_body`` (the typed accessor of one
block and the problems found), ``decode_blocks`` (resources, network, and the
restart/reschedule/migrate/update policies), ``decode_placement`` (constraints,
affinities, spreads) and ``decode_services`` (services and their checks).
"""

from __future__ import annotations

from dataclasses import dataclass

from corral import structs
from corral.jobspec.decode_blocks import (
    decode_migrate,
    decode_network,
    decode_reschedule,
    decode_resources,
    decode_restart,
    decode_update,
)
from corral.jobspec.decode_body import Body, Decoder, set_field, update_map
from corral.jobspec.decode_placement import decode_affinities, decode_constraints, decode_spreads
from corral.jobspec.decode_services import decode_services
from corral.jobspec.errors import Key, Problem, item_label
from corral.jobspec.hcl import Block
from corral.proto import pb


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
    dec = Decoder()
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


def _job(dec: Decoder, block: Block) -> pb.Job:
    job = pb.Job()
    if len(block.labels) > 1:
        dec.add(
            (), 'a job block has one label, its ID: job "<id>" { ... }', (block.line, block.col)
        )
    job.id = block.labels[0] if block.labels else ""
    dec.job_id = job.id
    body = Body(dec, block, ())
    set_field(job, "name", body.string("name"))
    set_field(job, "region", body.string("region"))
    set_field(job, "namespace", body.string("namespace"))
    set_field(job, "type", body.string("type"))
    priority = body.integer("priority")
    if priority is not None:
        if priority == 0:  # 0 would silently become the default 50
            body.problem("priority", "must be between 1 and 100, got 0")
        job.priority = priority
    dcs = body.strings("datacenters")
    if dcs is not None:
        job.datacenters.extend(dcs)
    set_field(job, "all_at_once", body.boolean("all_at_once"))
    update_map(job.meta, body.string_map("meta"))
    decode_constraints(body, job.constraints)
    decode_affinities(body, job.affinities)
    decode_spreads(body, job.spreads)
    body.gate("update")
    upd = body.single("update")
    if upd is not None:
        decode_update(Body(dec, upd, ("update",)), job.update)
    job_type = job.type or structs.JOB_TYPE_SERVICE
    for i, g in enumerate(body.take("group")):
        _group(dec, body, g, _label(body, "group", i), job_type, job.task_groups.add())
    body.finish()
    return job


def _label(parent: Body, kind: str, index: int) -> str:
    """The where-label of the index-th ``kind`` block of ``parent`` (see item_label)."""
    names = [b.labels[0] if b.labels else "" for b in parent.blocks.get(kind, [])]
    label: str = item_label(kind, names, index)
    return label


def _group(
    dec: Decoder, parent: Body, block: Block, label: str, job_type: str, group: pb.TaskGroup
) -> None:
    group.name = parent.label(block, "name")
    where = (label,)
    body = Body(dec, block, where)
    count = body.integer("count")
    group.count = 1 if count is None else count
    for i, net in enumerate(body.take("network")):
        if i == 1:
            dec.add(
                where + ("network",),
                f"{body.prefix}only one network block is allowed per group",
                (net.line, net.col),
            )
        decode_network(dec, where, net, i, group.networks.add())
    restart = structs.default_restart_policy(job_type)
    rblock = body.single("restart")
    if rblock is not None:
        decode_restart(Body(dec, rblock, where + ("restart",)), restart)
        group.restart_policy.CopyFrom(restart)
    body.gate("reschedule")
    resched = body.single("reschedule")
    if resched is not None:
        policy = structs.default_reschedule_policy(job_type)
        decode_reschedule(Body(dec, resched, where + ("reschedule",)), policy)
        group.reschedule_policy.CopyFrom(policy)
    body.gate("migrate")
    mig = body.single("migrate")
    if mig is not None:
        strategy = structs.default_migrate_strategy()
        decode_migrate(Body(dec, mig, where + ("migrate",)), strategy)
        group.migrate.CopyFrom(strategy)
    body.gate("update")
    upd = body.single("update")
    if upd is not None:
        decode_update(Body(dec, upd, where + ("update",)), group.update)
    update_map(group.meta, body.string_map("meta"))
    decode_constraints(body, group.constraints)
    decode_affinities(body, group.affinities)
    decode_spreads(body, group.spreads)
    set_field(group, "shutdown_delay", body.duration("shutdown_delay"))
    decode_services(body, group.services)
    for i, t in enumerate(body.take("task")):
        _task(dec, body, t, _label(body, "task", i), restart, group.tasks.add())
    body.finish()


def _task(
    dec: Decoder,
    parent: Body,
    block: Block,
    label: str,
    group_restart: pb.RestartPolicy,
    task: pb.Task,
) -> None:
    task.name = parent.label(block, "name")
    where = parent.where + (label,)
    body = Body(dec, block, where)
    set_field(task, "driver", body.string("driver"))
    set_field(task, "user", body.string("user"))
    config = body.free("config")
    if config is not None:
        task.config.update(config)
    update_map(task.env, body.string_map("env"))
    res = body.single("resources")
    if res is not None:
        decode_resources(Body(dec, res, where + ("resources",)), task.resources)
    update_map(task.meta, body.string_map("meta"))
    decode_constraints(body, task.constraints)
    decode_affinities(body, task.affinities)
    set_field(task, "kill_timeout", body.duration("kill_timeout"))
    set_field(task, "kill_signal", body.string("kill_signal"))
    set_field(task, "shutdown_delay", body.duration("shutdown_delay"))
    set_field(task, "leader", body.boolean("leader"))
    rblock = body.single("restart")
    if rblock is not None:
        restart = pb.RestartPolicy()
        restart.CopyFrom(group_restart)
        decode_restart(Body(dec, rblock, where + ("restart",)), restart)
        task.restart_policy.CopyFrom(restart)
    decode_services(body, task.services)
    body.finish()
