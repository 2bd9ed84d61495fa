"""Resources and ranking: what is free on a node, does a group fit, how good is it.

``NodeUsage`` is the scheduler's compact index of a node: totals and what its live
allocations use (including the placements of the plan being built), so that the
hot loop does arithmetic, not message traversal.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from corral import structs
from corral.proto import pb


@dataclass(frozen=True)
class GroupAsk:
    """What one allocation of a group asks for."""

    cpu: int
    memory_mb: int
    static_ports: tuple[tuple[str, int, int], ...]  # (label, value, to)
    dynamic_ports: tuple[tuple[str, int], ...]  # (label, to)

    @classmethod
    def of(cls, group: pb.TaskGroup) -> GroupAsk:
        cpu = sum(t.resources.cpu for t in group.tasks)
        mem = sum(t.resources.memory_mb for t in group.tasks)
        static: list[tuple[str, int, int]] = []
        dynamic: list[tuple[str, int]] = []
        networks = list(group.networks) + [n for t in group.tasks for n in t.resources.networks]
        for net in networks:
            static.extend((p.label, p.value, p.to) for p in net.reserved_ports)
            dynamic.extend((p.label, p.to) for p in net.dynamic_ports)
        return cls(cpu, mem, tuple(static), tuple(dynamic))


@dataclass
class NodeUsage:
    node: pb.Node
    cpu_total: int
    mem_total: int
    cpu_used: int = 0
    mem_used: int = 0
    ports_used: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, node: pb.Node, allocs: list[pb.Allocation]) -> NodeUsage:
        res = node.node_resources
        usage = cls(node, int(res.cpu.cpu_shares), int(res.memory.memory_mb))
        for alloc in allocs:
            if not structs.is_alloc_terminal(alloc):
                usage.add(alloc)
        return usage

    def add(self, alloc: pb.Allocation) -> None:
        for tr in alloc.allocated_resources.tasks.values():
            self.cpu_used += int(tr.cpu.cpu_shares)
            self.mem_used += int(tr.memory.memory_mb)
        for port in alloc.allocated_resources.shared.ports:
            self.ports_used.add(port.value)

    def remove(self, alloc: pb.Allocation) -> None:
        for tr in alloc.allocated_resources.tasks.values():
            self.cpu_used -= int(tr.cpu.cpu_shares)
            self.mem_used -= int(tr.memory.memory_mb)
        for port in alloc.allocated_resources.shared.ports:
            self.ports_used.discard(port.value)

    def exhausted_dimension(self, ask: GroupAsk) -> str:
        """The first resource that does not fit, or "" when the ask fits."""
        if self.cpu_used + ask.cpu > self.cpu_total:
            return "cpu"
        if self.mem_used + ask.memory_mb > self.mem_total:
            return "memory"
        for _, value, _ in ask.static_ports:
            if value in self.ports_used:
                return "network: reserved port collision"
        if ask.dynamic_ports and self._free_dynamic_count() < len(ask.dynamic_ports):
            return "network: dynamic port selection failed"
        return ""

    def _free_dynamic_count(self) -> int:
        lo, hi = self.port_range()
        used = sum(1 for p in self.ports_used if lo <= p <= hi)
        return (hi - lo + 1) - used

    def port_range(self) -> tuple[int, int]:
        res = self.node.node_resources
        lo = res.min_dynamic_port or structs.MIN_DYNAMIC_PORT
        hi = res.max_dynamic_port or structs.MAX_DYNAMIC_PORT
        return lo, hi

    def binpack_score(self, ask: GroupAsk) -> float:
        """Nomad's binpack: 20 - (10^freeCpu + 10^freeMem), clamped to [0, 18], / 18.
        Fuller nodes score higher, so allocations pack onto fewer nodes."""
        if self.cpu_total <= 0 or self.mem_total <= 0:
            return 0.0
        free_cpu = 1.0 - (self.cpu_used + ask.cpu) / self.cpu_total
        free_mem = 1.0 - (self.mem_used + ask.memory_mb) / self.mem_total
        total = 10.0**free_cpu + 10.0**free_mem
        return min(max(20.0 - total, 0.0), 18.0) / 18.0

    def spread_score(self, ask: GroupAsk) -> float:
        """The mirror of binpack (worst fit): emptier nodes score higher."""
        return 1.0 - self.binpack_score(ask)

    def assign_ports(self, ask: GroupAsk, rng: random.Random) -> list[pb.AllocatedPortMapping]:
        """Static ports as asked, dynamic ones picked at random among the free ones,
        never twice on the node (the plan applier re-checks this)."""
        host_ip = self.node.attributes.get("unique.network.ip-address", "127.0.0.1")
        out: list[pb.AllocatedPortMapping] = []
        taken = set(self.ports_used)
        for label, value, to in ask.static_ports:
            out.append(pb.AllocatedPortMapping(label=label, value=value, to=to, host_ip=host_ip))
            taken.add(value)
        lo, hi = self.port_range()
        for label, to in ask.dynamic_ports:
            port = 0
            for _ in range(64):
                candidate = rng.randint(lo, hi)
                if candidate not in taken:
                    port = candidate
                    break
            if not port:  # a crowded range: scan
                port = next(p for p in range(lo, hi + 1) if p not in taken)
            taken.add(port)
            out.append(pb.AllocatedPortMapping(label=label, value=port, to=to, host_ip=host_ip))
        return out
