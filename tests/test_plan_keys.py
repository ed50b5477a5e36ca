"""Cache keys (schema v1): every property the issue requires, each on real files on disk."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import blake3
import msgpack
import pytest

from memobuild import plan
from memobuild.errors import DockerfileParseError, PatternError
from memobuild.plan import KEY_SCHEMA, Plan, SourceNotFoundError, key_of


def make(root: Path, dockerfile: str, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def keys_by_text(p: Plan) -> dict[str, str]:
    return {f"{n.stage_name}: {n.text}": n.key for n in p.nodes}


def changed(before: Plan, after: Plan) -> set[str]:
    old, new = keys_by_text(before), keys_by_text(after)
    assert old.keys() == new.keys()
    return {name for name in old if old[name] != new[name]}


APP = """\
FROM python:3.12 AS deps
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

FROM node:22 AS web
WORKDIR /web
COPY web/ ./
RUN npm run build

FROM deps AS app
COPY src/ ./src
COPY --from=web /web/dist ./static
RUN python -m compileall src
CMD ["python", "-m", "src"]
"""

APP_FILES = {
    "requirements.txt": "flask==3.0\n",
    "src/main.py": "print('hello')\n",
    "src/util/helpers.py": "X = 1\n",
    "web/index.js": "console.log(1)\n",
    "README.md": "# app\n",
    "notes/todo.txt": "later\n",
}


def test_a_change_to_a_file_no_copy_matches_leaves_every_key_unchanged(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", APP, APP_FILES)
    before = plan(context)
    (context / "README.md").write_text("# app, edited\n")
    (context / "notes/todo.txt").unlink()
    (context / "notes/new.txt").write_text("added\n")
    after = plan(context)
    assert before.context_digest != after.context_digest, "the context did change"
    assert after.keys == before.keys


def test_a_matched_file_changes_its_copy_and_everything_after_and_nothing_else(
    tmp_path: Path,
) -> None:
    context = make(tmp_path / "ctx", APP, APP_FILES)
    before = plan(context)
    (context / "src/util/helpers.py").write_text("X = 2\n")
    assert changed(before, plan(context)) == {
        "app: COPY src/ ./src",
        "app: COPY --from=web /web/dist ./static",
        "app: RUN python -m compileall src",
        'app: CMD ["python", "-m", "src"]',
    }
    # A change in one stage reaches the stages built from it, and no other.
    before = plan(context)
    (context / "web/index.js").write_text("console.log(2)\n")
    assert changed(before, plan(context)) == {
        "web: COPY web/ ./",
        "web: RUN npm run build",
        "app: COPY --from=web /web/dist ./static",
        "app: RUN python -m compileall src",
        'app: CMD ["python", "-m", "src"]',
    }
    before = plan(context)
    (context / "requirements.txt").write_text("flask==3.1\n")
    after = plan(context)
    assert "web: COPY web/ ./" not in changed(before, after)
    assert changed(before, after) >= {"deps: COPY requirements.txt .", "app: COPY src/ ./src"}
    assert "deps: WORKDIR /app" not in changed(before, after)


def test_an_unused_build_arg_changes_nothing(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", "ARG UNUSED_GLOBAL\n" + APP, APP_FILES)
    before = plan(context)
    after = plan(context, build_args={"UNUSED": "1", "UNUSED_GLOBAL": "2", "HTTP_PROXY": "x"})
    assert after.keys == before.keys
    assert any("UNUSED" in w for w in after.warnings)


def test_an_arg_a_run_declared_changes_that_run_and_what_follows_only(tmp_path: Path) -> None:
    dockerfile = """\
