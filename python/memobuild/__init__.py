"""MemoBuild: a daemonless, incremental container image builder that never does the same work twice.

The Python API and the ``memobuild`` CLI are two faces on the same calls.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from memobuild.errors import MemoBuildError
from memobuild.hashing import TreeDigest, TreeEntry, hash_tree
from memobuild.plan import Plan, PlanNode, plan

try:
    __version__ = version("memobuild")
except PackageNotFoundError:  # running from a source tree without an installed distribution
    from memobuild._core import __version__

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
