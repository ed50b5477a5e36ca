"""``.dockerignore`` and ``.gitignore`` matching, as docker and git users see it.

The tables come from docker's documentation (build context / .dockerignore), from the test
tables of moby/patternmatcher (the library docker and BuildKit match with) and Go's
``filepath.Match``, and from git's gitignore(5) page.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memobuild.errors import (
    InputError,
    NotADirectoryInputError,
    PathNotFoundError,
    PatternError,
)
from memobuild.ignore import (
    DockerIgnore,
    GitIgnore,
    dockerignore_path,
    load_dockerignore,
    read_dockerignore,
)


def excluded(patterns: list[str], path: str | bytes) -> bool:
    return DockerIgnore(patterns).matches(path)


# --- docker's documentation -------------------------------------------------------------------

DOCS_FILE = """\
# comment
*/temp*
*/*/temp*
temp?
"""

DOCS_CASES = [
    # */temp*: names starting with temp in any immediate subdirectory of the root.
    ("somedir/temporary.txt", True),
    ("somedir/temp", True),
    ("somedir/temp/inside.txt", True),
    ("temporary.txt", False),
    # */*/temp*: two levels below the root.
    ("somedir/subdir/temporary.txt", True),
    ("a/b/c/temporary.txt", False),
    # temp?: one character after temp, at the root.
    ("tempa", True),
    ("tempb", True),
    ("temp", False),
    ("tempab", False),
    ("a/b/c/tempa", False),
    # The comment line is no pattern.
    ("# comment", False),
]


@pytest.mark.parametrize(("path", "want"), DOCS_CASES)
def test_docs_example_file(path: str, want: bool) -> None:
    patterns = read_dockerignore(DOCS_FILE)
    assert patterns == ["*/temp*", "*/*/temp*", "temp?"]
    assert DockerIgnore(patterns).matches(path) is want


