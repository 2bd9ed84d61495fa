"""The HCL body accessor of the jobspec decoder, and where its problems are kept.

``Decoder`` is the shared state of one decode (the problems found, the position of
every block and attribute, the fields whose value could not be read). ``Body`` wraps
one block: it hands out typed attributes (string, integer, duration, ...) and
sub-blocks, turns a wrong value into a ``Problem`` instead of stopping, and on
``finish`` reports whatever nobody asked for (unknown, or gated by
``NOT_YET_SUPPORTED``). ``set_field`` and ``update_map`` copy what was read into a
message.

Every ``decode_*`` module builds on these, and they know no block by name: they sit
below the decoders of the job tree (``decode``) and of its blocks
(``decode_blocks``, ``decode_placement``, ``decode_services``).
"""

from __future__ import annotations

from typing import Any

from corral.jobspec.duration import DurationError, parse_duration
from corral.jobspec.errors import Key, Problem, not_supported, where_prefix, where_text
from corral.jobspec.hcl import Attr, Block, Expr
from corral.jobspec.support import gated


class Decoder:
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


class Body:
    """One block's body: hands out typed attributes and sub-blocks, and reports the
    ones nobody asked for (unknown, or gated) when ``finish`` is called."""

    def __init__(self, dec: Decoder, block: Block, where: Key) -> None:
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


# -------------------------------------------------------------------- helpers


def set_field(msg: Any, field: str, value: Any) -> None:
    if value is not None:
        setattr(msg, field, value)


def update_map(target: Any, values: dict[str, str] | None) -> None:
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
