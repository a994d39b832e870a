"""Reading ringfence.yaml (one file, or a folder of *.yaml / *.yml) into a validated Document, with
every problem named by file, line and field.

YAML 1.1 would read `start: 09:00` as the integer 540 (base 60) and silently take the last of two
equal keys; the loader here reads such times as text and refuses duplicate keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configuration.document import Document

SECTIONS = ("metrics", "metric_providers", "service_accounts", "workflows")
Location = tuple[str, int]  # file, 1-based line


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"

    def as_dict(self) -> dict:
        return {"file": self.file, "line": self.line, "field": self.field, "message": self.message}


class ConfigError(Exception):
    """The file is not a valid configuration; nothing was changed."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class _Loader(yaml.SafeLoader):
    pass


# Integers without YAML 1.1's base-60 form (so 09:00 stays the text "09:00").
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:int"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:int",
                              re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)"
                                         r"|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789"))


@dataclass
class Source:
    """A document's data and where each of its paths was written."""

    data: dict
    lines: dict[tuple, Location] = field(default_factory=dict)

    def where(self, path: tuple) -> Location | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


def _plain(node: yaml.Node, path: tuple, name: str, lines: dict[tuple, Location], loader: _Loader) -> Any:
    lines[path] = (name, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int)):
                raise ConfigError([Problem(name, key_node.start_mark.line + 1, _dotted(path),
                                           "keys are names, not lists or mappings")])
            if key in out:
                raise ConfigError([Problem(name, key_node.start_mark.line + 1, _dotted((*path, key)),
                                           f"{key!r} is given twice")])
            out[key] = _plain(value_node, (*path, key), name, lines, loader)
            lines[(*path, key)] = (name, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, (*path, i), name, lines, loader) for i, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except (ValueError, yaml.YAMLError) as exc:  # e.g. 2030-13-25 read as a date
        raise ConfigError([Problem(name, node.start_mark.line + 1, _dotted(path),
                                   f"cannot read {node.value!r}: {exc}")]) from None


def parse_text(text: str, name: str) -> Source:
    """One YAML document as plain data with the line of every key and item."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError([Problem(name, mark.line + 1 if mark else None, "",
                                   f"not valid YAML: {getattr(exc, 'problem', None) or exc}")]) from None
    finally:
        loader.dispose()
    if node is None:
        return Source({}, {(): (name, 1)})
    lines: dict[tuple, Location] = {}
    data = _plain(node, (), name, lines, _Loader(""))
    if not isinstance(data, dict):
        raise ConfigError([Problem(name, 1, "", "a configuration is a mapping with version, workflows, "
                                                "service_accounts and metrics")])
    return Source(data, lines)


def merge(sources: list[Source]) -> Source:
    """Several files as one document: their lists are joined, each item keeping its file and line."""
    merged = Source({}, {})
    for source in sources:
        for key, value in source.data.items():
            if key in SECTIONS and isinstance(value, list):
                offset = len(merged.data.setdefault(key, []))
                merged.data[key].extend(value)
                for path, where in source.lines.items():
                    if len(path) >= 2 and path[0] == key and isinstance(path[1], int):
                        merged.lines[(key, path[1] + offset, *path[2:])] = where
                merged.lines.setdefault((key,), source.lines[(key,)])
            elif key in merged.data and merged.data[key] != value:
                name, line = source.lines.get((key,), (None, None))
                raise ConfigError([Problem(name or "?", line, key, "differs from another file of the folder")])
            else:
                merged.data[key] = value
                merged.lines[(key,)] = source.lines.get((key,), ("?", 1))
        merged.lines.setdefault((), source.lines.get((), ("?", 1)))
    return merged


def read_sources(path: str | Path) -> Source:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise ConfigError([Problem(str(path), None, "", "the folder holds no .yaml or .yml file")])
        return merge([parse_text(f.read_text(encoding="utf-8"), str(f)) for f in files])
    if not path.exists():
        raise ConfigError([Problem(str(path), None, "", "no such file")])
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem(str(path), None, "", "not UTF-8 text")]) from None
    return parse_text(text, str(path))


def _dotted(path: tuple) -> str:
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def validate(source: Source) -> Document:
    """The document, or ConfigError naming file, line and field of every problem pydantic found."""
    try:
        return Document.model_validate(source.data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = tuple(step for step in error["loc"] if not (isinstance(step, str) and "[" in step))
            name, line = source.where(path) or ("?", None)
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = f"unknown key {path[-1]!r}"
            elif error["type"] == "literal_error" and "expected" in error.get("ctx", {}):
                message = f"must be one of {error['ctx']['expected']}"
            problems.append(Problem(name, line, _dotted(path), message))
        raise ConfigError(problems) from None


def load(path: str | Path) -> tuple[Document, Source]:
    source = read_sources(path)
    return validate(source), source


def load_text(text: str, name: str = "ringfence.yaml") -> tuple[Document, Source]:
    source = parse_text(text, name)
    return validate(source), source