@pytest.mark.parametrize(
    ("patterns", "path", "want"),
    [
        # **/*.go excludes .go files in every directory, the root included.
        (["**/*.go"], "main.go", True),
        (["**/*.go"], "cmd/tool/main.go", True),
        (["**/*.go"], "main.go.txt", False),
        # Exceptions: every .md but README.md.
        (["*.md", "!README.md"], "CHANGES.md", True),
        (["*.md", "!README.md"], "README.md", False),
        # The last matching pattern wins.
        (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
        (["*.md", "!README*.md", "README-secret.md"], "README-public.md", False),
        (["*.md", "!README*.md", "README-secret.md"], "notes.md", True),
        (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),
        (["*.md", "README-secret.md", "!README*.md"], "README.md", False),
        # The context root is both working and root directory: /foo/bar and foo/bar alike.
        (read_dockerignore("/foo/bar"), "foo/bar", True),
        (["foo/bar"], "foo/bar", True),
        (["foo/bar"], "x/foo/bar", False),
        # A directory pattern excludes everything beneath it.
        (["node_modules"], "node_modules/pkg/index.js", True),
        (["node_modules"], "src/node_modules/pkg/index.js", False),
        # For historical reasons, the pattern "." is ignored.
        (["."], "anything", False),
        (["."], "a/b", False),
    ],
)
def test_docs_patterns(patterns: list[str], path: str, want: bool) -> None:
    assert excluded(patterns, path) is want


# --- moby/patternmatcher's tables -------------------------------------------------------------

# (pattern, path, excluded): the path or one of its parents matches.
PATTERNMATCHER_SINGLE = [
    ("**", "file", True),
    ("**", "dir/file", True),
    ("**/", "file", True),
    ("**/", "dir/file", True),
    ("**/**", "dir/file", True),
    ("dir/**", "dir/file", True),
    ("dir/**", "dir/dir2/file", True),
    ("**/dir", "dir", True),
    ("**/dir", "dir/file", True),
    ("**/dir2/*", "dir/dir2/file", True),
    ("**/dir2/**", "dir/dir2/dir3/file", True),
    ("**file", "file", True),
    ("**file", "dir/file", True),
    ("**/file", "dir/file", True),
    ("**file", "dir/dir/file", True),
    ("**/file", "dir/dir/file", True),
    ("**/file*", "dir/dir/file", True),
    ("**/file*", "dir/dir/file.txt", True),
    ("**/file*txt", "dir/dir/file.txt", True),
    ("**/file*.txt", "dir/dir/file.txt", True),
    ("**/file*.txt*", "dir/dir/file.txt", True),
    ("**/**/*.txt", "dir/dir/file.txt", True),
    ("**/**/*.txt2", "dir/dir/file.txt", False),
    ("**/*.txt", "file.txt", True),
    ("**/**/*.txt", "file.txt", True),
    ("a**/*.txt", "a/file.txt", True),
    ("a**/*.txt", "a/dir/file.txt", True),
    ("a**/*.txt", "a/dir/dir/file.txt", True),
    ("a/*.txt", "a/dir/file.txt", False),
    ("a/*.txt", "a/file.txt", True),
    ("a/*.txt**", "a/file.txt", True),
    ("a[b-d]e", "ae", False),
    ("a[b-d]e", "ace", True),
    ("a[b-d]e", "aae", False),
    ("a[^b-d]e", "aze", True),
    (".*", ".foo", True),
    (".*", "foo", False),
    ("abc.def", "abcdef", False),
    ("abc.def", "abc.def", True),
    ("abc.def", "abcZdef", False),
    ("abc?def", "abcZdef", True),
    ("abc?def", "abcdef", False),
    ("**/foo/bar", "foo/bar", True),
    ("**/foo/bar", "dir/foo/bar", True),
    ("**/foo/bar", "dir/dir2/foo/bar", True),
    ("abc/**", "abc", False),
    ("abc/**", "abc/def", True),
    ("abc/**", "abc/def/ghi", True),
    ("**/.foo", ".foo", True),
    ("**/.foo", "bar.foo", False),
    ("a(b)c/def", "a(b)c/def", True),
    ("a(b)c/def", "a(b)c/xyz", False),
    ("a.|)$(}+{bc", "a.|)$(}+{bc", True),
    ("dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", True),
    ("a\\\\", "a\\", True),
    ("a\\*b", "a*b", True),
    # Go's filepath.Match table, as patternmatcher runs it.
    ("abc", "abc", True),
    ("*", "abc", True),
    ("*c", "abc", True),
    ("a*", "a", True),
    ("a*", "abc", True),
    ("a*", "ab/c", True),
    ("a*/b", "abc/b", True),
    ("a*/b", "a/c/b", False),
    ("a*b*c*d*e*/f", "axbxcxdxe/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/f", True),
    ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", False),
    ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", False),
    ("a*b?c*x", "abxbbxdbxebxczzx", True),
    ("a*b?c*x", "abxbbxdbxebxczzy", False),
    ("ab[c]", "abc", True),
    ("ab[b-d]", "abc", True),
    ("ab[e-g]", "abc", False),
    ("ab[^c]", "abc", False),
    ("ab[^b-d]", "abc", False),
    ("ab[^e-g]", "abc", True),
    ("a\\*b", "ab", False),
    ("a?b", "a☺b", True),
    ("a[^a]b", "a☺b", True),
    ("a???b", "a☺b", False),
    ("a[^a][^a][^a]b", "a☺b", False),
    ("[a-ζ]*", "\u03b1", True),  # alpha
    ("*[a-ζ]", "A", False),
    ("a?b", "a/b", False),
    ("a*b", "a/b", False),
    ("[\\]a]", "]", True),
    ("[\\-]", "-", True),
    ("[x\\-]", "x", True),
    ("[x\\-]", "-", True),
    ("[x\\-]", "z", False),
    ("[\\-x]", "x", True),
    ("[\\-x]", "-", True),
    ("[\\-x]", "a", False),
    ("*x", "xxx", True),
]


@pytest.mark.parametrize(("pattern", "path", "want"), PATTERNMATCHER_SINGLE)
def test_patternmatcher_single_pattern(pattern: str, path: str, want: bool) -> None:
    assert excluded([pattern], path) is want


@pytest.mark.parametrize(
    ("patterns", "path", "want"),
    [
        (["**", "!util/docker/web"], "util/docker/web/foo", False),
        (["**", "!util/docker/web", "util/docker/web/foo"], "util/docker/web/foo", True),
        (["**", "!dist/*.whl"], "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", False),
        (["*"], "fileutils.go", True),
        (["*.go"], "fileutils.go", True),
        (["!fileutils.go", "*.go"], "fileutils.go", True),
        (["*.go", "!fileutils.go"], "fileutils.go", False),
        (["docs", "!docs/README.md"], "docs/README.md", False),
        (["docs/", "!docs/README.md"], "docs/README.md", False),
        (["docs/*", "!docs/README.md"], "docs/README.md", False),
        (["docs", "!docs/README.md"], "docs/other.md", True),
        # An exception matches through parents too.
        (["docs", "!docs"], "docs/a.md", False),
        ([], "any/path/there", False),
        (["*.go"], ".", False),
    ],
)
def test_patternmatcher_several_patterns(patterns: list[str], path: str, want: bool) -> None:
    assert excluded(patterns, path) is want


@pytest.mark.parametrize(
    ("patterns", "path", "want"),
    [
        # A leading ** is a plain string suffix: "**foo" matches "xfoo".
        (["**foo"], "a/xfoo", True),
        (["**foo*"], "a/xfoo", False),
        # A trailing ** after literal text is a plain string prefix.
        (["foo**"], "foobar/x", True),
        # '^' is literal in a pattern without wildcards, an anchor in one with them.
        (["a^b"], "a^b", True),
        (["a^b*"], "a^bc", False),
        # A character class can match '/', and so span directories.
        (["a[^x]b"], "a/b", True),
        # '*' inside brackets joins Go's regexp: [*] is the class [[^/] then "*]".
        (["[*]"], "]", True),
        (["[*]"], "^^]", True),
        (["[*]"], "*", False),
        # Escaped letters are regexp escapes.
        (["\\d"], "7", True),
        (["\\d"], "d", False),
        (["\\x41"], "A", True),
        # '|', '{' and '}' escape patternmatcher's escaping: '|' splits the regexp in two
        # halves anchored at one end each, "{2}" counts.
        (["a|b"], "a|b", True),
        (["a|b"], "a", False),
        (["*.md|*.txt"], "notes.txt", True),
        (["*.md|*.txt"], "deep/down/notes.txt", True),
        (["*.md|*.txt"], "x.mdown", True),
        (["a{2}*"], "aab", True),
        (["a{2}*"], "a{2}b", False),
        (["a{2}"], "a{2}", True),
        # Go's '.' stops at a newline, so "**/" cannot span a name that holds one.
        (["**/*.go"], "a\nb/c.go", False),
        (["**/*.go"], "ab/c.go", True),
    ],
)
def test_patternmatcher_quirks(patterns: list[str], path: str, want: bool) -> None:
    assert excluded(patterns, path) is want


# --- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("build/out.o", True),
        ("./build/out.o", True),
        ("/build/out.o", True),
        ("build//out.o", True),
        ("build/", True),
        ("src/../build/x", True),
        (Path("build") / "x", True),
        (b"build/x", True),
        ("src/main.c", False),
        # The root and paths leaving it are never excluded, and do not raise.
        ("", False),
        (".", False),
        ("/", False),
        ("..", False),
        ("../build/x", False),
        ("build/../../x", False),
    ],
)
def test_paths_are_normalised(path: str | bytes | Path, want: bool) -> None:
    assert DockerIgnore(["build", "*.tmp"]).matches(path) is want


