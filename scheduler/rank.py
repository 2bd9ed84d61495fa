"""Resources and ranking: what is free on a node, does a group fit, how good is it.

``NodeUsage`` is the scheduler's compact index of a node: totals and what its live
allocations use (including the placements of the plan being built), so that the
hot loop does integer arithmetic on plain attributes, not message traversal. The
plan applier uses the same class to re-check a plan against the latest state.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from corral import structs
from corral.proto import pb

# Nomad's binpack score is 20 - (10^freeCpu + 10^freeMem), clamped to [0, 18] and
# normalized by this maximum.
BINPACK_MAX_FIT_SCORE = 18.0

DIM_CPU = "cpu"
DIM_MEMORY = "memory"
DIM_RESERVED_PORT = "network: reserved port collision"
DIM_DYNAMIC_PORT = "network: dynamic port selection failed"


@dataclass(frozen=True, slots=True)
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


def alloc_cpu_mem(alloc: pb.Allocation) -> tuple[int, int]:
    """CPU and memory an allocation holds (the sum over its tasks)."""
    cpu = 0
    mem = 0
    tasks = alloc.allocated_resources.tasks
    for name in tasks:  # faster than .values() on a protobuf map
        tr = tasks[name]
        cpu += int(tr.cpu.cpu_shares)
        mem += int(tr.memory.memory_mb)
    return cpu, mem


def footprint(alloc: pb.Allocation) -> tuple[int, int, tuple[int, ...]]:
    """(cpu MHz, memory MB, host ports) of an allocation: the sum over its tasks.

    Pure on purpose: the state store remembers footprints of the allocations it
    holds (per store, see ``StateStore``); a process-wide memo keyed by IDs would
    hand one store's answer to another store that reuses an ID."""
    ar = alloc.allocated_resources
    tasks = ar.tasks
    cpu = mem = 0
    for name in tasks:  # faster than .values() on a protobuf map
        tr = tasks[name]
        cpu += tr.cpu.cpu_shares
        mem += tr.memory.memory_mb
    return (int(cpu), int(mem), tuple(p.value for p in ar.shared.ports))


