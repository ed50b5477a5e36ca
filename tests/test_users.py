"""USER and --chown resolution against an image's /etc/passwd and /etc/group (Docker's rules)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memobuild.build.users import (
    ResolvedUser,
    read_passwd,
    resolve_chown,
    resolve_in_root,
    resolve_user,
)
from memobuild.errors import InputError

USER_DB = """\
root:x:0:0:root:/root:/bin/sh
# a comment line
+::::::
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App User:/home/app:/bin/sh
app:x:1001:1001:shadowed duplicate:/home/dup:/bin/sh
odd:x:1001:7::/srv/odd:/bin/sh
nohome:x:1002:1002::::
"""

GROUP_DB = """\
root:x:0:
staff:x:50:app,daemon
wheel:x:10: app , root
app:x:1000:
build:x:2000:
"""


@pytest.fixture
def image(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(USER_DB)
    (root / "etc" / "group").write_text(GROUP_DB)
    return root


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # "" is root; BuildKit reads no group file for it, HOME comes from passwd.
        ("", ResolvedUser(0, 0, "/root", ())),
        # A name: primary group and home from passwd, supplementary groups from /etc/group
        # membership (members are trimmed), in file order, without duplicates.
        ("app", ResolvedUser(1000, 1000, "/home/app", (50, 10))),
        # A number matches by uid and then behaves like the name it found.
        ("1000", ResolvedUser(1000, 1000, "/home/app", (50, 10))),
        ("root", ResolvedUser(0, 0, "/root", (10,))),
        # A number passwd does not know: allowed, gid 0, HOME "/".
        ("4242", ResolvedUser(4242, 0, "/", ())),
        # An explicit group replaces the primary group and drops the supplementary ones.
        ("app:staff", ResolvedUser(1000, 50, "/home/app", ())),
        ("app:2000", ResolvedUser(1000, 2000, "/home/app", ())),
        ("1000:build", ResolvedUser(1000, 2000, "/home/app", ())),
        ("4242:4343", ResolvedUser(4242, 4343, "/", ())),
        # Both numeric: BuildKit's fast path, no supplementary groups even for a known user.
        ("1000:1000", ResolvedUser(1000, 1000, "/home/app", ())),
        # The first entry with a uid wins, and an empty home is "/".
        ("1001", ResolvedUser(1001, 1001, "/home/dup", (50, 10))),
        ("nohome", ResolvedUser(1002, 1002, "/", ())),
    ],
)
def test_resolve_user_follows_docker_rules(image: Path, spec: str, expected: ResolvedUser) -> None:
    assert resolve_user(image, spec) == expected


def test_unknown_user_names_the_user_and_the_file(image: Path) -> None:
    with pytest.raises(InputError) as err:
        resolve_user(image, "ghost")
    assert "'ghost'" in str(err.value)
    assert "/etc/passwd" in str(err.value)


def test_unknown_group_names_the_group_and_the_file(image: Path) -> None:
    with pytest.raises(InputError) as err:
        resolve_user(image, "app:ghosts")
    assert "'ghosts'" in str(err.value)
    assert "/etc/group" in str(err.value)


def test_image_without_passwd(tmp_path: Path) -> None:
    empty = tmp_path / "scratch"
    empty.mkdir()
    assert resolve_user(empty, "") == ResolvedUser(0, 0, "/", ())
    assert resolve_user(empty, "1000") == ResolvedUser(1000, 0, "/", ())
    assert resolve_user(empty, "1000:1000") == ResolvedUser(1000, 1000, "/", ())
    with pytest.raises(InputError, match="has no /etc/passwd"):
        resolve_user(empty, "app")
    with pytest.raises(InputError, match="has no /etc/group"):
        resolve_user(empty, "0:wheel")


@pytest.mark.parametrize("spec", [":50", "app:", "-1", "2147483648", "1000:99999999999"])
def test_malformed_or_out_of_range_user(image: Path, spec: str) -> None:
    with pytest.raises(InputError):
        resolve_user(image, spec)


def test_largest_id_is_accepted(image: Path) -> None:
    assert resolve_user(image, "2147483647").uid == 2147483647


def test_malformed_passwd_lines_never_match_root(image: Path) -> None:
    names = [entry.name for entry in read_passwd(image) or []]
    assert "+" not in names
    assert names[0] == "root"


def test_passwd_symlink_is_resolved_inside_the_rootfs(tmp_path: Path) -> None:
    """Debian-like images may symlink /etc/passwd; an absolute target is inside the image."""
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "usr" / "share").mkdir(parents=True)
    (root / "usr" / "share" / "passwd").write_text("builder:x:777:778::/b:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to("/usr/share/passwd")
    assert resolve_user(root, "builder") == ResolvedUser(777, 778, "/b", ())
    # The host's own root user is not visible through the symlink.
    with pytest.raises(InputError):
        resolve_user(root, "root")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("app", (1000, 1000)),  # a name: uid and primary gid from passwd
        ("1001", (1001, 1001)),  # a number is used for the group too, whatever passwd says
        ("4242", (4242, 4242)),  # numbers need no passwd entry
        ("app:staff", (1000, 50)),
        ("app:77", (1000, 77)),
        ("0:50", (0, 50)),
        ("odd", (1001, 7)),
        ("root:wheel", (0, 10)),
    ],
)
def test_resolve_chown(image: Path, spec: str, expected: tuple[int, int]) -> None:
    assert resolve_chown(image, spec) == expected


@pytest.mark.parametrize("spec", ["ghost", "app:ghosts", ":50", "app:", "1000:-3"])
def test_resolve_chown_errors(image: Path, spec: str) -> None:
    with pytest.raises(InputError):
        resolve_chown(image, spec)


def test_resolve_in_root_never_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "real" / "dir").mkdir(parents=True)
    (root / "abs").symlink_to("/real")
    (root / "rel").symlink_to("real/dir")
    (root / "up").symlink_to("../../../../real")
    (root / "real" / "dir" / "back").symlink_to("../../abs/dir")
    assert resolve_in_root(root, "/abs/dir/x") == "/real/dir/x"
    assert resolve_in_root(root, "rel") == "/real/dir"
    assert resolve_in_root(root, "/up/dir") == "/real/dir"
    assert resolve_in_root(root, "/../../etc/passwd") == "/etc/passwd"
    assert resolve_in_root(root, "/real/dir/back/missing/more") == "/real/dir/missing/more"
    assert resolve_in_root(root, "/") == "/"


def test_resolve_in_root_reports_symlink_loops(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "a").symlink_to("/b")
    (root / "b").symlink_to("/a")
    with pytest.raises(InputError, match="too many levels"):
        resolve_in_root(root, "/a/x")
