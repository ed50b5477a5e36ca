"""Real RUN steps in a busybox rootfs, under bubblewrap and under the chroot fallback.

Every behaviour test runs in both modes: what a step sees must not depend on which sandbox the
machine happens to have. The chroot mode needs root; bwrap needs bubblewrap
(scripts/install-system-deps installs it and busybox-static).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from memobuild.build import sandbox as sandbox_module
from memobuild.build.sandbox import (
    DEFAULT_PATH,
    LOG_LIMIT,
    BindSpec,
    CacheSpec,
    RunResult,
    RunSpec,
    Sandbox,
    SecretSpec,
    TmpfsSpec,
    command_argv,
    detect_sandbox,
)
from memobuild.build.secrets import (
    MAX_SECRET_SIZE,
    SecretSource,
    load_secrets,
    parse_secret_flag,
)
from memobuild.errors import InputError, SandboxUnavailableError
from rootfs import make_busybox_rootfs, tree_state

SH = ("/bin/sh", "-c")
IS_ROOT = os.geteuid() == 0


@pytest.fixture(params=["bwrap", "chroot"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "chroot" and not IS_ROOT:
        pytest.skip("the chroot sandbox needs root")
    if request.param == "bwrap" and shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is not installed: run scripts/install-system-deps")
    return str(request.param)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_busybox_rootfs(tmp_path / "rootfs")


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def box(kind: str, cache_root: Path) -> Sandbox:
    return Sandbox(cache_root=cache_root, kind=kind)


def sh(
    box: Sandbox,
    rootfs: Path,
    script: str,
    *,
    output: list[bytes] | None = None,
    **fields: object,
) -> RunResult:
    """Run ``script`` in shell form; ``fields`` are RunSpec fields other than argv."""
    fields.setdefault("env", ())
    spec = RunSpec(argv=command_argv(SH, [script], json_form=False), **fields)  # type: ignore[arg-type]
    return box.run(rootfs, spec, output=output.append if output is not None else None)


def text(result: RunResult) -> str:
    return result.log.decode()


def lines(result: RunResult) -> dict[str, str]:
    """``key=value`` lines of a step's output as a dict."""
    found = {}
    for line in text(result).splitlines():
        key, eq, value = line.partition("=")
        if eq:
            found[key] = value
    return found


# --------------------------------------------------------------------------------------------
# What the command sees


def test_env_workdir_and_user_reach_the_command(box: Sandbox, rootfs: Path) -> None:
    result = sh(
        box,
        rootfs,
        'echo "A=$A"; echo "cwd=$(pwd)"; echo "uid=$(id -u)"; echo "gid=$(id -g)"; '
        'echo "groups=$(id -G)"; echo "HOME=$HOME"; echo "PATH=$PATH"; echo "host=$(hostname)"',
        env=(("A", "two  spaces and $dollar"), ("B", "x")),
        workdir="/work/dir",
        user="app",
    )
    assert result.exit_code == 0, text(result)
    seen = lines(result)
    assert seen["A"] == "two  spaces and $dollar"
    assert seen["cwd"] == "/work/dir"
    assert (seen["uid"], seen["gid"]) == ("1000", "1000")
    assert sorted(seen["groups"].split()) == ["1000", "50"]
    assert seen["HOME"] == "/home/app"  # from passwd: not in ENV
    assert seen["PATH"] == DEFAULT_PATH  # Docker's default: the image sets none
    assert seen["host"] == "buildkitsandbox"
    # The WORKDIR was created (owned by the user, as BuildKit's WORKDIR does) and stays.
    info = os.stat(rootfs / "work" / "dir")
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (1000, 1000, 0o755)


def test_env_wins_over_defaults_and_last_duplicate_wins(box: Sandbox, rootfs: Path) -> None:
    result = sh(
        box,
        rootfs,
        'echo "HOME=$HOME"; echo "PATH=$PATH"; echo "X=$X"',
        env=(("HOME", "/custom"), ("PATH", "/bin"), ("X", "first"), ("X", "second")),
    )
    assert lines(result) == {"HOME": "/custom", "PATH": "/bin", "X": "second"}


