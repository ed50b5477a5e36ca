//! Build-graph scheduling: topological levels (Kahn), a cycle report, the affected subgraph.
//!
//! Nodes are `0..n`; an edge `(a, b)` means `a` must run before `b` (`b` depends on `a`).
//! Everything works on a compressed-sparse-row (CSR) successor list built by counting sort,
//! with `u32` indices and flat arrays only, so a graph with millions of edges is scheduled in
//! a few tens of milliseconds.

use std::fmt;

/// The most nodes, and the most edges, a graph may have. Every id, count and offset then fits
/// in a `u32`, and `u32::MAX` is never a node id, so it can mark "none".
pub const MAX_SIZE: usize = u32::MAX as usize - 1;

/// How many steps ahead the graph walks ask for the memory they will need.
const PREFETCH_AHEAD: usize = 16;

/// Why a graph cannot be scheduled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DagError {
    /// The graph has a cycle; the nodes on one cycle, in edge order (each node is followed by a
    /// node that depends on it, and the last by the first). Starts at the smallest node.
    Cycle(Vec<u32>),
    /// Edge number `edge` names `node`, which is not below the node count `n`.
    NodeOutOfRange { edge: usize, node: u64, n: usize },
    /// Entry number `index` of the changed-node list names `node`, not below `n`.
    ChangedOutOfRange { index: usize, node: u64, n: usize },
    /// More nodes or edges than [`MAX_SIZE`].
    TooLarge { n: usize, edges: usize },
}

impl fmt::Display for DagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DagError::Cycle(nodes) => {
                write!(f, "dependency cycle: ")?;
                for node in nodes {
                    write!(f, "{node} -> ")?;
                }
                match nodes.first() {
                    Some(first) => write!(f, "{first}"),
                    None => write!(f, "?"),
                }
            }
            DagError::NodeOutOfRange { edge, node, n } => {
                write!(
                    f,
                    "edge {edge}: node {node} is out of range for a graph of {n} nodes"
                )
            }
            DagError::ChangedOutOfRange { index, node, n } => write!(
                f,
                "changed[{index}]: node {node} is out of range for a graph of {n} nodes"
            ),
            DagError::TooLarge { n, edges } => write!(
                f,
                "graph too large: {n} nodes and {edges} edges (at most {MAX_SIZE} of each)"
            ),
        }
    }
}

impl std::error::Error for DagError {}

/// Fails with [`DagError::TooLarge`] unless a graph of `n` nodes and `edges` edges fits.
pub fn check_size(n: usize, edges: usize) -> Result<(), DagError> {
    if n > MAX_SIZE || edges > MAX_SIZE {
        return Err(DagError::TooLarge { n, edges });
    }
    Ok(())
}

