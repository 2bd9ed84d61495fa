"""Every problem of a ``pb.Job`` at once, in words a job author can act on.

Pure (no I/O), and it works on any job: one read from HCL, from Nomad JSON, or built
by the API from a gRPC request. Zero values that mean "not set" before
``structs.canonicalize`` (type "", priority 0) are accepted, so a job can be checked
before or after canonicalization. The not-yet-supported gate is applied here too, but
leniently: a block that equals what ``canonicalize`` itself fills in (migrate,
reschedule, a group's merged update) is not the author's doing and is not reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from corral import structs
from corral.api.jsonmap import struct_to_python
from corral.jobspec.duration import format_duration
from corral.jobspec.errors import Key, Problem, item_label, not_supported, where_prefix
from corral.jobspec.support import CONSTRAINT_OPERATORS, JOB_TYPES, KNOWN_DRIVERS, gated
from corral.proto import pb

_SECOND = structs.SECOND
_RESTART_MIN_INTERVAL = 5 * _SECOND
_CHECK_MIN_INTERVAL = _SECOND
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class _Problems:
    """Collects problems; ``add`` prefixes the location so each line stands alone."""

    def __init__(self, job_id: str) -> None:
        self.items: list[Problem] = []
        self.job_id = job_id

    def add(self, where: Key, text: str, field: Key = ()) -> None:
        self.items.append(Problem(where + field, where_prefix(where) + text))

    def gate(self, name: str, where: Key) -> None:
        if gated(name):
            self.items.append(not_supported(name, where, self.job_id))

    def negative(self, where: Key, name: str, value: int, duration: bool = False) -> None:
        if value < 0:
            shown = format_duration(value) if duration else str(value)
            self.add(where, f"{name} must not be negative, got {shown}", tuple(name.split(".")))


def validate(job: pb.Job) -> list[str]:
    """Every problem of the job as one readable sentence each; [] when it can run."""
    return [p.text for p in check(job)]


def check(job: pb.Job) -> list[Problem]:
    """``validate`` with each problem's location key (to place it in a file)."""
    out = _Problems(job.id)
    _job(out, job)
    return out.items


# -------------------------------------------------------------------- job


def _job(out: _Problems, job: pb.Job) -> None:
    if not job.id:
        out.add((), "missing job ID")
    elif " " in job.id or "\x00" in job.id:
        out.add((), f'job ID "{job.id}" must not contain spaces')
    if job.type and job.type not in JOB_TYPES:
        out.add((), f'unknown job type "{job.type}" (expected service, batch or system)', ("type",))
    if job.priority and not 1 <= job.priority <= 100:
        out.add((), f"priority must be between 1 and 100, got {job.priority}", ("priority",))
    if any(not dc for dc in job.datacenters):
        out.add((), "datacenters must not contain an empty name", ("datacenters",))
    job_type = job.type or structs.JOB_TYPE_SERVICE
    _placement(out, (), job.constraints, job.affinities, job.spreads)
    if _nonzero(job.update):
        out.gate("update", ())
        if job_type == structs.JOB_TYPE_BATCH:
            out.add((), 'job type "batch" does not allow an update block', ("update",))
        _update(out, ("update",), job.update)
    if not job.task_groups:
        out.add((), "no task groups: a job needs at least one group")
    total = sum(max(g.count, 0) for g in job.task_groups)
    if total > structs.JOB_MAX_COUNT:
        out.add(
            (), f"total count of all groups is {total}, over the limit of {structs.JOB_MAX_COUNT}"
        )
    group_names = [g.name for g in job.task_groups]
    for i, group in enumerate(job.task_groups):
        where = (item_label("group", group_names, i),)
        if group.name and group.name in group_names[:i]:
            # keyed at the second group (for its position), worded with its name
            out.items.append(Problem(where, f'duplicate group name "{group.name}"'))
        _group(out, job, job_type, group, where)


