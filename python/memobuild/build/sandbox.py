"""Run one RUN step isolated in a stage's rootfs: bubblewrap, else chroot in private namespaces.

The executor materialises a stage's rootfs, takes a stat snapshot, calls :meth:`Sandbox.run`,
and diffs the rootfs into a layer. So the sandbox has one hard duty besides isolation: after
``run`` returns, the rootfs holds exactly what the command changed (and the WORKDIR, created if
missing as Docker does). Every mount point it had to create (``/proc``, ``/dev``, ``/sys``,
``/tmp`` when the image has none, ``/etc/hosts``, ``/etc/resolv.conf``, each ``--mount``
target and missing parents) is removed again when still empty, and the modification times of
the directories they were created in are put back, so the diff never sees them. (Their ctime
cannot be put back, which is why the snapshot diff ignores the ctime of directories.)

What a step sees, in every mode (the same as a BuildKit RUN):

* the rootfs at ``/``, a fresh ``/proc``, a fresh ``/dev`` (null, zero, full, random, urandom,
  tty, pts, shm), ``/sys`` read-only, and ``/tmp`` as the image has it (a tmpfs only when the
  image has no ``/tmp``: Dockerfiles routinely ``COPY`` into ``/tmp`` and use it in the next
  RUN, so hiding the image's ``/tmp`` would break them);
* ``/etc/hosts`` (localhost and the sandbox host name) and ``/etc/resolv.conf`` (a copy of the
  host's) as private writable copies, discarded after the step;
* the step's ENV with ``PATH`` defaulted to Docker's and ``HOME`` to the user's passwd home,
  the WORKDIR as current directory, the USER's uid, gid and supplementary groups;
* Docker's default capabilities for root, none for other users;
* private PID, IPC and UTS namespaces (host name ``buildkitsandbox``); the host network unless
  ``network="none"``, which gives a namespace with only ``lo``;
* stdin ``/dev/null``; stdout and stderr one pipe, streamed chunk by chunk to ``output`` and
  kept (the last :data:`LOG_LIMIT` bytes) in :attr:`RunResult.log`.

How each mode does it:

* ``bwrap``, MemoBuild running as root: ``bwrap`` without a user namespace (one would map only a
  single uid, so ``chown`` and the ownership of new files would be wrong in the layer), with the
  rootfs bound at ``/``, ``--cap-drop ALL`` plus Docker's set, and ``no_new_privs`` (bwrap's),
  so a step can never gain privileges. For a non-root USER, bwrap cannot switch uid without a
  user namespace, so the rootfs is bound at ``/newroot`` instead and a small helper (this
  Python interpreter, bound read-only next to it) chroots into it, sets groups, gid and uid and
  execs the command; with no capabilities and ``no_new_privs`` it cannot leave the chroot.
* ``bwrap``, MemoBuild not running as root (rootless): ``bwrap --unshare-user`` maps the
  caller's uid to the step's uid. Only that one uid exists inside; files the step creates are
  owned by the caller on disk and ``chown`` to other ids fails. Supplementary groups cannot be
  set.
* ``chroot`` (root only, where bwrap is missing or cannot create namespaces, or when forced with
  ``Sandbox(kind="chroot")``): ``unshare --mount --pid --fork --ipc --uts [--net]`` (util-linux)
  starts the same helper, which mounts proc, dev, sys and the step's mounts under the rootfs in
  the private mount namespace, chroots, drops the capability bounding set to Docker's set minus
  ``CAP_SYS_CHROOT`` (the one that would let root leave a chroot), sets the ids, and stays as
  pid 1 (reaping orphans, like bwrap's init) while the command runs as pid 2. ``setpriv
  --pdeathsig`` and ``unshare --kill-child`` end the step if MemoBuild dies.

Mounts (``--mount``): a cache mount is a directory per id under ``<cache_root>/mounts/``;
``sharing=shared`` takes a shared flock for the run, ``locked`` an exclusive one (waiting for it),
``private`` an exclusive one if free and otherwise runs on a fresh empty directory thrown away
afterwards. A bind mount is read-only by default; ``rw`` binds a private copy, so that a step
can never change the build context or another stage. A secret is written to a private 0400 file
outside the rootfs (in ``/dev/shm`` when possible), bound read-only, and deleted after the step;
if MemoBuild is killed first, the next run deletes it (every scratch directory holds a lock
while in use, and leftovers are those whose lock is free).

A run that is interrupted (KeyboardInterrupt, an exception in ``output``) or killed by
:meth:`Sandbox.kill_all` has its whole process group killed; bwrap's ``--die-with-parent`` and
the PID namespace make sure nothing of the step outlives it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memobuild.build.users import ResolvedUser, resolve_in_root, resolve_user
from memobuild.errors import InputError, SandboxUnavailableError
from memobuild.logging import logger

__all__ = [
    "DEFAULT_CAPABILITIES",
    "DEFAULT_PATH",
    "LOG_LIMIT",
    "SANDBOX_HOSTNAME",
    "BindSpec",
    "CacheSpec",
    "MountSpec",
    "RunResult",
    "RunSpec",
    "Sandbox",
    "SecretSpec",
    "TmpfsSpec",
    "command_argv",
    "detect_sandbox",
]

LOG_LIMIT = 4 * 1024 * 1024
"""How much of a step's output :attr:`RunResult.log` keeps (the end, where errors are)."""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""Docker's PATH for an image that sets none."""

SANDBOX_HOSTNAME = "buildkitsandbox"
"""BuildKit's host name for RUN steps; some build scripts print or test it."""

DEFAULT_CAPABILITIES = (
    ("CAP_CHOWN", 0),
    ("CAP_DAC_OVERRIDE", 1),
    ("CAP_FOWNER", 3),
    ("CAP_FSETID", 4),
    ("CAP_KILL", 5),
    ("CAP_SETGID", 6),
    ("CAP_SETUID", 7),
    ("CAP_SETPCAP", 8),
    ("CAP_NET_BIND_SERVICE", 10),
    ("CAP_NET_RAW", 13),
    ("CAP_SYS_CHROOT", 18),
    ("CAP_MKNOD", 27),
    ("CAP_AUDIT_WRITE", 29),
    ("CAP_SETFCAP", 31),
)
"""Docker's default capability set for a root process in a container (name, number)."""