def test_host_environment_does_not_leak(
    box: Sandbox, rootfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEMOBUILD_TEST_LEAK", "leaked")
    result = sh(box, rootfs, "env")
    assert "MEMOBUILD_TEST_LEAK" not in text(result)


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", {"uid": "0", "gid": "0", "groups": "0", "HOME": "/root"}),
        ("root", {"uid": "0", "gid": "0", "groups": "0", "HOME": "/root"}),
        ("1000:50", {"uid": "1000", "gid": "50", "groups": "50", "HOME": "/home/app"}),
        ("0:50", {"uid": "0", "gid": "50", "groups": "50", "HOME": "/root"}),
        ("4242", {"uid": "4242", "gid": "0", "groups": "0", "HOME": "/"}),
        ("nobody", {"uid": "65534", "gid": "65534", "groups": "65534", "HOME": "/nonexistent"}),
    ],
)
def test_user_forms(box: Sandbox, rootfs: Path, user: str, expected: dict[str, str]) -> None:
    result = sh(
        box,
        rootfs,
        'echo "uid=$(id -u)"; echo "gid=$(id -g)"; echo "groups=$(id -G)"; echo "HOME=$HOME"',
        user=user,
    )
    assert lines(result) == expected


def test_root_has_dockers_capabilities_and_users_have_none(box: Sandbox, rootfs: Path) -> None:
    script = "grep CapEff /proc/self/status; chown 1000 /etc/{} && echo chowned; true"
    as_root = sh(box, rootfs, script.format("group"))
    cap_eff = int(text(as_root).split("CapEff:")[1].split()[0], 16)
    assert cap_eff & (1 << 0)  # CAP_CHOWN
    assert not cap_eff & (1 << 21)  # CAP_SYS_ADMIN: no mounting, no escaping
    assert "chowned" in text(as_root)
    assert os.stat(rootfs / "etc" / "group").st_uid == 1000
    as_app = sh(box, rootfs, script.format("passwd"), user="app")
    assert int(text(as_app).split("CapEff:")[1].split()[0], 16) == 0
    assert "chowned" not in text(as_app)


def test_root_cannot_mount_or_leave_the_rootfs(box: Sandbox, rootfs: Path) -> None:
    result = sh(
        box,
        rootfs,
        "mkdir /mnt; mount -t tmpfs none /mnt 2>/dev/null && echo mounted; "
        "chroot / /bin/true 2>/dev/null && echo chrooted; true",
    )
    assert "mounted" not in text(result)  # no CAP_SYS_ADMIN
    # Under bwrap the rootfs is the real root (pivot_root), so Docker's CAP_SYS_CHROOT is
    # harmless; in a chroot it would be the way out, so the chroot mode drops it.
    assert ("chrooted" in text(result)) == (box.kind == "bwrap")


def test_shell_form_and_exec_form(box: Sandbox, rootfs: Path) -> None:
    env = (("A", "value"),)
    shell_form = box.run(rootfs, RunSpec(argv=command_argv(SH, ["echo $A"], False), env=env))
    assert text(shell_form) == "value\n"
    exec_form = box.run(rootfs, RunSpec(argv=command_argv(SH, ["echo", "$A"], True), env=env))
    assert text(exec_form) == "$A\n"  # no shell: no expansion
    # A relative program name is looked up in the step's PATH, inside the rootfs.
    by_path = box.run(rootfs, RunSpec(argv=("echo", "found"), env=(("PATH", "/bin"),)))
    assert text(by_path) == "found\n"
    # SHELL is prepended to the shell-form string, whatever it is.
    custom = box.run(
        rootfs, RunSpec(argv=command_argv(("/bin/echo", "custom"), ["echo hi"], False), env=())
    )
    assert text(custom) == "custom echo hi\n"


@pytest.mark.parametrize("user", ["", "app"])
def test_signals_have_default_dispositions(box: Sandbox, rootfs: Path, user: str) -> None:
    """No signal is ignored: ``yes | head`` must end quietly with SIGPIPE, as in Docker."""
    result = sh(box, rootfs, "grep -E 'SigIgn' /proc/self/status; yes | head -c 2", user=user)
    assert text(result) == "SigIgn:\t0000000000000000\ny\n"


def test_exit_codes(box: Sandbox, rootfs: Path) -> None:
    assert sh(box, rootfs, "exit 3").exit_code == 3
    assert sh(box, rootfs, "true").exit_code == 0
    assert sh(box, rootfs, "kill -TERM $$").exit_code == 128 + 15
    assert sh(box, rootfs, "kill -KILL $$").exit_code == 128 + 9


def test_missing_program_is_exit_127(box: Sandbox, rootfs: Path) -> None:
    result = box.run(rootfs, RunSpec(argv=("/no/such/program",), env=()))
    assert result.exit_code == 127
    assert "/no/such/program" in text(result)
    result = box.run(rootfs, RunSpec(argv=("nosuchcommand", "x"), env=()))
    assert result.exit_code == 127
    assert "nosuchcommand" in text(result)


