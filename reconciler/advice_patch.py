"""The production file with advice applied: a patch a person reviews and commits, never a
change made behind their back.

The patch must read as the one change it is: every comment, blank line, quote and key order
of the file is kept. Re-dumping a parsed document keeps the data but reflows folded
commands and re-indents sequences: a diff of lines nobody changed. So the file is edited as
text, at the places
ruamel.yaml's composer says the nodes are (the same composer, YAML 1.2, as
``spec/yamlsrc.py``): a value present is replaced where it stands (its quotes kept), a key
absent is added after the last entry of its mapping (block or flow) at that mapping's
indentation, a section absent is added the same way. The result is parsed again by the
loader's rules and must hold the values set and nothing else changed, or ValueError.
"""

from __future__ import annotations

import difflib
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.spec.yamlsrc import parse

_NULL = "tag:yaml.org,2002:null"


def patched_text(text: str, stage: str, *, campaign: bool, timeout_hours: float | None, memory_gb: float | None) -> str:
    """``text`` (a production file) with ``execution.timeout_hours`` and ``resources.memory_gb``
    set for ``stage``: a campaign's ``stages.<stage>`` sections, else (``stage`` "") the
    production's own; None leaves a value as it is."""
    if campaign != bool(stage):
        raise ValueError("a campaign's advice names its stage; a one-stage production's stage is ''")
    base: tuple[str, ...] = ("stages", stage) if campaign else ()
    wanted = [(base + ("execution", "timeout_hours"), timeout_hours), (base + ("resources", "memory_gb"), memory_gb)]
    new = text
    for path, value in wanted:
        if value is not None:
            new = _set(new, path, float(value))
    before, after = parse(text, "<production>").data, parse(new, "<patched>").data  # by the loader's rules
    for path, value in wanted:
        if value is None:
            continue
        if _number_of(_get(after, path)) != float(value):  # it says what it was asked to...
            raise ValueError(f"patching {'.'.join(path)} did not take (a bug: please report it)")
        before, after = _without(before, path), _without(after, path)
    if before != after:  # ... and nothing else
        raise ValueError("patching changed more than the values asked (a bug: please report it)")
    return new


def unified_diff(old: str, new: str, relpath: str) -> str:
    """A ``git apply``-able unified diff of one file; empty when nothing changes."""
    if old == new:
        return ""
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{relpath}", f"b/{relpath}")
    # difflib leaves a last line without its newline as it is; patch and git need the marker
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def _compose(text: str) -> Node:
    yaml = YAML(typ="safe", pure=True)
    yaml.version = (1, 2)
    root = yaml.compose(text)
    if not isinstance(root, MappingNode):
        raise ValueError("a production file is a mapping of sections")
    return root


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _without(data: Any, path: tuple[str, ...]) -> Any:
    """A copy of ``data`` without the leaf at ``path``, and without the sections on its way that
    are left empty (or were: ``resources:`` alone), so a file and its patch compare equal."""
    if not path or not isinstance(data, dict) or path[0] not in data:
        return data
    out = dict(data)
    rest = _without(out[path[0]], path[1:]) if len(path) > 1 else None
    if rest is None or rest == {}:
        del out[path[0]]
    else:
        out[path[0]] = rest
    return out


