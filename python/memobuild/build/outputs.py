"""Build outputs: where a finished image goes, in BuildKit's ``--output`` syntax.

``--output`` takes what ``docker buildx build --output`` takes: comma-separated ``key=value``
fields (CSV, so a value with a comma can be quoted), or a bare path, which is short for
``type=local,dest=PATH``. Four types are written to ``dest``, and one goes by name:

``type=oci``
    An OCI image layout: a directory (updated in place, other images in it kept), or one tar
    when ``dest`` ends in ``.tar`` (``tar=true``/``tar=false`` overrides the suffix, as in
    BuildKit). Each name (``name=``, else the build's ``-t`` tags) is an index entry the way
    BuildKit writes it: ``io.containerd.image.name`` the full reference, ``ref.name`` its tag.
``type=docker``
    A ``docker save`` archive for ``docker load``, ``podman load`` and skopeo's
    ``docker-archive:`` (oci/docker_archive.py), RepoTags from ``name=`` or the tags.
``type=local``
    The image's final root filesystem as a directory tree: every layer applied in order with
    its whiteouts, owners kept when running as root (as non-root, files belong to the user and
    setuid/setgid bits are dropped, as BuildKit's rootless exports do).
``type=tar``
    The same root filesystem as one tar file (entries sorted, no ``./`` prefix, no root entry,
    PAX headers only where ustar cannot hold a field: the layer writer's format).
``type=image,name=REF[,push=true]``
    The image under each name (``name=``, else the ``-t`` tags) in the local image store, and
    with ``push=true`` pushed to each name's registry (``oci/push.py``: blobs the repository
    has are skipped, others mounted or uploaded, the manifest last). ``type=registry,name=REF``
    is ``type=image,push=true``, as in buildx; ``memobuild build --push`` adds one such output
    per ``-t`` tag. The result's digest is the manifest digest the registry stored.

Every file output is written beside its destination and renamed into place, so a reader never
sees half an archive and a failed export leaves the previous one whole.

A ``type=local`` destination that already exists and is not empty is written *into*, as BuildKit
does: paths the image has replace the same paths there (a directory merges into a directory; a
symlink in the destination is replaced, never followed), and everything else in it is left
alone. The tree is first unpacked into a hidden directory inside the destination and then moved
into place, so the image's whiteouts only ever delete the image's own lower-layer files, never
the user's. The destination directory's own mode and owner are left as they are. A new
destination is unpacked beside it and renamed into place whole.

Outputs are deterministic: the same image gives the same bytes. When the image carries a
``created`` time, which MemoBuild sets only from SOURCE_DATE_EPOCH, the rootfs outputs
(local and tar) set every file's modification time to it, as BuildKit does for SOURCE_DATE_EPOCH
builds; otherwise each file keeps the time its layer recorded.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from memobuild.build.base import RegistryProvider
from memobuild.build.layers import write_tree_layer
from memobuild.build.materialise import materialise
from memobuild.build.rootfs import ScratchArea, remove_tree
from memobuild.cache.store import LocalStore
from memobuild.errors import CASIntegrityError, InputError, MemoBuildError, StorageError
from memobuild.images import ImageStore
from memobuild.oci.docker_archive import repo_tags, write_docker_archive
from memobuild.oci.image import Image, encode_image
from memobuild.oci.layout import COPY_CHUNK, qualified_image_name, write_oci_layout
from memobuild.oci.reference import parse_reference
from memobuild.verify import Hasher

__all__ = [
    "OUTPUT_TYPES",
    "OutputResult",
    "OutputSpec",
    "check_outputs",
    "export_output",
    "parse_output",
    "push_outputs",
]

OUTPUT_TYPES = ("oci", "docker", "local", "tar", "image")

# Keys each type accepts besides type, dest and name (name only for the image types).
_ATTRS: dict[str, frozenset[str]] = {
    "oci": frozenset({"tar", "compression"}),
    "docker": frozenset({"compression"}),
    "local": frozenset(),
    "tar": frozenset(),
    "image": frozenset({"push"}),
}
_NAMED_TYPES = frozenset({"oci", "docker", "image"})
_FILE_TYPES = frozenset({"oci", "docker", "local", "tar"})  # the types written to a dest
_KEYS = frozenset({"type", "dest", "name"}).union(*_ATTRS.values())
# BuildKit exporters MemoBuild does not have, and what to use instead.
_OTHER_TYPES = {
    "cacheonly": "every build already fills the cache; leave --output out",
}
_TYPE_LIST = "type=oci|docker|local|tar,dest=PATH or type=image,name=REF[,push=true]"
# Go's strconv.ParseBool, which BuildKit uses for its boolean attributes.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
# The prefix of the hidden directory a type=local export unpacks into before moving into place.
_LOCAL_WORK_PREFIX = ".memobuild-export-"


@dataclass(frozen=True)
class OutputSpec:
    """One ``--output``: what to write (``type``) and where (``dest``; None for ``image``,
    which goes by name).

    ``name`` is BuildKit's ``name=`` (image names, comma-separated, for oci, docker and
    image); ``attrs`` holds the other keys, already validated for the type, sorted by key.
    """

    type: str
    dest: Path | None = None
    name: str | None = None
    attrs: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.type not in OUTPUT_TYPES:
            raise InputError(
                f"unknown output type {self.type!r} (MemoBuild writes {', '.join(OUTPUT_TYPES)})"
            )
        if self.type in _FILE_TYPES and self.dest is None:
            raise InputError(f"output type={self.type} needs a dest")
        if self.type not in _FILE_TYPES and self.dest is not None:
            raise InputError(f"output type={self.type} goes by name=, not to a dest")
        if self.dest is not None and not isinstance(self.dest, Path):
            object.__setattr__(self, "dest", Path(self.dest))
        object.__setattr__(self, "attrs", tuple(sorted(self.attrs)))

    @property
    def path(self) -> Path:
        """``dest`` of a file output (InputError for ``image``, which has none)."""
        if self.dest is None:
            raise InputError(f"output type={self.type} has no dest")
        return self.dest

    @property
    def push(self) -> bool:
        """Whether an ``image`` output is pushed to its registry (``push=true``)."""
        return self.attr("push") in _TRUE

    def attr(self, key: str) -> str | None:
        """The value of ``key`` among ``attrs``, or None."""
        return dict(self.attrs).get(key)

    @property
    def names(self) -> tuple[str, ...]:
        """The image names ``name=`` gives, in order (empty without one)."""
        if not self.name:
            return ()
        return tuple(part.strip() for part in self.name.split(",") if part.strip())

    @property
    def as_tar(self) -> bool:
        """Whether the output is one file (docker, tar, and oci to ``*.tar`` or ``tar=true``)."""
        if self.type == "oci":
            forced = self.attr("tar")
            return self.path.suffix == ".tar" if forced is None else forced in _TRUE
        return self.type in ("docker", "tar")

    def __str__(self) -> str:
        fields = [f"type={self.type}"]
        if self.dest is not None:
            fields.append(f"dest={self.dest}")
        if self.name:
            fields.append(f"name={self.name}")
        fields.extend(f"{key}={value}" for key, value in self.attrs)
        line = io.StringIO()
        csv.writer(line, lineterminator="").writerow(fields)  # quotes a field with a comma
        return line.getvalue()


@dataclass(frozen=True)
class OutputResult:
    """What an export wrote: the type, the destination as given (for ``image``, its names,
    comma-separated), the image's manifest digest (oci, docker and image; None for the rootfs
    outputs) and the bytes it occupies at ``dest`` (for ``image``, the bytes uploaded).
    ``pushed``: the references an ``image`` output pushed, in full (``host/repo:tag``)."""

    type: str
    dest: str
    digest: str | None
    bytes: int
    pushed: tuple[str, ...] = ()


# --- parsing ------------------------------------------------------------------------------------


def _fields(value: str) -> list[str]:
    try:
        rows = list(csv.reader([value], skipinitialspace=False))
    except csv.Error as err:
        raise InputError(f"--output {value!r}: {err}") from None
    return rows[0] if rows else []


def _bool(value: str, key: str, flag: str) -> str:
    if value not in _TRUE and value not in _FALSE:
        raise InputError(f"--output {flag!r}: {key}={value!r} must be true or false")
    return "true" if value in _TRUE else "false"


def parse_output(value: str) -> OutputSpec:
    """Parse one ``--output`` value (BuildKit/buildx syntax); InputError naming the value for
    anything MemoBuild cannot write: an unknown type or key, a missing ``dest``, a bad name."""
    fields = _fields(value)
    if not value.strip() or not fields:
        raise InputError(f"--output '': empty; expected {_TYPE_LIST} or a directory")
    # buildx: one unquoted field that is not type=... is a directory for the local exporter.
    # Unlike buildx, one that starts with an output key (dest=out) is taken as the mistake it
    # almost always is (a forgotten type=), not as a directory named "dest=out".
    head, sep, _ = value.partition("=")
    looks_like_keys = bool(sep) and head.strip().lower() in _KEYS
    if len(fields) == 1 and fields[0] == value and not looks_like_keys:
        if value == "-":
            raise InputError(
                "--output '-': writing to standard output is not supported; give a file, "
                "e.g. type=tar,dest=rootfs.tar"
            )
        return OutputSpec(type="local", dest=Path(value))
    pairs: dict[str, str] = {}
    for field in fields:
        key, sep, item = field.partition("=")
        key = key.strip().lower()
        if not sep or not key:
            raise InputError(f"--output {value!r}: {field!r} is not key=value")
        if key in pairs:
            raise InputError(f"--output {value!r}: {key}= is given twice")
        pairs[key] = item
    kind = pairs.pop("type", None)
    if kind is None:
        raise InputError(
            f"--output {value!r}: type= is required ({_TYPE_LIST}), or give a bare directory "
            "for type=local"
        )
    asked = kind
    if kind == "registry":  # buildx: type=registry is type=image,push=true
        kind = "image"
        pairs.setdefault("push", "true")
    if kind not in OUTPUT_TYPES:
        hint = _OTHER_TYPES.get(kind, f"MemoBuild writes type={', type='.join(OUTPUT_TYPES)}")
        raise InputError(f"--output {value!r}: unknown type {kind!r}: {hint}")
    dest = pairs.pop("dest", None)
    if kind not in _FILE_TYPES:
        if dest is not None:
            raise InputError(
                f"--output {value!r}: type={asked} has no dest=: it saves the image under "
                "name= (and pushes it there with push=true)"
            )
    elif not dest:
        raise InputError(
            f"--output {value!r}: dest= is required (where to write the {kind} output; "
            "MemoBuild has no daemon to load an image into)"
        )
    if dest == "-":
        raise InputError(
            f"--output {value!r}: writing to standard output is not supported; give a file"
        )
    name = pairs.pop("name", None)
    if name is not None and kind not in _NAMED_TYPES:
        raise InputError(
            f"--output {value!r}: name= names an image, and type={kind} writes a filesystem; "
            "use it with type=oci, type=docker or type=image"
        )
    attrs: dict[str, str] = {}
    for key, item in pairs.items():
        if key not in _ATTRS[kind]:
            accepted = {*_ATTRS[kind]} | ({"name"} if kind in _NAMED_TYPES else set())
            accepted |= {"dest"} if kind in _FILE_TYPES else set()
            known = ", ".join(f"{k}=" for k in sorted(accepted))
            raise InputError(
                f"--output {value!r}: unknown key {key!r} for type={kind} (it takes {known})"
            )
        if key in ("tar", "push"):
            item = _bool(item, key, value)
        elif key == "compression" and item != "gzip":
            raise InputError(
                f"--output {value!r}: compression={item!r}: MemoBuild writes gzip layers"
            )
        attrs[key] = item
    spec = OutputSpec(kind, Path(dest) if dest else None, name, tuple(sorted(attrs.items())))
    try:
        _check_names(spec.type, spec.names)
    except InputError as err:
        raise InputError(f"--output {value!r}: {err}") from None
    if name is not None and not spec.names:
        raise InputError(f"--output {value!r}: name= is empty")
    return spec


def _check_names(kind: str, names: Sequence[str]) -> None:
    if kind == "oci":
        for name in names:
            qualified_image_name(name)
    elif kind == "docker":
        repo_tags(names)
    elif kind == "image":
        for name in names:
            if parse_reference(name).digest is not None:
                raise InputError(f"{name!r}: an image output names a tag, not a digest")


def push_outputs(tags: Sequence[str]) -> tuple[OutputSpec, ...]:
    """``--push``: one ``type=image,push=true`` output per ``-t`` tag."""
    if not tags:
        raise InputError(
            "--push needs -t NAME[:TAG], the reference to push to "
            "(e.g. -t registry.example.com/team/app:1)"
        )
    specs = tuple(OutputSpec("image", None, tag, (("push", "true"),)) for tag in tags)
    for spec in specs:
        _check_names(spec.type, spec.names)
    return specs


def check_outputs(specs: Sequence[OutputSpec], tags: Sequence[str]) -> None:
    """Before anything runs: every image output has names (``name=`` or ``-t``)."""
    for spec in specs:
        if spec.type == "image" and not spec.names and not tags:
            raise InputError(f"--output {spec}: give the image a name (name=REF, or -t NAME[:TAG])")


# --- exporting ----------------------------------------------------------------------------------


def export_output(
    spec: OutputSpec,
    image: Image,
    store: LocalStore,
    *,
    tags: Sequence[str] = (),
    scratch: Path | None = None,
    registry: RegistryProvider | None = None,
) -> OutputResult:
    """Write ``image`` (whose blobs are in ``store``) as ``spec`` says.

    ``tags`` name the image in oci, docker and image outputs when ``spec`` has no ``name=``.
    ``scratch`` is a directory for temporary trees (type=tar unpacks there); by default a
    locked scratch directory in the store's cache is made and removed. ``registry`` is the
    client pushes go through (or a function that makes it); by default a push makes its own
    from the environment. A destination that cannot be written is one StorageError naming
    it; the layers' own problems (a corrupt blob) raise what the store raises, and a push
    what the registry client raises, saying which reference it was pushing.
    """
    names = spec.names or tuple(tags)
    _check_names(spec.type, names)
    if spec.type == "image":
        return _export_image(spec, image, store, names, registry)
    dest = spec.path
    digest: str | None = None
    try:
        if spec.type == "oci":
            digest = write_oci_layout(image, store, dest, names=names, tar=spec.as_tar)
            size = dest.stat().st_size if spec.as_tar else _layout_bytes(dest, image)
        elif spec.type == "docker":
            digest = write_docker_archive(image, store, dest, names)
            size = dest.stat().st_size
        elif spec.type == "local":
            size = _export_local(image, store, dest)
        elif spec.type == "tar":
            size = _export_tar(image, store, dest, scratch)
        else:  # pragma: no cover - OutputSpec refuses any other type
            raise InputError(f"unknown output type {spec.type!r}")
    except OSError as err:
        where = err.filename or dest
        raise StorageError(
            f"output type={spec.type}: cannot write {where}: {err.strerror or err}"
        ) from err
    except StorageError as err:
        if not err.message.startswith("output type="):
            err.message = f"output type={spec.type}: {err.message}"
            err.args = (err.message,)
        raise
    return OutputResult(spec.type, str(dest), digest, size)


def _export_image(
    spec: OutputSpec,
    image: Image,
    store: LocalStore,
    names: Sequence[str],
    registry: RegistryProvider | None,
) -> OutputResult:
    """Save the image under ``names`` in the local image store and, with ``push=true``, push
    it to each of them."""
    if not names:
        raise InputError(f"--output {spec}: give the image a name (name=REF, or -t NAME[:TAG])")
    digest = ImageStore(store).save(image, list(names))
    if not spec.push:
        return OutputResult(spec.type, ",".join(names), digest, 0)
    from memobuild.oci.push import push_image  # the registry client only for a push

    encoded = encode_image(image)
    sizes = {layer.digest: layer.size for layer in image.layers}
    sizes[encoded.config_digest] = len(encoded.config)
    client = registry() if callable(registry) else registry
    pushed, sent = [], 0
    for name in names:
        ref = parse_reference(name)
        try:
            result = push_image(image, store, ref, client=client)
        except MemoBuildError as err:
            err.message = f"push {ref}: {err.message}"
            err.args = (err.message,)
            raise
        sent += sum(sizes.get(blob.digest, 0) for blob in result.blobs if blob.how == "uploaded")
        pushed.append(str(ref))
    return OutputResult(spec.type, ",".join(names), digest, sent, tuple(pushed))


def _layout_bytes(root: Path, image: Image) -> int:
    """What the image occupies in the layout directory ``root``: its blobs, index.json and
    oci-layout (blobs of other images there are not counted)."""
    encoded = encode_image(image)
    digests = {
        encoded.config_digest,
        encoded.manifest_digest,
        *(layer.digest for layer in image.layers),
    }
    paths = [root / "blobs" / "sha256" / d.split(":", 1)[1] for d in digests]
    return sum(p.stat().st_size for p in [*paths, root / "index.json", root / "oci-layout"])


def _image_epoch(image: Image) -> int | None:
    """The image's ``created`` time in seconds, or None: the time the rootfs outputs give every
    file (MemoBuild sets ``created`` only from SOURCE_DATE_EPOCH). A ``created`` that is not an
    RFC 3339 time is ignored rather than guessed at."""
    if image.created is None:
        return None
    try:
        # Python 3.10's fromisoformat does not read the "Z" every image config uses.
        created = image.created
        moment = datetime.fromisoformat(
            created[:-1] + "+00:00" if created.endswith("Z") else created
        )
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    seconds = int(moment.timestamp())
    return seconds if seconds >= 0 else None


def _unpack_rootfs(image: Image, store: LocalStore, root: Path) -> int:
    """Apply every layer of ``image`` to the empty directory ``root`` and, for a dated image,
    give every path its time; returns the bytes of the regular files in the tree."""
    # The layers hold no entry for "/" itself: give the root what every rootfs has.
    os.chmod(root, 0o755)  # noqa: S103 - a root filesystem's / is world-readable
    materialise(store, image.layers, root)
    epoch = _image_epoch(image)
    total = 0
    for current, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(current, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
            if epoch is not None:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
    if epoch is not None:
        os.utime(root, (epoch, epoch))
    return total


def _export_local(image: Image, store: LocalStore, dest: Path) -> int:
    """Write the image's root filesystem into the directory ``dest``; returns its file bytes."""
    if os.path.lexists(dest) and not dest.is_dir():
        raise StorageError(f"{dest}: exists and is not a directory")
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}{_LOCAL_WORK_PREFIX}"))
        try:
            size = _unpack_rootfs(image, store, work)
            os.rename(work, dest)
        except BaseException:
            remove_tree(work)
            raise
        return size
    work = Path(tempfile.mkdtemp(dir=dest, prefix=_LOCAL_WORK_PREFIX))
    try:
        size = _unpack_rootfs(image, store, work)
        _merge_into(work, dest)
    finally:
        remove_tree(work)
    return size


