"""Flat layouts: the named groups of a flat list of tensors.

A compiled function takes and returns one flat list; its layout is a sequence of groups
(init, xs, consts, saved, ...). ``split_list`` cuts a list into groups by named counts,
as ``jax._src.util.split_list`` does (``init, xs, rest = split_list(args, [n_init,
n_xs])``), so no caller slices by hand and a wrong count fails loudly instead of shifting
every later group. ``scatter`` is its inverse for the sparse case (gradients of the
differentiable leaves only, ``None`` elsewhere).
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = []  # private module


def split_list(seq: Sequence[Any], counts: Sequence[int]) -> list[list]:
    """``len(counts) + 1`` consecutive groups of ``seq``: the counted ones, then the rest.

    >>> split_list([1, 2, 3, 4, 5], [2, 1])
    [[1, 2], [3], [4, 5]]
    """
    seq, groups, start = list(seq), [], 0
    for n in counts:
        if n < 0 or start + n > len(seq):
            raise AssertionError(f"tfscan internal: a flat layout of {len(seq)} entries cannot hold "
                                 f"groups of {list(counts)}")
        groups.append(seq[start: start + n])
        start += n
    groups.append(seq[start:])
    return groups


def scatter(n: int, indices: Sequence[int], values: Sequence[Any]) -> list:
    """A list of ``n`` entries: ``values`` at ``indices``, ``None`` elsewhere.

    >>> scatter(3, [0, 2], ["a", "c"])
    ['a', None, 'c']
    """
    out: list = [None] * n
    for i, v in zip(indices, values):
        out[i] = v
    return out