def test_fresh_proc_dev_and_read_only_sys(box: Sandbox, rootfs: Path) -> None:
    result = sh(
        box,
        rootfs,
        "echo procs=$(ls /proc | grep -c '^[0-9]'); echo pid=$$; "
        "echo hi > /dev/null && echo null=ok; head -c 4 /dev/zero | wc -c; "
        "touch /sys/x 2>/dev/null || echo sys=ro; ls /dev/shm >/dev/null && echo shm=ok",
    )
    seen = lines(result)
    assert int(seen["procs"]) < 10  # a private PID namespace: init, sh and its children
    assert seen["pid"] == "2"  # pid 1 is the sandbox's init
    assert seen["null"] == "ok"
    assert seen["sys"] == "ro"
    assert seen["shm"] == "ok"
    assert "4\n" in text(result)


def test_hosts_and_resolv_conf(box: Sandbox, rootfs: Path) -> None:
    (rootfs / "etc" / "hosts").write_text("10.0.0.1 image-hosts\n")
    result = sh(box, rootfs, "cat /etc/hosts; echo '1.2.3.4 added' >> /etc/hosts && echo ok")
    assert "localhost buildkitsandbox" in text(result)
    assert "ok" in text(result)  # writable, as in BuildKit, but a private copy
    assert (rootfs / "etc" / "hosts").read_text() == "10.0.0.1 image-hosts\n"
    if Path("/etc/resolv.conf").exists():
        resolv = sh(box, rootfs, "cat /etc/resolv.conf")
        assert text(resolv) == Path("/etc/resolv.conf").read_text()


def _host_interfaces() -> list[str]:
    with open("/proc/net/dev") as f:
        return sorted(line.split(":")[0].strip() for line in f.readlines()[2:])


def test_network_shared_by_default_and_none_has_only_lo(box: Sandbox, rootfs: Path) -> None:
    script = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort; ip -o link"
    shared = sh(box, rootfs, script)
    assert [n for n in _host_interfaces() if n in text(shared)] == _host_interfaces()
    isolated = sh(box, rootfs, script, network="none")
    names = [line for line in text(isolated).splitlines() if line and ":" not in line]
    assert names == ["lo"]
    assert "lo: <LOOPBACK,UP" in text(isolated)  # up, so localhost works


def test_image_tmp_is_used_and_missing_tmp_gets_a_tmpfs(
    box: Sandbox, rootfs: Path, tmp_path: Path
) -> None:
    # The image's /tmp is the step's /tmp, as in Docker: COPY x /tmp/ then RUN uses it.
    (rootfs / "tmp").mkdir(mode=0o1777)
    (rootfs / "tmp" / "copied").write_text("from COPY")
    result = sh(box, rootfs, "cat /tmp/copied; echo kept > /tmp/written")
    assert text(result) == "from COPY"
    assert (rootfs / "tmp" / "written").read_text() == "kept\n"
    # Without one, a writable tmpfs appears for the step and nothing remains afterwards.
    bare = make_busybox_rootfs(tmp_path / "bare")
    before = tree_state(bare)
    result = sh(box, bare, "echo x > /tmp/f && cat /tmp/f && stat -c %a /tmp", user="app")
    assert text(result) == "x\n1777\n"
    assert tree_state(bare) == before


# --------------------------------------------------------------------------------------------
# The rootfs is left exactly as the command left it


