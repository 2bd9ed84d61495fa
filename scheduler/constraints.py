"""Constraints and affinities: Nomad's operators over a node's interpolated values.

A constraint compares ``LTarget`` with ``RTarget``; either may be a literal or one of
Nomad's interpolations (``${attr.kernel.name}``, ``${meta.rack}``, ``${node.class}``,
``${node.datacenter}``, ``${node.unique.id}``, ``${node.unique.name}``). An
interpolation that names nothing on the node is "not found", which operators treat
as Nomad does: ``=`` fails, ``!=`` holds, ``is_not_set`` holds.

Each constraint is compiled once per evaluation into a predicate over a node, so the
placement loop never parses a regexp or a version constraint twice. ``distinct_hosts``
and ``distinct_property`` depend on the plan being built, not only on the node: they
are handled by the placement stack, and are always true here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

from corral.proto import pb

DISTINCT_HOSTS = "distinct_hosts"
DISTINCT_PROPERTY = "distinct_property"

# A resolved target: (value, found).
Resolved = tuple[str, bool]
Resolver = Callable[[pb.Node], Resolved]
NodePredicate = Callable[[pb.Node], bool]


# ------------------------------------------------------------------ interpolation


def resolver(target: str) -> Resolver:
    """A function giving ``target``'s value on a node (Nomad's ``resolveTarget``)."""
    if not target.startswith("${"):
        literal = (target, True)
        return lambda _node: literal
    if target == "${node.unique.id}":
        return lambda node: (node.id, True)
    if target == "${node.datacenter}":
        return lambda node: (node.datacenter, True)
    if target == "${node.unique.name}":
        return lambda node: (node.name, True)
    if target == "${node.class}":
        return lambda node: (node.node_class, True)
    for prefix, field in (("${attr.", "attributes"), ("${meta.", "meta")):
        if target.startswith(prefix):
            key = target[len(prefix) :].removesuffix("}")
            return _map_resolver(field, key)
    return lambda _node: ("", False)


def _map_resolver(field: str, key: str) -> Resolver:
    if field == "attributes":

        def attr(node: pb.Node) -> Resolved:
            value = node.attributes.get(key)
            return ("", False) if value is None else (value, True)

        return attr

    def meta(node: pb.Node) -> Resolved:
        value = node.meta.get(key)
        return ("", False) if value is None else (value, True)

    return meta


def resolve(target: str, node: pb.Node) -> Resolved:
    return resolver(target)(node)


# ------------------------------------------------------------------ operators


def check(operand: str, left: Resolved, right: Resolved) -> bool:
    """Nomad's ``checkConstraint``: does ``left operand right`` hold?"""
    lval, lfound = left
    rval, rfound = right
    if operand in (DISTINCT_HOSTS, DISTINCT_PROPERTY):
        return True
    if operand in ("=", "==", "is"):
        return lfound and rfound and lval == rval
    if operand in ("!=", "not"):
        # Nomad compares the resolved strings: a missing attribute is "", so
        # ``${attr.missing} != linux`` holds.
        return lval != rval
    if operand in ("<", "<=", ">", ">="):
        return lfound and rfound and check_order(operand, lval, rval)
    if operand == "is_set":
        return lfound
    if operand == "is_not_set":
        return not lfound
    if operand == "version":
        return lfound and rfound and version_matches(lval, rval, semver=False)
    if operand == "semver":
        return lfound and rfound and version_matches(lval, rval, semver=True)
    if operand == "regexp":
        if not (lfound and rfound):
            return False
        rx = _regexp(rval)
        return rx is not None and rx.search(lval) is not None
    if operand in ("set_contains", "set_contains_all"):
        return lfound and rfound and _set_of(rval) <= _set_of(lval)
    if operand == "set_contains_any":
        return lfound and rfound and bool(_set_of(rval) & _set_of(lval))
    return False


def check_order(operand: str, left: str, right: str) -> bool:
    """Numbers compare as numbers (integers, then floats), anything else lexically,
    as Nomad's ``checkOrder``: ``"10" > "9"`` holds, ``"b" > "a"`` too."""
    lnum = _number(left)
    rnum = _number(right)
    if lnum is not None and rnum is not None:
        return _compare(operand, lnum, rnum)
    return _compare(operand, left, right)


def _number(text: str) -> float | None:
    try:
        return int(text, 10)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def _compare(operand: str, left: float | str, right: float | str) -> bool:
    if operand == "<":
        return left < right  # type: ignore[operator]
    if operand == "<=":
        return left <= right  # type: ignore[operator]
    if operand == ">":
        return left > right  # type: ignore[operator]
    return left >= right  # type: ignore[operator]


def _set_of(text: str) -> set[str]:
    return {part.strip() for part in text.split(",")}