def _group(out: _Problems, job: pb.Job, job_type: str, group: pb.TaskGroup, where: Key) -> None:
    if not group.name:
        out.add(where, "missing group name")
    if group.count < 0:
        out.add(where, f"count must not be negative, got {group.count}", ("count",))
    if job_type == structs.JOB_TYPE_SYSTEM and group.count > 1:
        out.add(
            where, f"count cannot be more than 1 in a system job, got {group.count}", ("count",)
        )
    labels = _ports(out, where, group)
    _placement(out, where, group.constraints, group.affinities, group.spreads)
    if group.HasField("restart_policy"):
        _restart(out, where, group.restart_policy)
    if group.HasField("reschedule_policy") and _nonzero(group.reschedule_policy):
        if group.reschedule_policy != structs.default_reschedule_policy(job_type):
            out.gate("reschedule", where)
        _reschedule(out, where + ("reschedule",), group.reschedule_policy)
    if group.HasField("migrate") and _nonzero(group.migrate):
        if group.migrate != structs.default_migrate_strategy():
            out.gate("migrate", where)
        _migrate(out, where + ("migrate",), group.migrate)
    if group.HasField("update") and _nonzero(group.update):
        if group.update != _merged_update(job):
            out.gate("update", where)
        if job_type == structs.JOB_TYPE_BATCH and not _nonzero(job.update):
            # Nomad: 'Job type "batch" does not allow update block'.
            out.add(where, 'job type "batch" does not allow an update block', ("update",))
        _update(out, where + ("update",), group.update)
    out.negative(where, "shutdown_delay", group.shutdown_delay, duration=True)
    _services(out, where, group.services, labels)
    if not group.tasks:
        out.add(where, "no tasks: a group needs at least one task")
    names = [t.name for t in group.tasks]
    leaders = 0
    for i, task in enumerate(group.tasks):
        twhere = where + (item_label("task", names, i),)
        if task.name and task.name in names[:i]:
            out.items.append(
                Problem(twhere, f'{where_prefix(where)}duplicate task name "{task.name}"')
            )
        leaders += task.leader
        _task(out, twhere, task, labels)
    if leaders > 1:
        out.add(where, f"only one task may be the leader, {leaders} are")


def _merged_update(job: pb.Job) -> pb.UpdateStrategy:
    """What ``canonicalize`` gives a group that has no update block of its own."""
    merged = structs.default_update_strategy()
    for field, value in job.update.ListFields():
        setattr(merged, field.name, value)
    return merged


def _ports(out: _Problems, where: Key, group: pb.TaskGroup) -> set[str]:
    """Check the group's network; return its port labels (for config.ports, services)."""
    if len(group.networks) > 1:
        out.add(where, "only one network block is allowed per group", ("network",))
    labels: set[str] = set()
    statics: dict[int, str] = {}
    for n, net in enumerate(group.networks):
        nwhere = where + (("network",) if n == 0 else (f"network #{n + 1}",))
        if net.mode not in ("", "host"):
            out.add(nwhere, f'mode "{net.mode}" is not supported yet (only "host")', ("mode",))
        out.negative(nwhere, "mbits", net.mbits)
        for static, port in [(True, p) for p in net.reserved_ports] + [
            (False, p) for p in net.dynamic_ports
        ]:
            pwhere = nwhere + (f'port "{port.label}"',)
            if not port.label:
                out.add(nwhere, 'a port needs a label, like port "http" { ... }')
            elif port.label in labels:
                out.add(nwhere, f'duplicate port label "{port.label}"')
            labels.add(port.label)
            if static:
                if not 1 <= port.value <= 65535:
                    out.add(
                        pwhere, f"static port {port.value} is out of range 1..65535", ("static",)
                    )
                elif port.value in statics:
                    out.add(
                        pwhere,
                        f'static port {port.value} is already used by port "{statics[port.value]}"',
                        ("static",),
                    )
                else:
                    statics[port.value] = port.label
            if not -1 <= port.to <= 65535:
                out.add(pwhere, f"to = {port.to} is out of range -1..65535", ("to",))
    return labels


