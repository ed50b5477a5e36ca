"""MemoBuild: a daemonless, incremental container image builder that never does the same work twice.

The Python API and the ``memobuild`` CLI are two faces on the same calls.
"""

from __future__ import annotations

# The version is Cargo.toml's, compiled into the extension (pyproject takes it from there too);
# reading it there avoids importlib.metadata, which costs every CLI call ~15 ms.
from memobuild._core import __version__
from memobuild.errors import MemoBuildError
from memobuild.hashing import TreeDigest, TreeEntry, hash_tree
from memobuild.plan import Plan, PlanNode, plan

__all__ = [
    "MemoBuildError",
    "Plan",
    "PlanNode",
    "TreeDigest",
    "TreeEntry",
    "__version__",
    "hash_tree",
    "plan",
]