@functools.lru_cache(maxsize=1024)
def _regexp(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:
        return None


# ------------------------------------------------------------------ versions
#
# ``version`` follows hashicorp/go-version (what Nomad uses): "1.2", "v1.2.3-beta1",
# constraints like ">= 1.2, < 2.0" or "~> 1.2", and a pre-release version only
# satisfies a constraint that names a pre-release of the same base version.
# ``semver`` follows Nomad's semver package: the same comparisons by semver rules,
# where pre-releases simply order before their release, and no "~>".

_VERSION_RAW = (
    r"v?([0-9]+(?:\.[0-9]+)*?)"
    r"(?:-([0-9]+[0-9A-Za-z\-~]*(?:\.[0-9A-Za-z\-~]+)*)"
    r"|(-?[A-Za-z\-~]+[0-9A-Za-z\-~]*(?:\.[0-9A-Za-z\-~]+)*))?"
    r"(?:\+([0-9A-Za-z\-~]+(?:\.[0-9A-Za-z\-~]+)*))?"
)
_VERSION_RE = re.compile(rf"^{_VERSION_RAW}$")
_CONSTRAINT_RE = re.compile(rf"^\s*(~>|>=|<=|!=|=|>|<)?\s*({_VERSION_RAW})\s*$")


@dataclass(frozen=True)
class Version:
    segments: tuple[int, ...]  # padded to at least 3
    specified: int  # how many segments the text gave (for "~>")
    pre: str

    def compare(self, other: Version) -> int:
        width = max(len(self.segments), len(other.segments))
        a = self.segments + (0,) * (width - len(self.segments))
        b = other.segments + (0,) * (width - len(other.segments))
        if a != b:
            return -1 if a < b else 1
        if self.pre == other.pre:
            return 0
        if not self.pre:
            return 1
        if not other.pre:
            return -1
        return _compare_prereleases(self.pre, other.pre)


@functools.lru_cache(maxsize=4096)
def parse_version(text: str) -> Version | None:
    m = _VERSION_RE.match(text.strip())
    if m is None:
        return None
    segs = [int(s) for s in m.group(1).split(".")]
    specified = len(segs)
    while len(segs) < 3:
        segs.append(0)
    pre = m.group(2) or (m.group(3) or "").lstrip("-")
    return Version(tuple(segs), specified, pre)


def _compare_part(a: str, b: str) -> int:
    if a == b:
        return 0
    a_num = a.isdigit()
    b_num = b.isdigit()
    if a == "":
        return -1 if b_num else 1
    if b == "":
        return 1 if a_num else -1
    if a_num and not b_num:
        return -1
    if b_num and not a_num:
        return 1
    if a_num and b_num:
        return 1 if int(a) > int(b) else -1
    return 1 if a > b else -1


def _compare_prereleases(a: str, b: str) -> int:
    pa = a.split(".")
    pb_ = b.split(".")
    for i in range(max(len(pa), len(pb_))):
        c = _compare_part(pa[i] if i < len(pa) else "", pb_[i] if i < len(pb_) else "")
        if c:
            return c
    return 0


def _prerelease_ok(v: Version, c: Version) -> bool:
    """go-version: a pre-release version only matches a constraint on a pre-release
    of the same base segments."""
    if v.pre and c.pre:
        return v.segments == c.segments
    return not (v.pre and not c.pre)


def _pessimistic(v: Version, c: Version) -> bool:
    if not _prerelease_ok(v, c) or (c.pre and not v.pre):
        return False
    if v.compare(c) < 0:
        return False
    n = c.specified
    if n > len(v.segments):
        return False
    for i in range(n - 1):
        if v.segments[i] != c.segments[i]:
            return False
    return c.segments[n - 1] <= v.segments[n - 1]


VersionCheck = Callable[[Version], bool]


@functools.lru_cache(maxsize=1024)
def parse_version_constraint(text: str, semver: bool) -> tuple[VersionCheck, ...] | None:
    """Comma-separated ``op version`` terms, all of which must hold; None if invalid."""
    checks: list[VersionCheck] = []
    for term in text.split(","):
        m = _CONSTRAINT_RE.match(term)
        if m is None:
            return None
        op = m.group(1) or "="
        if semver and op == "~>":
            return None
        c = parse_version(m.group(2))
        if c is None:
            return None
        checks.append(_version_check(op, c, semver))
    return tuple(checks)


def _version_check(op: str, c: Version, semver: bool) -> VersionCheck:
    pre_ok: Callable[[Version], bool] = (
        (lambda v: True) if semver else (lambda v: _prerelease_ok(v, c))
    )
    if op == "=":
        return lambda v: v.compare(c) == 0
    if op == "!=":
        return lambda v: v.compare(c) != 0
    if op == ">":
        return lambda v: pre_ok(v) and v.compare(c) > 0
    if op == "<":
        return lambda v: pre_ok(v) and v.compare(c) < 0
    if op == ">=":
        return lambda v: pre_ok(v) and v.compare(c) >= 0
    if op == "<=":
        return lambda v: pre_ok(v) and v.compare(c) <= 0
    return lambda v: _pessimistic(v, c)


def version_matches(version: str, constraint: str, semver: bool = False) -> bool:
    v = parse_version(version)
    if v is None:
        return False
    checks = parse_version_constraint(constraint, semver)
    if checks is None:
        return False
    return all(chk(v) for chk in checks)


# ------------------------------------------------------------------ compiled forms


def constraint_text(l_target: str, operand: str, r_target: str) -> str:
    """How Nomad names a constraint in placement failures: ``${attr.kernel.name} = linux``."""
    return f"{l_target} {operand} {r_target}".strip()


@dataclass(frozen=True)
class CompiledConstraint:
    text: str
    test: NodePredicate


def compile_check(l_target: str, operand: str, r_target: str) -> NodePredicate:
    left = resolver(l_target)
    right = resolver(r_target)
    # Fast paths for the most common shapes: an interpolation against a literal.
    if operand in ("=", "==", "is") and not r_target.startswith("${"):

        def equal(node: pb.Node) -> bool:
            lval, lfound = left(node)
            return lfound and lval == r_target

        return equal
    return lambda node: check(operand, left(node), right(node))


def compile_constraint(c: pb.Constraint) -> CompiledConstraint:
    return CompiledConstraint(
        constraint_text(c.l_target, c.operand, c.r_target),
        compile_check(c.l_target, c.operand, c.r_target),
    )


@dataclass(frozen=True)
class CompiledAffinity:
    weight: float
    test: NodePredicate


def compile_affinity(a: pb.Affinity) -> CompiledAffinity:
    return CompiledAffinity(float(a.weight), compile_check(a.l_target, a.operand, a.r_target))