FROM alpine AS build
RUN echo before
ARG VERSION=1.0
COPY a.txt /a.txt
RUN echo building
RUN echo again
"""
    context = make(tmp_path / "ctx", dockerfile, {"a.txt": "a"})
    base = plan(context)
    bumped = plan(context, build_args={"VERSION": "1.1"})
    # BuildKit's rule: an ARG change misses at its first use; every RUN after the ARG sees it
    # in its environment. COPY does not run anything and does not use it.
    assert changed(base, bumped) == {"build: RUN echo building", "build: RUN echo again"}
    run = next(n for n in bumped.nodes if n.text == "RUN echo building")
    assert ("arg VERSION", "1.1") in run.preimage
    # The same ARG through its default value.
    edited = make(tmp_path / "ctx", dockerfile.replace("1.0", "2.0"), {})
    assert changed(base, plan(edited)) == {"build: RUN echo building", "build: RUN echo again"}


def test_an_arg_expanded_into_a_copy_enters_that_copy(tmp_path: Path) -> None:
    context = make(
        tmp_path / "ctx",
        "FROM alpine\nARG NAME=a\nCOPY ${NAME}.txt /x\n",
        {"a.txt": "a", "b.txt": "b"},
    )
    copy_a = plan(context).nodes[1]
    copy_b = plan(context, build_args={"NAME": "b"}).nodes[1]
    assert copy_a.key != copy_b.key
    assert ("arg NAME", "b") in copy_b.preimage
    assert ("source b.txt", copy_b.sources[0].digest) in copy_b.preimage


WRITE_TREE = """
import json, os, sys
root, umask, files = sys.argv[1], int(sys.argv[2], 8), json.loads(sys.argv[3])
os.umask(umask)
for name, (text, executable) in files.items():
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    if executable:  # as git checks out an executable: 0777 filtered by the umask
        os.chmod(path, 0o777 & ~umask)
