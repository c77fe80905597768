"""YAML loading that remembers where every value came from.

Inventories and playbooks are validated with pydantic; when validation fails
the error must name the file, the line and the field. :func:`load` returns
plain dicts/lists (subclasses carrying line numbers) and :func:`line_of`
maps a pydantic error location back to a line. Duplicate keys are refused
(PyYAML would silently keep the last one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ir_toolkit.errors import FileInputError


class LDict(dict):
    """A dict that knows the line of each key (``key_lines``) and its own ``line``."""

    line: int = 0
    key_lines: dict[Any, int]


class LList(list):
    line: int = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LDict:
    loader.flatten_mapping(node)
    result = LDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LList:
    result = LList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load(path: Path | str, *, what: str = "file") -> Any:
    """Parse YAML at ``path``; syntax errors become :class:`FileInputError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileInputError(str(path), None, None, f"{what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FileInputError(str(path), None, None, f"cannot read {what}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise FileInputError(str(path), line, None, f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise FileInputError(str(path), None, None, f"YAML syntax error: {exc}") from None
    if data is None:
        raise FileInputError(str(path), 1, None, f"empty {what}")
    return data


def line_of(data: Any, loc: tuple[Any, ...]) -> int | None:
    """The line of the deepest node along ``loc`` that exists in ``data``."""
    line = getattr(data, "line", None)
    node = data
    for part in loc:
        if isinstance(node, LDict) and part in node:
            line = node.key_lines.get(part, line)
            node = node[part]
        elif isinstance(node, LList) and isinstance(part, int) and 0 <= part < len(node):
            line = node.item_lines[part]
            node = node[part]
        else:
            break
    return line


def field_name(loc: tuple[Any, ...]) -> str:
    """Render a pydantic loc as ``tenants[0].hosts[2].address``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required field is missing"
    msg = str(err.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def validate(model: type[BaseModel], data: Any, path: Path | str, context: dict[str, Any] | None = None) -> Any:
    """Validate ``data`` against ``model``; the first error becomes a one-line FileInputError."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = tuple(err.get("loc", ()))
        # Unions add the member's type name to the location; drop those parts.
        loc = tuple(p for p in loc if not (isinstance(p, str) and p[:1].isupper()))
        raise FileInputError(str(path), line_of(data, loc), field_name(loc), _message(err)) from None
