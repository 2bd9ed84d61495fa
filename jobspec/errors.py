"""Problems found in a job file, and the one exception that carries them.

A problem is a readable sentence plus a *key*: the path of the block it is about
(``('group "web"', 'task "server"', 'config')``). Validation knows only keys; the
HCL reader knows where each key sits in the file, so that the error a user sees
points at the line to fix, like Nomad's ``file:line,col`` diagnostics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Key = tuple[str, ...]
Positions = Mapping[Key, tuple[int, int]]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job: ``text`` is shown as is, ``key`` locates it."""

    key: Key
    text: str
    pos: tuple[int, int] | None = None  # set when the reader knows better than the key


def where_prefix(where: Key) -> str:
    """``group "web": task "server": `` (empty at job level) to start a message."""
    return "".join(f"{part}: " for part in where)


def where_text(where: Key, job_id: str) -> str:
    """``group "web", task "server"`` (or ``job "x"``) for a message's parentheses."""
    if where:
        return ", ".join(where)
    return f'job "{job_id}"' if job_id else "the job"


def item_label(kind: str, names: Sequence[str], index: int) -> str:
    """``task "app"`` for the index-th of its siblings; ``task #3`` when unnamed, and
    ``task "app" #3`` when an earlier sibling has the same name, so that a message
    (and its position) tells the two apart. HCL and proto give the same labels."""
    name = names[index]
    if not name:
        return f"{kind} #{index + 1}"
    if name in names[:index]:
        return f'{kind} "{name}" #{index + 1}'
    return f'{kind} "{name}"'


def not_supported(name: str, where: Key, job_id: str, kind: str = "block") -> Problem:
    """The not-yet-supported gate's message, the same for HCL, JSON and the proto."""
    return Problem(
        where + (name,), f'{kind} "{name}" is not supported yet ({where_text(where, job_id)})'
    )


@dataclass(frozen=True)
class Diagnostic:
    """A problem placed in a file; line and col are 1-based, 0 when unknown."""

    line: int
    col: int
    message: str


class JobspecError(Exception):
    """A job file that cannot be run: a syntax error, or every validation problem.

    ``str()`` gives one ``FILE:LINE:COL: message`` line per problem (``FILE: message``
    when the position is unknown) so that editors and terminals can jump to it.
    """

    def __init__(
        self,
        filename: str,
        diagnostics: Iterable[Diagnostic],
    ) -> None:
        self.filename = filename
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        self.problems: list[str] = [d.message for d in self.diagnostics]
        first = self.diagnostics[0] if self.diagnostics else Diagnostic(0, 0, "")
        self.line = first.line
        self.col = first.col
        super().__init__(self._render())

    @classmethod
    def syntax(cls, filename: str, line: int, col: int, message: str) -> JobspecError:
        """A file that does not parse: one message at one place."""
        return cls(filename, [Diagnostic(line, col, message)])

    @classmethod
    def from_problems(
        cls, filename: str, problems: Iterable[Problem], positions: Positions | None = None
    ) -> JobspecError:
        """Place each problem at its block's position, when the reader knew it."""
        diags = []
        for p in problems:
            line, col = p.pos or locate(p.key, positions or {})
            diags.append(Diagnostic(line, col, p.text))
        # in file order, as a compiler lists them (the sort is stable)
        diags.sort(key=lambda d: (d.line, d.col))
        return cls(filename, diags)

    def _render(self) -> str:
        lines = []
        for d in self.diagnostics:
            if d.line:
                lines.append(f"{self.filename}:{d.line}:{d.col}: {d.message}")
            else:
                lines.append(f"{self.filename}: {d.message}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._render()


def locate(key: Key, positions: Positions) -> tuple[int, int]:
    """Position of the longest known prefix of ``key``: the closest enclosing block."""
    for n in range(len(key), -1, -1):
        pos = positions.get(key[:n])
        if pos is not None:
            return pos
    return (0, 0)


def dedupe(problems: Iterable[Problem]) -> list[Problem]:
    """Drop repeated messages (the HCL reader and ``validate`` may both see one)."""
    seen: set[str] = set()
    out = []
    for p in problems:
        if p.text not in seen:
            seen.add(p.text)
            out.append(p)
    return out