def _merge_into(source: Path, target: Path, *, top: bool = True) -> None:
    """Move every entry of ``source`` into the existing directory ``target``: a directory into a
    directory merges (then takes the source's mode, owner and times), anything else replaces
    what is there. Nothing in ``target`` is followed: a symlink there is replaced like a file."""
    # Entries leave source and enter target, so both must be writable meanwhile, which a
    # read-only directory is not for a non-root user; the caller captured the source's mode
    # and gives it to the target afterwards. The destination itself is the user's: left as is.
    os.chmod(source, stat.S_IRWXU)
    if not top and not os.access(target, os.W_OK | os.X_OK):
        os.chmod(target, stat.S_IMODE(os.lstat(target).st_mode) | stat.S_IRWXU)
    for name in sorted(os.listdir(source)):
        src = source / name
        dst = target / name
        src_info = os.lstat(src)
        try:
            dst_info = os.lstat(dst)
        except FileNotFoundError:
            os.rename(src, dst)
            continue
        if stat.S_ISDIR(src_info.st_mode) and stat.S_ISDIR(dst_info.st_mode):
            _merge_into(src, dst, top=False)
            _copy_dir_metadata(src_info, dst)
            continue
        remove_tree(dst)
        os.rename(src, dst)


def _copy_dir_metadata(info: os.stat_result, path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, info.st_uid, info.st_gid, follow_symlinks=False)
    os.chmod(path, stat.S_IMODE(info.st_mode))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


