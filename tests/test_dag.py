"""memobuild.dag: levels, cycle reports and affected sets, against a plain Python reference."""

from __future__ import annotations

import random
import struct
from collections import UserList, deque

import numpy as np
import pytest

from memobuild import _core
from memobuild.dag import affected, levels
from memobuild.errors import DagCycleError, InputError

# --- a plain reference -------------------------------------------------------------------------


def ref_levels(n: int, edges: list[tuple[int, int]]) -> list[list[int]]:
    """Longest-path depth of every node by relaxation to a fixed point (acyclic input only)."""
    depth = [0] * n
    changed = True
    while changed:
        changed = False
        for a, b in edges:
            if depth[b] < depth[a] + 1:
                depth[b] = depth[a] + 1
                changed = True
    out: list[list[int]] = [[] for _ in range(max(depth, default=-1) + 1)]
    for v in range(n):
        out[depth[v]].append(v)
    return out


def ref_affected(n: int, edges: list[tuple[int, int]], changed: list[int]) -> list[int]:
    succ: dict[int, list[int]] = {}
    for a, b in edges:
        succ.setdefault(a, []).append(b)
    seen = set(changed)
    todo = deque(changed)
    while todo:
        for v in succ.get(todo.popleft(), []):
            if v not in seen:
                seen.add(v)
                todo.append(v)
    return sorted(seen)


def ref_has_cycle(n: int, edges: list[tuple[int, int]]) -> bool:
    indeg = [0] * n
    succ: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        succ[a].append(b)
        indeg[b] += 1
    ready = [v for v in range(n) if indeg[v] == 0]
    emitted = 0
    while ready:
        u = ready.pop()
        emitted += 1
        for v in succ[u]:
            indeg[v] -= 1
            if indeg[v] == 0:
                ready.append(v)
    return emitted < n


def assert_real_cycle(nodes: list[int], edges: list[tuple[int, int]]) -> None:
    """`nodes` in order form a cycle of `edges`: each leads to the next, the last to the first."""
    assert nodes, "an empty cycle"
    assert len(set(nodes)) == len(nodes), f"{nodes} repeats a node"
    edge_set = set(edges)
    for a, b in zip(nodes, nodes[1:] + nodes[:1], strict=True):
        assert (a, b) in edge_set, f"{a} -> {b} is not an edge of the cycle {nodes}"


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311  (reproducible test data, not secrets)


def random_dag(rng: random.Random, n: int, m: int) -> list[tuple[int, int]]:
    """Edges from lower to higher rank under a random permutation: acyclic, ids shuffled."""
    rank = list(range(n))
    rng.shuffle(rank)
    edges = []
    for _ in range(m):
        x, y = rng.randrange(n), rng.randrange(n)
        if x != y:
            edges.append((rank[min(x, y)], rank[max(x, y)]))
    return edges


# --- hand-made graphs ---------------------------------------------------------------------------

DIAMOND = [(0, 1), (0, 2), (1, 3), (2, 3)]


def test_diamond():
    assert levels(4, DIAMOND) == [[0], [1, 2], [3]]


def test_chain_of_many_nodes():
    n = 50_000
    edges = [(i, i + 1) for i in range(n - 1)]
    assert levels(n, edges) == [[i] for i in range(n)]


def test_disconnected_components_interleave_by_depth():
    edges = [(0, 1), (1, 2), (10, 11), (5, 11)]
    assert levels(12, edges) == [[0, 3, 4, 5, 6, 7, 8, 9, 10], [1, 11], [2]]


def test_empty_graph():
    assert levels(0, []) == []
    assert affected(0, [], []) == []


def test_isolated_nodes_without_edges():
    assert levels(5, []) == [[0, 1, 2, 3, 4]]


def test_node_sits_after_its_deepest_dependency():
    # 4 depends on 0 directly and on 3 at depth 2: level 3, not level 1.
    edges = [(0, 4), (0, 1), (1, 2), (2, 3), (3, 4)]
    assert levels(5, edges) == [[0], [1], [2], [3], [4]]


def test_levels_are_sorted_whatever_the_edge_order():
    edges = [(9, 3), (9, 1), (9, 7), (9, 0), (8, 5)]
    assert levels(10, edges) == [[2, 4, 6, 8, 9], [0, 1, 3, 5, 7]]


def test_duplicate_edges():
    edges = [(0, 1), (0, 1), (1, 2), (0, 1), (1, 2), (0, 2)]
    assert levels(3, edges) == [[0], [1], [2]]
    assert affected(3, edges, [1]) == [1, 2]


def test_other_sequence_shapes_give_the_same_answer():
    assert levels(4, [list(e) for e in DIAMOND]) == [[0], [1, 2], [3]]
    assert levels(4, tuple(DIAMOND)) == [[0], [1, 2], [3]]
    assert levels(4, UserList(DIAMOND)) == [[0], [1, 2], [3]]


