"""Property counts for the placement stack: ``distinct_property`` and ``spread``.

A ``PropertySet`` (Nomad's propertySet) counts the job's (or one group's)
allocations per value of a node attribute, kept current as the plan stops and
places allocations; ``SpreadInfo`` pairs one with a ``spread`` block's weight and
target shares, and ``even_spread_boost`` is the score of a spread without targets.

They live apart from ``stack.py`` because they are the placement stack's
bookkeeping rather than its loop: they know nodes and counts, never the placer, so
``stack.py`` imports them and nothing here imports back.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.proto import pb

from .constraints import Resolver, resolver

# Spread targets' implicit bucket for every value not named.
IMPLICIT_TARGET = "*"


class PropertySet:
    """How many of the job's (or group's) allocations use each value of a node
    property, counting the plan's own stops and placements (Nomad's propertySet)."""

    __slots__ = ("attribute", "group", "targets", "counts", "_resolve", "_values", "_range")

    def __init__(self, attribute: str, group: str, targets: frozenset[str] = frozenset()):
        self.attribute = attribute
        self.group = group  # "" = every group of the job
        self.targets = targets
        self.counts: dict[str, int] = {}
        self._resolve: Resolver = resolver(attribute)
        self._values: dict[str, tuple[str, bool]] = {}
        self._range: tuple[int, int] | None = None

    def count_range(self) -> tuple[int, int]:
        """(fewest, most) allocations over the values in use; cached until a change."""
        if self._range is None:
            values = self.counts.values()
            self._range = (min(values), max(values)) if values else (0, 0)
        return self._range

    def value_of(self, node: pb.Node) -> tuple[str, bool]:
        """The node's value, folded into "*" when spread targets do not name it."""
        hit = self._values.get(node.id)
        if hit is None:
            value, found = self._resolve(node)
            if found and self.targets and value not in self.targets:
                value = IMPLICIT_TARGET
            hit = self._values[node.id] = (value, found)
        return hit

    def update(self, group: str, node: pb.Node | None, delta: int) -> None:
        if node is None or (self.group and group != self.group):
            return
        value, found = self.value_of(node)
        if not found:
            return
        n = self.counts.get(value, 0) + delta
        if n > 0:
            self.counts[value] = n
        else:
            self.counts.pop(value, None)
        self._range = None


@dataclass(slots=True)
class SpreadInfo:
    pset: PropertySet
    weight: int
    desired: dict[str, float]  # empty: spread evenly over the values seen


def even_spread_boost(pset: PropertySet, value: str) -> float:
    """Nomad's ``evenSpreadScoreBoost``: favour the values with the fewest allocations."""
    if not pset.counts:
        return 0.0
    current = pset.counts.get(value, 0)
    lo, hi = pset.count_range()
    if current != lo:
        return (lo - current) / lo if lo else -1.0
    if lo == hi:
        return -1.0
    if lo == 0:
        return 1.0
    return (hi - lo) / lo
