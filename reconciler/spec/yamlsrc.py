"""Read YAML 1.2 into plain Python data plus the position of every node.

We compose the node graph ourselves instead of letting a constructor build objects, because
that is where the hostile-input checks belong: duplicate keys, non-standard tags (no
``!!python/...``), alias bombs (bounded expansion), huge scalars and control characters are
all refused with a file:line:col before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.errors import ConfigError, Problem

MAX_FILE_BYTES = 1_000_000
MAX_SCALAR_CHARS = 10_000
MAX_NODES = 200_000  # after alias expansion
MAX_ALIASES = 100

Path = tuple[str | int, ...]

_STD = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}


@dataclass(frozen=True, slots=True)
class Mark:
    """Where a value came from: file and 1-based line/column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Document:
    """Plain data of one YAML file and a map from path to the mark of each node."""

    file: str
    data: Any
    marks: dict[Path, Mark] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    """What was wrong but left the rest readable (a duplicate key: its first value is kept, a
    refused tag or scalar: None), for a loader that reports everything in one round."""

    def mark(self, path: Path) -> Mark:
        """The mark of ``path`` or of its nearest ancestor that exists."""
        p = tuple(path)
        while p:
            if p in self.marks:
                return self.marks[p]
            p = p[:-1]
        return self.marks.get((), Mark(self.file, 1, 1))


def dotted(path: Path) -> str:
    """``('science', 'realizations', 'exclude', 0, 'reason')`` -> ``science.realizations.exclude[0].reason``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse(text: str, file: str) -> Document:
    """Parse one YAML document; raise ConfigError with every structural problem found."""
    doc = parse_collecting(text, file)
    if doc.problems:
        raise ConfigError(doc.problems)
    return doc


def parse_collecting(text: str, file: str) -> Document:
    """Parse one YAML document; problems that leave the rest readable are in ``doc.problems``,
    so that one duplicate key does not hide every other mistake of the file. Raise ConfigError
    only when nothing can be read (syntax, size)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise ConfigError(
            Problem(file, 1, 1, "", f"file is larger than {MAX_FILE_BYTES} bytes", "a production file is a few kB; is this the right file?")
        )
    yaml = YAML(typ="safe", pure=True)
    yaml.version = (1, 2)
    try:
        root = yaml.compose(text)
    except MarkedYAMLError as exc:
        m = exc.problem_mark or exc.context_mark
        line, col = (m.line + 1, m.column + 1) if m else (0, 0)
        raise ConfigError(Problem(file, line, col, "", f"YAML syntax: {exc.problem or exc}", "fix the YAML syntax")) from None
    except YAMLError as exc:
        raise ConfigError(Problem(file, 0, 0, "", f"YAML: {exc}", "fix the YAML")) from None
    doc = Document(file, None)
    if root is None:
        doc.data = {}
        doc.marks[()] = Mark(file, 1, 1)
        return doc
    builder = _Builder(yaml, doc)
    builder.check_size(root)
    if builder.problems:
        raise ConfigError(builder.problems)
    doc.data = builder.build(root, ())
    doc.problems = builder.problems
    return doc


class _Builder:
    def __init__(self, yaml: YAML, doc: Document) -> None:
        self.yaml = yaml
        self.doc = doc
        self.problems: list[Problem] = []

    def _mark(self, node: Node) -> Mark:
        m = node.start_mark
        return Mark(self.doc.file, m.line + 1, m.column + 1)

    def _problem(self, node: Node, path: Path, message: str, hint: str = "") -> None:
        m = self._mark(node)
        self.problems.append(Problem(m.file, m.line, m.col, dotted(path), message, hint))

    def check_size(self, root: Node) -> None:
        """Refuse alias bombs: count nodes as if aliases were expanded, with memoisation."""
        sizes: dict[int, int] = {}
        seen_refs = 0

        def size(node: Node, depth: int) -> int:
            nonlocal seen_refs
            key = id(node)
            if key in sizes:
                seen_refs += 1
                return sizes[key]
            if depth > 100:
                raise _TooBig("nesting deeper than 100 levels")
            sizes[key] = 1  # guards recursive aliases
            total = 1
            if isinstance(node, MappingNode):
                for k, v in node.value:
                    total += size(k, depth + 1) + size(v, depth + 1)
            elif isinstance(node, SequenceNode):
                for v in node.value:
                    total += size(v, depth + 1)
            sizes[key] = total
            if total > MAX_NODES:
                raise _TooBig(f"expands to more than {MAX_NODES} nodes (alias bomb?)")
            return total

        try:
            size(root, 0)
            if seen_refs > MAX_ALIASES:
                raise _TooBig(f"uses more than {MAX_ALIASES} aliases")
        except _TooBig as exc:
            self._problem(root, (), f"document {exc}", "write the values out; anchors and aliases are for small reuse only")

    def build(self, node: Node, path: Path) -> Any:
        self.doc.marks.setdefault(path, self._mark(node))
        if node.tag not in _ALLOWED_TAGS:
            self._problem(node, path, f"tag {str(node.tag).replace(_STD, '!!')} is not allowed", "only plain YAML types (strings, numbers, booleans, lists, mappings)")
            return None
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                if not isinstance(knode, ScalarNode):
                    self._problem(knode, path, "mapping keys must be plain strings")
                    continue
                key = str(knode.value)
                if key == "<<":
                    self._problem(knode, path, "merge keys (<<) are not supported", "write the keys out")
                    continue
                if key in out:
                    first = self.doc.marks.get(path + (key,))
                    self._problem(knode, path + (key,), f"duplicate key {key!r}", f"first defined at line {first.line}" if first else "")
                    continue
                self.doc.marks[path + (key,)] = self._mark(knode)
                out[key] = self.build(vnode, path + (key,))
            return out
        if isinstance(node, SequenceNode):
            return [self.build(v, path + (i,)) for i, v in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        if len(node.value) > MAX_SCALAR_CHARS:
            self._problem(node, path, f"value is {len(node.value)} characters long (limit {MAX_SCALAR_CHARS})", "shorten it")
            return None
        try:
            return self.yaml.constructor.construct_object(node, deep=True)
        except YAMLError as exc:
            self._problem(node, path, f"cannot read value: {exc}")
            return None


class _TooBig(Exception):
    pass
