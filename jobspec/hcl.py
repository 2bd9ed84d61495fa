"""HCL text -> a small tree of blocks and attributes that keeps source positions.

python-hcl2 8.x parses with Lark and keeps positions on its rule tree, but its dict
output has none (``with_meta`` is accepted and ignored in 8.1), keeps the quotes of
strings (``'"web"'``) and cannot tell the string ``"${x}"`` from the bare expression
``x``. So this module walks the rule tree itself: every block and attribute gets its
line and column, strings are unquoted and unescaped here (heredocs included), and
anything that would need evaluation (variables, functions, arithmetic) becomes an
``Expr`` for the decoder to report. ``${...}`` inside strings stays literal text:
the client interpolates it at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import hcl2
from hcl2.rules.base import AttributeRule, BlockRule, BodyRule
from hcl2.utils import SerializationOptions, process_escape_sequences
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from corral.jobspec.errors import JobspecError

_OPTIONS = SerializationOptions(
    with_comments=False,
    strip_string_quotes=False,  # keep quotes: they tell a string from an expression
    preserve_heredocs=True,
    preserve_scientific_notation=False,
    explicit_blocks=False,
)


@dataclass(frozen=True)
class Expr:
    """An HCL expression corral does not evaluate (``var.x``, ``upper("a")``, ``1 + 1``)."""

    source: str


@dataclass
class Attr:
    name: str
    value: Any
    line: int
    col: int


@dataclass
class Block:
    type: str
    labels: list[str]
    line: int
    col: int
    attrs: list[Attr] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)


def read(text: str, filename: str) -> Block:
    """Parse HCL into a root ``Block`` (type ``""``); syntax errors raise JobspecError."""
    text = text.lstrip("\ufeff")
    try:
        tree = hcl2.parses(text)
    except UnexpectedInput as e:
        raise JobspecError.syntax(filename, e.line or 0, e.column or 0, _describe(e)) from None
    except Exception as e:  # lark wraps transformer failures (e.g. unterminated %{ if })
        cause = getattr(e, "orig_exc", None) or e
        raise JobspecError.syntax(filename, 0, 0, f"invalid HCL: {cause}") from None
    root = Block(type="", labels=[], line=1, col=1)
    _fill(root, tree.body)
    return root


def _fill(block: Block, body: BodyRule) -> None:
    for child in body.children:
        if isinstance(child, AttributeRule):
            meta = child._meta
            name = child.identifier.serialize(_OPTIONS)
            value = decode_value(child.expression.serialize(_OPTIONS))
            block.attrs.append(Attr(name, value, meta.line, meta.column))
        elif isinstance(child, BlockRule):
            meta = child._meta
            labels = [_label(lbl.serialize(_OPTIONS)) for lbl in child.labels]
            sub = Block(type=labels[0], labels=labels[1:], line=meta.line, col=meta.column)
            _fill(sub, child.body)
            block.blocks.append(sub)


def _label(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == '"' and raw[-1] == '"':
        return _unescape(raw[1:-1])
    return raw


def decode_value(value: Any) -> Any:
    """One serialized hcl2 value as plain Python (strings unquoted, Expr for expressions)."""
    if isinstance(value, str):
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            inner = value[1:-1]
            if inner.startswith("<<") and "\n" in inner:
                return _heredoc(inner)
            return _unescape(inner)
        return Expr(value[2:-1] if value.startswith("${") and value.endswith("}") else value)
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict):
        return {_label(str(k)): decode_value(v) for k, v in value.items()}
    return value


def _unescape(inner: str) -> str:
    """A quoted template's value: backslash escapes, and ``$${``/``%%{`` as literals."""
    return _literal_markers(process_escape_sequences(inner))


def _literal_markers(s: str) -> str:
    return s.replace("$${", "${").replace("%%{", "%{")


_HEREDOC_HEAD = re.compile(r"<<(-?)([A-Za-z_][\w.-]*)\r?$")


def _heredoc(inner: str) -> str:
    """``<<EOT`` / ``<<-EOT`` text: lines up to the marker, with their final newline;
    the ``-`` form drops the indentation common to all lines (HCL's rule)."""
    lines = inner.split("\n")
    head = _HEREDOC_HEAD.match(lines[0])
    body = lines[1:-1]  # the last line is the closing marker
    body = [line.removesuffix("\r") for line in body]
    if head and head.group(1) == "-":
        indents = [len(line) - len(line.lstrip(" \t")) for line in body if line.strip()]
        cut = min(indents, default=0)
        body = [line[cut:] for line in body]
    return _literal_markers("".join(line + "\n" for line in body))


_TOKEN_NAMES = {
    "RBRACE": "'}'",
    "LBRACE": "'{'",
    "RSQB": "']'",
    "LSQB": "'['",
    "LPAR": "'('",
    "RPAR": "')'",
    "EQ": "'='",
    "COMMA": "','",
    "COLON": "':'",
    "DBLQUOTE": "'\"'",
    "NAME": "a name",
    "INT_LITERAL": "a number",
    "FLOAT_LITERAL": "a number",
    "NL_OR_COMMENT": "a newline",
    "$END": "end of file",
}


def _describe(e: UnexpectedInput) -> str:
    """A short Nomad-like summary of a Lark error: what was found, what was expected."""
    if isinstance(e, UnexpectedToken):
        found = _found(e.token.type, str(e.token.value))
        expected = set(e.expected or ())
    elif isinstance(e, UnexpectedCharacters):
        found = f"character {e.char!r}"
        expected = set(e.allowed or ())
    elif isinstance(e, UnexpectedEOF):
        found = "end of file"
        expected = set(e.expected or ())
    else:
        return "invalid HCL"
    if found == "end of file" and "DBLQUOTE" in expected and "STRING_CHARS" in expected:
        return "syntax error: unterminated string (a closing '\"' is missing)"
    wanted = _expected(expected)
    summary = f"syntax error: unexpected {found}"
    return f"{summary}; expected {wanted}" if wanted else summary


def _found(kind: str, value: str) -> str:
    if kind == "$END":
        return "end of file"
    if kind in ("NL_OR_COMMENT",) or value.startswith(("\n", "\r")):
        return "newline"
    if kind == "STRING_CHARS":
        if value.startswith("<<"):
            return "heredoc (is its closing marker on a line of its own?)"
        return f"character {value[:1]!r}"
    if kind in _TOKEN_NAMES:
        return _TOKEN_NAMES[kind]
    return repr(value[:20])


def _expected(names: set[str]) -> str:
    if {"DBLQUOTE", "INT_LITERAL", "LSQB"} <= names:
        return "a value"
    known = sorted({_TOKEN_NAMES[n] for n in names if n in _TOKEN_NAMES})
    if not known:
        return ""
    if len(known) == 1:
        return known[0]
    return ", ".join(known[:-1]) + " or " + known[-1]
