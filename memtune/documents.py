"""Reading manifests without surprises: bounded YAML, no duplicate keys, JSON values only.

A manifest travels to the trainer in a ConfigMap (at most 1 MiB) and is copied into every run as job.yaml, so
anything bigger cannot run on a cluster and anything that is not plain JSON breaks a step after training. Both
are refused here, before any work:

- the text: at most `MAX_MANIFEST_BYTES`;
- YAML aliases are measured as they expand, never expanded: a 1 KiB "billion laughs" is refused by size;
- a recursive alias (`&a [*a]`) and nesting deeper than `MAX_DEPTH` are refused;
- a key given twice in one mapping is refused (YAML would silently keep the last block); merge keys (`<<`) may
  be overridden as YAML intends;
- values must be JSON: strings, finite floats, booleans, null, and integers within int64 (what Kubernetes
  stores); YAML's timestamps, binary and sets are refused with the path that holds them.

Errors are `DocumentError`s holding `(where, message)` pairs (a field path or a line), never the offending value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import yaml

# A Kubernetes ConfigMap, which carries the spec to the trainer pod, holds at most 1 MiB.
MAX_MANIFEST_BYTES = 1 << 20
# Characters of every key and scalar, an alias counted at each use: what job.yaml would hold, roughly.
MAX_EXPANDED_SIZE = 1 << 20
MAX_DEPTH = 64
_INT64 = (-(2**63), 2**63 - 1)


class DocumentError(ValueError):
    """A manifest cannot be read as a bounded JSON document; `problems` holds `(where, message)` pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{where}: {message}" for where, message in problems))


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `9e-4` as a float (YAML 1.1 wants a dot in the mantissa, YAML 1.2 does not)."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as error:  # int("1" * 5000), a 13th month, ...: no YAMLError
            problem = str(error)
            if "integer string conversion" in problem:
                problem = "a number with more digits than an integer may have"
            message = f"unreadable value ({problem})"
            raise yaml.constructor.ConstructorError(None, None, message, node.start_mark) from None


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_yaml(text: str) -> Any:
    """One YAML document as Python objects, checked by `check_yaml_nodes` before anything is constructed."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise DocumentError([("(file)", f"{len(text)} characters; a manifest holds at most {MAX_MANIFEST_BYTES}")])
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_yaml_nodes(node)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"(yaml) line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        raise DocumentError([(where, " ".join(filter(None, (error.context, error.problem))))]) from None
    except yaml.YAMLError as error:
        raise DocumentError([("(yaml)", str(error))]) from None
    except RecursionError:
        raise DocumentError([("(yaml)", f"nested too deeply (at most {MAX_DEPTH} levels)")]) from None
    finally:
        loader.dispose()


def _key_text(node: yaml.Node) -> str:
    return node.value if isinstance(node, yaml.ScalarNode) else f"<{node.id}>"


def check_yaml_nodes(root: yaml.Node) -> None:
    """Refuse duplicate keys, recursive aliases, depth and expanded size, visiting each node once."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height), for aliases met again
    active: set[int] = set()  # nodes whose subtree is being measured: meeting one again is a cycle
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    while stack:
        node, path, finished = stack.pop()
        if finished:
            children = _yaml_children(node)
            size = 2 + sum(sizes[id(child)][0] for child in children)
            height = 1 + max((sizes[id(child)][1] for child in children), default=0)
            active.discard(id(node))
            sizes[id(node)] = (size, height)
            _check_bounds(path, size, height)
            continue
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = (len(node.value) + 1, 0)
            continue
        if id(node) in active:
            raise DocumentError([(path or "(document)", "a YAML alias that contains itself")])
        active.add(id(node))
        stack.append((node, path, True))
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(node, path)
            for key, value in reversed(node.value):
                stack.append((value, f"{path}.{_key_text(key)}" if path else _key_text(key), False))
                stack.append((key, path, False))
        else:
            for index in reversed(range(len(node.value))):
                stack.append((node.value[index], f"{path}[{index}]", False))


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value)


def _refuse_duplicate_keys(node: yaml.MappingNode, path: str) -> None:
    first_line: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
            continue
        line, identity = key.start_mark.line + 1, (key.tag, key.value)
        if identity in first_line:
            where = f"{path}.{key.value}" if path else key.value
            message = f"key given twice (first at line {first_line[identity]}); keep one"
            raise DocumentError([(f"{where} (line {line})", message)])
        first_line[identity] = line


def _check_bounds(path: str, size: int, height: int) -> None:
    where = path or "(document)"
    if height > MAX_DEPTH:
        raise DocumentError([(where, f"nested more than {MAX_DEPTH} levels deep")])
    if size > MAX_EXPANDED_SIZE:
        raise DocumentError(
            [(where, f"expands to more than {MAX_EXPANDED_SIZE} characters (aliases counted at each use)")]
        )


def check_document(document: Any) -> None:
    """The same bounds for a document that did not come from YAML (the SDK's dicts, an API server's JSON),
    and JSON values only. Shared sub-objects are measured once and counted at each use."""
    sizes: dict[int, tuple[int, int]] = {}
    active: set[int] = set()
    problems: list[tuple[str, str]] = []
    stack: list[tuple[Any, str, bool]] = [(document, "", False)]
    while stack:
        value, path, finished = stack.pop()
        if finished:
            children = list(_children(value))
            size = 2 + sum(_size_of(child, sizes) for _, child in children)
            size += sum(len(key) + 1 for key, _ in children if isinstance(key, str))
            height = 1 + max((sizes[id(child)][1] for _, child in children if id(child) in sizes), default=0)
            active.discard(id(value))
            sizes[id(value)] = (size, height)
            _check_bounds(path, size, height)
            continue
        if not isinstance(value, dict | list):
            if problem := _scalar_problem(value):
                problems.append((path or "(document)", problem))
            continue
        if id(value) in sizes:
            continue
        if id(value) in active:
            raise DocumentError([(path or "(document)", "contains itself")])
        active.add(id(value))
        stack.append((value, path, True))
        for key, child in reversed(list(_children(value))):
            if isinstance(value, dict) and not isinstance(key, str):
                problems.append((f"{path}[{key!r}]" if path else repr(key), "keys must be strings (quote the key)"))
            name = f"[{key}]" if isinstance(value, list) else f".{key}" if path else str(key)
            stack.append((child, f"{path}{name}", False))
    if problems:
        raise DocumentError(problems[:20])


def _children(value: dict | list) -> Iterator[tuple[Any, Any]]:
    return iter(value.items()) if isinstance(value, dict) else enumerate(value)


def _size_of(value: Any, sizes: dict[int, tuple[int, int]]) -> int:
    if isinstance(value, dict | list):
        return sizes[id(value)][0]
    if isinstance(value, str):
        return len(value) + 1
    if isinstance(value, int):
        return value.bit_length() // 3 + 2
    return 8


def _scalar_problem(value: Any) -> str | None:
    """Why a leaf is no JSON value Kubernetes could store, or None."""
    if value is None or isinstance(value, str | bool):
        return None
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            return "integer outside int64 (what Kubernetes stores)"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "not a finite number (NaN and infinity are not JSON)"
    return f"a {type(value).__name__} is not a JSON value (quote it if it is text)"
