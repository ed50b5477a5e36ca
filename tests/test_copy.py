"""COPY and ADD as a Dockerfile author sees them: real contexts, real rootfs trees, real
Dockerfile lines, and what ends up in the rootfs (content, modes, owners, links).

Each test writes a small Dockerfile whose COPY/ADD steps run against a rootfs directory under
``tmp_path``. The rules are docker build's (BuildKit + fsutil), plus MemoBuild's one deliberate
difference: files from the context are written 0644/0755 and owned by root, whatever the
checkout's modes and owners are (DESIGN.md, "Cache keys").
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import os
import socket
import stat
import tarfile
import threading
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest

from memobuild import plan
from memobuild.build.copy import (
    ContextChangedError,
    CopyFailedError,
    CopySource,
    apply_copy,
)
from memobuild.build.fetch import Fetcher
from memobuild.dockerfile.instructions import AddInstruction, CopyInstruction
from memobuild.dockerfile.parser import parse
from memobuild.dockerfile.stages import Step, load_stages
from memobuild.errors import CASIntegrityError, DockerfileParseError, NetworkError
from memobuild.plan.sources import SourceNotFoundError

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="setting other owners needs root")


# --- helpers ----------------------------------------------------------------------------------


def copy_steps(dockerfile: str) -> list[Step]:
    stages = load_stages(parse(dockerfile, filename="Dockerfile"))
    return [
        step
        for step in stages.stages[-1].steps
        if isinstance(step.instruction, (CopyInstruction, AddInstruction))
    ]


def build(
    body: str,
    rootfs: Path,
    source: CopySource,
    *,
    prefix: str = "FROM scratch\n",
    dockerignore: tuple[str, ...] | list[str] = (),
    chown: tuple[int, int] | None = None,
    fetcher: Fetcher | None = None,
) -> None:
    """Run every COPY/ADD of the Dockerfile ``prefix + body`` in ``rootfs``."""
    rootfs.mkdir(exist_ok=True)
    for step in copy_steps(prefix + body):
        assert isinstance(step.instruction, (CopyInstruction, AddInstruction))
        apply_copy(
            rootfs,
            step.instruction,
            source,
            workdir=step.workdir,
            dockerignore=dockerignore,
            chown=chown,
            fetcher=fetcher,
            file="Dockerfile",
        )


def write(path: Path, text: str = "", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def listing(root: Path) -> dict[str, tuple[str, int, int, int, str]]:
    """Every path below ``root``: (type, mode, uid, gid, content or link target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        if stat.S_ISLNK(st.st_mode):
            kind, what = "l", os.readlink(path)
        elif stat.S_ISDIR(st.st_mode):
            kind, what = "d", ""
        else:
            kind, what = "f", path.read_bytes().decode(errors="replace")
        out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what)
    return out