def _task(out: _Problems, where: Key, task: pb.Task, labels: set[str]) -> None:
    if not task.name:
        out.add(where, "missing task name")
    elif "/" in task.name:
        out.add(where, f'task name "{task.name}" must not contain "/"')
    if not task.driver:
        out.add(where, "missing driver (docker, mock or raw_exec)", ("driver",))
    elif task.driver not in KNOWN_DRIVERS:
        known = ", ".join(sorted(KNOWN_DRIVERS))
        out.add(where, f'unknown driver "{task.driver}" (known: {known})', ("driver",))
    config: dict[str, Any] = struct_to_python(task.config) if task.HasField("config") else {}
    if task.driver == "docker":
        _docker(out, where, config, labels)
    elif task.driver == "raw_exec":
        _raw_exec(out, where, config)
    res = task.resources
    for name, value in (
        ("resources.cpu", res.cpu),
        ("resources.cores", res.cores),
        ("resources.memory", res.memory_mb),
        ("resources.memory_max", res.memory_max_mb),
    ):
        out.negative(where, name, value)
    if res.cpu > 0 and res.cores > 0:
        out.add(where, "resources: set cpu or cores, not both", ("resources",))
    if res.memory_max_mb > 0 and res.memory_max_mb < res.memory_mb:
        out.add(
            where,
            f"resources.memory_max ({res.memory_max_mb}) must not be less than"
            f" resources.memory ({res.memory_mb})",
            ("resources",),
        )
    if res.networks:
        out.add(
            where,
            "resources: a network block inside resources is deprecated in Nomad and not"
            " supported: put it in the group",
            ("resources",),
        )
    out.negative(where, "kill_timeout", task.kill_timeout, duration=True)
    out.negative(where, "shutdown_delay", task.shutdown_delay, duration=True)
    if task.HasField("restart_policy"):
        _restart(out, where, task.restart_policy)
    _placement(out, where, task.constraints, task.affinities, ())
    _services(out, where, task.services, labels)


def _docker(out: _Problems, where: Key, config: dict[str, Any], labels: set[str]) -> None:
    image = config.get("image")
    if image is None or image == "":
        out.add(where, "missing config.image for the docker driver", ("config",))
    elif not isinstance(image, str):
        out.add(where, "config.image must be a string", ("config",))
    _string_field(out, where, config, "command")
    _string_list(out, where, config, "args")
    ports = config.get("ports")
    if ports is None:
        return
    if not _is_string_list(ports):
        out.add(where, 'config.ports must be a list of port labels, like ["http"]', ("config",))
        return
    for label in ports:
        if label not in labels:
            out.add(
                where,
                f'config.ports: port "{label}" is not defined in the group\'s network',
                ("config",),
            )


def _raw_exec(out: _Problems, where: Key, config: dict[str, Any]) -> None:
    command = config.get("command")
    if command is None or command == "":
        out.add(where, "missing config.command for the raw_exec driver", ("config",))
    else:
        _string_field(out, where, config, "command")
    _string_list(out, where, config, "args")


def _string_field(out: _Problems, where: Key, config: dict[str, Any], name: str) -> None:
    if name in config and not isinstance(config[name], str):
        out.add(where, f"config.{name} must be a string", ("config",))


def _string_list(out: _Problems, where: Key, config: dict[str, Any], name: str) -> None:
    if name in config and not _is_string_list(config[name]):
        out.add(where, f"config.{name} must be a list of strings", ("config",))


def _is_string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# -------------------------------------------------------------------- policies


def _restart(out: _Problems, where: Key, r: pb.RestartPolicy) -> None:
    rwhere = where + ("restart",)
    if r.mode not in ("fail", "delay"):
        out.add(rwhere, f'mode must be "fail" or "delay", got "{r.mode}"', ("mode",))
    out.negative(rwhere, "attempts", r.attempts)
    out.negative(rwhere, "delay", r.delay, duration=True)
    if r.attempts == 0 and r.mode == "delay":
        out.add(
            rwhere, 'mode "delay" with 0 attempts is ambiguous: use mode "fail", or attempts > 0'
        )
    if r.interval < _RESTART_MIN_INTERVAL:
        out.add(
            rwhere,
            f"interval must be at least {format_duration(_RESTART_MIN_INTERVAL)},"
            f" got {format_duration(r.interval)}",
            ("interval",),
        )
    elif r.attempts > 0 and r.attempts * r.delay > r.interval:
        out.add(
            rwhere,
            f"cannot restart {r.attempts} times in an interval of {format_duration(r.interval)}"
            f" with a delay of {format_duration(r.delay)}",
        )