# --- cycles -------------------------------------------------------------------------------------


def cycle_of(n: int, edges: list[tuple[int, int]]) -> list[int]:
    with pytest.raises(DagCycleError) as info:
        levels(n, edges)
    assert_real_cycle(info.value.nodes, edges)
    return info.value.nodes


def test_self_loop():
    assert cycle_of(3, [(0, 1), (2, 2)]) == [2]


def test_two_cycle():
    assert cycle_of(5, [(0, 4), (4, 2), (2, 4)]) == [2, 4]


def test_three_cycle_with_a_tail_names_only_the_cycle():
    # 0 -> 1 -> 2 -> 3 -> 1, and 4, 5 stuck behind it: only 1, 2, 3 are on the cycle.
    edges = [(0, 1), (1, 2), (2, 3), (3, 1), (3, 4), (4, 5)]
    assert cycle_of(6, edges) == [1, 2, 3]


def test_cycle_error_is_a_value_error_and_says_the_path():
    with pytest.raises(DagCycleError) as info:
        levels(3, [(2, 0), (0, 1), (1, 2)])
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, InputError)
    assert err.nodes == [0, 1, 2]
    assert str(err) == "dependency cycle: 0 -> 1 -> 2 -> 0"


def test_core_cycle_error_carries_the_nodes():
    with pytest.raises(_core.CycleError) as info:
        _core.dag_levels(3, [(1, 2), (2, 1)])
    assert issubclass(_core.CycleError, ValueError)
    assert info.value.args == ([1, 2],)


def test_affected_tolerates_cycles():
    edges = [(0, 1), (1, 2), (2, 1), (3, 3)]
    assert affected(4, edges, [2]) == [1, 2]
    assert affected(4, edges, [3]) == [3]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ([(0, 1), (1, 3)], "edge 1: node 3 is out of range for a graph of 3 nodes"),
        ([(3, 0)], "edge 0: node 3 is out of range for a graph of 3 nodes"),
        ([(0, 1), (0, 2**40)], f"edge 1: node {2**40} is out of range for a graph of 3 nodes"),
        ([(0, 2**80)], f"edge 0: node {2**80} is out of range for a graph of 3 nodes"),
        ([(0, 1), (2, -1)], "edge 1: node id -1 is negative"),
        ([(-(2**80), 0)], f"edge 0: node id {-(2**80)} is negative"),
        ([(0, 1), (1, 2, 0)], "edge 1: expected a (source, target) pair, got tuple of length 3"),
        ([(0, 1), [1]], "edge 1: expected a (source, target) pair, got list of length 1"),
        ([5], "edge 0: expected a (source, target) pair, got int"),
        ([(0, "1")], "edge 0: node ids must be ints, got str"),
        ([(0, 1.0)], "edge 0: node ids must be ints, got float"),
        (
            5,
            "edges must be a sequence of (source, target) pairs, an (m, 2) integer array "
            "or bytes of int64 pairs, got int",
        ),
    ],
)
def test_bad_edges_say_which_edge(edges, message):
    with pytest.raises(ValueError) as info:
        levels(3, edges)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        affected(3, edges, [0])
    assert str(info.value) == message


def test_core_rejects_what_is_not_edges():
    with pytest.raises(ValueError, match=r"^edges must be a sequence .* got int$"):
        _core.dag_levels(3, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"got generator$"):
        levels(4, (edge for edge in DIAMOND))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^n must be a non-negative int, got -1$"):
        _core.dag_levels(-1, [])


def test_out_of_range_edge_in_a_big_list():
    edges = [(i, i + 1) for i in range(999)] + [(5, 1000)]
    with pytest.raises(ValueError, match=r"^edge 999: node 1000 is out of range"):
        levels(1000, edges)


@pytest.mark.parametrize("n", [-1, "3", 2.0, None])
def test_bad_node_count(n):
    with pytest.raises(ValueError, match=r"^n must be"):
        levels(n, [])
    with pytest.raises(ValueError, match=r"^n must be"):
        affected(n, [], [])


def test_bad_changed_nodes():
    with pytest.raises(ValueError, match=r"^changed\[1\]: node 4 is out of range"):
        affected(4, DIAMOND, [0, 4])
    with pytest.raises(ValueError, match=r"^changed\[0\]: node id -1 is negative"):
        affected(4, DIAMOND, [-1])
    with pytest.raises(ValueError, match=r"^changed must be an iterable"):
        affected(4, DIAMOND, 3)  # type: ignore[arg-type]


def test_bad_ids_are_reported_before_cycles():
    # The id check comes first: a bad id is reported even though the rest has a cycle.
    with pytest.raises(ValueError, match=r"^edge 2: node 7"):
        levels(3, [(0, 1), (1, 0), (0, 7)])