@contextlib.contextmanager
def _work_dir(store: LocalStore, scratch: Path | None) -> Iterator[Path]:
    """A private temporary directory: inside ``scratch`` when given, else a locked scratch
    directory in the store's cache (removed by the next build's sweep if this one is killed)."""
    if scratch is not None:
        path = Path(tempfile.mkdtemp(dir=scratch, prefix="export-"))
        try:
            yield path
        finally:
            remove_tree(path)
        return
    area = ScratchArea(store.root)
    with area.create("export") as work:
        yield work.path


def _export_tar(image: Image, store: LocalStore, dest: Path, scratch: Path | None) -> int:
    """Write the image's root filesystem as one tar at ``dest``; returns the tar's size."""
    if dest.is_dir():
        raise StorageError(f"{dest}: is a directory; type=tar writes one file")
    with _work_dir(store, scratch) as work:
        tree = work / "rootfs"
        tree.mkdir()
        _unpack_rootfs(image, store, tree)
        # The layer writer is the one deterministic tar writer (sorted entries, PAX only where
        # needed, hard links, xattrs); its gzip is undone here, checked against its diff_id.
        blob = write_tree_layer(tree, work / "rootfs.tar.gz", source_date_epoch=_image_epoch(image))
        remove_tree(tree)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        try:
            hasher = Hasher("sha256")
            with os.fdopen(fd, "wb") as out, gzip.open(blob.path, "rb") as tar:
                while chunk := tar.read(COPY_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
            if hasher.digest() != blob.diff_id:
                raise CASIntegrityError(blob.diff_id, hasher.digest(), hasher.size, str(dest))
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, dest)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return hasher.size