_CAP_SYS_CHROOT = 18
_CHUNK = 64 * 1024
_NEWROOT = "/newroot"
_LOCK_NAME = ".lock"
_UNLOCKED_GRACE = 3600.0  # seconds a scratch directory without a lock file is left alone
_KINDS = ("bwrap", "chroot")
_NETWORKS = ("default", "host", "none")
_SHARING = ("shared", "private", "locked")  # weakest first
_HOSTS = f"127.0.0.1\tlocalhost {SANDBOX_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
# Mount points every run has; they can never hold anything the command wrote.
_FIXED_MOUNT_POINTS = ("proc", "dev", "sys", "etc/hosts", "etc/resolv.conf")


# --------------------------------------------------------------------------------------------
# The contract


@dataclass(frozen=True)
class BindSpec:
    """``type=bind``: ``source`` (a host path: the context or a stage's rootfs) at ``target``.

    Read-only by default; ``readonly=False`` gives the step a private writable copy, as BuildKit
    does, so a step can never modify its source.
    """

    target: str
    source: Path
    readonly: bool = True


@dataclass(frozen=True)
class CacheSpec:
    """``type=cache``: the persistent directory ``id`` at ``target``.

    ``mode``, ``uid`` and ``gid`` apply when the directory is first created, as in BuildKit.
    """

    target: str
    id: str
    sharing: str = "shared"
    readonly: bool = False
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class TmpfsSpec:
    """``type=tmpfs``: an empty in-memory directory; ``size`` in bytes, None for no limit."""

    target: str
    size: int | None = None


@dataclass(frozen=True)
class SecretSpec:
    """``type=secret``: ``data`` as a read-only file at ``target``. ``data`` is never printed."""

    target: str
    data: bytes = field(repr=False)
    mode: int = 0o400
    uid: int = 0
    gid: int = 0


MountSpec = BindSpec | CacheSpec | TmpfsSpec | SecretSpec


@dataclass(frozen=True)
class RunSpec:
    """What to run: ``argv`` (see :func:`command_argv`), the step's ENV in order (a later
    duplicate wins), WORKDIR, USER (as written in the Dockerfile), network mode and mounts."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    workdir: str = "/"
    user: str = ""
    network: str = "default"
    mounts: tuple[MountSpec, ...] = ()


@dataclass(frozen=True)
class RunResult:
    """How a step ended: exit code (a signal ``n`` is ``128 + n``), its combined output (the
    last :data:`LOG_LIMIT` bytes), wall time in seconds, and the rootfs-relative paths this
    run mounted something on (all of them removed again if the sandbox created them)."""

    exit_code: int
    log: bytes
    duration: float
    mount_points: tuple[str, ...] = ()


def command_argv(shell: Sequence[str], args: Sequence[str], json_form: bool) -> tuple[str, ...]:
    """The argv Docker runs for RUN (and CMD/ENTRYPOINT) arguments.

    Exec (JSON) form runs ``args`` as they are; shell form runs ``[*shell, " ".join(args)]``
    (the parser keeps shell form as one string, so the join is a no-op there).
    """
    if json_form:
        if not args:
            raise InputError("a command in exec form needs at least one argument")
        return tuple(args)
    if not shell:
        raise InputError("a command in shell form needs a SHELL to run it with")
    return (*shell, " ".join(args))


# --------------------------------------------------------------------------------------------
# Detection

_DETECT_LOCK = threading.Lock()
_DETECTED: dict[tuple[str | None, str | None, bool], str] = {}


def _probe(argv: list[str]) -> str | None:
    """Run a sandbox probe; None if it worked, else why not (its last line of output)."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv built from absolute tool paths
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    if done.returncode == 0:
        return None
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"