def _number_of(value: Any) -> float | None:
    """A value as the models read a number (a quoted one too: pydantic's lax mode)."""
    try:
        return float(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else None
    except ValueError:
        return None


def _child(node: MappingNode, key: str) -> Node | None:
    for k, v in node.value:
        if isinstance(k, ScalarNode) and k.value == key:
            return v
    return None


def _set(text: str, path: tuple[str, ...], value: float) -> str:
    """``text`` with the scalar at ``path`` set to ``value``, creating what is missing."""
    node: Node = _compose(text)
    for i, part in enumerate(path):
        assert isinstance(node, MappingNode)
        child = _child(node, part)
        if child is not None and getattr(child, "anchor", None):  # shared: an edit here would change every place that uses it
            raise ValueError(f"{'.'.join(path[: i + 1])} is shared through a YAML anchor (&{child.anchor}): set the values by hand")
        if child is None:
            if path[0] == "stages" and i < 2:
                raise ValueError(f"no stage {path[1]!r} in this production")
            return _add(text, node, path[i:], value)
        if i == len(path) - 1:
            if not isinstance(child, ScalarNode) or child.tag == _NULL:
                raise ValueError(f"{'.'.join(path)} is not a number in this file")
            return _replace(text, child, value)
        if isinstance(child, ScalarNode) and child.tag == _NULL:  # `resources:` with nothing under it
            return _fill(text, node, child, path[i + 1 :], value)
        if not isinstance(child, MappingNode):
            raise ValueError(f"{'.'.join(path[: i + 1])} is not a mapping in this file")
        node = child
    raise AssertionError("unreachable: the path ends in a scalar")


def _number(value: float, like: ScalarNode | None = None) -> str:
    text = repr(value)
    quote = like.style if like is not None and like.style in ("'", '"') else ""
    return f"{quote}{text}{quote}"


def _replace(text: str, node: ScalarNode, value: float) -> str:
    return text[: node.start_mark.index] + _number(value, node) + text[node.end_mark.index :]


def _nested(keys: tuple[str, ...], value: float) -> str:
    """``a: {b: 1.0}`` for a flow mapping."""
    inner = f"{keys[-1]}: {_number(value)}"
    for key in reversed(keys[:-1]):
        inner = f"{key}: {{{inner}}}"
    return inner


def _fill(text: str, parent: MappingNode, null: ScalarNode, keys: tuple[str, ...], value: float) -> str:
    """A section written with nothing under it (``resources:`` or ``resources: ~``) gets its
    key as a flow mapping, on the section's own line."""
    start = null.start_mark.index
    if null.value == "":  # empty: it "starts" after the colon, or at the next token
        for k, v in parent.value:
            if v is null:
                start = text.index(":", k.end_mark.index) + 1
        return text[:start] + f" {{{_nested(keys, value)}}}" + text[start:]
    return text[:start] + f"{{{_nested(keys, value)}}}" + text[null.end_mark.index :]


def _add(text: str, mapping: MappingNode, keys: tuple[str, ...], value: float) -> str:
    """``keys`` (sections then the key) added as the last entry of ``mapping``."""
    if mapping.flow_style:
        if not mapping.value:
            at = mapping.start_mark.index + 1
            return text[:at] + _nested(keys, value) + text[at:]
        at = int(mapping.value[-1][1].end_mark.index)  # a flow mapping's entries are flow too
        return text[:at] + ", " + _nested(keys, value) + text[at:]
    col = mapping.value[0][0].start_mark.column
    step = _indent_step(_compose(text))
    lines = [" " * (col + i * step) + f"{key}:" for i, key in enumerate(keys[:-1])]
    lines.append(" " * (col + (len(keys) - 1) * step) + f"{keys[-1]}: {_number(value)}")
    last = _last_leaf(mapping.value[-1][1])
    end = int(last.end_mark.index)
    keeps = isinstance(last, ScalarNode) and last.style in ("|", ">") and "+" in text[last.start_mark.index : text.find("\n", last.start_mark.index)]
    while not keeps and end > 0 and text[end - 1].isspace():  # a block scalar or an empty value ends on a later line
        end -= 1
    if keeps and text[end - 1 : end] == "\n":  # `|+` keeps its trailing blank lines: they are its text
        end -= 1
    eol = text.find("\n", end)
    if eol < 0:
        return text + "\n" + "\n".join(lines) + "\n"
    return text[: eol + 1] + "\n".join(lines) + "\n" + text[eol + 1 :]


def _last_leaf(node: Node) -> Node:
    """The node whose end is a block collection's end: a block collection's own end mark is
    where the next one starts, after comments and blank lines; its last entry says where its
    content stops."""
    while isinstance(node, MappingNode | SequenceNode) and not node.flow_style and node.value:
        last = node.value[-1]
        node = last[1] if isinstance(node, MappingNode) else last
    return node


def _indent_step(root: Node) -> int:
    """How far this file indents a block mapping under its key (2 unless it says otherwise)."""
    todo = [root]
    for node in todo:  # in document order: the first nesting the file shows
        if isinstance(node, MappingNode) and not node.flow_style:
            for k, v in node.value:
                if isinstance(v, MappingNode) and not v.flow_style and v.value:
                    step = v.value[0][0].start_mark.column - k.start_mark.column
                    if step > 0:
                        return int(step)
                todo.append(v)
    return 2