def files(root: Path) -> dict[str, str]:
    """Regular files below ``root`` and their text (the shape most tests care about)."""
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def owner(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_uid, st.st_gid


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    """A small build context."""
    root = tmp_path / "ctx"
    write(root / "a.txt", "A")
    write(root / "b.txt", "B")
    write(root / "README.md", "readme")
    write(root / "src" / "main.py", "main")
    write(root / "src" / "util.py", "util")
    write(root / "src" / "notes.md", "notes")
    write(root / "src" / "pkg" / "mod.py", "mod")
    write(root / "src" / "pkg" / "run.sh", "#!/bin/sh", 0o755)
    return root


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


def context(root: Path) -> CopySource:
    return CopySource(root, True)


# --- destination rules ------------------------------------------------------------------------


def test_file_to_file(ctx: Path, rootfs: Path) -> None:
    build("COPY a.txt /b.txt\n", rootfs, context(ctx))
    assert files(rootfs) == {"b.txt": "A"}


def test_file_to_a_directory_ending_in_slash(ctx: Path, rootfs: Path) -> None:
    build("COPY a.txt /opt/app/\n", rootfs, context(ctx))
    assert files(rootfs) == {"opt/app/a.txt": "A"}
    assert mode(rootfs / "opt") == mode(rootfs / "opt" / "app") == 0o755


def test_file_to_an_existing_directory_without_slash_goes_inside(ctx: Path, rootfs: Path) -> None:
    (rootfs / "opt").mkdir()
    build("COPY a.txt /opt\n", rootfs, context(ctx))
    assert files(rootfs) == {"opt/a.txt": "A"}


def test_file_to_a_missing_path_without_slash_is_that_file(ctx: Path, rootfs: Path) -> None:
    build("COPY a.txt /opt/renamed\n", rootfs, context(ctx))
    assert files(rootfs) == {"opt/renamed": "A"}


def test_file_overwrites_an_existing_file(ctx: Path, rootfs: Path) -> None:
    write(rootfs / "a.txt", "old content that is longer", 0o600)
    build("COPY a.txt /a.txt\n", rootfs, context(ctx))
    assert (rootfs / "a.txt").read_text() == "A"
    assert mode(rootfs / "a.txt") == 0o644


def test_dest_is_relative_to_workdir_and_dot_is_a_directory(ctx: Path, rootfs: Path) -> None:
    build(
        "WORKDIR /app\nCOPY a.txt .\nCOPY b.txt sub/\nCOPY README.md ../top.md\n",
        rootfs,
        context(ctx),
    )
    assert files(rootfs) == {"app/a.txt": "A", "app/sub/b.txt": "B", "top.md": "readme"}


def test_several_sources_need_a_directory_destination(ctx: Path, rootfs: Path) -> None:
    with pytest.raises(CopyFailedError) as info:
        build("COPY a.txt b.txt /out\n", rootfs, context(ctx))
    assert (
        "When using COPY with more than one source file, the destination must be a "
        "directory and end with a /" in str(info.value)
    )
    assert info.value.line == 2
    assert str(info.value).startswith("Dockerfile:2: ")
    assert list(rootfs.iterdir()) == []  # nothing is written before the check
    build("COPY a.txt b.txt /out/\n", rootfs, context(ctx))
    assert files(rootfs) == {"out/a.txt": "A", "out/b.txt": "B"}


def test_several_sources_into_an_existing_directory_without_slash(ctx: Path, rootfs: Path) -> None:
    (rootfs / "out").mkdir()
    build("COPY a.txt b.txt /out\n", rootfs, context(ctx))
    assert files(rootfs) == {"out/a.txt": "A", "out/b.txt": "B"}


def test_several_directories_merge_into_a_new_destination(tmp_path: Path, rootfs: Path) -> None:
    ctx = tmp_path / "ctx"
    write(ctx / "one" / "x", "1")
    write(ctx / "two" / "y", "2")
    build("COPY one two /merged\n", rootfs, context(ctx))
    assert files(rootfs) == {"merged/x": "1", "merged/y": "2"}


def test_a_wildcard_matching_several_files_needs_a_directory(ctx: Path, rootfs: Path) -> None:
    with pytest.raises(CopyFailedError, match="must be a directory and end with a /"):
        build("COPY *.txt /out\n", rootfs, context(ctx))
    build("COPY *.md /only.md\n", rootfs, context(ctx))  # one match: a file
    assert files(rootfs) == {"only.md": "readme"}


def test_a_directory_copies_its_contents(ctx: Path, rootfs: Path) -> None:
    build("COPY src /app\n", rootfs, context(ctx))
    assert files(rootfs) == {
        "app/main.py": "main",
        "app/notes.md": "notes",
        "app/pkg/mod.py": "mod",
        "app/pkg/run.sh": "#!/bin/sh",
        "app/util.py": "util",
    }


def test_dot_copies_the_whole_context_minus_dockerignore(ctx: Path, rootfs: Path) -> None:
    build("WORKDIR /app\nCOPY . .\n", rootfs, context(ctx), dockerignore=["*.md", "src/pkg"])
    assert files(rootfs) == {
        "app/a.txt": "A",
        "app/b.txt": "B",
        "app/src/main.py": "main",
        "app/src/notes.md": "notes",  # *.md is anchored at the root
        "app/src/util.py": "util",
    }


def test_a_directory_cannot_replace_a_file(ctx: Path, rootfs: Path) -> None:
    write(rootfs / "app", "a file")
    with pytest.raises(CopyFailedError, match="cannot copy to non-directory: /app"):
        build("COPY src /app\n", rootfs, context(ctx))


def test_a_file_cannot_replace_a_directory(ctx: Path, rootfs: Path) -> None:
    (rootfs / "app" / "a.txt").mkdir(parents=True)
    with pytest.raises(CopyFailedError, match=r"cannot replace directory /app/a\.txt"):
        build("COPY src/../a.txt /app/\n", rootfs, context(ctx))


def test_existing_destination_directory_keeps_its_own_metadata(ctx: Path, rootfs: Path) -> None:
    (rootfs / "app").mkdir(mode=0o700)
    (rootfs / "app").chmod(0o700)
    build("COPY --chmod=0600 src /app\n", rootfs, context(ctx))
    assert mode(rootfs / "app") == 0o700
    assert mode(rootfs / "app" / "main.py") == 0o600


def test_a_symlink_loop_on_the_destination_path_is_a_copy_error(ctx: Path, rootfs: Path) -> None:
    (rootfs / "a").symlink_to("/b")
    (rootfs / "b").symlink_to("/a")
    with pytest.raises(CopyFailedError, match="too many levels of symbolic links") as info:
        build("COPY a.txt /a/x\n", rootfs, context(ctx))
    assert info.value.line == 2


def test_a_file_on_the_destination_path_is_a_copy_error(ctx: Path, rootfs: Path) -> None:
    write(rootfs / "etc" / "hostname", "box")
    with pytest.raises(CopyFailedError, match="/etc/hostname is not a directory"):
        build("COPY a.txt /etc/hostname/conf/\n", rootfs, context(ctx))


# --- wildcards --------------------------------------------------------------------------------


def test_wildcards(ctx: Path, rootfs: Path) -> None:
    build("COPY *.txt src/*.py /out/\n", rootfs, context(ctx))
    assert files(rootfs) == {
        "out/a.txt": "A",
        "out/b.txt": "B",
        "out/main.py": "main",
        "out/util.py": "util",  # * does not cross /: src/pkg/mod.py is not matched
    }


def test_question_mark_and_classes(ctx: Path, rootfs: Path) -> None:
    build("COPY [ab].tx? /out/\n", rootfs, context(ctx))
    assert files(rootfs) == {"out/a.txt": "A", "out/b.txt": "B"}


def test_a_matched_directory_is_copied_by_contents(ctx: Path, rootfs: Path) -> None:
    build("COPY sr* /out/\n", rootfs, context(ctx))
    assert "out/main.py" in files(rootfs)
    assert "out/pkg/mod.py" in files(rootfs)
    assert not (rootfs / "out" / "src").exists()


WILDCARD_PATTERNS = [
    "*",
    "*.txt",
    "src/*",
    "s?c/*.py",
    "[a-b]*",
    "[^a-z]*",
    "src/p*/*.sh",
    "*/*",
    "src/[mu]*.py",
    "\\*.txt",
]


@pytest.mark.parametrize("pattern", WILDCARD_PATTERNS)
def test_stage_wildcards_match_exactly_what_context_wildcards_match(
    ctx: Path, tmp_path: Path, pattern: str
) -> None:
    """The context is matched by the plan's Rust code, a stage on disk by Python: same rules."""
    write(ctx / "*.txt", "literal star")
    write(ctx / "Zed", "capital")
    from_context, from_stage = tmp_path / "from-context", tmp_path / "from-stage"
    build(f"COPY {pattern} /out/\n", from_context, context(ctx))
    build(
        f"COPY --from=build {pattern} /out/\n",
        from_stage,
        CopySource(ctx, False),
        prefix=FROM_STAGE,
    )
    assert files(from_context)
    assert files(from_stage) == files(from_context)


def test_a_malformed_wildcard_is_an_error_in_both(ctx: Path, rootfs: Path) -> None:
    with pytest.raises(DockerfileParseError, match="syntax error in pattern"):
        build("COPY src/[a /out/\n", rootfs, context(ctx))
    with pytest.raises(DockerfileParseError, match="syntax error in pattern"):
        build("COPY --from=build src/[a /out/\n", rootfs, CopySource(ctx, False), prefix=FROM_STAGE)


def test_a_wildcard_matching_nothing_copies_nothing(ctx: Path, rootfs: Path) -> None:
    build("COPY *.nothing /out/\n", rootfs, context(ctx))
    assert list(rootfs.iterdir()) == []


def test_a_missing_literal_source_is_an_error_at_its_line(ctx: Path, rootfs: Path) -> None:
    with pytest.raises(SourceNotFoundError) as info:
        build("RUN true\nCOPY src/x /x\n", rootfs, context(ctx))
    assert info.value.line == 3
    assert "src/x not found in the build context" in str(info.value)
    assert isinstance(info.value, DockerfileParseError)


def test_a_source_excluded_by_dockerignore_is_not_found_and_says_why(
    ctx: Path, rootfs: Path
) -> None:
    with pytest.raises(SourceNotFoundError, match=r"excluded by \.dockerignore"):
        build("COPY README.md /x\n", rootfs, context(ctx), dockerignore=["*.md"])


def test_sources_cannot_leave_the_context(ctx: Path, rootfs: Path, tmp_path: Path) -> None:
    write(tmp_path / "secret.txt", "secret")
    build("COPY ../../a.txt /out/\n", rootfs, context(ctx))  # .. stops at the context root
    assert files(rootfs) == {"out/a.txt": "A"}
    with pytest.raises(SourceNotFoundError, match=r"secret\.txt not found in the build context"):
        build("COPY ../secret.txt /out/\n", rootfs, context(ctx))


# --- modes and owners -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_mode", "dir_mode", "exe_mode"),
    [(0o600, 0o700, 0o700), (0o664, 0o775, 0o775), (0o644, 0o755, 0o755), (0o666, 0o777, 0o777)],
)
def test_context_modes_are_normalised_whatever_the_checkout_umask(
    tmp_path: Path, file_mode: int, dir_mode: int, exe_mode: int
) -> None:
    ctx = tmp_path / "ctx"
    write(ctx / "d" / "plain.txt", "p", file_mode)
    write(ctx / "d" / "tool", "t", exe_mode)
    (ctx / "d").chmod(dir_mode)
    if ROOT:
        for path in [ctx / "d", ctx / "d" / "plain.txt", ctx / "d" / "tool"]:
            os.chown(path, 1234, 5678)
    rootfs = tmp_path / "rootfs"
    build("COPY d /app/d\n", rootfs, context(ctx))
    assert listing(rootfs) == {
        "app": ("d", 0o755, 0, 0, ""),
        "app/d": ("d", 0o755, 0, 0, ""),
        "app/d/plain.txt": ("f", 0o644, 0, 0, "p"),
        "app/d/tool": ("f", 0o755, 0, 0, "t"),
    }