def test_names_that_are_not_utf8() -> None:
    ignore = DockerIgnore(["a?b", "x\ufffdy*", "*/*.bin", "exact\ufffd"])
    assert ignore.matches(b"a\xffb")
    assert not ignore.matches(b"a\xff\xfeb")
    # Go matches a regexp against U+FFFD for every byte that is not UTF-8...
    assert ignore.matches(b"x\xffy")
    assert ignore.matches(b"d\xff/f.bin")
    # ...but compares a pattern without wildcards byte for byte.
    assert not ignore.matches(b"exact\xff")
    # A str from os.fsdecode carries the same bytes.
    assert ignore.matches(os.fsdecode(b"a\xffb"))
    assert ignore.matches(os.fsdecode(b"d\xfe/f.bin"))


# --- .dockerignore files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        # moby's ignorefile test.
        (
            "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n"
            "! /inverted/abs/path\n!\n! ",
            ["test1", "test2", "a/file/here", "lastfile", "!inverted/abs/path", "!", "!"],
        ),
        ("\ufeffnode_modules\n", ["node_modules"]),
        ("\ufeff# comment\nx", ["x"]),
        ("a\r\nb\r\n", ["a", "b"]),
        ("  spaced  \n\t\ttabbed\t\n", ["spaced", "tabbed"]),
        # Only a '#' in the very first column starts a comment.
        (" # not a comment\n#comment", ["# not a comment"]),
        ("./a/../b\n", ["b"]),
        ("a//b/./c/\n", ["a/b/c"]),
        ("/\n", ["/"]),
        ("!/\n", ["!/"]),
        ("!  ./x/../y  \n", ["!y"]),
        ("../outside\n", ["../outside"]),
        ("", []),
        ("\n\n   \n", []),
        # Invalid UTF-8 in the file reads as U+FFFD, byte by byte.
        (b"a\xff\xfeb\n", ["a\ufffd\ufffdb"]),
    ],
)
def test_read_dockerignore(text: str | bytes, want: list[str]) -> None:
    assert read_dockerignore(text) == want


