"""dag levels against networkx and rustworkx, from one Python edge list, at 10k, 100k and 1M nodes.

Targets (the DAG scheduling issue): at 1M nodes at least 20x faster than networkx and 2x faster
than rustworkx. Every contender starts from the same list of ``(source, target)`` tuples and ends
with the levels (topological generations), graph construction included:

- memobuild: ``memobuild.dag.levels(n, edges)``;
- memobuild-numpy: ``memobuild.dag.levels(n, array)``, where ``array`` is that list as an
  ``(m, 2)`` int64 array, built once outside the timing (what a numpy user already holds);
- networkx: ``DiGraph.add_edges_from(edges)`` then ``list(nx.topological_generations(g))``;
- rustworkx: a ``PyDiGraph`` with ``n`` nodes, ``extend_from_edge_list(edges)``, then
  ``rx.topological_generations(g)``.

The graphs are random DAGs with out-degree ~3: each edge joins a lower to a higher position of
a random permutation of the ids, so ids carry no hint of the order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np
import pytest
import rustworkx as rx

from memobuild.dag import levels

OUT_DEGREE = 3


@dataclass
class Graph:
    n: int
    edges: list[tuple[int, int]]
    array: np.ndarray
    expected: list[list[int]]  # ours, checked below against the definition of a level


def make_graph(n: int, seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    m = OUT_DEGREE * n
    lower = rng.integers(0, n - 1, m)
    higher = lower + 1 + (rng.random(m) * (n - 1 - lower)).astype(np.int64)
    perm = rng.permutation(n)
    array = np.stack([perm[lower], perm[higher]], axis=1).astype(np.int64)
    edges = list(zip(array[:, 0].tolist(), array[:, 1].tolist(), strict=True))
    expected = levels(n, edges)
    check_levels(n, array, expected)
    return Graph(n, edges, array, expected)


def check_levels(n: int, array: np.ndarray, result: list[list[int]]) -> None:
    """`result` is exactly the longest-path levels: every node once, ascending within a level,
    and each node one level after its deepest dependency (level 0 without dependencies)."""
    assert sum(map(len, result)) == n
    assert all(level == sorted(level) for level in result)
    depth = np.full(n, -1, dtype=np.int64)
    for k, level in enumerate(result):
        depth[level] = k
    assert (depth >= 0).all()
    src, dst = array[:, 0], array[:, 1]
    deepest_dependency = np.full(n, -1, dtype=np.int64)
    np.maximum.at(deepest_dependency, dst, depth[src])
    assert (depth == deepest_dependency + 1).all()


def normalised(generations: Any) -> list[list[int]]:
    return [sorted(generation) for generation in generations]


def run_memobuild(g: Graph) -> list[list[int]]:
    return levels(g.n, g.edges)


def run_memobuild_numpy(g: Graph) -> list[list[int]]:
    return levels(g.n, g.array)


def run_networkx(g: Graph) -> list[list[int]]:
    graph = nx.DiGraph()
    graph.add_edges_from(g.edges)
    return list(nx.topological_generations(graph))


def run_rustworkx(g: Graph) -> Any:
    graph = rx.PyDiGraph()
    graph.add_nodes_from([None] * g.n)
    graph.extend_from_edge_list(g.edges)
    return rx.topological_generations(graph)


def check_memobuild(g: Graph, result: list[list[int]]) -> None:
    assert result == g.expected


def check_networkx(g: Graph, result: list[list[int]]) -> None:
    # networkx only knows the nodes its edges name; the others are all ours at level 0.
    named = np.zeros(g.n, dtype=bool)
    named[g.array.ravel()] = True
    expected = [[v for v in level if named[v]] for level in g.expected]
    assert normalised(result) == expected


def check_rustworkx(g: Graph, result: Any) -> None:
    assert normalised(result) == g.expected


# impl id -> (extra_info["impl"], run, check)
IMPLS: dict[str, tuple[str, Callable[[Graph], Any], Callable[[Graph, Any], None]]] = {
    "memobuild-list": ("memobuild", run_memobuild, check_memobuild),
    "memobuild-numpy": ("memobuild-numpy", run_memobuild_numpy, check_memobuild),
    "networkx": ("networkx", run_networkx, check_networkx),
    "rustworkx": ("rustworkx", run_rustworkx, check_rustworkx),
}

# Rounds per size: networkx takes ~9 s a round at 1M nodes.
ROUNDS = {
    "10k": {"networkx": 5, "rustworkx": 10, "default": 20},
    "100k": {"networkx": 3, "rustworkx": 5, "default": 10},
    "1M": {"networkx": 1, "rustworkx": 3, "default": 5},
}


def bench(benchmark, g: Graph, size: str, impl_id: str) -> None:
    impl, run, check = IMPLS[impl_id]
    benchmark.group = f"dag_levels {size}"
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["nodes"] = g.n
    benchmark.extra_info["edges"] = len(g.edges)
    rounds = ROUNDS[size].get(impl, ROUNDS[size]["default"])
    result = benchmark.pedantic(run, args=(g,), rounds=rounds, iterations=1)
    check(g, result)


@pytest.fixture(scope="module")
def graph_10k() -> Graph:
    return make_graph(10_000, seed=10)


@pytest.fixture(scope="module")
def graph_100k() -> Graph:
    return make_graph(100_000, seed=100)


@pytest.fixture(scope="module")
def graph_1m() -> Graph:
    return make_graph(1_000_000, seed=1000)


@pytest.mark.parametrize("impl_id", list(IMPLS))
def test_levels_10k(benchmark, graph_10k, impl_id):
    bench(benchmark, graph_10k, "10k", impl_id)


@pytest.mark.parametrize("impl_id", list(IMPLS))
def test_levels_100k(benchmark, graph_100k, impl_id):
    bench(benchmark, graph_100k, "100k", impl_id)


@pytest.mark.parametrize("impl_id", list(IMPLS))
def test_levels_1m(benchmark, graph_1m, impl_id):
    bench(benchmark, graph_1m, "1M", impl_id)
