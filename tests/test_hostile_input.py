"""Hostile input gets nowhere: the gaps that the suites of each module did not already cover.

SECURITY.md lists every protection with the test that proves it; this file holds the ones that
cut across modules (a real build or a real server) and the bounds added for issue 9. Each test
fails without its protection: the bounds by an error that would not be raised (or a time limit
that would be blown), the path rules by a file that would be written or served.

Anything that could run away without its protection runs in a subprocess with a timeout and an
address-space limit, so that a regression fails the test instead of the machine.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from busybox_image import make_context
from memobuild.build.archive import ArchiveError, extract_archive
from memobuild.cache.entries import encode_action
from memobuild.dockerfile.parser import MAX_DOCKERFILE_BYTES, MAX_INSTRUCTIONS, parse
from memobuild.dockerfile.shell import MAX_WORD_GROWTH, expand_word
from memobuild.dockerfile.stages import load_stages
from memobuild.errors import DockerfileParseError
from server_fixture import run_server
from test_server import call, entry_for, put_blob, sha256

LIMIT_AS = 3 << 30  # a runaway expansion hits this instead of the machine's memory


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))


def memobuild(
    *args: str,
    cwd: Path,
    timeout: float = 120,
    stdin: bytes | int | None = None,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """The CLI under a memory limit; returns the result and the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "memobuild.cli", *args],
        capture_output=True,
        cwd=cwd,
        timeout=timeout,
        preexec_fn=_limit_memory,
        input=stdin if isinstance(stdin, bytes) else None,
        stdin=stdin if isinstance(stdin, int) else None,
    )
    return (
        subprocess.CompletedProcess(
            done.args,
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        ),
        time.monotonic() - started,
    )


def plan_text(tmp_path: Path, dockerfile: str | bytes, timeout: float = 120):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    data = dockerfile.encode() if isinstance(dockerfile, str) else dockerfile
    (ctx / "Dockerfile").write_bytes(data)
    return memobuild("plan", str(ctx), cwd=tmp_path, timeout=timeout)


# --- Dockerfiles: bounded time and memory, and a DockerfileParseError --------------------------


def test_a_dockerfile_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    text = "FROM scratch\n" + "# padding padding padding padding\n" * (
        MAX_DOCKERFILE_BYTES // 34 + 1
    )
    assert len(text) > MAX_DOCKERFILE_BYTES
    done, _ = plan_text(tmp_path, text)
    assert done.returncode == 2, done.stderr
    assert "Dockerfile: the Dockerfile is larger than 4 MiB" in done.stderr
    with pytest.raises(DockerfileParseError, match="larger than 4 MiB"):
        parse(text)


def test_an_endless_dockerfile_on_stdin_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    with subprocess.Popen(["yes", "# an endless comment"], stdout=subprocess.PIPE) as endless:
        assert endless.stdout is not None
        try:
            done, took = memobuild("parse", "-f", "-", cwd=tmp_path, stdin=endless.stdout.fileno())
        finally:
            endless.kill()
    assert done.returncode == 2, done.stderr
    assert "<stdin>: the Dockerfile is larger than 4 MiB" in done.stderr
    assert took < 60


def test_more_instructions_than_the_limit_are_refused() -> None:
    text = "FROM scratch\n" + "RUN true\n" * MAX_INSTRUCTIONS
    with pytest.raises(DockerfileParseError) as info:
        parse(text, filename="Dockerfile")
    assert info.value.line == MAX_INSTRUCTIONS + 1
    assert f"more than {MAX_INSTRUCTIONS:,} instructions" in str(info.value)
    parse("FROM scratch\n" + "RUN true\n" * (MAX_INSTRUCTIONS - 1))  # the limit itself is fine


def test_exponential_variable_expansion_is_refused_quickly(tmp_path: Path) -> None:
    # 40 doublings would be 8 TiB; the bound stops it at the first word that grows by 1 MiB.
    done, took = plan_text(tmp_path, "FROM scratch\nENV A=abcdefgh\n" + "ENV A=$A$A\n" * 40)
    assert done.returncode == 2, done.stderr
    # The 18th doubling (line 20) is the first to add more than 1 MiB: 8 * 2**18 > 2**20.
    assert "Dockerfile:20:" in done.stderr
    assert "the expansion is too large" in done.stderr
    assert took < 60