def test_noop_run_leaves_the_rootfs_unchanged(box: Sandbox, rootfs: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    (context / "sub").mkdir(parents=True)
    (context / "file.txt").write_text("context file")
    (rootfs / "var").mkdir()
    (rootfs / "var" / "run").symlink_to("/run")  # mount targets through a symlink
    os.utime(rootfs, ns=(1_000_000_000, 1_000_000_000))
    os.utime(rootfs / "etc", ns=(2_000_000_000, 2_000_000_000))
    before = tree_state(rootfs)
    result = sh(
        box,
        rootfs,
        "true",
        workdir="/",
        user="app",
        mounts=(
            CacheSpec(target="/root/.cache/pip", id="pip"),
            SecretSpec(target="/var/run/secrets/token", data=b"s3cret"),
            TmpfsSpec(target="/deep/new/tmpfs"),
            BindSpec(target="/src", source=context),
            BindSpec(target="/etc/app.conf", source=context / "file.txt"),
            BindSpec(target="/deep/new/tmpfs/inner", source=context / "sub"),
        ),
    )
    assert result.exit_code == 0, text(result)
    assert tree_state(rootfs) == before
    assert not (rootfs / "run").exists()
    assert set(result.mount_points) >= {
        "proc",
        "dev",
        "sys",
        "tmp",
        "etc/hosts",
        "root/.cache/pip",
        "run/secrets/token",  # resolved through /var/run -> /run
        "deep/new/tmpfs",
        "deep/new/tmpfs/inner",
        "src",
        "etc/app.conf",
    }
    assert set(box.mount_points()) <= set(result.mount_points)


def test_changes_by_the_command_are_kept(box: Sandbox, rootfs: Path) -> None:
    os.utime(rootfs, ns=(1_000_000_000, 1_000_000_000))
    result = sh(box, rootfs, "mkdir -p /opt/app && echo hi > /opt/app/f && rm /bin/vi")
    assert result.exit_code == 0
    assert (rootfs / "opt" / "app" / "f").read_text() == "hi\n"
    assert not os.path.lexists(rootfs / "bin" / "vi")
    # The command changed / (it made /opt): that change is kept, though the sandbox created
    # and removed /proc and /dev there as well.
    assert os.stat(rootfs).st_mtime_ns > 1_000_000_000


def test_own_mounts_follow_the_image_layout(box: Sandbox, rootfs: Path, tmp_path: Path) -> None:
    """A --mount on /etc hides /etc/hosts as in BuildKit; one on /etc/hosts replaces ours."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "marker").write_text("user etc\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("9.9.9.9 mine\n")
    before = tree_state(rootfs)
    over_etc = sh(box, rootfs, "ls /etc", mounts=(BindSpec("/etc", etc),))
    assert text(over_etc) == "marker\n"
    over_hosts = sh(box, rootfs, "cat /etc/hosts", mounts=(BindSpec("/etc/hosts", hosts),))
    assert text(over_hosts) == "9.9.9.9 mine\n"
    assert tree_state(rootfs) == before
    assert tree_state(etc)[""][0] == os.lstat(etc).st_mode


def test_command_files_in_a_created_parent_are_kept(box: Sandbox, rootfs: Path) -> None:
    """A parent created for a nested mount target is the command's once it writes there."""
    result = sh(
        box,
        rootfs,
        "echo mine > /root/.cache/other",
        mounts=(CacheSpec(target="/root/.cache/pip", id="pip"),),
    )
    assert result.exit_code == 0, text(result)
    assert (rootfs / "root" / ".cache" / "other").read_text() == "mine\n"
    assert not (rootfs / "root" / ".cache" / "pip").exists()


def test_absolute_symlinks_in_the_image_never_reach_the_host(box: Sandbox, rootfs: Path) -> None:
    outside = Path(tempfile.gettempdir()) / f"memobuild-outside-{os.getpid()}"
    assert not outside.exists()
    (rootfs / "etc" / "resolv.conf").symlink_to(f"{outside}/resolv.conf")
    (rootfs / "cachelink").symlink_to(str(outside))
    before = tree_state(rootfs)
    result = sh(box, rootfs, "true", mounts=(CacheSpec(target="/cachelink/c", id="x"),))
    assert result.exit_code == 0, text(result)
    assert not outside.exists()
    assert tree_state(rootfs) == before


# --------------------------------------------------------------------------------------------
# Mounts


def test_cache_mount_persists_between_runs(box: Sandbox, rootfs: Path, cache_root: Path) -> None:
    mount = CacheSpec(target="/root/.cache/pip", id="pip-cache")
    before = tree_state(rootfs)
    first = sh(box, rootfs, "echo wheel > /root/.cache/pip/w", mounts=(mount,))
    assert first.exit_code == 0, text(first)
    assert tree_state(rootfs) == before  # nothing of the cache in the rootfs
    second = sh(box, rootfs, "cat /root/.cache/pip/w", mounts=(mount,))
    assert text(second) == "wheel\n"
    other = sh(box, rootfs, "ls /c | wc -l", mounts=(CacheSpec(target="/c", id="other"),))
    assert text(other).strip() == "0"
    stored = list((cache_root / "mounts").glob("*/data/w"))
    assert [p.read_text() for p in stored] == ["wheel\n"]
    assert (stored[0].parent.parent / "id").read_text() == "pip-cache\n"


def test_cache_mount_mode_owner_and_readonly(box: Sandbox, rootfs: Path) -> None:
    owned = CacheSpec(target="/cache", id="owned", mode=0o700, uid=1000, gid=1000)
    result = sh(box, rootfs, "touch /cache/x && stat -c '%u %g %a' /cache", user="app",
                mounts=(owned,))  # fmt: skip
    assert text(result) == "1000 1000 700\n"
    root_owned = sh(box, rootfs, "touch /c/x", user="app", mounts=(CacheSpec("/c", id="r"),))
    assert root_owned.exit_code != 0  # default owner root, 0755, as in BuildKit
    readonly = CacheSpec(target="/cache", id="owned", readonly=True)
    result = sh(box, rootfs, "ls /cache; touch /cache/y", mounts=(readonly,))
    assert "x" in text(result)
    assert result.exit_code != 0


def _in_thread(
    box: Sandbox, rootfs: Path, script: str, mounts: tuple[CacheSpec, ...]
) -> tuple[threading.Thread, list[RunResult]]:
    results: list[RunResult] = []
    thread = threading.Thread(target=lambda: results.append(sh(box, rootfs, script, mounts=mounts)))
    thread.start()
    return thread, results


def _wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def test_cache_sharing_locked_waits(box: Sandbox, rootfs: Path, cache_root: Path) -> None:
    locked = (CacheSpec(target="/c", id="lk", sharing="locked"),)
    flag = rootfs / "holding"
    thread, _ = _in_thread(box, rootfs, "touch /holding; sleep 0.6; echo a >> /c/log", locked)
    _wait_for(flag)
    started = time.monotonic()
    second = sh(box, rootfs, "cat /c/log", mounts=locked)
    thread.join()
    assert text(second) == "a\n"  # it ran only after the first released the cache
    assert time.monotonic() - started > 0.3


def test_cache_sharing_private_gets_a_fresh_directory_when_busy(box: Sandbox, rootfs: Path) -> None:
    private = (CacheSpec(target="/c", id="pv", sharing="private"),)
    assert sh(box, rootfs, "echo kept > /c/f", mounts=private).exit_code == 0
    thread, _ = _in_thread(box, rootfs, "touch /holding; sleep 0.6", private)
    _wait_for(rootfs / "holding")
    busy = sh(box, rootfs, "ls /c | wc -l; echo lost > /c/g", mounts=private)
    thread.join()
    assert text(busy).strip() == "0"  # not the shared directory, nothing waited
    after = sh(box, rootfs, "ls /c", mounts=private)
    assert text(after) == "f\n"  # the busy run's writes were thrown away


def test_cache_sharing_shared_is_concurrent(box: Sandbox, rootfs: Path) -> None:
    shared = (CacheSpec(target="/c", id="sh"),)
    thread, results = _in_thread(box, rootfs, "touch /c/first /holding; sleep 0.6; ls /c", shared)
    _wait_for(rootfs / "holding")
    assert sh(box, rootfs, "ls /c; touch /c/second", mounts=shared).log == b"first\n"
    # A shared user counts as a writer: a private run meanwhile gets a directory of its own.
    private = (CacheSpec(target="/c", id="sh", sharing="private"),)
    assert sh(box, rootfs, "ls /c | wc -l", mounts=private).log.strip() == b"0"
    thread.join()
    assert text(results[0]) == "first\nsecond\n"


def test_secret_readable_during_the_run_and_gone_after(box: Sandbox, rootfs: Path) -> None:
    data = b"hunter2-\x00-binary"
    before = tree_state(rootfs)
    secret = SecretSpec(target="/run/secrets/token", data=data, uid=1000)
    result = sh(
        box,
        rootfs,
        "stat -c '%a %u' /run/secrets/token; od -An -c /run/secrets/token; "
        "echo x > /run/secrets/token || echo readonly; "
        'awk \'$5 == "/run/secrets/token" {print "source=" $4}\' /proc/self/mountinfo',
        user="app",
        mounts=(secret,),
    )
    assert result.exit_code == 0, text(result)
    assert text(result).startswith("400 1000\n")
    assert "h   u   n   t   e   r   2   -  \\0   -   b" in text(result)
    assert "readonly" in text(result)
    assert tree_state(rootfs) == before
    for path in rootfs.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert data not in path.read_bytes()
    # The private file the secret was bound from (in /dev/shm, else the temp dir) is gone.
    source = lines(result)["source"]
    assert source.count("/") == 2 and "/memobuild-run-" in source, source
    for base in ("/dev/shm", tempfile.gettempdir()):  # noqa: S108 - checked to be gone
        assert not Path(base + source).exists()
        assert not Path(base + source).parent.exists()
    assert "hunter2" not in repr(secret)


def test_tmpfs_mount(box: Sandbox, rootfs: Path) -> None:
    before = tree_state(rootfs)
    result = sh(
        box,
        rootfs,
        "echo x > /scratch/f && cat /scratch/f; "
        "dd if=/dev/zero of=/scratch/big bs=1024 count=2048 2>/dev/null || echo full",
        mounts=(TmpfsSpec(target="/scratch", size=1024 * 1024),),
    )
    assert text(result) == "x\nfull\n"
    assert tree_state(rootfs) == before


def test_bind_mounts_readonly_and_private_rw(box: Sandbox, rootfs: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "app.py").write_text("print('hi')\n")
    source_before = tree_state(context)
    readonly = sh(
        box,
        rootfs,
        "cat /src/app.py; echo x > /src/new 2>&1 || echo denied",
        mounts=(BindSpec(target="/src", source=context),),
    )
    assert text(readonly).startswith("print('hi')\n")
    assert "denied" in text(readonly)
    writable = sh(
        box,
        rootfs,
        "echo changed > /src/app.py && echo new > /src/new && cat /src/app.py /src/new",
        mounts=(BindSpec(target="/src", source=context, readonly=False),),
    )
    assert text(writable) == "changed\nnew\n"
    assert tree_state(context) == source_before  # a step never changes its bind source
    assert (context / "app.py").read_text() == "print('hi')\n"
    single = sh(
        box, rootfs, "cat /etc/app.py", mounts=(BindSpec("/etc/app.py", context / "app.py"),)
    )
    assert text(single) == "print('hi')\n"


def test_bad_mounts_are_input_errors(box: Sandbox, rootfs: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="absolute"):
        sh(box, rootfs, "true", mounts=(TmpfsSpec(target="relative"),))
    with pytest.raises(InputError):
        sh(box, rootfs, "true", mounts=(BindSpec(target="/x", source=tmp_path / "missing"),))
    with pytest.raises(InputError, match="sharing"):
        sh(box, rootfs, "true", mounts=(CacheSpec(target="/c", id="a", sharing="bogus"),))
    (rootfs / "afile").write_text("")
    with pytest.raises(InputError, match="not a directory"):
        sh(box, rootfs, "true", mounts=(TmpfsSpec(target="/afile/sub"),))
    with pytest.raises(InputError, match="not a directory"):
        sh(box, rootfs, "true", workdir="/afile")
    with pytest.raises(InputError, match="/etc/passwd"):
        sh(box, rootfs, "true", user="ghost")


def test_setup_failure_is_a_sandbox_error_not_a_step_failure(box: Sandbox, rootfs: Path) -> None:
    before = tree_state(rootfs)
    with pytest.raises(SandboxUnavailableError, match="could not start the step"):
        sh(box, rootfs, "true", mounts=(TmpfsSpec(target="/proc/forbidden"),))
    assert tree_state(rootfs) == before


# --------------------------------------------------------------------------------------------
# Output, interruption


def test_output_streams_in_order_while_the_step_runs(box: Sandbox, rootfs: Path) -> None:
    arrivals: list[tuple[float, bytes]] = []
    result = box.run(
        rootfs,
        RunSpec(
            argv=command_argv(
                SH, ["echo one; sleep 0.4; echo two >&2; sleep 0.4; echo three"], False
            ),
            env=(),
        ),
        output=lambda chunk: arrivals.append((time.monotonic(), chunk)),
    )
    assert result.log == b"one\ntwo\nthree\n"
    assert b"".join(chunk for _, chunk in arrivals) == result.log
    when = {chunk.strip(): at for at, chunk in arrivals}
    assert set(when) == {b"one", b"two", b"three"}  # each arrived as it was written
    assert when[b"two"] - when[b"one"] > 0.25
    assert when[b"three"] - when[b"two"] > 0.25


def test_log_keeps_the_end_of_long_output(box: Sandbox, rootfs: Path) -> None:
    total = LOG_LIMIT + 1_000_000
    streamed = [0]

    def count(chunk: bytes) -> None:
        streamed[0] += len(chunk)

    result = box.run(
        rootfs,
        RunSpec(argv=command_argv(SH, [f"yes | head -c {total}; echo END"], False), env=()),
        output=count,
    )
    assert streamed[0] == total + 4
    assert result.log.endswith(b"y\ny\nEND\n")
    header, _, kept = result.log.partition(b"\n")
    assert b"1000004 earlier bytes" in header
    assert len(kept) == LOG_LIMIT


def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(pid))
    return found