def test_context_mtimes_are_kept(tmp_path: Path, rootfs: Path) -> None:
    ctx = tmp_path / "ctx"
    source = write(ctx / "old.txt", "old")
    os.utime(source, (1_000_000_000, 1_000_000_000))
    build("COPY old.txt /\n", rootfs, context(ctx))
    assert (rootfs / "old.txt").stat().st_mtime == 1_000_000_000


@pytest.mark.parametrize(
    ("chmod", "file_mode", "exe_mode", "dir_mode"),
    [
        ("0640", 0o640, 0o640, 0o640),  # BuildKit applies --chmod to directories too
        ("755", 0o755, 0o755, 0o755),
        ("4755", 0o4755, 0o4755, 0o4755),
        ("u+x", 0o744, 0o755, 0o755),
        ("go-rwx", 0o600, 0o700, 0o700),
        ("a=rX", 0o444, 0o555, 0o555),
        ("u=rw,g=r,o=", 0o640, 0o640, 0o640),
        ("g=u", 0o664, 0o775, 0o775),
    ],
)
def test_chmod(
    ctx: Path, rootfs: Path, chmod: str, file_mode: int, exe_mode: int, dir_mode: int
) -> None:
    build(f"COPY --chmod={chmod} src /app/\n", rootfs, context(ctx))
    assert mode(rootfs / "app" / "main.py") == file_mode
    assert mode(rootfs / "app" / "pkg" / "run.sh") == exe_mode
    assert mode(rootfs / "app" / "pkg") == dir_mode
    assert mode(rootfs / "app") == 0o755  # created for the copy, not copied: no --chmod