/// The successors of every node: `targets[offsets[v]..offsets[v + 1]]`.
struct Csr {
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Csr {
    /// Builds the successor lists by counting sort, checking every id against `n` on the way;
    /// returns them with every node's in-degree.
    fn build(n: usize, edges: &[(u32, u32)]) -> Result<(Csr, Vec<u32>), DagError> {
        check_size(n, edges.len())?;
        // offsets[a] first counts a's out-edges, then (prefix sum) marks the end of its range.
        let mut offsets = vec![0u32; n + 1];
        let mut in_degree = vec![0u32; n];
        for (i, &(a, b)) in edges.iter().enumerate() {
            if a as usize >= n || b as usize >= n {
                let node = if a as usize >= n { a } else { b };
                return Err(DagError::NodeOutOfRange {
                    edge: i,
                    node: u64::from(node),
                    n,
                });
            }
            offsets[a as usize] += 1;
            in_degree[b as usize] += 1;
        }
        let mut sum = 0u32;
        for slot in offsets.iter_mut() {
            sum += *slot;
            *slot = sum;
        }
        // Filling backwards moves each offset from the end of its range to its start and keeps
        // every node's successors in input order.
        let mut targets = vec![0u32; edges.len()];
        for (i, &(a, b)) in edges.iter().enumerate().rev() {
            if let Some(&(ahead, _)) = i.checked_sub(PREFETCH_AHEAD).and_then(|j| edges.get(j)) {
                prefetch(offsets.as_ptr().wrapping_add(ahead as usize));
            }
            let slot = &mut offsets[a as usize];
            *slot -= 1;
            targets[*slot as usize] = b;
        }
        Ok((Csr { offsets, targets }, in_degree))
    }

    fn successors(&self, v: u32) -> &[u32] {
        let v = v as usize;
        &self.targets[self.offsets[v] as usize..self.offsets[v + 1] as usize]
    }
}

/// Asks the CPU to start loading the memory at `ptr` into cache.
///
/// The graph walks (and the bindings' reads of Python objects) are bound by cache misses on
/// scattered addresses; asking for the memory a few steps before it is used overlaps those
/// misses. A prefetch never faults, whatever the address. A no-op off x86-64.
#[inline(always)]
pub(crate) fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it has no architectural effect and cannot fault.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// Groups the nodes into levels that can run in parallel.
///
/// Level 0 holds the nodes without dependencies; every other node sits one level after the
/// deepest of its dependencies, so each level is as wide as it can be. Nodes within a level are
/// in ascending order. Duplicate edges are allowed. A self-loop or a cycle is
/// [`DagError::Cycle`] naming the nodes on one cycle.
pub fn levels(n: usize, edges: &[(u32, u32)]) -> Result<Vec<Vec<u32>>, DagError> {
    let (csr, mut in_degree) = Csr::build(n, edges)?;

    // Kahn's algorithm one level at a time: `queue[start..end]` is the current level, the nodes
    // it releases are appended behind it. The append is branchless (always write, advance only
    // when the in-degree hits zero): that branch is unpredictable, and each misprediction would
    // throw away the cache misses already in flight, which dominate the run time.
    let mut queue = vec![0u32; n + 1]; // one spare slot for the unconditional write
    let mut len = 0;
    for (v, &d) in in_degree.iter().enumerate() {
        queue[len] = v as u32;
        len += usize::from(d == 0);
    }
    let mut level = vec![0u32; n];
    let mut widths: Vec<usize> = Vec::new();
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    let mut start = 0;
    while start < len {
        let depth = widths.len() as u32;
        let end = len;
        // First look up every successor range of the level, then walk them: the inner loop's
        // exit then depends on data already in cache, not on a load still in flight.
        let frontier = &queue[start..end];
        ranges.clear();
        ranges.extend(frontier.iter().enumerate().map(|(k, &u)| {
            if let Some(&ahead) = frontier.get(k + PREFETCH_AHEAD) {
                prefetch(csr.offsets.as_ptr().wrapping_add(ahead as usize));
            }
            level[u as usize] = depth;
            (csr.offsets[u as usize], csr.offsets[u as usize + 1])
        }));
        for (k, &(lo, hi)) in ranges.iter().enumerate() {
            if let Some(&(ahead, _)) = ranges.get(k + PREFETCH_AHEAD) {
                prefetch(csr.targets.as_ptr().wrapping_add(ahead as usize));
            }
            for &v in &csr.targets[lo as usize..hi as usize] {
                let d = &mut in_degree[v as usize];
                *d -= 1;
                queue[len] = v;
                len += usize::from(*d == 0);
            }
        }
        widths.push(end - start);
        start = end;
    }
    if len < n {
        // Exactly the nodes Kahn could not emit keep a positive in-degree.
        return Err(DagError::Cycle(find_cycle(&in_degree, edges)));
    }

    // Bucket by level, scanning ids upwards so that every level comes out sorted.
    let mut out: Vec<Vec<u32>> = widths.into_iter().map(Vec::with_capacity).collect();
    for (v, &l) in level.iter().enumerate() {
        out[l as usize].push(v as u32);
    }
    Ok(out)
}

/// Finds one cycle among the nodes left with a positive in-degree after Kahn's algorithm.
///
/// Each such node has a dependency that is also left over (otherwise it would have been
/// emitted), so walking dependencies from any of them must repeat a node; the walk from the
/// first visit of that node onwards is a cycle.
fn find_cycle(left_in_degree: &[u32], edges: &[(u32, u32)]) -> Vec<u32> {
    const NONE: u32 = u32::MAX;
    let stuck = |v: u32| left_in_degree[v as usize] > 0;
    let mut pred = vec![NONE; left_in_degree.len()];
    for &(a, b) in edges {
        if stuck(a) && stuck(b) && pred[b as usize] == NONE {
            pred[b as usize] = a;
        }
    }
    let Some(start) = (0..left_in_degree.len() as u32).find(|&v| stuck(v)) else {
        return Vec::new();
    };
    // step[v] = position of v on the walk, NONE while unvisited.
    let mut step = vec![NONE; left_in_degree.len()];
    let mut walk = Vec::new();
    let mut v = start;
    while step[v as usize] == NONE {
        step[v as usize] = walk.len() as u32;
        walk.push(v);
        v = pred[v as usize];
    }
    // The walk follows edges backwards; reverse it into edge order.
    let mut cycle = walk.split_off(step[v as usize] as usize);
    cycle.reverse();
    if let Some(smallest) = cycle
        .iter()
        .enumerate()
        .min_by_key(|&(_, &v)| v)
        .map(|(i, _)| i)
    {
        cycle.rotate_left(smallest);
    }
    cycle
}

/// The `changed` nodes and every node downstream of them (that depends on them directly or
/// transitively), in ascending order. Cycles are allowed here; ids must be below `n`.
pub fn affected(n: usize, edges: &[(u32, u32)], changed: &[u32]) -> Result<Vec<u32>, DagError> {
    let (csr, _) = Csr::build(n, edges)?;
    let mut seen = vec![false; n];
    let mut stack: Vec<u32> = Vec::with_capacity(changed.len());
    for (i, &c) in changed.iter().enumerate() {
        let Some(s) = seen.get_mut(c as usize) else {
            return Err(DagError::ChangedOutOfRange {
                index: i,
                node: u64::from(c),
                n,
            });
        };
        if !*s {
            *s = true;
            stack.push(c);
        }
    }
    while let Some(u) = stack.pop() {
        for &v in csr.successors(u) {
            if !seen[v as usize] {
                seen[v as usize] = true;
                stack.push(v);
            }
        }
    }
    Ok((0..n as u32).filter(|&v| seen[v as usize]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that `cycle` is a real cycle of `edges`.
    fn assert_is_cycle(cycle: &[u32], edges: &[(u32, u32)]) {
        assert!(!cycle.is_empty());
        for (i, &a) in cycle.iter().enumerate() {
            let b = cycle[(i + 1) % cycle.len()];
            assert!(edges.contains(&(a, b)), "{a} -> {b} is not an edge");
        }
        let mut sorted = cycle.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), cycle.len(), "cycle repeats a node");
    }

    #[test]
    fn empty_graph_has_no_levels() {
        assert_eq!(levels(0, &[]), Ok(vec![]));
        assert_eq!(affected(0, &[], &[]), Ok(vec![]));
    }

    #[test]
    fn isolated_nodes_share_level_zero() {
        assert_eq!(levels(3, &[]), Ok(vec![vec![0, 1, 2]]));
    }

    #[test]
    fn diamond() {
        let edges = [(0, 1), (0, 2), (1, 3), (2, 3)];
        assert_eq!(levels(4, &edges), Ok(vec![vec![0], vec![1, 2], vec![3]]));
    }

    #[test]
    fn level_is_one_past_deepest_dependency() {
        // 4 depends on 0 directly and on 3 (depth 2): it belongs to level 3, not 1.
        let edges = [(0, 4), (0, 1), (1, 2), (2, 3), (3, 4), (5, 2)];
        assert_eq!(
            levels(6, &edges),
            Ok(vec![vec![0, 5], vec![1], vec![2], vec![3], vec![4]])
        );
    }

    #[test]
    fn levels_are_sorted_whatever_the_edge_order() {
        let edges = [(9, 3), (9, 1), (9, 7), (9, 0), (8, 5)];
        assert_eq!(
            levels(10, &edges),
            Ok(vec![vec![2, 4, 6, 8, 9], vec![0, 1, 3, 5, 7]])
        );
    }

    #[test]
    fn duplicate_edges_count_once_each_way() {
        let edges = [(0, 1), (0, 1), (1, 2), (0, 1), (1, 2)];
        assert_eq!(levels(3, &edges), Ok(vec![vec![0], vec![1], vec![2]]));
    }

    #[test]
    fn self_loop_is_a_cycle_of_one() {
        assert_eq!(levels(3, &[(0, 1), (2, 2)]), Err(DagError::Cycle(vec![2])));
    }

    #[test]
    fn cycle_names_only_the_nodes_on_it() {
        // 0 -> 1 -> 2 -> 3 -> 1 plus a tail 3 -> 4 -> 5 stuck behind the cycle.
        let edges = [(0, 1), (1, 2), (2, 3), (3, 1), (3, 4), (4, 5)];
        let Err(DagError::Cycle(cycle)) = levels(6, &edges) else {
            panic!("expected a cycle")
        };
        assert_eq!(cycle, vec![1, 2, 3]);
        assert_is_cycle(&cycle, &edges);
    }

    #[test]
    fn two_cycle_and_display() {
        let edges = [(4, 2), (2, 4)];
        let err = levels(5, &edges).unwrap_err();
        assert_eq!(err, DagError::Cycle(vec![2, 4]));
        assert_eq!(err.to_string(), "dependency cycle: 2 -> 4 -> 2");
    }

    #[test]
    fn out_of_range_names_edge_and_node() {
        let err = levels(3, &[(0, 1), (1, 3)]).unwrap_err();
        assert_eq!(
            err,
            DagError::NodeOutOfRange {
                edge: 1,
                node: 3,
                n: 3
            }
        );
        assert_eq!(
            err.to_string(),
            "edge 1: node 3 is out of range for a graph of 3 nodes"
        );
        // The source end is checked too, including the id equal to n.
        assert_eq!(
            levels(3, &[(3, 0)]),
            Err(DagError::NodeOutOfRange {
                edge: 0,
                node: 3,
                n: 3
            })
        );
        assert_eq!(
            levels(0, &[(0, 0)]),
            Err(DagError::NodeOutOfRange {
                edge: 0,
                node: 0,
                n: 0
            })
        );
        assert!(matches!(
            affected(2, &[(0, 7)], &[0]),
            Err(DagError::NodeOutOfRange {
                edge: 0,
                node: 7,
                ..
            })
        ));
    }

    #[test]
    fn affected_follows_edges_downstream_only() {
        let edges = [(0, 1), (0, 2), (1, 3), (2, 3), (4, 5)];
        assert_eq!(affected(6, &edges, &[1]), Ok(vec![1, 3]));
        assert_eq!(affected(6, &edges, &[0]), Ok(vec![0, 1, 2, 3]));
        assert_eq!(affected(6, &edges, &[5, 3, 3]), Ok(vec![3, 5]));
        assert_eq!(affected(6, &edges, &[]), Ok(vec![]));
    }

    #[test]
    fn affected_tolerates_cycles_but_not_bad_ids() {
        let edges = [(0, 1), (1, 2), (2, 1), (3, 3)];
        assert_eq!(affected(4, &edges, &[2]), Ok(vec![1, 2]));
        assert_eq!(
            affected(4, &edges, &[1, 4]),
            Err(DagError::ChangedOutOfRange {
                index: 1,
                node: 4,
                n: 4
            })
        );
    }

    /// A small deterministic generator, so the tests need no extra crates.
    struct XorShift(u64);
    impl XorShift {
        fn below(&mut self, bound: u32) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % u64::from(bound)) as u32
        }
    }

    /// Longest-path depth by repeated relaxation: slow but obviously right.
    fn reference_levels(n: usize, edges: &[(u32, u32)]) -> Vec<Vec<u32>> {
        let mut depth = vec![0u32; n];
        let mut changed = true;
        while changed {
            changed = false;
            for &(a, b) in edges {
                if depth[b as usize] < depth[a as usize] + 1 {
                    depth[b as usize] = depth[a as usize] + 1;
                    changed = true;
                }
            }
        }
        let mut out: Vec<Vec<u32>> = Vec::new();
        for (v, &d) in depth.iter().enumerate() {
            if out.len() <= d as usize {
                out.resize(d as usize + 1, Vec::new());
            }
            out[d as usize].push(v as u32);
        }
        out
    }

    #[test]
    fn random_dags_match_reference() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for round in 0..300 {
            let n = 1 + rng.below(60) as usize;
            // Edges go from lower to higher rank under a random permutation, so no cycle.
            let mut rank: Vec<u32> = (0..n as u32).collect();
            for i in (1..n).rev() {
                rank.swap(i, rng.below(i as u32 + 1) as usize);
            }
            let m = rng.below(3 * n as u32 + 1);
            let edges: Vec<(u32, u32)> = (0..m)
                .filter_map(|_| {
                    let (x, y) = (rng.below(n as u32), rng.below(n as u32));
                    (x != y).then(|| (rank[x.min(y) as usize], rank[x.max(y) as usize]))
                })
                .collect();
            assert_eq!(
                levels(n, &edges).unwrap(),
                reference_levels(n, &edges),
                "round {round}"
            );
        }
    }

    #[test]
    fn random_cycles_are_real() {
        let mut rng = XorShift(12345);
        for _ in 0..300 {
            let n = 2 + rng.below(40);
            let edges: Vec<(u32, u32)> = (0..rng.below(2 * n))
                .map(|_| (rng.below(n), rng.below(n)))
                .collect();
            if let Err(DagError::Cycle(cycle)) = levels(n as usize, &edges) {
                assert_is_cycle(&cycle, &edges);
                assert_eq!(cycle[0], *cycle.iter().min().unwrap());
            }
        }
    }

    #[test]
    fn million_nodes_is_fast_enough() {
        let n = 1_000_000u32;
        let mut rng = XorShift(7);
        // Edges from lower to higher ids: acyclic, with both ends uniformly spread.
        let edges: Vec<(u32, u32)> = (0..3 * n)
            .map(|_| {
                let x = rng.below(n - 1);
                (x, x + 1 + rng.below(n - 1 - x))
            })
            .collect();
        let start = std::time::Instant::now();
        let out = levels(n as usize, &edges).unwrap();
        let took = start.elapsed();
        assert_eq!(out.iter().map(Vec::len).sum::<usize>(), n as usize);
        // Generous in debug builds; the release build runs it in a few tens of milliseconds.
        let limit = if cfg!(debug_assertions) { 5.0 } else { 0.1 };
        assert!(took.as_secs_f64() < limit, "took {took:?}");
    }
}