def test_many_words_cannot_expand_past_the_whole_files_budget(tmp_path: Path) -> None:
    # Each LABEL adds 512 KiB (under the per-word bound); 200 of them would be 100 MiB.
    text = "FROM scratch\nENV A=abcdefgh\n" + "ENV A=$A$A\n" * 16 + "LABEL l=$A\n" * 200
    done, took = plan_text(tmp_path, text)
    assert done.returncode == 2, done.stderr
    assert "expansions in this Dockerfile produce more than 67108864 characters" in done.stderr
    assert took < 60


def test_a_quadratic_blowup_inside_one_substitution_is_refused() -> None:
    value = "x" * 2000  # every character replaced by the value itself: 4 M characters
    with pytest.raises(DockerfileParseError, match="the expansion is too large"):
        expand_word("${A//?/$A}", {"A": value})
    assert len(expand_word("${A//?/$A}", {"A": "x" * 500})) == 250_000  # under the bound
    assert MAX_WORD_GROWTH == 1 << 20


def test_variables_seen_by_many_steps_are_bounded() -> None:
    # Each step copies, and each RUN key hashes, the whole environment: quadratic in the file.
    lines = ["FROM scratch"]
    for i in range(1600):
        lines += [f"ENV V{i}=value-{i}", "RUN true"]
    started = time.monotonic()
    with pytest.raises(DockerfileParseError, match="too large to plan"):
        load_stages(parse("\n".join(lines) + "\n"))
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("operator", ["#", "##", "%", "%%", "/", "//"])
def test_pattern_substitutions_take_linear_time(tmp_path: Path, operator: str) -> None:
    # Backtracking regexes take hours on these (a * per 'a' tried at every split).
    replacement = "/r" if operator.startswith("/") else ""
    pattern = "*a" * 8 + "*b"
    done, took = plan_text(
        tmp_path,
        f"FROM scratch\nARG A={'a' * 3000}\n"
        f"ENV B=${{A{operator}{pattern}{replacement}}}\n"
        "RUN test ${#B} -gt 0\n",
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert took < 60


def test_pattern_substitutions_keep_go_semantics() -> None:
    env = {"A": "a.b.c.tar.gz", "P": "x/y/z"}
    assert expand_word("${A#*.}", env) == "b.c.tar.gz"
    assert expand_word("${A##*.}", env) == "gz"
    assert expand_word("${A%.*}", env) == "a.b.c.tar"
    assert expand_word("${A%%.*}", env) == "a"
    assert expand_word("${P//\\//-}", env) == "x-y-z"
    assert expand_word("${A/b*c/X}", env) == "a.X.tar.gz"
    assert expand_word("${A//?/_}", {"A": "é\nx"}) == "_\n_"  # ? never matches a newline
    # lone surrogates (undecodable bytes in a base image's env) match one for one
    assert expand_word("${A#?}", {"A": "\udcff\udcfex"}) == "\udcfex"
    assert expand_word("${A/\udcfe/-}", {"A": "\udcff\udcfex"}) == "\udcff-x"


def test_a_giant_heredoc_is_read_in_linear_time(tmp_path: Path) -> None:
    body = "echo a line of a script that came with the Dockerfile\n" * (3 << 20 >> 6)
    done, took = plan_text(tmp_path, "FROM scratch\nRUN <<EOF\n" + body + "EOF\n")
    assert done.returncode == 0, done.stderr
    assert took < 60


def test_a_heredocs_expansion_is_bounded_too() -> None:
    text = "FROM scratch\nARG A=" + "a" * 1000 + "\nCOPY <<EOF /x\n" + "$A\n" * 2000 + "EOF\n"
    with pytest.raises(DockerfileParseError, match="the expansion is too large"):
        load_stages(parse(text))
    quoted = text.replace("<<EOF", "<<'EOF'")  # a quoted delimiter: no expansion, no bound hit
    load_stages(parse(quoted))


@pytest.mark.parametrize(
    "dockerfile",
    [
        b"# caf\xe9 \xff\xfe\nFROM scratch\nCOPY x /\n",
        b"FROM scratch\nENV A=\xff\xc3\nLABEL b=$A\xc0\xaf\nCOPY x /\n",
        b"FROM scratch\nCOPY <<EOF /x\n\xed\xa0\x80 \xf4\x90\x80\x80\nEOF\n",
    ],
    ids=["comment", "env-and-label", "heredoc"],
)
def test_invalid_utf8_is_read_with_replacement_characters(
    tmp_path: Path, dockerfile: bytes
) -> None:
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "x").write_text("x")
    done, _ = plan_text(tmp_path, dockerfile)
    assert done.returncode == 0, done.stderr