def test_chmod_applies_to_a_single_file_and_heredocs(ctx: Path, rootfs: Path) -> None:
    build("COPY --chmod=0700 a.txt <<EOF /bin/\necho\nEOF\n", rootfs, context(ctx))
    assert mode(rootfs / "bin" / "a.txt") == 0o700
    assert mode(rootfs / "bin" / "EOF") == 0o700


@needs_root
def test_chown_owns_everything_written_including_new_parents(ctx: Path, rootfs: Path) -> None:
    (rootfs / "srv").mkdir()
    build("COPY --chown=1000:1001 src /srv/app/\n", rootfs, context(ctx), chown=(1000, 1001))
    assert owner(rootfs / "srv") == (0, 0)  # existed before: untouched
    for rel in ["srv/app", "srv/app/main.py", "srv/app/pkg", "srv/app/pkg/run.sh"]:
        assert owner(rootfs / rel) == (1000, 1001), rel


# --- --exclude and --parents ------------------------------------------------------------------


def test_exclude(ctx: Path, rootfs: Path) -> None:
    build("COPY --exclude=*.md --exclude=pkg . /app/\n", rootfs, context(ctx))
    assert files(rootfs) == {
        "app/a.txt": "A",
        "app/b.txt": "B",
        "app/src/main.py": "main",
        "app/src/notes.md": "notes",  # patterns are anchored at the copied directory
        "app/src/pkg/mod.py": "mod",
        "app/src/pkg/run.sh": "#!/bin/sh",
        "app/src/util.py": "util",
    }


def test_exclude_with_double_star_and_an_exception(ctx: Path, rootfs: Path) -> None:
    build(
        "COPY --exclude=**/*.md --exclude=src/pkg --exclude=!src/pkg/run.sh . /app/\n",
        rootfs,
        context(ctx),
    )
    assert files(rootfs) == {
        "app/a.txt": "A",
        "app/b.txt": "B",
        "app/src/main.py": "main",
        "app/src/pkg/run.sh": "#!/bin/sh",
        "app/src/util.py": "util",
    }
    assert mode(rootfs / "app" / "src" / "pkg") == 0o755


def test_exclude_filters_files_matched_by_a_wildcard(ctx: Path, rootfs: Path) -> None:
    build("COPY --exclude=b.* *.txt *.md /out/\n", rootfs, context(ctx))
    assert files(rootfs) == {"out/README.md": "readme", "out/a.txt": "A"}


def test_parents_keeps_the_source_path(ctx: Path, rootfs: Path) -> None:
    build("COPY --parents src/pkg/mod.py a.txt /out/\n", rootfs, context(ctx))
    assert files(rootfs) == {"out/a.txt": "A", "out/src/pkg/mod.py": "mod"}
    assert mode(rootfs / "out" / "src") == mode(rootfs / "out" / "src" / "pkg") == 0o755


def test_parents_with_a_pivot_and_wildcards(ctx: Path, rootfs: Path) -> None:
    build("COPY --parents ./src/./pkg/*.sh ./src/*.py /out/\n", rootfs, context(ctx))
    assert files(rootfs) == {
        "out/pkg/run.sh": "#!/bin/sh",
        "out/src/main.py": "main",
        "out/src/util.py": "util",
    }