"""

PLAN_KEYS = "import json, sys, memobuild; print(json.dumps(list(memobuild.plan(sys.argv[1]).keys)))"

UMASK_DOCKERFILE = "FROM alpine\nCOPY . /src\nCOPY bin/run.sh /usr/local/bin/run\nRUN run\n"
UMASK_FILES = {
    "Dockerfile": (UMASK_DOCKERFILE, False),
    "bin/run.sh": ("#!/bin/sh\necho run\n", True),
    "lib/data.txt": ("data\n", False),
}


def test_umask_never_changes_a_key(tmp_path: Path) -> None:
    trees = {}
    for umask in ("022", "077", "002"):
        root = tmp_path / f"umask-{umask}"
        subprocess.run(
            [sys.executable, "-c", WRITE_TREE, str(root), umask, json.dumps(UMASK_FILES)],
            check=True,
        )
        trees[umask] = root
    modes = {u: stat.S_IMODE((r / "lib/data.txt").stat().st_mode) for u, r in trees.items()}
    assert modes == {"022": 0o644, "077": 0o600, "002": 0o664}, "the umasks did apply"
    keys = {}
    for umask, root in trees.items():
        # Each plan runs under the umask its checkout had, as a CI job would.
        proc = subprocess.run(
            [sys.executable, "-c", f"import os; os.umask(0o{umask}); exec({PLAN_KEYS!r})", root],
            check=True,
            capture_output=True,
            text=True,
        )
        keys[umask] = json.loads(proc.stdout)
    assert keys["022"] == keys["077"] == keys["002"]
    # The executable bit is the part of the mode a key does see.
    (trees["022"] / "bin/run.sh").chmod(0o644)
    assert plan(trees["022"]).keys[2] != keys["022"][2]


def test_mtime_never_changes_a_key(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", APP, APP_FILES)
    before = plan(context)
    for path in context.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000), follow_symlinks=False)
    after = plan(context)
    assert after.context_index is not None
    assert after.context_index.hashed_files > 0, "the stat cache saw the new mtimes"
    assert after.keys == before.keys


def test_checkout_path_and_machine_never_change_a_key(tmp_path: Path) -> None:
    """Two copies of the context in different directories, each planned by its own process
    with its own cache dir, from its own working directory: two machines."""
    original = make(tmp_path / "ctx", APP, APP_FILES)
    expected = list(plan(original).keys)
    for where in ("machine-a/home/ci/checkout", "machine-b/w"):
        copy = tmp_path / where
        shutil.copytree(original, copy, symlinks=True)
        env = {**os.environ, "MEMOBUILD_CACHE_DIR": str(tmp_path / where / ".." / "cache")}
        proc = subprocess.run(
            [sys.executable, "-c", PLAN_KEYS, "."],
            check=True,
            capture_output=True,
            text=True,
            cwd=copy,
            env=env,
        )
        assert json.loads(proc.stdout) == expected, where


def test_dockerignored_files_never_reach_a_key(tmp_path: Path) -> None:
    context = make(
        tmp_path / "ctx",
        "FROM alpine\nCOPY . /app\n",
        {".dockerignore": "*.log\nbuild/\n", "main.py": "x", "debug.log": "1", "build/o": "1"},
    )
    before = plan(context)
    (context / "debug.log").write_text("2")
    (context / "build/o").write_text("2")
    assert plan(context).keys == before.keys
    (context / "main.py").write_text("y")
    assert plan(context).keys[1] != before.keys[1]


def test_a_dockerfile_specific_dockerignore_takes_precedence(tmp_path: Path) -> None:
    context = make(
        tmp_path / "ctx",
        "FROM alpine\nCOPY . /app\n",
        {".dockerignore": "*.md\n", "main.py": "x", "notes.md": "1", "debug.log": "1"},
    )
    (context / "app.Dockerfile").write_text("FROM alpine\nCOPY . /app\n")
    (context / "app.Dockerfile.dockerignore").write_text("*.log\n")
    before_default = plan(context)
    before_app = plan(context, "app.Dockerfile")
    assert before_app.dockerignore == ("*.log",)
    (context / "debug.log").write_text("2")
    assert plan(context, "app.Dockerfile").keys == before_app.keys
    assert plan(context).keys != before_default.keys
    (context / "notes.md").write_text("2")
    assert plan(context, "app.Dockerfile").keys != before_app.keys
    with pytest.raises(SourceNotFoundError, match=r"excluded by app.Dockerfile.dockerignore"):
        make(context, "", {"app.Dockerfile": "FROM alpine\nCOPY debug.log /x\n"})
        plan(context, "app.Dockerfile")


def test_heredoc_contents_are_part_of_the_key(tmp_path: Path) -> None:
    text = "FROM alpine\nRUN <<EOF\necho {run}\nEOF\nCOPY <<EOF /etc/app.conf\nport={port}\nEOF\n"
    context = make(tmp_path / "ctx", text.format(run="one", port="80"), {})
    base = plan(context)
    run_changed = plan(make(context, text.format(run="two", port="80"), {}))
    assert changed(base, run_changed) == {
        "stage-0: RUN <<EOF",
        "stage-0: COPY <<EOF /etc/app.conf",
    }
    copy_changed = plan(make(context, text.format(run="one", port="81"), {}))
    assert changed(base, copy_changed) == {"stage-0: COPY <<EOF /etc/app.conf"}
    assert any(name == "heredoc EOF" for name, _ in copy_changed.nodes[2].preimage)


@pytest.mark.parametrize("flags", ["--chown=1000:1000", "--chmod=0755", "--chown=app --chmod=600"])
def test_chown_and_chmod_are_part_of_the_key(tmp_path: Path, flags: str) -> None:
    context = make(tmp_path / "ctx", "FROM alpine\nCOPY a.txt /a\n", {"a.txt": "a"})
    base = plan(context).nodes[1]
    with_flags = plan(make(context, f"FROM alpine\nCOPY {flags} a.txt /a\n", {})).nodes[1]
    assert with_flags.key != base.key
    values = dict(with_flags.preimage)
    for flag in flags.split():
        name, value = flag.removeprefix("--").split("=")
        assert values[name] == value


def test_cache_mount_ids_are_part_of_the_key(tmp_path: Path) -> None:
    """A cache mount's id (and target, sharing, ...) is keyed; what it holds is never read."""
    text = "FROM alpine\nRUN --mount=type=cache,id={id},target=/cache make\n"
    context = make(tmp_path / "ctx", text.format(id="one"), {})
    one = plan(context).nodes[1]
    two = plan(make(context, text.format(id="two"), {})).nodes[1]
    assert two.key != one.key
    assert json.loads(dict(two.preimage)["mount /cache"])["id"] == "two"
    assert two.sources == (), "nothing is selected from the context for a cache mount"
    shared = plan(make(context, text.replace("make", "make all").format(id="one"), {})).nodes[1]
    assert dict(shared.preimage)["mount /cache"] == dict(one.preimage)["mount /cache"]