def test_random_bytes_are_a_parse_error_or_a_plan_never_a_crash(tmp_path: Path) -> None:
    data = bytes(b ^ (i * 131 % 256) for i, b in enumerate(os.urandom(1 << 20)))
    done, took = plan_text(tmp_path, b"FROM scratch\n" + data)
    assert done.returncode in (0, 2), done.stderr
    assert "Traceback" not in done.stderr
    assert took < 60


# --- build contexts: symlinks and .dockerignore -------------------------------------------------


@pytest.fixture
def hostile_context(tmp_path: Path) -> Path:
    (tmp_path / "outside-secret.txt").write_text("OUTSIDE-SECRET\n")
    ctx = make_context(
        tmp_path / "ctx",
        "",
        {"ok.txt": "ok\n", "ignored.txt": "IGNORED-SECRET\n", "sub/keep.txt": "keep\n"},
    )
    (ctx / ".dockerignore").write_text("ignored.txt\n")
    (ctx / "abs").symlink_to(tmp_path / "outside-secret.txt")
    (ctx / "rel").symlink_to("../outside-secret.txt")
    (ctx / "parent").symlink_to("..")
    return ctx


def _build_local(ctx: Path, copy_line: str, out: Path):
    (ctx / "Dockerfile").write_text(f"FROM scratch\n{copy_line}\n")
    return memobuild(
        "build", str(ctx), "--progress=plain", "-o", f"type=local,dest={out}", cwd=ctx.parent
    )


def _tree_text(root: Path) -> str:
    return "".join(
        p.read_text(errors="replace") for p in root.rglob("*") if p.is_file() and not p.is_symlink()
    )


@pytest.mark.parametrize(
    "source", ["abs", "rel", "parent/outside-secret.txt", "parent/../outside-secret.txt"]
)
def test_a_source_symlink_out_of_the_context_is_not_followed_out(
    hostile_context: Path, tmp_path: Path, source: str
) -> None:
    out = tmp_path / "out"
    done, _ = _build_local(hostile_context, f"COPY {source} /x/", out)
    assert done.returncode == 2, done.stderr
    assert "not found in the build context" in done.stderr
    assert "OUTSIDE-SECRET" not in _tree_text(out) if out.exists() else True