class NodeUsage:
    """Totals and current use of one node. Mutable: the plan being built adds to it."""

    __slots__ = (
        "node",
        "node_id",
        "cpu_total",
        "mem_total",
        "cpu_used",
        "mem_used",
        "ports_used",
        "dyn_lo",
        "dyn_hi",
        "dyn_used",
        "_host_ip",
    )

    def __init__(
        self,
        node: pb.Node,
        cpu_total: int,
        mem_total: int,
        cpu_used: int = 0,
        mem_used: int = 0,
        ports_used: set[int] | None = None,
    ) -> None:
        self.node = node
        self.node_id = node.id
        self.cpu_total = cpu_total
        self.mem_total = mem_total
        self.cpu_used = cpu_used
        self.mem_used = mem_used
        res = node.node_resources
        self.dyn_lo = res.min_dynamic_port or structs.MIN_DYNAMIC_PORT
        self.dyn_hi = res.max_dynamic_port or structs.MAX_DYNAMIC_PORT
        self.ports_used: set[int] = set()
        self.dyn_used = 0
        self._host_ip: str | None = None
        for port in ports_used or ():
            self._take_port(port)

    @classmethod
    def from_totals(
        cls,
        node: pb.Node,
        totals: tuple[int, int, frozenset[int]],
        minus: Iterable[pb.Allocation] = (),
    ) -> NodeUsage:
        """The node's usage from the state store's running totals, minus the live
        allocations in ``minus`` (those the plan stops). O(ports), not O(allocations)."""
        res = node.node_resources
        cpu, mem, ports = totals
        usage = cls(node, int(res.cpu.cpu_shares), int(res.memory.memory_mb), cpu, mem, set(ports))
        for alloc in minus:
            if not structs.is_alloc_terminal(alloc):
                usage.remove(alloc)
        return usage

    @classmethod
    def of(
        cls, node: pb.Node, allocs: list[pb.Allocation], skip: set[str] | None = None
    ) -> NodeUsage:
        """The node's usage by its live allocations (minus those in ``skip``).

        Runs for every node a placement looks at, over every allocation there: the
        loop reads each message once and keeps the sums in locals."""
        res = node.node_resources
        usage = cls(node, int(res.cpu.cpu_shares), int(res.memory.memory_mb))
        # Counted until the client says it ended (``structs.holds_resources``).
        terminal = structs.ALLOC_TERMINAL_CLIENT
        used = usage.ports_used
        lo, hi = usage.dyn_lo, usage.dyn_hi
        cpu = mem = dyn = 0
        for alloc in allocs:
            if alloc.client_status in terminal:
                continue
            if skip and alloc.id in skip:
                continue
            a_cpu, a_mem, ports = footprint(alloc)
            cpu += a_cpu
            mem += a_mem
            for value in ports:
                if value not in used:
                    used.add(value)
                    if lo <= value <= hi:
                        dyn += 1
        usage.cpu_used = int(cpu)
        usage.mem_used = int(mem)
        usage.dyn_used = dyn
        return usage

    # ------------------------------------------------------------ bookkeeping
    def _take_port(self, port: int) -> None:
        if port not in self.ports_used:
            self.ports_used.add(port)
            if self.dyn_lo <= port <= self.dyn_hi:
                self.dyn_used += 1

    def _free_port(self, port: int) -> None:
        if port in self.ports_used:
            self.ports_used.discard(port)
            if self.dyn_lo <= port <= self.dyn_hi:
                self.dyn_used -= 1

    def add(self, alloc: pb.Allocation) -> None:
        cpu, mem = alloc_cpu_mem(alloc)
        self.cpu_used += cpu
        self.mem_used += mem
        for port in alloc.allocated_resources.shared.ports:
            self._take_port(port.value)

    def remove(self, alloc: pb.Allocation) -> None:
        cpu, mem = alloc_cpu_mem(alloc)
        self.cpu_used -= cpu
        self.mem_used -= mem
        for port in alloc.allocated_resources.shared.ports:
            self._free_port(port.value)

    def add_ask(self, ask: GroupAsk, ports: list[int]) -> None:
        """Account for a placement made by this plan (no message traversal)."""
        self.cpu_used += ask.cpu
        self.mem_used += ask.memory_mb
        for port in ports:
            self._take_port(port)

    # ------------------------------------------------------------ fit
    def exhausted_dimension(self, ask: GroupAsk) -> str:
        """The first resource that does not fit, or "" when the ask fits."""
        if self.cpu_used + ask.cpu > self.cpu_total:
            return DIM_CPU
        if self.mem_used + ask.memory_mb > self.mem_total:
            return DIM_MEMORY
        return self.exhausted_ports(ask)

    def exhausted_ports(self, ask: GroupAsk) -> str:
        used = self.ports_used
        for _, value, _ in ask.static_ports:
            if value in used:
                return DIM_RESERVED_PORT
        if ask.dynamic_ports:
            free = (self.dyn_hi - self.dyn_lo + 1) - self.dyn_used
            if free < len(ask.dynamic_ports):
                return DIM_DYNAMIC_PORT
        return ""

    def port_range(self) -> tuple[int, int]:
        return self.dyn_lo, self.dyn_hi

    # ------------------------------------------------------------ scores
    def binpack_score(self, ask: GroupAsk) -> float:
        """Nomad's binpack: 20 - (10^freeCpu + 10^freeMem), clamped to [0, 18], / 18.
        Fuller nodes score higher, so allocations pack onto fewer nodes."""
        return fit_score(self, ask.cpu, ask.memory_mb, spread=False)

    def spread_score(self, ask: GroupAsk) -> float:
        """The mirror of binpack (worst fit): emptier nodes score higher."""
        return fit_score(self, ask.cpu, ask.memory_mb, spread=True)

    # ------------------------------------------------------------ ports
    @property
    def host_ip(self) -> str:
        if self._host_ip is None:
            self._host_ip = self.node.attributes.get("unique.network.ip-address", "127.0.0.1")
        return self._host_ip

    def pick_ports(self, ask: GroupAsk, rng: random.Random) -> list[int]:
        """Host ports for the ask: static ports as asked, dynamic ones at random among
        the free ones of the node's range, never one twice on the node."""
        out = [value for _, value, _ in ask.static_ports]
        if not ask.dynamic_ports:
            return out
        taken = self.ports_used
        lo, hi = self.dyn_lo, self.dyn_hi
        chosen: set[int] = set(out)
        for _ in ask.dynamic_ports:
            port = 0
            for _ in range(64):
                candidate = lo + int(rng.random() * (hi - lo + 1))
                if candidate not in taken and candidate not in chosen:
                    port = candidate
                    break
            if not port:  # a crowded range: scan
                port = next(p for p in range(lo, hi + 1) if p not in taken and p not in chosen)
            chosen.add(port)
            out.append(port)
        return out

    def assign_ports(self, ask: GroupAsk, rng: random.Random) -> list[pb.AllocatedPortMapping]:
        """``pick_ports`` as port mappings (label, host port, container port, host IP)."""
        values = self.pick_ports(ask, rng)
        labels = [(label, to) for label, _, to in ask.static_ports] + list(ask.dynamic_ports)
        ip = self.host_ip
        return [
            pb.AllocatedPortMapping(label=label, value=value, to=to, host_ip=ip)
            for (label, to), value in zip(labels, values, strict=True)
        ]


def fit_score(usage: NodeUsage, cpu: int, mem: int, spread: bool) -> float:
    """Binpack (best fit) or, with ``spread``, worst fit, normalized to [0, 1]."""
    if usage.cpu_total <= 0 or usage.mem_total <= 0:
        return 0.0
    free_cpu = 1.0 - (usage.cpu_used + cpu) / usage.cpu_total
    free_mem = 1.0 - (usage.mem_used + mem) / usage.mem_total
    total: float = 10.0**free_cpu + 10.0**free_mem
    score = total - 2.0 if spread else 20.0 - total
    if score < 0.0:
        return 0.0
    if score > BINPACK_MAX_FIT_SCORE:
        return 1.0
    return score / BINPACK_MAX_FIT_SCORE