def test_parents_with_a_directory(ctx: Path, rootfs: Path) -> None:
    build("COPY --parents src/pkg /out\n", rootfs, context(ctx))
    assert files(rootfs) == {"out/src/pkg/mod.py": "mod", "out/src/pkg/run.sh": "#!/bin/sh"}


# --- heredocs ---------------------------------------------------------------------------------


def test_heredoc_sources_are_files_named_by_the_heredoc(ctx: Path, rootfs: Path) -> None:
    build(
        "ARG NAME=world\nCOPY <<hello.txt <<'raw.txt' /etc/greetings/\nhello $NAME\n"
        "hello.txt\n$NAME stays\nraw.txt\n",
        rootfs,
        context(ctx),
    )
    assert files(rootfs) == {
        "etc/greetings/hello.txt": "hello world\n",
        "etc/greetings/raw.txt": "$NAME stays\n",
    }
    assert mode(rootfs / "etc" / "greetings" / "hello.txt") == 0o644


def test_a_single_heredoc_to_a_file_destination(ctx: Path, rootfs: Path) -> None:
    build("COPY <<EOF /etc/app.conf\nkey=value\nEOF\n", rootfs, context(ctx))
    assert files(rootfs) == {"etc/app.conf": "key=value\n"}


# --- symlinks ---------------------------------------------------------------------------------


def test_symlinks_inside_a_copied_directory_stay_symlinks(tmp_path: Path, rootfs: Path) -> None:
    ctx = tmp_path / "ctx"
    write(ctx / "lib" / "libx.so.1", "so")
    (ctx / "lib" / "libx.so").symlink_to("libx.so.1")
    (ctx / "lib" / "abs").symlink_to("/etc/hostname")
    build("COPY lib /usr/lib/\n", rootfs, context(ctx))
    assert os.readlink(rootfs / "usr" / "lib" / "libx.so") == "libx.so.1"
    assert os.readlink(rootfs / "usr" / "lib" / "abs") == "/etc/hostname"


def test_a_symlink_named_as_a_source_is_followed(tmp_path: Path, rootfs: Path) -> None:
    ctx = tmp_path / "ctx"
    write(ctx / "real" / "config.yml", "cfg")
    (ctx / "current").symlink_to("real")
    (ctx / "config.yml").symlink_to("real/config.yml")
    build("COPY config.yml /etc/\nCOPY current /opt/current\n", rootfs, context(ctx))
    assert not (rootfs / "etc" / "config.yml").is_symlink()
    assert files(rootfs) == {"etc/config.yml": "cfg", "opt/current/config.yml": "cfg"}


def test_a_destination_through_a_rootfs_symlink_to_etc_stays_in_the_rootfs(
    ctx: Path, rootfs: Path
) -> None:
    (rootfs / "etc").mkdir()
    (rootfs / "config").symlink_to("/etc")
    (rootfs / "up").symlink_to("../../../../../../..")
    (rootfs / "dangling").symlink_to("/nonexistent/target")
    host_passwd = Path("/etc/passwd").read_bytes()
    build(
        "WORKDIR /app\n"
        "COPY a.txt /config/passwd\n"
        "COPY b.txt /up/etc/shadow\n"
        "COPY README.md ../../../../etc/group\n"
        "COPY src /config/\n"
        "COPY a.txt /dangling\n",
        rootfs,
        context(ctx),
    )
    assert (rootfs / "etc" / "passwd").read_text() == "A"
    assert (rootfs / "etc" / "shadow").read_text() == "B"
    assert (rootfs / "etc" / "group").read_text() == "readme"
    assert (rootfs / "etc" / "main.py").read_text() == "main"
    assert (rootfs / "nonexistent" / "target").read_text() == "A"
    assert (rootfs / "config").is_symlink()
    assert Path("/etc/passwd").read_bytes() == host_passwd
    assert not Path("/etc/main.py").exists()
    assert not Path("/nonexistent").exists()


def test_a_rootfs_symlink_where_the_tree_needs_a_directory_is_refused(
    ctx: Path, rootfs: Path
) -> None:
    (rootfs / "app").mkdir()
    (rootfs / "app" / "pkg").symlink_to("/etc")
    with pytest.raises(CopyFailedError, match="cannot copy to non-directory: /app/pkg"):
        build("COPY src /app/\n", rootfs, context(ctx))
    assert not Path("/etc/mod.py").exists()


def test_an_existing_symlink_at_a_file_destination_inside_a_tree_is_replaced(
    ctx: Path, rootfs: Path
) -> None:
    (rootfs / "app").mkdir()
    (rootfs / "app" / "main.py").symlink_to("/etc/passwd")
    host_passwd = Path("/etc/passwd").read_bytes()
    build("COPY src /app/\n", rootfs, context(ctx))
    assert not (rootfs / "app" / "main.py").is_symlink()
    assert (rootfs / "app" / "main.py").read_text() == "main"
    assert Path("/etc/passwd").read_bytes() == host_passwd