def test_an_interrupted_run_kills_the_whole_step(box: Sandbox, rootfs: Path) -> None:
    marker = f"31.{os.getpid()}"

    def interrupt(chunk: bytes) -> None:
        raise KeyboardInterrupt

    started = time.monotonic()
    before = tree_state(rootfs)
    with pytest.raises(KeyboardInterrupt):
        box.run(
            rootfs,
            RunSpec(
                argv=command_argv(SH, [f"sleep {marker} & echo started; sleep {marker}"], False),
                env=(),
                mounts=(TmpfsSpec("/scratch"),),
            ),
            output=interrupt,
        )
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []
    assert tree_state(rootfs) == before


def test_kill_all_ends_running_steps(box: Sandbox, rootfs: Path) -> None:
    results: list[RunResult] = []
    thread = threading.Thread(
        target=lambda: results.append(sh(box, rootfs, "touch /holding; sleep 30"))
    )
    started = time.monotonic()
    thread.start()
    _wait_for(rootfs / "holding")
    box.kill_all()
    thread.join(10)
    assert not thread.is_alive()
    assert results[0].exit_code == 137
    assert time.monotonic() - started < 10


_CHILD = """
import sys
from pathlib import Path
from memobuild.build.sandbox import RunSpec, Sandbox
box = Sandbox(cache_root=Path(sys.argv[1]), kind=sys.argv[2])
box.run(Path(sys.argv[3]), RunSpec(argv=("/bin/sh", "-c", sys.argv[4]), env=()))
"""