def test_symlinks_inside_a_copied_tree_stay_links(hostile_context: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done, _ = _build_local(hostile_context, "COPY . /x/", out)
    assert done.returncode == 0, done.stderr
    assert os.readlink(out / "x" / "abs") == str(tmp_path / "outside-secret.txt")
    assert os.readlink(out / "x" / "parent") == ".."
    text = _tree_text(out)
    assert "OUTSIDE-SECRET" not in text and "IGNORED-SECRET" not in text
    assert not (out / "x" / "ignored.txt").exists()


@pytest.mark.parametrize(
    "source",
    [
        "sub/../ignored.txt",
        "./ignored.txt",
        "/ignored.txt",
        "sub/./../ignored.txt",
        "../ctx/ignored.txt",
        "parent/ctx/ignored.txt",
        "sub/../ignored*",
        "[i]gnored.txt",
    ],
)
def test_dockerignore_cannot_be_bypassed_with_dotdot(
    hostile_context: Path, tmp_path: Path, source: str
) -> None:
    out = tmp_path / "out"
    done, _ = _build_local(hostile_context, f"COPY {source} /x/", out)
    assert "IGNORED-SECRET" not in (_tree_text(out) if out.exists() else "")
    if done.returncode != 0:
        assert done.returncode == 2
        assert "not found in the build context" in done.stderr, done.stderr


# --- archives (ADD) -----------------------------------------------------------------------------


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _file(name: str, size: int) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = size
    return info, b"\0" * size


def test_an_add_archive_bomb_is_refused_at_its_bound(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip.compress(_tar(_file("zeros", 40 << 20)), compresslevel=9))
    assert bomb.stat().st_size < 100_000
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError, match="expands past 8388608 bytes") as info:
        extract_archive(bomb, dest, max_bytes=8 << 20)
    assert info.value.entry == "zeros"
    assert (dest / "zeros").stat().st_size <= 8 << 20

    many = tmp_path / "many.tar"
    many.write_bytes(_tar(*(_file(f"f{i}", 0) for i in range(50))))
    (tmp_path / "dest2").mkdir()
    with pytest.raises(ArchiveError, match="more than 20 entries"):
        extract_archive(many, tmp_path / "dest2", max_entries=20)
    assert len(list((tmp_path / "dest2").iterdir())) == 20


def test_an_add_archive_with_a_huge_extended_header_is_refused_before_it_is_read(
    tmp_path: Path,
) -> None:
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = 200 << 20  # a 200 MiB "PAX header": tarfile would read it into memory whole
    archive = tmp_path / "pax.tar.gz"
    with gzip.open(archive, "wb", compresslevel=1) as out:
        out.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        chunk = b"9 a=b\n" * (1 << 16)
        for _ in range(header.size // len(chunk)):
            out.write(chunk)
    (tmp_path / "dest").mkdir()
    with pytest.raises(ArchiveError, match=r"extended header of 209715200 bytes \(at most"):
        extract_archive(archive, tmp_path / "dest")


# --- the cache server ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/blobs/sha256:..%2F..%2F..%2Fetc%2Fpasswd",
        "/v1/blobs/sha256:%2e%2e%2f%2e%2e%2fx",
        "/v1/blobs/..%2F..%2Fblobs%2Fsha256",
        "/v1/blobs/sha256:" + "a" * 63 + "%00",
        "/v1/blobs/sha256:" + "a" * 62 + "%5C%5C",
        "/v1/actions/blake3:..%2F..%2Flock",
        "/v1/actions/blake3:" + "b" * 64 + "%2F..",
        "/v1/blobs/sha256:" + "A" * 64,
    ],
)
def test_digests_with_path_characters_reach_no_file(tmp_path: Path, path: str) -> None:
    with run_server(tmp_path / "server") as server:
        before = {p for p in tmp_path.rglob("*") if p.is_file()}
        for method, body in (("GET", None), ("HEAD", None), ("PUT", b"x")):
            reply = call(server, method, path, body)
            assert reply.status in (400, 404), (method, reply.status)
        after = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert after - before == set()  # not in the storage, not beside it
    assert [
        p for d in ("blobs", "actions") for p in (server.storage / d).rglob("*") if p.is_file()
    ] == []


