"""Build-graph scheduling: which steps can run together, and what a change invalidates.

Nodes are the ints ``0..n``; an edge ``(a, b)`` means ``a`` must run before ``b`` (``b``
depends on ``a``). Edges can be given as a sequence of pairs (a list of tuples is fastest), as
a numpy integer array of shape ``(m, 2)``, or as ``bytes`` of little-endian int64 pairs. The work
is done by the Rust core with the GIL released.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from memobuild import _core
from memobuild.errors import DagCycleError

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy as np
    import numpy.typing as npt

    Edges: TypeAlias = (
        Sequence[tuple[int, int]] | Sequence[Sequence[int]] | npt.NDArray[np.integer[Any]] | bytes
    )
    """Pairs, an ``(m, 2)`` numpy integer array, or packed little-endian int64 pairs."""

__all__ = ["affected", "levels"]


def levels(n: int, edges: Edges) -> list[list[int]]:
    """Group the nodes ``0..n`` into levels that can run in parallel.

    Level 0 holds the nodes without dependencies; every other node sits one level after the
    deepest of its dependencies. Every node appears exactly once, nodes within a level in
    ascending order. Duplicate edges are allowed.

    Raises DagCycleError naming the nodes on one cycle if the graph has one, and ValueError
    for a malformed edge or a node id outside ``0..n``.
    """
    n = _node_count(n)
    try:
        return _core.dag_levels(n, _as_core_edges(edges))
    except _core.CycleError as err:
        raise DagCycleError(list(err.args[0])) from None


def affected(n: int, edges: Edges, changed: Iterable[int]) -> list[int]:
    """The ``changed`` nodes and every node that depends on them, directly or not, ascending.

    A graph with cycles is fine here. Raises ValueError for a malformed edge or a node id
    outside ``0..n``.
    """
    n = _node_count(n)
    return _core.dag_affected(n, _as_core_edges(edges), changed)


def _node_count(n: int) -> int:
    try:
        count = operator.index(n)
    except TypeError:
        raise ValueError(f"n must be an int, got {type(n).__name__}") from None
    if count < 0:
        raise ValueError(f"n must be non-negative, got {count}")
    return count


def _as_core_edges(edges: Edges) -> Sequence[Sequence[int]] | bytes:
    """Edges in a form the core takes: pairs and bytes go as they are (the core checks them),
    a numpy array is packed into bytes without making a Python object per id."""
    if isinstance(edges, (bytes, Sequence)):
        return edges
    return _pack_array(edges)


def _pack_array(edges: npt.NDArray[Any]) -> bytes:
    # An ndarray can only exist once numpy is imported: other input never imports it.
    numpy = sys.modules.get("numpy")
    if numpy is None or not isinstance(edges, numpy.ndarray):
        raise ValueError(
            "edges must be a sequence of (source, target) pairs, an (m, 2) integer array "
            f"or bytes of int64 pairs, got {type(edges).__name__}"
        )
    import numpy as np

    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"an edge array must have shape (m, 2), got {edges.shape}")
    if not np.issubdtype(edges.dtype, np.integer):
        raise ValueError(f"an edge array must hold integers, got dtype {edges.dtype}")
    too_big = np.iinfo(np.int64).max
    if edges.dtype == np.uint64 and edges.size and edges.max() > too_big:
        # The cast to int64 below would wrap these round to negative ids.
        row = int(np.argmax(edges.max(axis=1) > too_big))
        raise ValueError(f"edge {row}: node {edges[row].max()} is out of range")
    return np.ascontiguousarray(edges, dtype="<i8").tobytes()