def test_a_killed_memobuild_takes_its_step_down(kind: str, rootfs: Path, cache_root: Path) -> None:
    """SIGKILL leaves no cleanup code to run: the sandbox itself must end the step."""
    marker = f"32.{os.getpid()}"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(cache_root), kind, str(rootfs),
         f"touch /holding; sleep {marker} & sleep {marker}"],
    )  # fmt: skip
    try:
        _wait_for(rootfs / "holding")
        assert _processes_with(marker)
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []


def test_leftovers_of_killed_runs_are_swept(box: Sandbox, rootfs: Path, cache_root: Path) -> None:
    """A run killed with SIGKILL cannot delete its private files; the next run does."""
    base = sandbox_module._private_base()
    dead = Path(tempfile.mkdtemp(prefix="memobuild-run-", dir=base))
    (dead / ".lock").touch()
    (dead / "secret-0").write_bytes(b"left behind")
    alive = Path(tempfile.mkdtemp(prefix="memobuild-run-", dir=base))
    held = os.open(alive / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    young = Path(tempfile.mkdtemp(prefix="memobuild-run-", dir=base))  # no lock file yet
    rw_base = cache_root / "mounts" / "rw"
    rw_base.mkdir(parents=True)
    dead_copy = Path(tempfile.mkdtemp(prefix="bind-", dir=rw_base))
    (dead_copy / ".lock").touch()
    try:
        source = rootfs / "etc"
        result = sh(box, rootfs, "true", mounts=(BindSpec("/src", source, readonly=False),))
        assert result.exit_code == 0
        assert not dead.exists()
        assert not dead_copy.exists()
        assert alive.exists()
        assert young.exists()
    finally:
        os.close(held)
        shutil.rmtree(alive)
        shutil.rmtree(young)
        shutil.rmtree(dead, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Modes and detection


def test_detect_sandbox_prefers_bwrap() -> None:
    assert detect_sandbox() == "bwrap"


def test_detect_sandbox_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither bwrap nor unshare
    with pytest.raises(SandboxUnavailableError) as err:
        detect_sandbox()
    assert "apt-get install bubblewrap" in str(err.value)
    assert "bubblewrap (bwrap) is not installed" in str(err.value)


@pytest.mark.skipif(not IS_ROOT, reason="falls back only as root")
def test_detect_sandbox_falls_back_to_chroot_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("unshare", "true"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert detect_sandbox() == "chroot"


def test_unknown_kind_and_bad_specs(rootfs: Path, cache_root: Path) -> None:
    with pytest.raises(InputError):
        Sandbox(cache_root=cache_root, kind="docker")
    box = Sandbox(cache_root=cache_root)
    with pytest.raises(InputError):
        box.run(rootfs, RunSpec(argv=(), env=()))
    with pytest.raises(InputError):
        box.run(rootfs, RunSpec(argv=("true",), env=(), network="bridge"))
    with pytest.raises(InputError):
        box.run(rootfs, RunSpec(argv=("true",), env=(("A=B", "c"),)))
    with pytest.raises(InputError):
        box.run(rootfs / "missing", RunSpec(argv=("true",), env=()))


@pytest.mark.skipif(not IS_ROOT or shutil.which("bwrap") is None, reason="needs root and bwrap")
def test_rootless_bwrap_maps_the_caller_to_root(cache_root: Path) -> None:
    """Without root, bwrap maps the caller's uid to the step's user (a user namespace).

    The test runs the sandbox tool as nobody (the host ids it runs as are a private knob) in a
    tree nobody owns, as a rootless MemoBuild would.
    """
    base = Path(tempfile.mkdtemp(prefix="memobuild-rootless-"))
    try:
        os.chmod(base, 0o755)  # noqa: S103 - nobody must reach the rootfs inside
        rootfs = make_busybox_rootfs(base / "rootfs")
        subprocess.run(["chown", "-R", "65534:65534", str(rootfs)], check=True)
        box = Sandbox(cache_root=cache_root, kind="bwrap")
        box._host_ids = (65534, 65534)
        result = sh(box, rootfs, "id -u; touch /made; stat -c %u /made", network="none")
        assert text(result) == "0\n0\n", text(result)
        assert os.stat(rootfs / "made").st_uid == 65534
    finally:
        shutil.rmtree(base)


# --------------------------------------------------------------------------------------------
# command_argv


def test_command_argv() -> None:
    assert command_argv(SH, ["echo $HOME"], False) == ("/bin/sh", "-c", "echo $HOME")
    assert command_argv(SH, ["echo", "a b"], False) == ("/bin/sh", "-c", "echo a b")
    assert command_argv(SH, ["echo", "a b"], True) == ("echo", "a b")
    assert command_argv(("pwsh", "-Command"), ["Get-Item"], False) == (
        "pwsh",
        "-Command",
        "Get-Item",
    )
    with pytest.raises(InputError):
        command_argv(SH, [], True)
    with pytest.raises(InputError):
        command_argv((), ["echo"], False)


# --------------------------------------------------------------------------------------------
# --secret


def test_parse_secret_flag(tmp_path: Path) -> None:
    assert parse_secret_flag("id=npm,src=/run/npmrc") == SecretSource("npm", Path("/run/npmrc"))
    assert parse_secret_flag("id=npm,source=f") == SecretSource("npm", Path("f"))
    assert parse_secret_flag("id=tok,env=TOKEN") == SecretSource("tok", env="TOKEN")
    assert parse_secret_flag("type=env,id=tok,src=TOKEN") == SecretSource("tok", env="TOKEN")
    assert parse_secret_flag("type=file,ID=a,src=f") == SecretSource("a", Path("f"))
    assert parse_secret_flag("id=only") == SecretSource("only")
    assert parse_secret_flag('"id=a,b",src=f') == SecretSource("a,b", Path("f"))


@pytest.mark.parametrize(
    "value",
    ["", "src=f", "id=", "id=a,bogus=1", "id=a,src", "type=ssh,id=a", "id=a,env=", "id=a,src="],
)
def test_parse_secret_flag_errors(value: str) -> None:
    with pytest.raises(InputError):
        parse_secret_flag(value)


def test_secret_sources_read_like_buildx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "token.txt"
    file.write_bytes(b"from-file")
    environ = {"TOKEN": "from-env", "only": "env-wins"}
    assert SecretSource("a", path=file).read(environ) == b"from-file"
    assert SecretSource("a", env="TOKEN").read(environ) == b"from-env"
    # id alone: the variable named like the id if it is set, else the file named like it.
    assert SecretSource("only").read(environ) == b"env-wins"
    monkeypatch.chdir(tmp_path)
    assert SecretSource("token.txt").read(environ) == b"from-file"
    with pytest.raises(InputError, match="no environment variable"):
        SecretSource("nothing").read(environ)
    with pytest.raises(InputError, match="not set"):
        SecretSource("a", env="MISSING").read(environ)
    with pytest.raises(InputError, match="does not exist"):
        SecretSource("a", path=tmp_path / "missing").read(environ)
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_SECRET_SIZE + 1))
    with pytest.raises(InputError, match="limited"):
        SecretSource("big", path=big).read(environ)
    loaded = load_secrets([SecretSource("a", env="TOKEN"), SecretSource("a", path=file)], environ)
    assert loaded == {"a": b"from-file"}  # a later --secret with the same id wins


def test_secret_reaches_the_step_as_a_mount(box: Sandbox, rootfs: Path, tmp_path: Path) -> None:
    file = tmp_path / "npmrc"
    file.write_text("//registry/:_authToken=abc\n")
    data = load_secrets([parse_secret_flag(f"id=npmrc,src={file}")])["npmrc"]
    result = sh(
        box, rootfs, "cat /run/secrets/npmrc", mounts=(SecretSpec("/run/secrets/npmrc", data),)
    )
    assert text(result) == "//registry/:_authToken=abc\n"