def test_a_quarantined_blob_is_never_served_and_its_entry_misses(tmp_path: Path) -> None:
    data = os.urandom(4000)
    entry = entry_for(b"quarantine", [data])
    with run_server(tmp_path / "server") as server:
        assert put_blob(server, data).status == 201
        assert call(server, "PUT", f"/v1/actions/{entry.key}", encode_action(entry)).status == 201
        blob = server.blob_file(sha256(data))
        blob.write_bytes(os.urandom(4000))  # bit rot, or a tampered disk: same size
        prune = ["cache", "prune", "--verify", "--json", "--cache-dir", str(server.storage)]
        done = subprocess.run(
            [sys.executable, "-m", "memobuild.cli", *prune],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert json.loads(done.stdout)["quarantined"] >= 1, done.stdout
        assert call(server, "GET", f"/v1/blobs/{sha256(data)}").status == 404
        assert call(server, "HEAD", f"/v1/blobs/{sha256(data)}").status == 404
        assert call(server, "GET", f"/v1/actions/{entry.key}").status == 404
        # and it can be uploaded again, whole
        assert put_blob(server, data).status == 201
        assert call(server, "GET", f"/v1/blobs/{sha256(data)}").body == data


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o600, False)])
def test_a_token_file_others_can_read_is_warned_about(
    tmp_path: Path, mode: int, warned: bool
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("0123456789abcdef0123456789abcdef rw\n")
    tokens.chmod(mode)
    with run_server(tmp_path / "server", token_file=tokens) as server:
        assert call(server, "GET", "/v1/blobs/" + sha256(b"x")).status == 401
        logs = server.logs()
    assert ("token file is readable by other users; chmod 600 it" in logs) is warned


# --- the local cache: tampered entries and blobs are detected and never used ------------------


def _two_step_build(tmp_path: Path) -> Path:
    ctx = make_context(
        tmp_path / "ctx",
        "FROM scratch\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\n",
        {"a.txt": "content of a\n", "b.txt": "content of b\n"},
    )
    return ctx


def _build(ctx: Path, out: Path, cache: Path) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-m", "memobuild.cli", "build", str(ctx), "--progress=json",
         "-o", f"type=local,dest={out}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MEMOBUILD_CACHE_DIR": str(cache)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _layer_blobs(cache: Path) -> dict[str, Path]:
    return {p.name: p for p in (cache / "blobs" / "sha256").rglob("*") if p.is_file()}


def _entries_naming(cache: Path, hex_digest: str) -> list[Path]:
    return [
        p
        for p in (cache / "actions").rglob("*")
        if p.is_file() and hex_digest.encode() in p.read_bytes()
    ]


@pytest.mark.parametrize("damage", ["entry-points-at-another-blob", "truncated", "misnamed"])
def test_a_damaged_cache_is_detected_and_the_step_rebuilt(
    tmp_path: Path, isolated_cache: Path, damage: str
) -> None:
    ctx = _two_step_build(tmp_path)
    first = _build(ctx, tmp_path / "out1", isolated_cache)
    assert [e["event"] for e in first].count("StepExecuted") == 3  # FROM scratch too
    blobs = _layer_blobs(isolated_cache)
    layer_a = next(
        h
        for h in blobs
        if len(_entries_naming(isolated_cache, h)) == 1
        and b"a.txt" in gzip.decompress(blobs[h].read_bytes())
    )
    layer_b = next(
        h for h in blobs if h != layer_a and len(_entries_naming(isolated_cache, h)) == 1
    )
    if damage == "entry-points-at-another-blob":
        # Rewrite the COPY a.txt entry to name b's layer (its checksum now disagrees).
        (entry,) = _entries_naming(isolated_cache, layer_a)
        entry.write_bytes(entry.read_bytes().replace(layer_a.encode(), layer_b.encode()))
    elif damage == "truncated":
        blob = blobs[layer_a]
        blob.write_bytes(blob.read_bytes()[:-10])
    else:  # a's name, b's bytes: a valid layer, but not the one the name promises
        blobs[layer_a].write_bytes(blobs[layer_b].read_bytes())

    second = _build(ctx, tmp_path / "out2", isolated_cache)
    executed = [e["text"] for e in second if e["event"] == "StepExecuted"]
    assert executed == ["COPY a.txt /a.txt"]  # the damaged step only, never taken from the cache
    assert (tmp_path / "out2" / "a.txt").read_text() == "content of a\n"
    assert (tmp_path / "out2" / "b.txt").read_text() == "content of b\n"
    assert list((isolated_cache / "quarantine").iterdir()), "nothing was quarantined"
