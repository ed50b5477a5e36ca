"""Type stubs for the Rust extension ``memobuild._core`` (see rust/py/*.rs)."""

from collections.abc import Iterable, Sequence
from os import PathLike

__version__: str

# --- hash (rust/py/hash.rs) ---------------------------------------------------------------

# (path, kind, digest_hex, executable, size, link_target)
# returns (digest, files, dirs, symlinks, bytes, hashed_files, cache_hits, entries)
EntryTuple = tuple[str, str, str, bool, int, str | None]

def hash_tree(
    root: str | PathLike[str],
    dockerignore: Sequence[str] | None = None,
    gitignore: bool = False,
    stat_cache: str | PathLike[str] | None = None,
    include_entries: bool = False,
) -> tuple[str, int, int, int, int, int, int, list[EntryTuple] | None]: ...

# --- verify (rust/py/verify.rs) -------------------------------------------------------------

def digest_bytes(data: bytes, algorithm: str = "sha256") -> str: ...
def digest_file(path: str | PathLike[str], algorithm: str = "sha256") -> tuple[str, int]: ...
def parse_digest(digest: str) -> tuple[str, str]: ...
def verify_bytes(data: bytes, expected: str) -> tuple[bool, str, int]: ...
def verify_file(path: str | PathLike[str], expected: str) -> tuple[bool, str, int]: ...

class Hasher:
    def __init__(self, algorithm: str = "sha256") -> None: ...
    def update(self, data: bytes) -> None: ...
    def digest(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def algorithm(self) -> str: ...

# --- ignore (rust/py/ignore.rs) -------------------------------------------------------------
# (owned by the ignore work; keep in step with rust/py/ignore.rs)

# --- dag (rust/py/dag.rs) -------------------------------------------------------------------

class CycleError(ValueError):
    """The graph has a cycle; ``args[0]`` lists the nodes on one cycle, in edge order."""

def dag_levels(n: int, edges: Sequence[Sequence[int]] | bytes) -> list[list[int]]: ...
def dag_affected(
    n: int, edges: Sequence[Sequence[int]] | bytes, changed: Iterable[int]
) -> list[int]: ...