# --- packed and numpy input ---------------------------------------------------------------------


def pack(edges: list[tuple[int, int]]) -> bytes:
    return b"".join(struct.pack("<qq", a, b) for a, b in edges)


def test_packed_bytes_equal_the_list():
    assert levels(4, pack(DIAMOND)) == [[0], [1, 2], [3]]
    assert affected(4, pack(DIAMOND), [2]) == [2, 3]
    assert levels(3, b"") == [[0, 1, 2]]


@pytest.mark.parametrize("length", [1, 8, 15, 17, 33])
def test_packed_length_must_be_whole_pairs(length):
    with pytest.raises(ValueError, match=rf"^packed edges .* got {length} bytes$"):
        levels(4, pack(DIAMOND * 3)[:length])


def test_packed_ids_are_checked():
    with pytest.raises(ValueError, match=r"^edge 2: node id -5 is negative$"):
        levels(4, pack([(0, 1), (1, 2), (-5, 3)]))
    with pytest.raises(ValueError, match=r"^edge 1: node 4 is out of range for a graph of 4"):
        levels(4, pack([(0, 1), (1, 4)]))
    with pytest.raises(ValueError, match=rf"^edge 0: node {2**40} is out of range"):
        levels(4, pack([(2**40, 1)]))
    with pytest.raises(DagCycleError) as info:
        levels(4, pack([(0, 1), (1, 0)]))
    assert info.value.nodes == [0, 1]


@pytest.mark.parametrize("dtype", ["int64", "int32", "uint16", "uint64", ">i8"])
def test_numpy_equals_list(dtype):
    rng = seeded(7)
    edges = random_dag(rng, 500, 1500)
    expected = levels(500, edges)
    array = np.array(edges, dtype=dtype)
    assert levels(500, array) == expected
    changed = [edges[0][0], edges[7][1]]
    assert affected(500, array, np.array(changed)) == affected(500, edges, changed)


def test_numpy_views_and_layouts():
    edges = random_dag(seeded(8), 300, 900)
    expected = levels(300, edges)
    array = np.array(edges, dtype=np.int64)
    assert levels(300, np.asfortranarray(array)) == expected
    doubled = np.repeat(array, 2, axis=0)
    assert levels(300, doubled[::2]) == expected  # a strided view
    assert levels(300, np.empty((0, 2), dtype=np.int64)) == [list(range(300))]


def test_numpy_bad_arrays():
    with pytest.raises(ValueError, match=r"shape \(m, 2\), got \(4,\)"):
        levels(4, np.arange(4))
    with pytest.raises(ValueError, match=r"shape \(m, 2\), got \(2, 3\)"):
        levels(4, np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="must hold integers, got dtype float64"):
        levels(4, np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"^edge 1: node id -1 is negative$"):
        levels(4, np.array([[0, 1], [-1, 2]]))
    with pytest.raises(ValueError, match=rf"^edge 1: node {2**64 - 1} is out of range"):
        levels(4, np.array([[0, 1], [2**64 - 1, 2]], dtype=np.uint64))
    with pytest.raises(DagCycleError) as info:
        levels(4, np.array([[3, 1], [1, 2], [2, 3]]))
    assert info.value.nodes == [1, 2, 3]


# --- random graphs against the reference --------------------------------------------------------

SIZES = [1, 2, 5, 20, 100, 300]


@pytest.mark.parametrize("n", SIZES)
def test_random_dags_match_the_reference(n):
    rng = seeded(1000 + n)
    for _ in range(100):
        edges = random_dag(rng, n, rng.randrange(3 * n + 1))
        expected = ref_levels(n, edges)
        assert levels(n, edges) == expected
        assert levels(n, np.array(edges, dtype=np.int64).reshape(-1, 2)) == expected
        changed = rng.sample(range(n), rng.randrange(min(n, 4) + 1))
        assert affected(n, edges, changed) == ref_affected(n, edges, changed)


@pytest.mark.parametrize("n", SIZES)
def test_random_graphs_either_level_or_name_a_real_cycle(n):
    rng = seeded(2000 + n)
    cycles = 0
    for _ in range(100):
        edges = [(rng.randrange(n), rng.randrange(n)) for _ in range(rng.randrange(2 * n + 1))]
        if ref_has_cycle(n, edges):
            cycles += 1
            with pytest.raises(DagCycleError) as info:
                levels(n, edges)
            assert_real_cycle(info.value.nodes, edges)
            assert info.value.nodes[0] == min(info.value.nodes)
        else:
            assert levels(n, edges) == ref_levels(n, edges)
        changed = rng.sample(range(n), rng.randrange(min(n, 3) + 1))
        assert affected(n, edges, changed) == ref_affected(n, edges, changed)
    assert cycles > 0