def _reschedule(out: _Problems, where: Key, r: pb.ReschedulePolicy) -> None:
    out.negative(where, "attempts", r.attempts)
    for name in ("interval", "delay", "max_delay"):
        out.negative(where, name, getattr(r, name), duration=True)
    if r.delay_function not in ("", "constant", "exponential", "fibonacci"):
        out.add(
            where,
            f'delay_function must be constant, exponential or fibonacci, got "{r.delay_function}"',
            ("delay_function",),
        )


def _migrate(out: _Problems, where: Key, m: pb.MigrateStrategy) -> None:
    out.negative(where, "max_parallel", m.max_parallel)
    if m.health_check not in ("", "checks", "task_states"):
        out.add(
            where,
            f'health_check must be checks or task_states, got "{m.health_check}"',
            ("health_check",),
        )
    _deadlines(out, where, m.min_healthy_time, m.healthy_deadline, 0)


def _update(out: _Problems, where: Key, u: pb.UpdateStrategy) -> None:
    out.negative(where, "max_parallel", u.max_parallel)
    out.negative(where, "canary", u.canary)
    out.negative(where, "stagger", u.stagger, duration=True)
    if u.health_check not in ("", "checks", "task_states", "manual"):
        out.add(
            where,
            f'health_check must be checks, task_states or manual, got "{u.health_check}"',
            ("health_check",),
        )
    if u.auto_promote and u.canary == 0:
        out.add(where, "auto_promote needs canary > 0", ("auto_promote",))
    _deadlines(out, where, u.min_healthy_time, u.healthy_deadline, u.progress_deadline)


def _deadlines(out: _Problems, where: Key, min_healthy: int, healthy: int, progress: int) -> None:
    out.negative(where, "min_healthy_time", min_healthy, duration=True)
    out.negative(where, "healthy_deadline", healthy, duration=True)
    out.negative(where, "progress_deadline", progress, duration=True)
    if healthy > 0 and min_healthy >= healthy:
        out.add(
            where,
            f"min_healthy_time ({format_duration(min_healthy)}) must be less than"
            f" healthy_deadline ({format_duration(healthy)})",
        )
    if progress > 0 and healthy >= progress:
        out.add(
            where,
            f"healthy_deadline ({format_duration(healthy)}) must be less than"
            f" progress_deadline ({format_duration(progress)})",
        )


# -------------------------------------------------------------------- placement


def _placement(
    out: _Problems,
    where: Key,
    constraints: Iterable[pb.Constraint],
    affinities: Iterable[pb.Affinity],
    spreads: Iterable[pb.Spread],
) -> None:
    constraints, affinities, spreads = list(constraints), list(affinities), list(spreads)
    if constraints:
        out.gate("constraint", where)
    for i, c in enumerate(constraints):
        _operator(out, where + (f"constraint #{i + 1}",), c.l_target, c.operand, c.r_target)
    if affinities:
        out.gate("affinity", where)
    for i, a in enumerate(affinities):
        awhere = where + (f"affinity #{i + 1}",)
        if a.operand in ("distinct_hosts", "distinct_property"):
            out.add(awhere, f'operator "{a.operand}" is for constraints, not affinities')
        else:
            _operator(out, awhere, a.l_target, a.operand, a.r_target)
        if a.weight == 0 or not -100 <= a.weight <= 100:
            out.add(awhere, f"weight must be between -100 and 100 and not 0, got {a.weight}")
    if spreads:
        out.gate("spread", where)
    for i, s in enumerate(spreads):
        swhere = where + (f"spread #{i + 1}",)
        if not s.attribute:
            out.add(swhere, "missing attribute")
        if not 0 < s.weight <= 100:
            out.add(swhere, f"weight must be between 1 and 100, got {s.weight}")
        total = 0
        values: set[str] = set()
        for t in s.spread_target:
            if t.value in values:
                out.add(swhere, f'duplicate target "{t.value}"')
            values.add(t.value)
            if not 0 <= t.percent <= 100:
                out.add(
                    swhere,
                    f'target "{t.value}": percent must be between 0 and 100, got {t.percent}',
                )
            total += t.percent
        if total > 100:
            out.add(swhere, f"target percentages add up to {total}, over 100")


