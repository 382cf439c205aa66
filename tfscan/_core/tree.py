"""Pytrees with JAX's conventions: ``None`` is an empty subtree, dicts are sorted.

TensorFlow's ``tf.nest`` treats ``None`` as a leaf; ``jax.lax.scan`` treats it as a
node with no children.  tfscan follows JAX, so it has its own small flattener that
also records the path of every leaf (``carry[1]['h']``) for error messages.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Hashable, Iterator, NamedTuple, Sequence

__all__ = []  # private module


class TreeDef(NamedTuple):
    """The shape of a pytree without its leaves (hashable, comparable)."""

    kind: str  # "leaf", "none", "tuple", "list", "dict", "odict", "namedtuple"
    aux: Hashable  # dict keys, namedtuple class, or None
    children: tuple

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)

    def __str__(self) -> str:  # a readable structure for error messages
        return _describe(self)


LEAF = TreeDef("leaf", None, ())


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _children(tree: Any) -> tuple[str, Hashable, list[tuple[str, Any]]] | None:
    """(kind, aux, [(path-suffix, child), ...]) for a container, None for a leaf."""
    if tree is None:
        return "none", None, []
    if _is_namedtuple(tree):
        return "namedtuple", type(tree), [(f".{k}", v) for k, v in zip(tree._fields, tree)]
    if isinstance(tree, tuple):
        return "tuple", None, [(f"[{i}]", v) for i, v in enumerate(tree)]
    if isinstance(tree, list):
        return "list", None, [(f"[{i}]", v) for i, v in enumerate(tree)]
    if isinstance(tree, collections.OrderedDict):
        keys = tuple(tree.keys())
        return "odict", keys, [(f"[{k!r}]", tree[k]) for k in keys]
    if isinstance(tree, dict):
        try:
            keys = tuple(sorted(tree.keys()))
        except TypeError as e:
            raise TypeError(f"dict keys must be sortable, got {list(tree.keys())!r}") from e
        return "dict", keys, [(f"[{k!r}]", tree[k]) for k in keys]
    return None


def flatten_with_paths(tree: Any, root: str = "") -> tuple[list[Any], list[str], TreeDef]:
    """Leaves in order, their paths (``root`` + suffix) and the tree definition."""
    leaves: list[Any] = []
    paths: list[str] = []

    def walk(node: Any, path: str) -> TreeDef:
        spec = _children(node)
        if spec is None:
            leaves.append(node)
            paths.append(path)
            return LEAF
        kind, aux, items = spec
        return TreeDef(kind, aux, tuple(walk(child, path + suffix) for suffix, child in items))

    treedef = walk(tree, root)
    return leaves, paths, treedef


def flatten(tree: Any) -> tuple[list[Any], TreeDef]:
    leaves, _, treedef = flatten_with_paths(tree)
    return leaves, treedef


def leaf_paths(treedef: TreeDef, root: str = "") -> list[str]:
    """The path of every leaf of ``treedef``, in flattening order."""
    return _paths(treedef, root)


def _paths(treedef: TreeDef, path: str) -> list[str]:
    if treedef.kind == "leaf":
        return [path]
    out: list[str] = []
    for suffix, child in zip(_suffixes(treedef), treedef.children):
        out.extend(_paths(child, path + suffix))
    return out


def _suffixes(treedef: TreeDef) -> list[str]:
    if treedef.kind == "namedtuple":
        return [f".{k}" for k in treedef.aux._fields]
    if treedef.kind in ("dict", "odict"):
        return [f"[{k!r}]" for k in treedef.aux]
    return [f"[{i}]" for i in range(len(treedef.children))]


def unflatten(treedef: TreeDef, leaves: Sequence[Any]) -> Any:
    """Rebuild a pytree of ``treedef`` from ``leaves`` (their count must match)."""
    if len(leaves) != treedef.num_leaves:
        raise ValueError(f"expected {treedef.num_leaves} leaves, got {len(leaves)}")
    return _build(treedef, iter(leaves))


def _build(treedef: TreeDef, it: Iterator[Any]) -> Any:
    kind = treedef.kind
    if kind == "leaf":
        return next(it)
    if kind == "none":
        return None
    children = [_build(c, it) for c in treedef.children]
    if kind == "tuple":
        return tuple(children)
    if kind == "list":
        return children
    if kind == "namedtuple":
        return treedef.aux(*children)
    if kind == "odict":
        return collections.OrderedDict(zip(treedef.aux, children))
    return dict(zip(treedef.aux, children))


def map_leaves(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leaf-wise over trees of one structure."""
    leaves, treedef = flatten(tree)
    others = [flatten(r)[0] for r in rest]
    return unflatten(treedef, [fn(*xs) for xs in zip(leaves, *others)])


def _describe(treedef: TreeDef) -> str:
    kind = treedef.kind
    if kind == "leaf":
        return "*"
    if kind == "none":
        return "None"
    inner = [_describe(c) for c in treedef.children]
    if kind == "tuple":
        return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"
    if kind == "list":
        return "[" + ", ".join(inner) + "]"
    if kind == "namedtuple":
        fields = ", ".join(f"{k}={v}" for k, v in zip(treedef.aux._fields, inner))
        return f"{treedef.aux.__name__}({fields})"
    items = ", ".join(f"{k!r}: {v}" for k, v in zip(treedef.aux, inner))
    return "{" + items + "}"