# --- the plan's index -------------------------------------------------------------------------


def planned(ctx: Path, body: str) -> tuple[list[Step], CopySource]:
    (ctx / "Dockerfile").write_text("FROM scratch\n" + body)
    result = plan(ctx)
    assert result.context_index is not None
    steps = [node.step for node in result.nodes if node.step is not None]
    return steps, CopySource(ctx, True, index=result.context_index)


def run_steps(steps: list[Step], rootfs: Path, source: CopySource) -> None:
    for step in steps:
        assert isinstance(step.instruction, (CopyInstruction, AddInstruction))
        apply_copy(rootfs, step.instruction, source, workdir=step.workdir, file="Dockerfile")


def test_the_copy_is_what_the_plan_hashed(ctx: Path, rootfs: Path) -> None:
    write(ctx / ".dockerignore", "*.md\n")
    steps, source = planned(ctx, "COPY . /app/\n")
    write(ctx / "late.txt", "added after planning")
    run_steps(steps, rootfs, source)
    copied = files(rootfs)
    assert "app/late.txt" not in copied
    assert "app/README.md" not in copied
    assert copied["app/src/pkg/mod.py"] == "mod"


def test_a_context_file_changed_after_planning_stops_the_copy(ctx: Path, rootfs: Path) -> None:
    steps, source = planned(ctx, "COPY src /app/\n")
    write(ctx / "src" / "util.py", "UTIL")  # same size, other content
    with pytest.raises(ContextChangedError, match=r"src/util\.py .* changed") as info:
        run_steps(steps, rootfs, source)
    assert info.value.retryable
    assert not (rootfs / "app" / "util.py").exists()


def test_a_context_file_removed_after_planning_stops_the_copy(ctx: Path, rootfs: Path) -> None:
    steps, source = planned(ctx, "COPY src /app/\n")
    (ctx / "src" / "main.py").unlink()
    with pytest.raises(ContextChangedError, match=r"src/main\.py"):
        run_steps(steps, rootfs, source)


# --- COPY --from ------------------------------------------------------------------------------

FROM_STAGE = "FROM scratch AS build\nFROM scratch\n"


@pytest.fixture
def stage(tmp_path: Path) -> Path:
    """A stage's rootfs with modes, owners, times and links worth keeping."""
    root = tmp_path / "stage"
    write(root / "usr" / "bin" / "tool", "tool", 0o4751)
    write(root / "app" / "data" / "secret", "s", 0o600)
    write(root / "app" / "data" / "notes.md", "n", 0o640)
    (root / "app" / "data").chmod(0o750)
    (root / "app" / "current").symlink_to("data/secret")
    os.link(root / "app" / "data" / "secret", root / "app" / "hardlink")
    (root / "etc").mkdir()
    (root / "etc" / "alt").symlink_to("/usr/bin/tool")
    os.utime(root / "usr" / "bin" / "tool", (1_100_000_000, 1_100_000_000))
    if ROOT:
        os.chown(root / "usr" / "bin" / "tool", 0, 50)
        (root / "usr" / "bin" / "tool").chmod(0o4751)  # chown cleared the setuid bit
        os.chown(root / "app" / "data", 33, 33)
        os.chown(root / "app" / "data" / "secret", 33, 33)
        os.chown(root / "app" / "current", 33, 34, follow_symlinks=False)
    return root


def test_copy_from_a_stage_keeps_modes_owners_times_and_links(stage: Path, rootfs: Path) -> None:
    build(
        "COPY --from=build /app /srv/\nCOPY --from=build /usr/bin/tool /bin/\n",
        rootfs,
        CopySource(stage, False),
        prefix=FROM_STAGE,
    )
    assert mode(rootfs / "bin" / "tool") == 0o4751
    assert (rootfs / "bin" / "tool").stat().st_mtime == 1_100_000_000
    assert mode(rootfs / "srv" / "data") == 0o750
    assert mode(rootfs / "srv" / "data" / "secret") == 0o600
    assert os.readlink(rootfs / "srv" / "current") == "data/secret"
    assert (rootfs / "srv" / "hardlink").stat().st_ino == (
        rootfs / "srv" / "data" / "secret"
    ).stat().st_ino
    if ROOT:
        assert owner(rootfs / "bin" / "tool") == (0, 50)
        assert owner(rootfs / "srv" / "data") == (33, 33)
        assert owner(rootfs / "srv" / "current") == (33, 34)


@needs_root
def test_copy_from_a_stage_with_chown_and_chmod(stage: Path, rootfs: Path) -> None:
    build(
        "COPY --from=build --chown=7:8 --chmod=go-rwx /app /srv/\n",
        rootfs,
        CopySource(stage, False),
        prefix=FROM_STAGE,
        chown=(7, 8),
    )
    assert owner(rootfs / "srv" / "data" / "notes.md") == (7, 8)
    assert mode(rootfs / "srv" / "data" / "notes.md") == 0o600
    assert mode(rootfs / "srv" / "data") == 0o700


