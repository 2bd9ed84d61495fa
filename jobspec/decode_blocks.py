"""The jobspec decoder's one-of-a-kind blocks of a group or a task.

``resources``, ``network`` (with its ``port`` blocks), and the policies:
``restart``, ``reschedule``, ``migrate`` and ``update``. Each fills the message it is
given from a ``Body``; the job-type defaults a partial policy is merged over are
chosen by the caller (``decode._group``, ``decode._task``), which also gates the
blocks corral does not run yet. Apart from ``decode.py`` so that the job tree reads
as a tree and the field lists of these blocks have a home of their own.
"""

from __future__ import annotations

from corral.jobspec.decode_body import Body, Decoder, set_field
from corral.jobspec.errors import Key
from corral.jobspec.hcl import Block
from corral.proto import pb


def decode_resources(body: Body, res: pb.Resources) -> None:
    set_field(res, "cpu", body.integer("cpu"))
    set_field(res, "cores", body.integer("cores"))
    set_field(res, "memory_mb", body.integer("memory"))
    set_field(res, "memory_max_mb", body.integer("memory_max"))
    for net in body.take("network"):
        body.dec.add(
            body.where + ("network",),
            f"{body.prefix}a network block inside resources is deprecated in Nomad and not"
            " supported: put it in the group",
            (net.line, net.col),
        )
    body.finish()


def decode_network(
    dec: Decoder, group_where: Key, block: Block, index: int, net: pb.NetworkResource
) -> None:
    where = group_where + (("network",) if index == 0 else (f"network #{index + 1}",))
    body = Body(dec, block, where)
    set_field(net, "mode", body.string("mode"))
    set_field(net, "mbits", body.integer("mbits"))
    for pblock in body.take("port"):
        label = body.label(pblock, "label")
        pbody = Body(dec, pblock, where + (f'port "{label}"',))
        port = pb.Port(label=label)
        static = pbody.integer("static")
        set_field(port, "to", pbody.integer("to"))
        set_field(port, "host_network", pbody.string("host_network"))
        pbody.finish()
        if static is not None:
            port.value = static
            net.reserved_ports.append(port)
        else:
            net.dynamic_ports.append(port)
    body.finish()


def decode_restart(body: Body, policy: pb.RestartPolicy) -> None:
    set_field(policy, "attempts", body.integer("attempts"))
    set_field(policy, "interval", body.duration("interval"))
    set_field(policy, "delay", body.duration("delay"))
    set_field(policy, "mode", body.string("mode"))
    body.finish()


def decode_reschedule(body: Body, policy: pb.ReschedulePolicy) -> None:
    set_field(policy, "attempts", body.integer("attempts"))
    set_field(policy, "interval", body.duration("interval"))
    set_field(policy, "delay", body.duration("delay"))
    set_field(policy, "delay_function", body.string("delay_function"))
    set_field(policy, "max_delay", body.duration("max_delay"))
    set_field(policy, "unlimited", body.boolean("unlimited"))
    body.finish()


def decode_migrate(body: Body, strategy: pb.MigrateStrategy) -> None:
    set_field(strategy, "max_parallel", body.integer("max_parallel"))
    set_field(strategy, "health_check", body.string("health_check"))
    set_field(strategy, "min_healthy_time", body.duration("min_healthy_time"))
    set_field(strategy, "healthy_deadline", body.duration("healthy_deadline"))
    body.finish()


def decode_update(body: Body, strategy: pb.UpdateStrategy) -> None:
    strategy.SetInParent()
    set_field(strategy, "stagger", body.duration("stagger"))
    set_field(strategy, "max_parallel", body.integer("max_parallel"))
    set_field(strategy, "health_check", body.string("health_check"))
    set_field(strategy, "min_healthy_time", body.duration("min_healthy_time"))
    set_field(strategy, "healthy_deadline", body.duration("healthy_deadline"))
    set_field(strategy, "progress_deadline", body.duration("progress_deadline"))
    set_field(strategy, "auto_revert", body.boolean("auto_revert"))
    set_field(strategy, "auto_promote", body.boolean("auto_promote"))
    set_field(strategy, "canary", body.integer("canary"))
    body.finish()