def test_patterns_are_kept_cleaned() -> None:
    ignore = DockerIgnore([" /a/./b/ ", "! c/../d", "e//f", "!/x"])
    assert ignore.patterns == ["a/b", "!d", "e/f", "!x"]
    assert ignore.has_exceptions
    assert not DockerIgnore(["a"]).has_exceptions
    assert ignore.matches("a/b/c")


# --- malformed patterns -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "[",
        "a[",
        "[^",
        "[^bc",
        "[]a]",
        "[-]",
        "[x-]",
        "[-x]",
        "\\",
        "a\\",
        "[a-b-c]",
        "!",
        "! ",
        "!/",
        # Accepted by Go's filepath.Match, refused by its regexp package.
        "[z-a]",
        "a\\q",
        "*\\8",
        "*{2}",
        "a*{1001}",
    ],
)
def test_malformed_dockerignore_pattern(pattern: str) -> None:
    with pytest.raises(PatternError) as info:
        DockerIgnore(["fine", pattern, "also-fine"], source=".dockerignore")
    err = info.value
    assert err.pattern == pattern
    assert repr(pattern) in str(err)
    assert str(err).startswith(".dockerignore: ")
    assert isinstance(err, ValueError)
    assert isinstance(err, InputError)


def test_patterns_must_be_a_sequence_of_strings() -> None:
    with pytest.raises(TypeError):
        DockerIgnore("*.md")
    with pytest.raises(TypeError):
        DockerIgnore([b"*.md"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        GitIgnore("*.log")


# --- .gitignore -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "path", "is_dir", "want"),
    [
        # A leading slash anchors at the root.
        (["/foo"], "foo", False, True),
        (["/foo"], "a/foo", False, False),
        # Without a slash a pattern matches at any depth.
        (["foo"], "a/b/foo", False, True),
        (["hello.*"], "src/hello.c", False, True),
        # A slash in the middle also anchors.
        (["doc/frotz/"], "doc/frotz", True, True),
        (["doc/frotz/"], "a/doc/frotz", True, False),
        # A trailing slash matches directories only (and so what is inside them).
        (["foo/"], "foo", True, True),
        (["foo/"], "foo", False, False),
        (["foo/"], "foo/", False, True),
        (["foo/"], "a/foo/bar", False, True),
        (["frotz/"], "a/frotz", True, True),
        # foo/* matches foo's entries; below foo/bar by way of the ignored directory.
        (["foo/*"], "foo/test.json", False, True),
        (["foo/*"], "foo/bar", True, True),
        (["foo/*"], "foo/bar/hello.c", False, True),
        (["foo/*"], "foo", True, False),
        # Leading, middle and trailing "**".
        (["**/foo"], "foo", False, True),
        (["**/foo"], "x/y/foo", False, True),
        (["**/foo/bar"], "x/foo/bar", False, True),
        (["a/**/b"], "a/b", False, True),
        (["a/**/b"], "a/x/b", False, True),
        (["a/**/b"], "a/x/y/b", False, True),
        (["a/**/b"], "x/a/b", False, False),
        (["abc/**"], "abc/x/y", False, True),
        (["abc/**"], "abc", True, False),
        # '!' re-includes...
        (["*.log", "!important.log"], "debug.log", False, True),
        (["*.log", "!important.log"], "logs/important.log", False, False),
        # ...but never below an ignored directory: git does not look inside it.
        (["build/", "!build/keep.txt"], "build/keep.txt", False, True),
        (["build", "!build/keep.txt"], "build/keep.txt", False, True),
        (["build/*", "!build/keep.txt"], "build/keep.txt", False, False),
        (["build/*", "!build/keep.txt"], "build/other.txt", False, True),
        # Escapes: a literal leading '#' or '!'.
        (["\\#notes"], "#notes", False, True),
        (["#notes"], "#notes", False, False),
        (["\\!important"], "!important", False, True),
        # Trailing spaces are dropped unless escaped.
        (["trail   "], "trail", False, True),
        (["trail\\ "], "trail ", False, True),
        (["trail\\ "], "trail", False, False),
        # Paths are cleaned; the root is never ignored.
        (["*.o"], "./src/x.o", False, True),
        (["*.o"], "/src/x.o", False, True),
        (["*"], "", True, False),
        (["*"], "..", True, False),
    ],
)
def test_gitignore(lines: list[str], path: str, is_dir: bool, want: bool) -> None:
    assert GitIgnore(lines).matches(path, is_dir=is_dir) is want


def test_gitignore_file_text() -> None:
    ignore = GitIgnore(["\ufeff# build output\r\n*.o\r\n\r\n/dist/\n!keep.o"])
    assert ignore.matches("src/a.o")
    assert not ignore.matches("src/keep.o")
    assert ignore.matches("dist", is_dir=True)
    assert not ignore.matches("# build output")
    assert ignore.matches(b"\xff.o")


@pytest.mark.parametrize("line", ["foo\\", "[z-a]", "{a,b"])
def test_malformed_gitignore_line(line: str) -> None:
    with pytest.raises(PatternError) as info:
        GitIgnore(["ok", line], source=".gitignore")
    assert info.value.pattern == line
    assert str(info.value).startswith(".gitignore: ")


# --- finding the ignore file ------------------------------------------------------------------


def test_load_dockerignore_precedence(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    assert load_dockerignore(ctx) == []
    assert dockerignore_path(ctx) is None

    (ctx / ".dockerignore").write_text("# context\n/node_modules\n")
    assert load_dockerignore(ctx) == ["node_modules"]
    assert load_dockerignore(ctx, ctx / "Dockerfile") == ["node_modules"]

    # <Dockerfile>.dockerignore next to the Dockerfile wins.
    (ctx / "Dockerfile.dockerignore").write_text("dist\n")
    assert load_dockerignore(ctx) == ["dist"]
    assert load_dockerignore(ctx, ctx / "Dockerfile") == ["dist"]

    # A Dockerfile elsewhere, with and without its own ignore file.
    other = tmp_path / "docker" / "app.Dockerfile"
    other.parent.mkdir()
    other.write_text("FROM scratch\n")
    assert load_dockerignore(ctx, other) == ["node_modules"]
    (other.parent / "app.Dockerfile.dockerignore").write_text("!keep\n*.log\n")
    assert load_dockerignore(ctx, other) == ["!keep", "*.log"]
    assert dockerignore_path(ctx, other) == other.parent / "app.Dockerfile.dockerignore"

    # A Dockerfile on stdin has no ignore file of its own.
    assert load_dockerignore(ctx, "-") == ["node_modules"]


def test_load_dockerignore_relative_dockerfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "web.Dockerfile.dockerignore").write_text("tmp\n")
    monkeypatch.chdir(tmp_path)
    assert load_dockerignore("ctx", "web.Dockerfile") == ["tmp"]


def test_load_dockerignore_bytes(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_bytes(b"\xef\xbb\xbfa\xffb\r\n!c\n")
    assert load_dockerignore(tmp_path) == ["a\ufffdb", "!c"]


def test_load_dockerignore_errors(tmp_path: Path) -> None:
    with pytest.raises(PathNotFoundError):
        load_dockerignore(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryInputError):
        load_dockerignore(tmp_path / "file")


# --- the walker agrees with the matcher -------------------------------------------------------


def test_hash_tree_keeps_exactly_the_included_files(tmp_path: Path) -> None:
    from memobuild.hashing import hash_tree

    files = [
        "Dockerfile",
        "README.md",
        "README-secret.md",
        "notes.md",
        "src/main.go",
        "src/util/temp.go",
        "src/util/keep.txt",
        "vendor/lib/a.go",
        "vendor/lib/keep.txt",
        "vendor/lib/deep/keep.txt",
        "build/out/app",
        "build/out/app.map",
        "logs/x.log",
        "logs/nested/y.log",
    ]
    for name in files:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    patterns = read_dockerignore(
        "*.md\n!README*.md\nREADME-secret.md\nvendor\n!**/keep.txt\nbuild\n!build/out/app\nlogs/**\n"
    )
    ignore = DockerIgnore(patterns)
    want = sorted(name for name in files if not ignore.matches(name))
    assert "vendor/lib/deep/keep.txt" in want
    assert "build/out/app" in want
    assert "build/out/app.map" not in want

    tree = hash_tree(tmp_path, dockerignore=patterns, stat_cache=False, include_entries=True)
    assert tree.entries is not None
    got = sorted(e.path for e in tree.entries if e.kind == "file")
    assert got == want