def test_copy_from_a_stage_follows_symlinks_inside_the_stage(stage: Path, rootfs: Path) -> None:
    # /etc/alt -> /usr/bin/tool must be read from the stage, not the host.
    build(
        "COPY --from=build /etc/alt /bin/alt\n", rootfs, CopySource(stage, False), prefix=FROM_STAGE
    )
    assert (rootfs / "bin" / "alt").read_text() == "tool"


def test_copy_from_a_stage_with_wildcards_and_exclude(stage: Path, rootfs: Path) -> None:
    build(
        "COPY --from=build --exclude=*.md /app/d* /usr/*/to?? /out/\n",
        rootfs,
        CopySource(stage, False),
        prefix=FROM_STAGE,
    )
    assert files(rootfs) == {"out/secret": "s", "out/tool": "tool"}


def test_copy_from_a_stage_with_parents(stage: Path, rootfs: Path) -> None:
    build(
        "COPY --from=build --parents /app/data/secret /usr/bin /out/\n",
        rootfs,
        CopySource(stage, False),
        prefix=FROM_STAGE,
    )
    assert files(rootfs) == {"out/app/data/secret": "s", "out/usr/bin/tool": "tool"}
    assert mode(rootfs / "out" / "app" / "data") == 0o750


def test_copy_from_a_stage_missing_path(stage: Path, rootfs: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"app/nope not found in 'build'") as info:
        build(
            "COPY --from=build /app/nope /x\n", rootfs, CopySource(stage, False), prefix=FROM_STAGE
        )
    assert info.value.line == 3


def test_copy_from_a_stage_cannot_escape_it(stage: Path, rootfs: Path, tmp_path: Path) -> None:
    write(tmp_path / "outside.txt", "host file")
    (stage / "escape").symlink_to("../../outside.txt")
    with pytest.raises(SourceNotFoundError):
        build("COPY --from=build /escape /x\n", rootfs, CopySource(stage, False), prefix=FROM_STAGE)
    with pytest.raises(SourceNotFoundError):
        build(
            "COPY --from=build ../outside.txt /x\n",
            rootfs,
            CopySource(stage, False),
            prefix=FROM_STAGE,
        )


def test_copy_from_the_stage_root(stage: Path, rootfs: Path) -> None:
    build("COPY --from=build / /copy/\n", rootfs, CopySource(stage, False), prefix=FROM_STAGE)
    assert files(rootfs)["copy/usr/bin/tool"] == "tool"
    assert os.readlink(rootfs / "copy" / "etc" / "alt") == "/usr/bin/tool"


def test_copy_from_a_stage_keeps_xattrs_and_fifos_and_skips_sockets(
    stage: Path, rootfs: Path
) -> None:
    special = stage / "special"
    special.mkdir()
    os.mkfifo(special / "pipe")
    os.chmod(special / "pipe", 0o620)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(special / "sock"))
    tool = stage / "usr" / "bin" / "tool"
    try:
        os.setxattr(tool, "user.origin", b"stage")
    except OSError as err:
        pytest.skip(f"no user xattrs here: {err.strerror}")
    build(
        "COPY --from=build /special /usr/bin/tool /out/\n",
        rootfs,
        CopySource(stage, False),
        prefix=FROM_STAGE,
    )
    assert stat.S_ISFIFO((rootfs / "out" / "pipe").lstat().st_mode)
    assert mode(rootfs / "out" / "pipe") == 0o620
    assert not (rootfs / "out" / "sock").exists()  # a layer tar cannot hold a socket
    assert os.getxattr(rootfs / "out" / "tool", "user.origin") == b"stage"


# --- ADD: local archives ----------------------------------------------------------------------

ARCHIVE_MEMBERS = [("pkg/bin/tool", b"#!/bin/sh\n", 0o755), ("pkg/share/doc.txt", b"doc", 0o600)]


def make_tar(compression: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data, file_mode in ARCHIVE_MEMBERS:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), file_mode, 42, 43
            info.mtime = 1_200_000_000
            tar.addfile(info, io.BytesIO(data))
    raw = out.getvalue()
    if compression == "gzip":
        return gzip.compress(raw)
    if compression == "bzip2":
        import bz2

        return bz2.compress(raw)
    if compression == "xz":
        import lzma

        return lzma.compress(raw)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(raw)
    return raw


@pytest.mark.parametrize("compression", ["tar", "gzip", "bzip2", "xz", "zstd"])
def test_add_extracts_a_local_archive(tmp_path: Path, rootfs: Path, compression: str) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "release.data").write_bytes(make_tar(compression))  # no telling extension
    build("ADD release.data /opt\n", rootfs, context(ctx))
    assert files(rootfs) == {"opt/pkg/bin/tool": "#!/bin/sh\n", "opt/pkg/share/doc.txt": "doc"}
    tool = rootfs / "opt" / "pkg" / "bin" / "tool"
    assert mode(tool) == 0o755
    assert mode(rootfs / "opt" / "pkg" / "share" / "doc.txt") == 0o600  # the archive's modes
    assert tool.stat().st_mtime == 1_200_000_000
    if ROOT:
        assert owner(tool) == (42, 43)
        assert owner(rootfs / "opt") == (0, 0)


