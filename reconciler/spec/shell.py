"""Command lines: which text is shell syntax, and how values are quoted when a shell runs the line.

A ``task.command`` written as one line is split into arguments as a POSIX shell would
(``shlex.split``) and run *without* a shell. Shell syntax in its literal text (outside the
``{placeholders}``) would then reach the program as arguments (``mkdir -p $(dirname x) &&
gen > y`` makes directories named ``&&`` and ``>``), so it is refused at validate, with the
two ways out: ``shell: true``, or the command as a YAML list.

What counts, outside quotes: ``;``, ``&`` (alone too: a background job the wrapper would
not wait for), ``|``, ``<``, ``>``, ``$(``, backticks, and ``$NAME``/``${NAME}``: without a
shell nothing expands them, so ``$HOME`` would reach the program as those five characters,
never what its author meant. Inside double quotes, ``$(``, backticks and ``$NAME`` still
count (a shell expands them there); inside single quotes, and after a backslash, nothing does.

With ``shell: true`` the line runs under ``bash -euo pipefail -c`` (Snakemake's strict mode:
a failing step, an unset variable or a failing stage of a pipe fails the task, instead of
the next step running on a half-made file). Every substituted value is shell-quoted (as
Snakemake's ``{x:q}``, but always), so a catalog parameter ``$(touch x)`` reaches the command
as text. The symbolic production directory and interpreter (spec.symbols) are rendered as
``"${RECONCILER_PRODUCTION_DIR}"`` and ``"${RECONCILER_PYTHON}"``, variables the task wrapper
exports, instead of being substituted into the text: a production directory holding a quote
stays one word and cannot end the quoting. A placeholder the author put inside quotes would
be quoted twice, so that is refused too.
"""

from __future__ import annotations

import re
import shlex
import string
from typing import Any

from reconciler.spec.symbols import SYMBOLIC_DIR, SYMBOLIC_PYTHON

SHELL_PREFIX = ("bash", "-euo", "pipefail", "-c")
"""How a ``shell: true`` command runs: the argv before the rendered line."""
SHELL_VARIABLES = {SYMBOLIC_DIR: '"${RECONCILER_PRODUCTION_DIR}"', SYMBOLIC_PYTHON: '"${RECONCILER_PYTHON}"'}
"""What the symbolic values become in a shell line: variables the wrapper exports."""
HINT = (
    "add `shell: true` under task: to run it with bash (every substituted value is quoted), "
    "or write the command as a YAML list (one argument per item)"
)
_FIELD = "\0"  # stands for a placeholder in the skeleton (a Line holds no control character)
_SYMBOLS = re.compile("(" + "|".join(map(re.escape, SHELL_VARIABLES)) + ")")
_VARIABLE_START = re.compile(r"[A-Za-z_{]")


def skeleton(template: str) -> str:
    """The template's literal text (``{{`` read as ``{``) with each placeholder as one ``\\0``."""
    return "".join(lit + (_FIELD if field is not None else "") for lit, field, _spec, _conv in string.Formatter().parse(template))


def _expansion_at(text: str, i: int) -> str | None:
    """The expansion starting at ``text[i]`` (``$(``, backtick, ``$NAME``, ``${``), or None."""
    ch = text[i]
    if ch == "`":
        return "`"
    if ch == "$" and i + 1 < len(text):
        nxt = text[i + 1]
        if nxt == "(":
            return "$("
        if _VARIABLE_START.match(nxt):
            m = re.match(r"\$(\{[^}]*\}?|[A-Za-z_][A-Za-z0-9_]*)", text[i:])
            return m.group(0) if m else "$"
    return None


def shell_syntax(template: str) -> str | None:
    """The first shell construct in a command line's literal text, or None (module docstring).

    Raises ValueError when braces do not pair (as the template check reports it)."""
    text = skeleton(template)
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote == "'":
            quote = "" if ch == "'" else quote
        elif ch == "\\":
            i += 1  # the next character is literal, in or out of double quotes
        elif quote == '"':
            if ch == '"':
                quote = ""
            elif (found := _expansion_at(text, i)) is not None:
                return found
        elif ch in "'\"":
            quote = ch
        elif ch in ";&|<>":
            return text[i : i + 2] if text[i : i + 2] in ("&&", "||", ">>", "<<", ">&", "&>", ";;") else ch
        elif (found := _expansion_at(text, i)) is not None:
            return found
        i += 1
    return None


def quoted_placeholder(template: str) -> bool:
    """Whether a placeholder sits inside quotes, or right after a ``\\`` or ``$``: a ``shell:
    true`` line quotes values itself, and a quoted value glued to a backslash (``\\{x}``) loses
    its opening quote to the escape, so the value would be read as shell text; after ``$``
    (``${x}``, ``$'...'``) bash would expand it."""
    quote = ""
    text = skeleton(template)
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == _FIELD and quote:
            return True
        if quote == "'":
            quote = "" if ch == "'" else quote
        elif ch == "\\" or ch == "$":
            if text[i + 1 : i + 2] == _FIELD:
                return True
            i += 1 if ch == "\\" else 0
        elif quote == '"':
            quote = "" if ch == '"' else quote
        elif ch in "'\"":
            quote = ch
        i += 1
    return False


def command_templates(command: str | list[str], shell: bool) -> tuple[tuple[str, ...], tuple[str, str] | None]:
    """The argv templates of ``task.command``, or (``()``, (message, hint)) for a command that
    cannot be run as written. A list is the argv as given; a line is split (``shell: false``)
    or handed whole to bash after SHELL_PREFIX (``shell: true``)."""
    if isinstance(command, list):
        return tuple(command), None
    try:
        if shell:
            if quoted_placeholder(command):
                return (), (
                    "a placeholder is inside quotes or right after a \\ or $, and a shell: true command quotes every value itself",
                    "remove the quotes (or the \\ or $) around the placeholder",
                )
            return (*SHELL_PREFIX, command), None
        found = shell_syntax(command)
    except ValueError:
        return (command,), None  # unpaired braces: the template check says so, naming them
    if found is not None:
        return (), (f"{found!r} is shell syntax, but the command is not run by a shell", HINT)
    try:
        return tuple(shlex.split(command)), None
    except ValueError as exc:
        return (), (f"cannot split the command into arguments: {exc}", "close the quote, or write the command as a YAML list")


def shell_quote(value: str) -> str:
    """``value`` as one shell word; the symbolic production directory and interpreter inside it
    become the double-quoted variables the wrapper exports (SHELL_VARIABLES)."""
    if SYMBOLIC_DIR not in value and SYMBOLIC_PYTHON not in value:
        return shlex.quote(value)
    return "".join(SHELL_VARIABLES.get(part) or shlex.quote(part) for part in _SYMBOLS.split(value) if part)


class QuotingFormatter(string.Formatter):
    """``str.format_map`` whose every substituted value is shell-quoted after its format spec."""

    def format_field(self, value: Any, format_spec: str) -> str:
        return shell_quote(format(value, format_spec))


QUOTING = QuotingFormatter()
