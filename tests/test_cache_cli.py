"""`memobuild cache ls|du|gc|prune`, run as a user runs them, on a real cache dir."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import blake3
import pytest

from memobuild.cache import ActionEntry, LayerRef, LocalStore
from memobuild.commands.cache import format_size, parse_duration, parse_size
from memobuild.errors import InputError


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # The autouse isolated_cache fixture has set MEMOBUILD_CACHE_DIR in os.environ.
    return subprocess.run(
        [sys.executable, "-m", "memobuild.cli", "cache", *args], capture_output=True, text=True
    )


def key(name: str) -> str:
    return "blake3:" + blake3.blake3(name.encode()).hexdigest()


def fill(store: LocalStore, *names: str, size: int = 2000) -> list[ActionEntry]:
    entries = []
    for name in names:
        data = name.encode() * (size // len(name))
        digest = store.put_blob_bytes(data)
        entry = ActionEntry(key(name), (LayerRef(digest, digest, len(data)),), {}, (), time.time())
        store.put_action(entry)
        entries.append(entry)
        time.sleep(0.01)
    return entries


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10G", 10 * 1024**3),
        ("512M", 512 * 1024**2),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("800MB", 800 * 1000**2),
        ("1kb", 1000),
        ("2k", 2048),
        ("4096", 4096),
        ("0", 0),
        (" 3 T ", 3 * 1024**4),
        ("7B", 7),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "10X", "-1G", "1e9", "nan", "inf", "1,5G", "10 G B"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InputError, match="invalid size"):
        parse_size(text)


def test_parse_duration() -> None:
    assert parse_duration("0") == 0
    assert parse_duration("90") == 90
    assert parse_duration("30s") == 30
    assert parse_duration("10m") == 600
    assert parse_duration("1.5h") == 5400
    assert parse_duration("2d") == 172800
    for bad in ("", "5w", "-1m", "soon"):
        with pytest.raises(InputError, match="invalid duration"):
            parse_duration(bad)


def test_format_size() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(10 * 1024**3) == "10.0 GiB"


def test_empty_cache(isolated_cache: Path) -> None:
    proc = run("ls")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"no action entries in {isolated_cache}"
    du = json.loads(run("du", "--json").stdout)
    assert du["actions"] == 0 and du["blobs"] == 0 and du["bytes"] == 0
    assert du["root"] == str(isolated_cache)


def test_ls_lists_entries_most_recently_used_first(isolated_cache: Path) -> None:
    with LocalStore() as store:
        a, b, c = fill(store, "a", "b", "c")
        store.get_action(a.key)
    proc = run("ls")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["KEY", "LAYERS", "SIZE", "CREATED", "LAST", "USE"]
    assert [row.split()[0] for row in rows] == [a.key, c.key, b.key]
    listed = json.loads(run("ls", "--json").stdout)
    assert [e["key"] for e in listed] == [a.key, c.key, b.key]
    first = listed[0]
    assert first["layers"] == 1 and first["layer_bytes"] == 2000
    assert first["size"] == first["layer_bytes"] + first["entry_bytes"]
    assert first["last_use"] >= first["created"]
    by_created = json.loads(run("ls", "--json", "--sort", "created").stdout)
    assert [e["key"] for e in by_created] == [c.key, b.key, a.key]


def test_du_counts_and_counters(isolated_cache: Path) -> None:
    with LocalStore() as store:
        (a,) = fill(store, "a")
        store.put_blob_bytes(b"loose config blob")
        store.get_action(a.key)
        store.get_action(key("absent"))
        usage = store.usage()
    out = json.loads(run("du", "--json").stdout)
    assert out["actions"] == 1 and out["blobs"] == 2
    assert out["bytes"] == usage.bytes == out["blob_bytes"] + out["action_bytes"]
    assert out["stats"]["hits"] == 1 and out["stats"]["misses"] == 1
    text = run("du").stdout
    assert str(isolated_cache) in text and "1 hit, 1 miss, 0 integrity failures" in text


def test_gc_shrinks_the_cache_lru_first(isolated_cache: Path) -> None:
    with LocalStore() as store:
        a, b, c = fill(store, "a", "b", "c")
        store.get_action(a.key)
        total = store.usage().bytes
    proc = run("gc", "--max-size", str(total - 1), "--min-age", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["removed_actions"] == 1 and report["reached"] is True
    assert report["remaining_bytes"] <= total - 1
    with LocalStore() as store:
        assert not store.has_action(b.key)
        assert store.get_action(a.key) == a and store.get_action(c.key) == c
    proc = run("gc", "--max-size", "0", "--min-age", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("removed 2 action entries and 2 blobs")
    assert "the cache holds 0 B (limit 0 B)" in proc.stdout


def test_gc_keeps_recent_entries_and_says_so(isolated_cache: Path) -> None:
    with LocalStore() as store:
        fill(store, "a")
    proc = run("gc", "--max-size", "0")
    assert proc.returncode == 0
    assert proc.stdout.startswith("removed 0 action entries and 0 blobs")
    assert "still over the limit" in proc.stderr and "--min-age" in proc.stderr


def test_gc_bad_arguments() -> None:
    proc = run("gc", "--max-size", "10X")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("memobuild: error: invalid size '10X'")
    proc = run("gc")
    assert proc.returncode == 2 and "--max-size" in proc.stderr
    proc = run("gc", "--max-size", "1G", "--min-age", "soon")
    assert proc.returncode == 2 and "invalid duration 'soon'" in proc.stderr


def test_prune(isolated_cache: Path) -> None:
    with LocalStore() as store:
        a, b = fill(store, "a", "b")
        loose = store.put_blob_bytes(b"loose")
    (isolated_cache / "quarantine" / "blob-old").write_bytes(b"junk")
    (isolated_cache / "tmp" / "blob-crashed").write_bytes(b"junk")
    hex_b = b.layers[0].digest.split(":")[1]
    (isolated_cache / "blobs" / "sha256" / hex_b[:2] / hex_b).unlink()
    proc = run("prune", "--min-age", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["removed_quarantined"] == 1 and report["removed_temp"] == 1
    assert report["removed_actions"] == 1 and report["removed_blobs"] == 1
    with LocalStore() as store:
        assert not store.has_blob(loose) and not store.has_action(b.key)
        assert store.get_action(a.key) == a
    proc = run("prune")
    assert proc.returncode == 0
    assert proc.stdout.startswith("removed 0 quarantined files, 0 stale temp files")


def test_prune_verify_reports_corrupt_blobs(isolated_cache: Path) -> None:
    with LocalStore() as store:
        (a,) = fill(store, "a")
    hex_a = a.layers[0].digest.split(":")[1]
    path = isolated_cache / "blobs" / "sha256" / hex_a[:2] / hex_a
    path.write_bytes(b"bit rot")
    proc = run("prune", "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "moved 1 corrupt file to quarantine" in proc.stderr
    assert not path.exists()
    assert json.loads(run("du", "--json").stdout)["quarantined"] == 1


def test_cache_dir_option(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    with LocalStore(other) as store:
        fill(store, "x")
    out = json.loads(run("du", "--json", "--cache-dir", str(other)).stdout)
    assert out["root"] == str(other) and out["actions"] == 1
    assert json.loads(run("du", "--json").stdout)["actions"] == 0


def test_unusable_cache_dir_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = run("du", "--cache-dir", str(blocker / "cache"))
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("memobuild: error: ") and str(blocker) in line
    assert "Traceback" not in proc.stderr


def test_cache_help_lists_the_actions() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    for action in ("ls", "du", "gc", "prune"):
        assert action in proc.stdout