def test_a_bind_mount_of_the_context_keys_the_mounted_files(tmp_path: Path) -> None:
    context = make(
        tmp_path / "ctx",
        "FROM alpine\nRUN --mount=type=bind,source=cfg,target=/cfg cat /cfg/a\n",
        {"cfg/a": "1", "other": "1"},
    )
    before = plan(context)
    (context / "other").write_text("2")
    assert plan(context).keys == before.keys
    (context / "cfg/a").write_text("2")
    assert plan(context).keys[1] != before.keys[1]


def test_the_key_is_blake3_over_msgpack_of_the_versioned_preimage(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", APP, APP_FILES)
    p = plan(context)
    for node in p.nodes:
        encoded = msgpack.packb([KEY_SCHEMA, *([n, v] for n, v in node.preimage)])
        assert node.key == "blake3:" + blake3.blake3(encoded).hexdigest()
        assert key_of(node.preimage) == node.key
    copy = next(n for n in p.nodes if n.text == "COPY src/ ./src")
    names = [name for name, _ in copy.preimage]
    assert names == [
        "parent", "kind", "instruction", "chown", "chmod", "platform", "workdir", "user",
        "shell", "source src/",
    ]  # fmt: skip
    assert dict(copy.preimage)["parent"] == p.nodes[copy.deps[0]].key
    assert json.loads(dict(copy.preimage)["instruction"])["dest"] == "./src"
    run = next(n for n in p.nodes if n.text == "RUN python -m compileall src")
    assert ("env PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") in (
        run.preimage
    )
    assert KEY_SCHEMA == "memobuild.key.v1"


def test_wildcards_match_with_go_rules_after_dockerignore(tmp_path: Path) -> None:
    context = make(
        tmp_path / "ctx",
        "FROM alpine\nCOPY *.txt /t/\nCOPY conf/[ab]?.ini /c/\n",
        {
            ".dockerignore": "secret.txt\n",
            "a.txt": "a",
            "b.md": "b",
            "sub/c.txt": "c",
            "conf/a1.ini": "1",
            "conf/c1.ini": "1",
            "secret.txt": "s",
        },
    )
    p = plan(context)
    txt, ini = p.nodes[1], p.nodes[2]
    assert txt.sources[0].matches == ("a.txt",)
    assert ini.sources[0].matches == ("conf/a1.ini",)
    for path in ("b.md", "sub/c.txt", "secret.txt", "conf/c1.ini", "conf/a10.ini"):
        (context / path).write_text("changed")
    assert plan(context).keys == p.keys, "* stops at /, ? is one character, ignored is absent"
    (context / ".hidden.txt").write_text("h")  # Go's * matches a leading dot
    assert plan(context).keys[1] != p.keys[1]
    (context / "conf/b2.ini").write_text("2")
    assert plan(context).keys[2] != p.keys[2]


def test_an_empty_wildcard_is_fine_and_a_malformed_one_is_an_error(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", "FROM alpine\nCOPY *.none /x/\n", {})
    assert plan(context).nodes[1].sources[0].matches == ()
    make(context, "FROM alpine\nRUN true\nCOPY src/[ /x/\n", {})
    with pytest.raises(DockerfileParseError) as err:
        plan(context)
    assert err.value.line == 3 and "invalid source pattern 'src/['" in str(err.value)


def test_a_missing_source_is_an_error_at_its_line(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", "FROM alpine\nWORKDIR /a\nCOPY missing.txt .\n", {})
    with pytest.raises(SourceNotFoundError) as err:
        plan(context)
    assert err.value.line == 3
    assert "COPY source 'missing.txt': missing.txt not found in the build context" in str(err.value)
    make(context, "FROM alpine\nCOPY secret /s\n", {".dockerignore": "secret\n", "secret": "s"})
    with pytest.raises(SourceNotFoundError, match=r"excluded by \.dockerignore"):
        plan(context)


def test_symlinks_in_sources_are_followed_inside_the_context(tmp_path: Path) -> None:
    context = make(
        tmp_path / "ctx", "FROM alpine\nCOPY current/app.cfg /cfg\n", {"v1/app.cfg": "1"}
    )
    (context / "current").symlink_to("v1")
    before = plan(context)
    (context / "v1/app.cfg").write_text("2")
    assert plan(context).keys[1] != before.keys[1]


def test_exclude_flag_leaves_out_what_it_matches(tmp_path: Path) -> None:
    context = make(
        tmp_path / "ctx",
        "FROM alpine\nCOPY --exclude=*_test.go src/ /src\n",
        {"src/a.go": "a", "src/a_test.go": "t"},
    )
    before = plan(context)
    (context / "src/a_test.go").write_text("t2")
    assert plan(context).keys == before.keys
    (context / "src/a.go").write_text("a2")
    assert plan(context).keys != before.keys
    make(context, "FROM alpine\nCOPY --exclude=! src/ /src\n", {})
    with pytest.raises(DockerfileParseError, match="invalid --exclude pattern"):
        plan(context)


def test_copy_from_a_stage_keys_the_stage_not_its_name(tmp_path: Path) -> None:
    text = "FROM alpine AS {name}\nRUN make\nFROM scratch\nCOPY --from={ref} /out /out\n"
    context = make(tmp_path / "ctx", text.format(name="build", ref="build"), {})
    by_name = plan(context)
    renamed = plan(make(context, text.format(name="compile", ref="compile"), {}))
    by_index = plan(make(context, text.format(name="build", ref="0"), {}))
    assert by_name.keys == renamed.keys == by_index.keys
    copy = by_name.nodes[3]
    assert dict(copy.preimage)["from"] == by_name.nodes[1].key
    image = plan(make(context, "FROM scratch\nCOPY --from=busybox:1.36 /bin/sh /sh\n", {}))
    assert dict(image.nodes[1].preimage)["from"] == "image:busybox:1.36"


def test_env_changes_later_keys_and_proxy_args_change_none(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", "FROM alpine\nENV MODE=a\nRUN echo $MODE\n", {})
    base = plan(context)
    assert plan(context, build_args={"HTTPS_PROXY": "http://proxy:3128"}).keys == base.keys
    other = plan(make(context, "FROM alpine\nENV MODE=b\nRUN echo $MODE\n", {}))
    assert other.keys[0] == base.keys[0] and other.keys[1:] != base.keys[1:]
    assert ("env MODE", "b") in other.nodes[2].preimage


def test_the_platform_is_part_of_every_key(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", "FROM alpine\nCOPY a /a\nRUN true\n", {"a": "a"})
    amd = plan(context, platform="linux/amd64")
    arm = plan(context, platform="linux/arm64")
    assert all(a != b for a, b in zip(amd.keys, arm.keys, strict=True))
    assert amd.platform == "linux/amd64" and arm.platform == "linux/arm64"


def test_remote_add_sources_are_flagged_unless_pinned(tmp_path: Path) -> None:
    url = "https://example.com/tool.tar.gz"
    context = make(tmp_path / "ctx", f"FROM alpine\nADD {url} /opt/\n", {})
    loose = plan(context).nodes[1]
    assert loose.unresolved == (url,)
    assert (f"source {url}", "remote") in loose.preimage
    pinned = plan(
        make(context, f"FROM alpine\nADD --checksum=sha256:{'a' * 64} {url} /opt/\n", {})
    ).nodes[1]
    assert pinned.unresolved == () and pinned.key != loose.key


def test_the_context_is_not_walked_when_no_step_reads_it(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", "FROM alpine\nRUN true\n", {"big.bin": "x"})
    assert plan(context).context_index is None
    assert plan(context).context_digest is None


def test_a_bad_dockerignore_pattern_names_the_file(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx", "FROM alpine\nCOPY . /\n", {".dockerignore": "[\n"})
    with pytest.raises(PatternError, match=r"\.dockerignore"):
        plan(context)
