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
# A malformed pattern raises ValueError(pattern, reason).

class DockerIgnore:
    def __init__(self, patterns: Sequence[str]) -> None: ...
    def matches(self, path: str | bytes | PathLike[str] | PathLike[bytes]) -> bool: ...
    @property
    def patterns(self) -> list[str]: ...
    @property
    def has_exceptions(self) -> bool: ...

class GitIgnore:
    def __init__(self, lines: Sequence[str]) -> None: ...
    def matches(
        self, path: str | bytes | PathLike[str] | PathLike[bytes], is_dir: bool = False
    ) -> bool: ...

def read_dockerignore(text: str) -> list[str]: ...

# --- dag (rust/py/dag.rs) -------------------------------------------------------------------

class CycleError(ValueError):
    """The graph has a cycle; ``args[0]`` lists the nodes on one cycle, in edge order."""

def dag_levels(n: int, edges: Sequence[Sequence[int]] | bytes) -> list[list[int]]: ...
def dag_affected(
    n: int, edges: Sequence[Sequence[int]] | bytes, changed: Iterable[int]
) -> list[int]: ...

# --- select (rust/py/select.rs) -------------------------------------------------------------
# select/diff raise FileNotFoundError (a path not in the context), OSError (ELOOP: a symlink
# loop) and ValueError(pattern, reason) (a malformed wildcard or --exclude pattern).

class ContextIndex:
    @staticmethod
    def hash(
        root: str | PathLike[str],
        dockerignore: Sequence[str] | None = None,
        stat_cache: str | PathLike[str] | None = None,
    ) -> ContextIndex: ...
    @staticmethod
    def from_listing(data: bytes) -> ContextIndex: ...
    def listing(self) -> bytes: ...
    # (digest, [(matched path, kind)], regular files covered)
    def select(
        self, source: str, exclude: Sequence[str] = (), wildcards: bool = True
    ) -> tuple[str, list[tuple[str, str]], int]: ...
    # ([(path, "added" | "removed" | "modified")] up to limit, total changes)
    def diff(
        self,
        new: ContextIndex,
        source: str,
        exclude: Sequence[str] = (),
        wildcards: bool = True,
        limit: int = 20,
    ) -> tuple[list[tuple[str, str]], int]: ...
    @property
    def digest(self) -> str: ...
    @property
    def files(self) -> int: ...
    @property
    def dirs(self) -> int: ...
    @property
    def symlinks(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def hashed_files(self) -> int: ...
    @property
    def cache_hits(self) -> int: ...
    def __len__(self) -> int: ...

# --- layer (rust/py/layer.rs) ---------------------------------------------------------------
# A refused entry raises LayerSecurityError(entry, reason); a malformed layer, or a rootfs path a
# layer cannot hold, LayerFormatError(entry, reason); I/O errors OSError with the path.

class LayerSecurityError(ValueError):
    """A layer entry was refused; ``args`` is (entry, reason)."""

class LayerFormatError(ValueError):
    """A layer is malformed or a rootfs path cannot be put in one; ``args`` is (entry, reason)."""

DEFAULT_MAX_LAYER_BYTES: int
DEFAULT_MAX_LAYER_ENTRIES: int

class Snapshot:
    @property
    def root(self) -> PathLike[str]: ...  # a pathlib.Path, canonical
    @property
    def entries(self) -> int: ...
    def __len__(self) -> int: ...

def snapshot(root: str | PathLike[str]) -> Snapshot: ...

# write_*_layer return (digest, diff_id, size, entries)
def write_diff_layer(
    root: str | PathLike[str],
    before: Snapshot,
    out_path: str | PathLike[str],
    source_date_epoch: int | None = None,
    exclude: Sequence[str | PathLike[str]] = (),
) -> tuple[str, str, int, int]: ...
def write_tree_layer(
    root: str | PathLike[str],
    out_path: str | PathLike[str],
    source_date_epoch: int | None = None,
) -> tuple[str, str, int, int]: ...

# entries: rows (name, kind "file"|"dir"|"symlink", source path, symlink target, BLAKE3 digest
# (32 bytes) a file must have, mode, uid, gid, mtime in ns (None: the source's))
def write_entries_layer(
    entries: Sequence[
        tuple[bytes, str, str | None, bytes | None, bytes | None, int, int, int, int | None]
    ],
    out_path: str | PathLike[str],
    source_date_epoch: int | None = None,
) -> tuple[str, str, int, int]: ...

# [(name, kind "dir"|"file"|"symlink"|"hardlink"|"other")] in archive order; names canonical
def list_layer(
    path: str | PathLike[str],
    max_bytes: int = ...,
    max_entries: int = ...,
) -> list[tuple[bytes, str]]: ...

# returns (entries, expanded bytes, diff_id: "sha256:<hex>" of the uncompressed tar)
def unpack_layer(
    path: str | PathLike[str],
    root: str | PathLike[str],
    max_bytes: int = ...,
    max_entries: int = ...,
) -> tuple[int, int, str]: ...

# (start, end) character offsets of the matches of a ${VAR#pattern}-family expression:
# mode "first" (leftmost-first) or "all" (Go's ReplaceAllString); ValueError(message) for a
# pattern that does not compile or is too large
def shell_pattern_spans(source: str, text: str, mode: str) -> list[tuple[int, int]]: ...