@needs_root
def test_add_archive_with_chown(tmp_path: Path, rootfs: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.tar.gz").write_bytes(make_tar("gzip"))
    build("ADD --chown=5:6 a.tar.gz /opt/\n", rootfs, context(ctx), chown=(5, 6))
    assert owner(rootfs / "opt" / "pkg" / "bin" / "tool") == (5, 6)
    assert owner(rootfs / "opt") == (5, 6)


def test_add_copies_what_is_not_an_archive_and_unpack_false(tmp_path: Path, rootfs: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "notes.tar.gz").write_bytes(gzip.compress(b"not a tar"))
    (ctx / "keep.tar").write_bytes(make_tar("tar"))
    build("ADD notes.tar.gz /a/\nADD --unpack=false keep.tar /b/\n", rootfs, context(ctx))
    assert (rootfs / "a" / "notes.tar.gz").read_bytes() == gzip.compress(b"not a tar")
    assert (rootfs / "b" / "keep.tar").read_bytes() == make_tar("tar")
    assert mode(rootfs / "b" / "keep.tar") == 0o644


def test_copy_never_extracts(tmp_path: Path, rootfs: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.tar").write_bytes(make_tar("tar"))
    build("COPY a.tar /opt/\n", rootfs, context(ctx))
    assert files(rootfs) == {"opt/a.tar": make_tar("tar").decode(errors="replace")}


def test_add_refuses_a_malicious_archive_naming_the_entry(tmp_path: Path, rootfs: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (ctx / "evil.tgz").write_bytes(out.getvalue())
    with pytest.raises(CopyFailedError) as info_:
        build("ADD evil.tgz /opt/\n", rootfs, context(ctx))
    message = str(info_.value)
    assert message.startswith("Dockerfile:2: ADD: evil.tgz: entry '../../../escaped.txt'")
    assert "outside the destination" in message
    assert not (tmp_path / "escaped.txt").exists()
    assert not (rootfs / "escaped.txt").exists()


# --- ADD: URLs --------------------------------------------------------------------------------

PAYLOAD = b"downloaded payload\n"


@pytest.fixture
def web() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not self.path.startswith("/files/"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.send_header("Last-Modified", formatdate(1_300_000_000, usegmt=True))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_add_url_with_the_right_checksum(web: str, ctx: Path, rootfs: Path) -> None:
    checksum = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
    build(f"ADD --checksum={checksum} {web}/files/tool.bin /usr/local/bin/\n", rootfs, context(ctx))
    target = rootfs / "usr" / "local" / "bin" / "tool.bin"
    assert target.read_bytes() == PAYLOAD
    assert mode(target) == 0o600  # docker's mode for a download
    assert target.stat().st_mtime == 1_300_000_000


def test_add_url_to_a_file_destination_with_chmod(web: str, ctx: Path, rootfs: Path) -> None:
    build(f"ADD --chmod=755 {web}/files/x.sh /entry.sh\n", rootfs, context(ctx))
    assert (rootfs / "entry.sh").read_bytes() == PAYLOAD
    assert mode(rootfs / "entry.sh") == 0o755


def test_add_url_with_a_wrong_checksum_writes_nothing(web: str, ctx: Path, rootfs: Path) -> None:
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(CASIntegrityError, match="integrity check failed"):
        build(
            f"ADD --checksum={wrong} {web}/files/tool.bin /usr/local/bin/\n", rootfs, context(ctx)
        )
    assert list(rootfs.iterdir()) == []


def test_add_url_offline_is_a_network_error_naming_the_url(ctx: Path, rootfs: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/files/tool.bin"
    with Fetcher(attempts=1) as fetcher, pytest.raises(NetworkError) as info:
        build(f"ADD {url} /opt/\nADD a.txt /never/\n", rootfs, context(ctx), fetcher=fetcher)
    assert url in str(info.value)
    assert list(rootfs.iterdir()) == []


def test_add_url_uses_the_callers_fetcher_and_its_download(
    web: str, ctx: Path, rootfs: Path
) -> None:
    with Fetcher() as fetcher:
        fetched = fetcher.fetch(f"{web}/files/pinned.txt")
        build(f"ADD {web}/files/pinned.txt /\n", rootfs, context(ctx), fetcher=fetcher)
        assert fetched.path.exists()  # the caller's fetcher still owns it
    assert (rootfs / "pinned.txt").read_bytes() == PAYLOAD


def test_add_of_a_git_repository_is_a_clear_error(ctx: Path, rootfs: Path) -> None:
    with pytest.raises(CopyFailedError, match="git repository is not supported"):
        build("ADD https://github.com/moby/buildkit.git#v0.12 /src\n", rootfs, context(ctx))