def _operator(out: _Problems, where: Key, attribute: str, operand: str, value: str) -> None:
    if not operand:
        out.add(where, "missing operator")
    elif operand not in CONSTRAINT_OPERATORS:
        out.add(where, f'unknown operator "{operand}"')
    if not attribute and operand != "distinct_hosts":
        out.add(where, "missing attribute")
    if not value and operand not in ("distinct_hosts", "distinct_property", "is_set", "is_not_set"):
        out.add(where, "missing value")
    if operand == "regexp" and value:
        try:
            re.compile(value)
        except re.error as e:
            out.add(where, f'invalid regexp "{value}": {e}')


# -------------------------------------------------------------------- services


def _services(out: _Problems, where: Key, services: Iterable[pb.Service], labels: set[str]) -> None:
    services = list(services)
    if services:
        out.gate("service", where)
    service_names = [s.name for s in services]
    for i, svc in enumerate(services):
        swhere = where + (item_label("service", service_names, i),)
        if not svc.name:
            out.add(swhere, "service has no name: set name (a DNS label)", ("name",))
        elif "${" not in svc.name and not _DNS_LABEL.fullmatch(svc.name):
            out.add(
                swhere,
                f'name "{svc.name}" must be a valid DNS label (letters, digits and dashes,'
                " at most 63)",
                ("name",),
            )
        if svc.provider not in ("", "nomad"):
            out.add(
                swhere, f'provider "{svc.provider}" is not supported (only "nomad")', ("provider",)
            )
        _port_ref(out, swhere, svc.port_label, labels)
        if svc.checks:
            out.gate("check", swhere)
        check_names = [c.name for c in svc.checks]
        for j, chk in enumerate(svc.checks):
            cwhere = swhere + (item_label("check", check_names, j),)
            _check(out, cwhere, chk, svc.port_label, labels)


def _check(
    out: _Problems, where: Key, chk: pb.ServiceCheck, service_port: str, labels: set[str]
) -> None:
    if not chk.type:
        out.add(where, "missing type (http or tcp)", ("type",))
    elif chk.type not in ("http", "tcp"):
        out.add(where, f'type "{chk.type}" is not supported (http or tcp)', ("type",))
    if chk.type == "http" and not chk.path:
        out.add(where, "an http check needs a path", ("path",))
    if chk.interval < _CHECK_MIN_INTERVAL:
        out.add(
            where,
            f"interval must be at least 1s, got {format_duration(chk.interval)}",
            ("interval",),
        )
    if chk.timeout <= 0:
        out.add(
            where, f"timeout must be positive, got {format_duration(chk.timeout)}", ("timeout",)
        )
    _port_ref(out, where, chk.port_label, labels)
    if chk.type in ("http", "tcp") and not chk.port_label and not service_port:
        out.add(where, f"a {chk.type} check needs a port: set port on the check or on its service")
    if _nonzero(chk.check_restart):
        out.gate("check_restart", where)
        out.negative(where, "check_restart.limit", chk.check_restart.limit)
        out.negative(where, "check_restart.grace", chk.check_restart.grace, duration=True)


def _port_ref(out: _Problems, where: Key, label: str, labels: set[str]) -> None:
    if label and not label.isdigit() and label not in labels:
        out.add(where, f'port "{label}" is not defined in the group\'s network', ("port",))


def _nonzero(msg: Any) -> bool:
    """Any field with a non-zero value (an explicitly set optional 0 counts as zero:
    Nomad's JSON prints all-zero blocks for what a job file never set)."""
    return any(bool(v) for _, v in msg.ListFields())