def _bwrap_probe_argv(bwrap: str, rootless: bool) -> list[str]:
    argv = [bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net"]
    if rootless:
        argv.append("--unshare-user")
    argv += ["--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    return [*argv, "--", "true"]


def detect_sandbox() -> str:
    """``"bwrap"`` if bubblewrap can create a sandbox here, else ``"chroot"`` if the chroot
    fallback can (root and util-linux ``unshare``); otherwise SandboxUnavailableError saying
    what is missing and what to install. The answer is cached per tool paths and euid."""
    bwrap = shutil.which("bwrap")
    unshare = shutil.which("unshare")
    root = os.geteuid() == 0
    key = (bwrap, unshare, root)
    with _DETECT_LOCK:
        if key in _DETECTED:
            return _DETECTED[key]
        problems: list[str] = []
        kind: str | None = None
        if bwrap is None:
            problems.append("bubblewrap (bwrap) is not installed")
        else:
            failure = _probe(_bwrap_probe_argv(bwrap, rootless=not root))
            if failure is None:
                kind = "bwrap"
            else:
                problems.append(f"{bwrap} cannot create a sandbox here ({failure})")
        if kind is None and root:
            if unshare is None:
                problems.append("the chroot fallback needs unshare from util-linux")
            else:
                failure = _probe([unshare, "--mount", "--pid", "--fork", "--kill-child", "true"])
                if failure is None:
                    kind = "chroot"
                else:
                    problems.append(f"{unshare} cannot create namespaces here ({failure})")
        elif kind is None:
            problems.append("the chroot fallback needs root")
        if kind is None:
            hint = "" if root else ", with unprivileged user namespaces enabled,"
            raise SandboxUnavailableError(
                "no sandbox can run RUN steps here: "
                + "; ".join(problems)
                + f". Install bubblewrap{hint} (apt-get install bubblewrap, dnf install "
                "bubblewrap or apk add bubblewrap), or run MemoBuild as root to use the chroot "
                "fallback (needs util-linux)"
            )
        _DETECTED[key] = kind
        return kind


# --------------------------------------------------------------------------------------------
# The in-sandbox helper


# Runs under this interpreter with -I -S, inside the new namespaces, before the command. It is
# a string rather than a module so that it needs nothing but the standard library: under bwrap
# only the interpreter and its stdlib are visible. Everything it imports lazily after chroot
# would fail, so the PATH search is done here rather than with os.execvpe.
_HELPER = r"""
import ctypes, errno, fcntl, json, os, signal, socket, struct, sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
PR_CAPBSET_DROP = 24
libc = None

def fail(status, stage, message, code):
    os.write(2, ("memobuild sandbox: " + message + "\n").encode("utf-8", "replace"))
    os.write(status, ("E" + stage + " " + message).encode("utf-8", "replace"))
    os._exit(code)

def mount(source, target, fstype, flags, data):
    enc = lambda s: None if s is None else os.fsencode(s)
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)):
        err = ctypes.get_errno()
        raise OSError(err, "cannot mount %s on %s: %s"
                      % (fstype or source, target, os.strerror(err)))

def ensure(path, is_file):
    if os.path.lexists(path):
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if is_file:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    else:
        os.mkdir(path, 0o755)

def setup_dev(dev):
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        ensure(dev + "/" + name, True)
        mount("/dev/" + name, dev + "/" + name, None, MS_BIND, None)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev + "/" + name)
    os.mkdir(dev + "/pts", 0o755)
    try:
        mount("devpts", dev + "/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=620")
        os.symlink("pts/ptmx", dev + "/ptmx")
    except OSError:
        pass  # no ptys for this step; everything else works without them
    os.mkdir(dev + "/shm", 0o1777)
    mount("tmpfs", dev + "/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          "mode=1777,size=65536k")

def do_mount(m):
    kind, target = m["kind"], m["target"]
    ensure(target, m["file"])
    if kind == "proc":
        mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    elif kind == "sys":
        mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    elif kind == "dev":
        setup_dev(target)
    elif kind == "tmpfs":
        data = "mode=%o" % m["mode"] + (",size=%d" % m["size"] if m["size"] else "")
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, data)
    else:
        mount(m["source"], target, None, MS_BIND | MS_REC, None)
        if m["readonly"]:
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)

def loopback_up():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(s, 0x8913, request))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 1))
    finally:
        s.close()

def main():
    global libc
    status = int(sys.argv[2])
    os.set_inheritable(status, False)
    with os.fdopen(int(sys.argv[1]), "rb") as f:
        plan = json.loads(f.read())
    try:
        keep = plan["keep_caps"]
        if plan["mounts"] or keep is not None:
            libc = ctypes.CDLL(None, use_errno=True)
        for m in plan["mounts"]:
            do_mount(m)
        if plan["loopback"]:
            loopback_up()
        if plan["hostname"]:
            socket.sethostname(plan["hostname"])
        if keep is not None:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                last_cap = int(f.read())
        os.chroot(plan["root"])
        os.chdir(plan["workdir"])
        if keep is not None:
            for cap in range(last_cap + 1):
                if cap not in keep and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0):
                    raise OSError(ctypes.get_errno(), "cannot drop capability %d" % cap)
        os.setgroups(plan["groups"])
        os.setresgid(plan["gid"], plan["gid"], plan["gid"])
        os.setresuid(plan["uid"], plan["uid"], plan["uid"])
    except Exception as e:
        fail(status, "setup", str(e), 125)
    if plan["init"]:
        # Stay as pid 1 (as bwrap's init does): reap orphans, and the command, as pid 2,
        # receives the signals it sends itself; exit with its status, a signal as 128 + n.
        child = os.fork()
        if child:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            while True:
                try:
                    pid, wstatus = os.wait()
                except ChildProcessError:
                    os._exit(255)
                if pid == child:
                    if os.WIFSIGNALED(wstatus):
                        os._exit(128 + os.WTERMSIG(wstatus))
                    os._exit(os.WEXITSTATUS(wstatus))
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec:
    # give the command the default dispositions it would get from a container runtime.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    argv, env = plan["argv"], dict(plan["env"])
    name = argv[0]
    if "/" in name:
        candidates = [name]
    else:
        candidates = [(d or ".") + "/" + name for d in env.get("PATH", "").split(":")]
    os.write(status, b"X")
    error = None  # the first error other than "not there", as execvp reports it
    for path in candidates:
        try:
            os.execve(path, argv, env)
        except OSError as e:
            if error is None and e.errno not in (errno.ENOENT, errno.ENOTDIR):
                error = e
    if error is not None:
        fail(status, "exec", "exec %s: %s" % (name, error.strerror), 126)
    if "/" in name:
        fail(status, "exec", "exec %s: no such file or directory" % name, 127)
    fail(status, "exec", "exec %s: executable file not found in $PATH" % name, 127)

main()
"""


# --------------------------------------------------------------------------------------------
# Planning a run


@dataclass(frozen=True)
class _Mount:
    """One mount as the sandbox makes it: ``dest`` is absolute inside the sandbox and free of
    symlinks; ``nested`` when it lies on top of another of this run's mounts."""

    kind: str  # "proc", "dev", "sys", "tmpfs" or "bind"
    dest: str
    source: str = ""
    readonly: bool = False
    is_file: bool = False
    size: int | None = None
    nested: bool = False


@dataclass
class _Stubs:
    """Mount points created in the rootfs for one run, removed again afterwards.

    A stub is removed only if it is still an empty directory or an empty file: a parent
    directory created for a nested target may have received files from the command, and then
    it is the command's. Creating and removing a stub changes the modification time of the
    directory it was made in; that time is put back (to before the run if the command did not
    touch the directory, else to what the command left), so the layer diff does not see it.
    """

    rootfs: Path
    created: list[Path] = field(default_factory=list)
    # directory -> (atime before the run, mtime before the run, mtime after the stubs)
    parents: dict[Path, tuple[int, int, int]] = field(default_factory=dict)

    def ensure(self, dest: str, *, is_file: bool) -> None:
        parts = [p for p in dest.split("/") if p]
        current = self.rootfs
        for index, name in enumerate(parts):
            last = index == len(parts) - 1
            path = current / name
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                self._create(current, parts[index:], is_file=is_file)
                return
            if not last and not stat.S_ISDIR(mode):
                raise InputError(
                    f"cannot mount on {dest}: /{'/'.join(parts[: index + 1])} is not a "
                    "directory in the image"
                )
            if last and stat.S_ISDIR(mode) == is_file:
                want = "file" if is_file else "directory"
                raise InputError(f"cannot mount a {want} on {dest}: the image has the other kind")
            current = path

    def _create(self, parent: Path, names: list[str], *, is_file: bool) -> None:
        before = os.stat(parent)
        atime, mtime = before.st_atime_ns, before.st_mtime_ns
        if parent in self.parents:
            atime, mtime, _ = self.parents[parent]
        path = parent
        for index, name in enumerate(names):
            path = path / name
            if index == len(names) - 1 and is_file:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            else:
                os.mkdir(path, 0o755)
            self.created.append(path)
        self.parents[parent] = (atime, mtime, os.stat(parent).st_mtime_ns)

    def remove(self) -> None:
        left: dict[Path, tuple[int, int]] = {}
        for parent in self.parents:
            with contextlib.suppress(FileNotFoundError):
                info = os.stat(parent)
                left[parent] = (info.st_atime_ns, info.st_mtime_ns)
        kept: set[Path] = set()
        for path in reversed(self.created):
            try:
                info = os.lstat(path)
                if stat.S_ISDIR(info.st_mode):
                    os.rmdir(path)
                elif stat.S_ISREG(info.st_mode) and info.st_size == 0:
                    os.unlink(path)
                else:
                    kept.add(path)
            except FileNotFoundError:
                continue
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                    logger.warning("could not remove mount point {}: {}", path, err.strerror)
                kept.add(path)
        for parent, (atime, mtime, mtime_after) in self.parents.items():
            if parent not in left or any(p.parent == parent for p in kept):
                continue
            now_atime, now_mtime = left[parent]
            times = (atime, mtime) if now_mtime == mtime_after else (now_atime, now_mtime)
            with contextlib.suppress(FileNotFoundError):
                os.utime(parent, ns=times, follow_symlinks=False)


class _LogBuffer:
    """The end of a step's output, at most ``limit`` bytes, noting how much was dropped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._data = bytearray()
        self._dropped = 0

    def append(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > 2 * self._limit:
            cut = len(self._data) - self._limit
            del self._data[:cut]
            self._dropped += cut

    def value(self) -> bytes:
        extra = max(0, len(self._data) - self._limit)
        data = bytes(self._data[extra:])
        dropped = self._dropped + extra
        if dropped:
            return b"[memobuild: %d earlier bytes of output not kept]\n" % dropped + data
        return data


def _private_base() -> Path:
    """Where a run's small private files go: RAM (/dev/shm) when possible, so that a secret
    never touches a disk; else the temp dir."""
    shm = "/dev/shm"  # noqa: S108 - only 0700 mkdtemp directories are made inside it
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return Path(shm)
    return Path(tempfile.gettempdir())


@contextlib.contextmanager
def _scratch_dir(base: Path, prefix: str) -> Iterator[Path]:
    """A fresh 0700 directory ``base/<prefix>XXXX``, deleted on the way out.

    It holds an flock on its ``.lock`` file while in use, so that if this process is killed
    before it can clean up (leaving a secret in /dev/shm, or a copy of a bind source), the next
    run that makes a directory in ``base`` sees the lock free and deletes the leftover.
    """
    base.mkdir(parents=True, exist_ok=True)
    _sweep(base, prefix)
    # Made and locked under a name no sweep looks at, then renamed: a sweep can never see
    # this directory unlocked.
    hidden = Path(tempfile.mkdtemp(prefix=f".{prefix}", dir=base))
    fd = os.open(hidden / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    path = hidden
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = base / hidden.name[1:]
        os.rename(hidden, path)
        yield path
    finally:
        _remove_tree(path)
        os.close(fd)  # the lock goes only once the tree is gone


def _sweep(base: Path, prefix: str) -> None:
    """Delete ``base/<prefix>*`` directories left by dead runs (their lock is free)."""
    for entry in base.glob(prefix + "*"):
        try:
            fd = os.open(entry / _LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            # Not made by _scratch_dir (which renames it into place locked): leave it alone
            # unless it is clearly abandoned.
            with contextlib.suppress(OSError):
                if time.time() - entry.stat().st_mtime > _UNLOCKED_GRACE:
                    _remove_tree(entry)
            continue
        except OSError:
            continue  # another user's
        try:
            if _try_flock(fd):
                _remove_tree(entry)
        finally:
            os.close(fd)


def _remove_tree(path: Path) -> None:
    """Delete a scratch tree even if the step left read-only directories in it."""

    def fix(_func: Callable[..., object], target: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
                shutil.rmtree(target, ignore_errors=True)
            else:
                os.unlink(target)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=fix)


def _clean_target(target: str, what: str) -> str:
    if not target.startswith("/"):
        raise InputError(f"{what} target {target!r} must be an absolute path")
    cleaned = posixpath.normpath(target)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if cleaned == "/":
        raise InputError(f"{what} target cannot be /")
    return cleaned


def _under(path: str, parent: str) -> bool:
    return path.startswith(parent.rstrip("/") + "/")


def _environment(pairs: Sequence[tuple[str, str]], user: ResolvedUser) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in pairs:
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InputError(f"invalid environment variable {key!r} for RUN")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", user.home or "/")
    return env


# --------------------------------------------------------------------------------------------
# The sandbox


class Sandbox:
    """Runs RUN steps isolated; one per build (it is safe to call :meth:`run` from several
    threads at once, one rootfs per call).

    ``cache_root`` is MemoBuild's cache directory: cache mounts live under
    ``cache_root/mounts/`` and writable bind copies under ``cache_root/mounts/rw/``. ``kind``
    forces ``"bwrap"`` or ``"chroot"``; None detects on first use (:func:`detect_sandbox`).
    """

    def __init__(self, *, cache_root: Path, kind: str | None = None) -> None:
        if kind is not None and kind not in _KINDS:
            raise InputError(f"unknown sandbox kind {kind!r}; expected bwrap or chroot")
        self.cache_root = Path(cache_root)
        self._kind = kind
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._killed: set[int] = set()
        # The host ids the sandbox tool runs as. Not root means rootless bwrap (tests set this
        # to exercise that path from a root test run).
        self._host_ids = (os.geteuid(), os.getegid())

    @property
    def kind(self) -> str:
        """``"bwrap"`` or ``"chroot"``; detected (and then fixed) on first use."""
        with self._lock:
            if self._kind is None:
                self._kind = detect_sandbox()
            return self._kind

    def mount_points(self) -> tuple[str, ...]:
        """Rootfs-relative paths every run mounts on; nothing the command writes lands there.

        The sandbox removes every mount point it created before :meth:`run` returns, so a diff
        taken afterwards does not see them; a caller may still drop these paths when a diff
        shows them *added* (only possible if MemoBuild was killed mid-step). ``tmp`` is not
        here: it is a mount only in images that have no ``/tmp``, and then it is removed too.
        Each run's own mount points are in :attr:`RunResult.mount_points`.
        """
        return _FIXED_MOUNT_POINTS

    def kill_all(self) -> None:
        """Kill every step running now (their :meth:`run` calls return exit code 137)."""
        with self._lock:
            running = list(self._running)
            self._killed.update(p.pid for p in running)
        for proc in running:
            _kill_group(proc)

    # ----------------------------------------------------------------------------------------

    def run(
        self,
        rootfs: Path,
        spec: RunSpec,
        *,
        output: Callable[[bytes], None] | None = None,
    ) -> RunResult:
        """Run ``spec`` in ``rootfs`` and return how it ended; a non-zero exit is not an error.

        Raises InputError for a spec that cannot run (unknown user, bad mount target) and
        SandboxUnavailableError when the sandbox itself cannot start the step.
        """
        kind = self.kind
        rootfs = Path(rootfs).absolute()
        if not rootfs.is_dir():
            raise InputError(f"{rootfs}: the rootfs is not a directory")
        if not spec.argv or any("\0" in a for a in spec.argv):
            raise InputError(f"cannot run {spec.argv!r}: RUN needs a command without NUL bytes")
        if spec.network not in _NETWORKS:
            raise InputError(f"unknown network mode {spec.network!r}; expected default or none")
        host_uid, host_gid = self._host_ids
        rootless = host_uid != 0
        if kind == "chroot" and rootless:
            raise SandboxUnavailableError(
                "the chroot sandbox needs root; install bubblewrap (apt-get install bubblewrap) "
                "to build as another user"
            )
        user = resolve_user(rootfs, spec.user)
        env = _environment(spec.env, user)
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            private = stack.enter_context(_scratch_dir(_private_base(), "memobuild-run-"))
            if (host_uid, host_gid) != (os.geteuid(), os.getegid()):
                os.chown(private, host_uid, host_gid)
            workdir = self._ensure_workdir(rootfs, spec.workdir, user, chown=not rootless)
            stubs = _Stubs(rootfs)
            stack.callback(stubs.remove)
            mounts = self._plan_mounts(rootfs, spec, private, stack, chown=not rootless)
            for mount in mounts:
                if not mount.nested:
                    stubs.ensure(mount.dest, is_file=mount.is_file)
            if kind == "bwrap":
                exit_code, log = self._run_bwrap(
                    rootfs, spec, user, env, workdir, mounts, private, output
                )
            else:
                exit_code, log = self._run_chroot(
                    rootfs, spec, user, env, workdir, mounts, private, output
                )
        return RunResult(
            exit_code=exit_code,
            log=log,
            duration=time.monotonic() - started,
            mount_points=tuple(dict.fromkeys(m.dest.lstrip("/") for m in mounts)),
        )

    # ----------------------------------------------------------------------------------------
    # Preparing the rootfs and the mounts

    def _ensure_workdir(
        self, rootfs: Path, workdir: str, user: ResolvedUser, *, chown: bool
    ) -> str:
        """Create a missing WORKDIR (owned by the user, as BuildKit's WORKDIR does); it stays."""
        if not workdir.startswith("/"):
            raise InputError(f"WORKDIR {workdir!r} must be an absolute path")
        resolved = resolve_in_root(rootfs, workdir)
        current = rootfs
        for name in [p for p in resolved.split("/") if p]:
            current = current / name
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                os.mkdir(current, 0o755)
                os.chmod(current, 0o755)  # noqa: S103 - a WORKDIR is 0755, as Docker makes it
                if chown:
                    os.chown(current, user.uid, user.gid, follow_symlinks=False)
                continue
            if not stat.S_ISDIR(mode):
                raise InputError(f"WORKDIR {workdir}: {resolved} is not a directory in the image")
        return posixpath.normpath(workdir)

    def _plan_mounts(
        self,
        rootfs: Path,
        spec: RunSpec,
        private: Path,
        stack: contextlib.ExitStack,
        *,
        chown: bool,
    ) -> list[_Mount]:
        """Every mount of the run, parents before children, with symlink-free destinations.

        A user's ``--mount`` replaces the sandbox's own mount on the same path, and one on a
        parent (``/etc``) hides the sandbox's mounts below it (``/etc/hosts``): that directory
        is the user's. A user target below an earlier mount lies on top of that mount
        (``nested``): it is created there by the sandbox, not in the rootfs.
        """
        user_mounts = [(_clean_target(m.target, type(m).__name__), m) for m in spec.mounts]
        taken = {resolve_in_root(rootfs, target) for target, _ in user_mounts}
        own: list[tuple[str, _Mount]] = [
            ("/proc", _Mount("proc", "")),
            ("/dev", _Mount("dev", "")),
            ("/sys", _Mount("sys", "", source="/sys", readonly=True)),
        ]
        tmp = resolve_in_root(rootfs, "/tmp")  # noqa: S108 - the image's /tmp, not the host's
        if not os.path.isdir(rootfs / tmp.lstrip("/")):
            own.append((tmp, _Mount("tmpfs", "")))
        hosts = private / "hosts"
        hosts.write_text(_HOSTS)
        own.append(("/etc/hosts", _Mount("bind", "", source=str(hosts), is_file=True)))
        with contextlib.suppress(OSError):
            resolv = private / "resolv.conf"
            resolv.write_bytes(Path("/etc/resolv.conf").read_bytes())
            own.append(("/etc/resolv.conf", _Mount("bind", "", source=str(resolv), is_file=True)))
        for _, mount in own:
            if mount.source.startswith(str(private)):
                os.chmod(mount.source, 0o644)
        requests: list[tuple[str, _Mount | MountSpec]] = [
            (target, mount) for target, mount in own if resolve_in_root(rootfs, target) not in taken
        ]
        requests += user_mounts
        requests.sort(key=lambda item: item[0].count("/"))  # stable: ours first among equals

        caches = self._cache_dirs(
            [m for _, m in user_mounts if isinstance(m, CacheSpec)], stack, chown=chown
        )
        planned: list[_Mount] = []
        targets: list[str] = []  # as asked for, before symlinks were resolved
        users: list[bool] = []  # whether each planned mount is a user's --mount
        for index, (target, request) in enumerate(requests):
            below = next(
                (i for i in reversed(range(len(targets))) if _under(target, targets[i])), None
            )
            if below is not None:
                dest, nested = planned[below].dest + target[len(targets[below]) :], True
            else:
                dest = resolve_in_root(rootfs, target)
                nested = any(_under(dest, p.dest) for p in planned)
            if isinstance(request, _Mount):
                inside_users = (p for p, mine in zip(planned, users, strict=True) if mine)
                if nested and any(_under(dest, p.dest) for p in inside_users):
                    continue
                planned.append(dataclasses.replace(request, dest=dest, nested=nested))
            else:
                planned.append(
                    self._user_mount(request, dest, nested, index, private, stack, caches)
                )
            targets.append(target)
            users.append(not isinstance(request, _Mount))
        return planned

    def _user_mount(
        self,
        mount: MountSpec,
        dest: str,
        nested: bool,
        index: int,
        private: Path,
        stack: contextlib.ExitStack,
        caches: dict[str, Path],
    ) -> _Mount:
        if isinstance(mount, TmpfsSpec):
            return _Mount("tmpfs", dest, size=mount.size, nested=nested)
        if isinstance(mount, SecretSpec):
            path = private / f"secret-{index}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, mount.data)
            finally:
                os.close(fd)
            if self._host_ids[0] == 0:
                os.chown(path, mount.uid, mount.gid)
            os.chmod(path, mount.mode)
            return _Mount("bind", dest, str(path), readonly=True, is_file=True, nested=nested)
        if isinstance(mount, CacheSpec):
            directory = caches[mount.id]
            return _Mount("bind", dest, str(directory), readonly=mount.readonly, nested=nested)
        source = Path(mount.source)
        try:
            is_dir = stat.S_ISDIR(os.stat(source).st_mode)
        except OSError as err:
            raise InputError(f"bind mount source {source}: {err.strerror}") from err
        if not mount.readonly:
            source = stack.enter_context(self._writable_copy(source))
        return _Mount(
            "bind", dest, str(source), readonly=mount.readonly, is_file=not is_dir, nested=nested
        )

    @contextlib.contextmanager
    def _writable_copy(self, source: Path) -> Iterator[Path]:
        """A private copy of a bind source for ``rw``: writes are the step's alone and vanish."""
        with _scratch_dir(self.cache_root / "mounts" / "rw", "bind-") as scratch:
            copy = scratch / "src"
            cp = shutil.which("cp") or "cp"
            done = subprocess.run(  # noqa: S603 - fixed argv, paths are ours
                [cp, "-a", "--reflink=auto", "--", str(source), str(copy)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
            if done.returncode != 0:
                raise InputError(
                    f"cannot copy bind mount source {source}: "
                    + done.stderr.decode("utf-8", "replace").strip()
                )
            yield copy

    def _cache_dirs(
        self, mounts: list[CacheSpec], stack: contextlib.ExitStack, *, chown: bool
    ) -> dict[str, Path]:
        """Each cache id's directory, locked (per its sharing) until ``stack`` closes."""
        for mount in mounts:
            if mount.sharing not in _SHARING:
                raise InputError(
                    f"cache mount {mount.id!r}: unknown sharing {mount.sharing!r}; expected "
                    "shared, private or locked"
                )
            if not mount.id:
                raise InputError(f"cache mount at {mount.target}: the id is empty")
        hold = _CacheHold(self.cache_root / "mounts", mounts)
        return stack.enter_context(hold.held(chown=chown))

    # ----------------------------------------------------------------------------------------
    # Running

    def _run_bwrap(
        self,
        rootfs: Path,
        spec: RunSpec,
        user: ResolvedUser,
        env: dict[str, str],
        workdir: str,
        mounts: list[_Mount],
        private: Path,
        output: Callable[[bytes], None] | None,
    ) -> tuple[int, bytes]:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxUnavailableError(
                "bubblewrap (bwrap) is not installed; install it (apt-get install bubblewrap)"
            )
        host_uid = self._host_ids[0]
        rootless = host_uid != 0
        # bwrap itself can switch ids only inside a user namespace, which (as root) would map
        # a single uid; so any other uid or gid goes through the helper.
        helper = not rootless and (user.uid, user.gid) != (0, 0)
        args = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if spec.network == "none":
            args.append("--unshare-net")
        args += ["--hostname", SANDBOX_HOSTNAME, "--die-with-parent"]
        if rootless:
            args += ["--unshare-user", "--uid", str(user.uid), "--gid", str(user.gid)]
        args += ["--cap-drop", "ALL"]
        if user.uid == 0 or helper:
            for name, _number in DEFAULT_CAPABILITIES:
                args += ["--cap-add", name]
        prefix = _NEWROOT if helper else ""
        if helper:
            args += _python_runtime_binds()
        args += ["--bind", str(rootfs), prefix or "/"]
        for mount in mounts:
            args += _bwrap_mount_args(mount, prefix)
        args.append("--clearenv")
        with contextlib.ExitStack() as fds:
            status_path = private / "bwrap-status"
            status_fd = _open_fd(fds, status_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            args += ["--json-status-fd", str(status_fd)]
            pass_fds = [status_fd]
            if helper:
                plan = self._helper_plan(_NEWROOT, [], spec, user, env, workdir, chroot=False)
                plan_fd, helper_fd = self._helper_fds(fds, private, plan)
                pass_fds += [plan_fd, helper_fd]
                args += ["--chdir", "/"]
                command = [*_helper_argv(), str(plan_fd), str(helper_fd)]
            else:
                args += ["--chdir", workdir]
                for key, value in env.items():
                    args += ["--setenv", key, value]
                command = list(spec.argv)
            args_path = private / "bwrap-args"
            args_path.write_bytes(b"".join(os.fsencode(a) + b"\0" for a in args))
            args_fd = _open_fd(fds, args_path, os.O_RDONLY)
            pass_fds.append(args_fd)
            extra_groups: list[int] | None = None
            if not rootless:
                extra_groups = [] if helper else list(user.extra_gids)
            exit_code, log, killed = self._execute(
                [bwrap, "--args", str(args_fd), "--", *command],
                pass_fds=pass_fds,
                output=output,
                extra_groups=extra_groups,
            )
        if killed:
            return exit_code, log
        started = b'"exit-code"' in status_path.read_bytes()
        if helper and started:
            return self._helper_outcome(private, exit_code, log)
        if started:
            return exit_code, log
        last = log.rstrip().rsplit(b"\n", 1)[-1].decode("utf-8", "replace")
        if last.startswith("bwrap: execvp "):
            return 127, log
        raise SandboxUnavailableError(f"bubblewrap could not start the step: {last}")

    def _run_chroot(
        self,
        rootfs: Path,
        spec: RunSpec,
        user: ResolvedUser,
        env: dict[str, str],
        workdir: str,
        mounts: list[_Mount],
        private: Path,
        output: Callable[[bytes], None] | None,
    ) -> tuple[int, bytes]:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise SandboxUnavailableError(
                "the chroot sandbox needs unshare from util-linux (apt-get install util-linux), "
                "or install bubblewrap (apt-get install bubblewrap)"
            )
        argv: list[str] = []
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            # unshare does not die with MemoBuild; --pdeathsig makes it, and --kill-child
            # then takes the step down with it.
            argv += [setpriv, "--pdeathsig", "KILL", "--"]
        argv += [unshare, "--mount", "--propagation", "private", "--pid", "--fork"]
        argv += ["--kill-child", "--ipc", "--uts"]
        if spec.network == "none":
            argv.append("--net")
        plan_mounts: list[dict[str, object]] = [
            {
                "kind": m.kind,
                "target": str(rootfs) + m.dest,
                "source": m.source,
                "readonly": m.readonly,
                "file": m.is_file,
                "size": m.size,
                "mode": 0o1777,
            }
            for m in mounts
        ]
        plan = self._helper_plan(str(rootfs), plan_mounts, spec, user, env, workdir, chroot=True)
        with contextlib.ExitStack() as fds:
            plan_fd, helper_fd = self._helper_fds(fds, private, plan)
            exit_code, log, killed = self._execute(
                [*argv, "--", *_helper_argv(), str(plan_fd), str(helper_fd)],
                pass_fds=[plan_fd, helper_fd],
                output=output,
                extra_groups=[],
            )
        if killed:
            return exit_code, log
        return self._helper_outcome(private, exit_code, log)

    def _helper_plan(
        self,
        root: str,
        mounts: list[dict[str, object]],
        spec: RunSpec,
        user: ResolvedUser,
        env: dict[str, str],
        workdir: str,
        *,
        chroot: bool,
    ) -> dict[str, object]:
        keep: list[int] | None = None
        if chroot:
            keep = [n for _, n in DEFAULT_CAPABILITIES if n != _CAP_SYS_CHROOT]
        return {
            "root": root,
            "mounts": mounts,
            "loopback": chroot and spec.network == "none",
            "hostname": SANDBOX_HOSTNAME if chroot else None,
            "keep_caps": keep,
            "init": chroot,
            "workdir": workdir,
            "uid": user.uid,
            "gid": user.gid,
            "groups": list(user.extra_gids),
            "argv": list(spec.argv),
            "env": list(env.items()),
        }

    def _helper_fds(
        self, fds: contextlib.ExitStack, private: Path, plan: dict[str, object]
    ) -> tuple[int, int]:
        plan_path = private / "plan.json"
        plan_path.write_text(json.dumps(plan))
        os.chmod(plan_path, 0o600)
        plan_fd = _open_fd(fds, plan_path, os.O_RDONLY)
        status_fd = _open_fd(
            fds, private / "helper-status", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
        )
        return plan_fd, status_fd

    def _helper_outcome(self, private: Path, exit_code: int, log: bytes) -> tuple[int, bytes]:
        status = (private / "helper-status").read_bytes().decode("utf-8", "replace")
        if status.startswith("X"):
            return exit_code, log  # the command ran (or was not found: exit code 126/127)
        if status.startswith("Esetup "):
            raise SandboxUnavailableError(
                f"the sandbox could not start the step: {status[len('Esetup ') :]}"
            )
        last = log.rstrip().rsplit(b"\n", 1)[-1].decode("utf-8", "replace")
        raise SandboxUnavailableError(
            f"the sandbox could not start the step (exit code {exit_code}): {last}"
        )

    def _execute(
        self,
        argv: list[str],
        *,
        pass_fds: Sequence[int],
        output: Callable[[bytes], None] | None,
        extra_groups: list[int] | None,
    ) -> tuple[int, bytes, bool]:
        """Start the sandbox, stream its output, wait; kill its process group on any error."""
        host_uid, host_gid = self._host_ids
        as_other = (host_uid, host_gid) != (os.geteuid(), os.getegid())
        proc = subprocess.Popen(  # noqa: S603 - argv built from absolute tool paths
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            cwd="/",
            env={"PATH": os.environ.get("PATH", os.defpath)},
            user=host_uid if as_other else None,
            group=host_gid if as_other else None,
            extra_groups=[] if as_other else extra_groups,
        )
        with self._lock:
            self._running.add(proc)
        log = _LogBuffer(LOG_LIMIT)
        try:
            stream = proc.stdout
            if stream is None:  # pragma: no cover - stdout=PIPE always gives a stream
                raise RuntimeError("no output pipe")
            fd = stream.fileno()
            while chunk := os.read(fd, _CHUNK):
                log.append(chunk)
                if output is not None:
                    output(chunk)
            returncode = proc.wait()
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            with self._lock:
                self._running.discard(proc)
                killed = proc.pid in self._killed
                self._killed.discard(proc.pid)
        exit_code = 128 - returncode if returncode < 0 else returncode
        if killed:
            exit_code = 128 + signal.SIGKILL
        return exit_code, log.value(), killed


class _CacheHold:
    """The cache directories of one run, each locked as its ``sharing`` asks.

    Every id is locked once per run, with the strongest sharing any of its mounts asks for
    (locked > private > shared), so two mounts of one id never wait for each other; ids are
    locked in one fixed order, so two runs never wait for each other in a cycle. The first
    mount of an id gives the mode and owner of its directory when it is created.

    shared takes a shared flock (it waits only while a locked or private run holds the id);
    locked takes an exclusive one, waiting for it; private takes an exclusive one if it is free
    and otherwise runs on a fresh empty directory that is deleted afterwards.
    """

    def __init__(self, root: Path, mounts: list[CacheSpec]) -> None:
        self.root = root
        self.sharing: dict[str, str] = {}
        self.first: dict[str, CacheSpec] = {}
        for mount in mounts:
            self.first.setdefault(mount.id, mount)
            current = self.sharing.get(mount.id, "shared")
            if _SHARING.index(mount.sharing) >= _SHARING.index(current):
                self.sharing[mount.id] = mount.sharing

    @contextlib.contextmanager
    def held(self, *, chown: bool) -> Iterator[dict[str, Path]]:
        with contextlib.ExitStack() as stack:
            paths = {
                cache_id: stack.enter_context(self._hold(cache_id, chown=chown))
                for cache_id in sorted(self.sharing, key=_cache_key)
            }
            yield paths

    @contextlib.contextmanager
    def _hold(self, cache_id: str, *, chown: bool) -> Iterator[Path]:
        base = self.root / _cache_key(cache_id)
        base.mkdir(parents=True, exist_ok=True)
        id_file = base / "id"
        if not id_file.exists():
            id_file.write_text(cache_id + "\n")
        fd = os.open(base / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            with contextlib.ExitStack() as stack:
                sharing = self.sharing[cache_id]
                path = base / "data"
                if sharing == "shared":
                    fcntl.flock(fd, fcntl.LOCK_SH)
                elif not _try_flock(fd):
                    if sharing == "locked":
                        logger.info("waiting for cache mount {!r} (sharing=locked)", cache_id)
                        fcntl.flock(fd, fcntl.LOCK_EX)
                    else:
                        path = stack.enter_context(_scratch_dir(base, "private-")) / "data"
                _create_cache_dir(path, self.first[cache_id], chown=chown)
                yield path
        finally:
            os.close(fd)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _cache_key(cache_id: str) -> str:
    """A cache id as a file name: ids are free text (``/root/.cache/pip``, ``npm-$ARCH``)."""
    return hashlib.sha256(cache_id.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _create_cache_dir(path: Path, mount: CacheSpec, *, chown: bool) -> None:
    """Create a cache directory with the mount's mode and owner, only the first time."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    if chown:
        os.chown(path, mount.uid, mount.gid)
    os.chmod(path, mount.mode)


def _open_fd(stack: contextlib.ExitStack, path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    stack.callback(os.close, fd)
    return fd


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _helper_argv() -> list[str]:
    executable = os.path.realpath(sys.executable) if sys.executable else ""
    if not executable:
        raise SandboxUnavailableError("the sandbox helper needs the Python interpreter's path")
    return [executable, "-I", "-S", "-c", _HELPER]


def _python_runtime_binds() -> list[str]:
    """bwrap arguments that make this interpreter and its stdlib runnable at the same paths
    (read-only) next to the rootfs at /newroot, so the helper can run before the chroot."""
    executable = os.path.realpath(sys.executable)
    wanted = [
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/lib32",
        "/libx32",
        "/etc/ld.so.cache",
        os.path.realpath(sys.base_prefix),
        os.path.realpath(sys.base_exec_prefix),
        os.path.dirname(executable),
    ]
    args: list[str] = []
    done: list[str] = []
    for path in wanted:
        if any(path == d or _under(path, d) for d in done):
            continue
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.exists(path):
            args += ["--ro-bind", path, path]
        else:
            continue
        done.append(path)
    return args


def _bwrap_mount_args(mount: _Mount, prefix: str) -> list[str]:
    dest = prefix + mount.dest
    if mount.kind == "proc":
        return ["--proc", dest]
    if mount.kind == "dev":
        return ["--dev", dest]
    if mount.kind == "tmpfs":
        size = ["--size", str(mount.size)] if mount.size else []
        return ["--perms", "1777", *size, "--tmpfs", dest]
    return ["--ro-bind" if mount.readonly else "--bind", mount.source, dest]
