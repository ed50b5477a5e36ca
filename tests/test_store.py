"""The local content-addressed store: real files on disk, corrupted by hand, shared by processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import blake3
import msgpack
import pytest

from memobuild.cache import ActionEntry, LayerRef, LocalStore
from memobuild.cache.atomic import TempFile
from memobuild.cache.entries import decode_action, encode_action
from memobuild.cache.lock import StoreLock
from memobuild.errors import (
    BlobNotFoundError,
    CacheCoherencyError,
    CASIntegrityError,
    CorruptEntryError,
    InputError,
    InvalidDigestError,
    MemoBuildError,
    PathNotFoundError,
    StorageError,
)
from memobuild.logging import logger
from memobuild.verify import verify_file


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def key(name: str) -> str:
    return "blake3:" + blake3.blake3(name.encode()).hexdigest()


def blob_file(root: Path, digest: str) -> Path:
    hex_part = digest.split(":")[1]
    return root / "blobs" / "sha256" / hex_part[:2] / hex_part


def action_file(root: Path, k: str) -> Path:
    hex_part = k.split(":")[1]
    return root / "actions" / hex_part[:2] / hex_part


def flip_byte(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def entry_for(store: LocalStore, name: str, *payloads: bytes, created: float = 1.0) -> ActionEntry:
    """Store the payloads as layer blobs and an entry referencing them; return the entry."""
    layers = []
    for payload in payloads:
        digest = store.put_blob_bytes(payload)
        layers.append(LayerRef(digest, sha(b"diff:" + payload), len(payload)))
    entry = ActionEntry(
        key=key(name),
        layers=tuple(layers),
        config={"Env": [f"STEP={name}"], "WorkingDir": "/app"},
        preimage=(("parent", key("parent")), ("instruction", f"RUN make {name}")),
        created=created,
        duration=0.25,
    )
    store.put_action(entry)
    return entry


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def store(root: Path) -> LocalStore:
    s = LocalStore(root)
    yield s
    s.close()


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


# --- blobs --------------------------------------------------------------------------------------


def test_default_root_is_the_configured_cache_dir(isolated_cache: Path) -> None:
    with LocalStore() as s:
        assert s.root == isolated_cache
        assert (isolated_cache / "blobs" / "sha256").is_dir()


def test_blob_round_trip(store: LocalStore, root: Path) -> None:
    data = b"layer bytes" * 1000
    digest = store.put_blob_bytes(data)
    assert digest == sha(data)
    assert store.has_blob(digest)
    assert store.read_blob(digest) == data
    path = store.blob_path(digest)
    assert path == blob_file(root, digest) and path.read_bytes() == data
    # storing it again is a no-op that returns the same digest
    assert store.put_blob_bytes(data, digest) == digest
    assert store.usage().blobs == 1 and store.usage().blob_bytes == len(data)


def test_put_blob_file_streams_and_verifies(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(5 * (1 << 20) + 3)  # several copy chunks and a ragged end
    src = tmp_path / "layer.tar.gz"
    src.write_bytes(data)
    digest = store.put_blob_file(src)
    assert digest == sha(data)
    assert store.read_blob(digest) == data
    # with the right digest given, an already stored blob is checked against the source
    assert store.put_blob_file(src, digest) == digest
    assert files_under(store.root / "tmp") == []


def test_put_blob_with_wrong_digest_stores_nothing(store: LocalStore, tmp_path: Path) -> None:
    data, other = b"what we have", b"what was announced"
    with pytest.raises(CASIntegrityError) as info:
        store.put_blob_bytes(data, sha(other))
    assert info.value.expected == sha(other) and info.value.actual == sha(data)
    src = tmp_path / "blob"
    src.write_bytes(data)
    with pytest.raises(CASIntegrityError) as info:
        store.put_blob_file(src, sha(other))
    assert str(src) in str(info.value)
    assert not store.has_blob(sha(data)) and not store.has_blob(sha(other))
    assert files_under(store.root / "blobs") == []
    assert files_under(store.root / "tmp") == []
    assert store.usage().blobs == 0


def test_put_blob_file_with_wrong_digest_when_the_blob_exists(
    store: LocalStore, tmp_path: Path
) -> None:
    good = b"good"
    digest = store.put_blob_bytes(good)
    src = tmp_path / "impostor"
    src.write_bytes(b"not good")
    with pytest.raises(CASIntegrityError):
        store.put_blob_file(src, digest)
    assert store.read_blob(digest) == good


def test_put_blob_stream_writes_once_and_verifies(store: LocalStore, tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    pieces = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    digest = sha(data)
    assert store.put_blob_stream(iter(pieces), digest, len(data)) == digest
    assert store.read_blob(digest) == data
    assert store.usage().blobs == 1 and store.usage().blob_bytes == len(data)
    # A binary file is read to its end, in large pieces, not line by line.
    other = os.urandom(100_000).replace(b"\n", b"x") + b"\n" * 3
    src = tmp_path / "blob"
    src.write_bytes(other)
    with open(src, "rb") as f:
        assert store.put_blob_stream(f, sha(other)) == sha(other)
    assert store.read_blob(sha(other)) == other
    assert files_under(store.root / "tmp") == []


def test_put_blob_stream_refuses_wrong_content_and_stores_nothing(store: LocalStore) -> None:
    data, announced = b"what arrived" * 1000, b"what was announced"
    with pytest.raises(CASIntegrityError) as info:
        store.put_blob_stream([data[:5000], data[5000:]], sha(announced), where="GET blob x")
    assert info.value.expected == sha(announced) and info.value.actual == sha(data)
    assert info.value.size == len(data) and "GET blob x" in str(info.value)
    # The right digest but a size that is not the blob's is refused too.
    with pytest.raises(CASIntegrityError, match=f"only {len(data)} of {len(data) + 1} bytes"):
        store.put_blob_stream([data], sha(data), len(data) + 1)
    assert files_under(store.root / "blobs") == [] and files_under(store.root / "tmp") == []
    assert store.usage().blobs == 0


def test_put_blob_stream_stops_at_the_size_and_on_errors(store: LocalStore) -> None:
    data = b"x" * 4096
    taken: list[int] = []

    def endless() -> Iterator[bytes]:
        while True:
            taken.append(len(data))
            yield data

    with pytest.raises(CASIntegrityError, match="more than its 10000 bytes"):
        store.put_blob_stream(endless(), sha(data * 3), 10_000)
    assert len(taken) == 3  # refused at the chunk that went past the size, not read to the end

    def broken() -> Iterator[bytes]:
        yield data
        raise ConnectionResetError("the peer went away")

    with pytest.raises(ConnectionResetError):
        store.put_blob_stream(broken(), sha(data * 2))
    assert files_under(store.root / "blobs") == [] and files_under(store.root / "tmp") == []
    with pytest.raises(InvalidDigestError):
        store.put_blob_stream([data], "sha256:../../etc/passwd")


def test_blob_writer_resets_and_leaves_a_stored_blob_alone(store: LocalStore) -> None:
    data = os.urandom(200_000)
    with store.blob_writer(sha(data), len(data)) as writer:
        writer.write(os.urandom(50_000))  # a first attempt that broke off
        writer.reset()
        assert writer.offset == 0
        writer.write(data[:120_000])
        assert writer.offset == 120_000
        writer.write(data[120_000:])
        assert writer.commit() == sha(data)
    assert store.read_blob(sha(data)) == data
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"more")
    # An impostor for a stored blob fails its check and the stored copy stays as it was.
    with pytest.raises(CASIntegrityError):
        store.put_blob_stream([os.urandom(len(data))], sha(data))
    assert store.read_blob(sha(data)) == data
    # A writer given up without a commit leaves nothing behind.
    with store.blob_writer(sha(b"never")) as abandoned:
        abandoned.write(b"nev")
    assert files_under(store.root / "tmp") == []


def test_put_blob_file_bad_sources(store: LocalStore, tmp_path: Path) -> None:
    missing = tmp_path / "nope.tar"
    with pytest.raises(PathNotFoundError) as info:
        store.put_blob_file(missing)
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)
    with pytest.raises(InputError, match="is a directory"):
        store.put_blob_file(tmp_path)
    assert files_under(store.root / "tmp") == []


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:../../x",
        "sha256:../../../etc/passwd",
        "sha256:" + "0" * 63,
        "sha256:" + "A" * 64,
        "sha256:" + "0" * 62 + "/x",
        "md5:" + "0" * 32,
        "0" * 64,
        "",
        "blake3:" + "0" * 64,  # a valid digest, but blobs are sha256
    ],
)
def test_bad_blob_digests_are_rejected(store: LocalStore, bad: str) -> None:
    before = files_under(store.root.parent)
    for call in (
        lambda: store.has_blob(bad),
        lambda: store.read_blob(bad),
        lambda: store.blob_path(bad),
        lambda: store.put_blob_bytes(b"x", bad),
    ):
        with pytest.raises(InvalidDigestError):
            call()
    assert files_under(store.root.parent) == before


@pytest.mark.parametrize("bad", ["blake3:../../x", "sha256:" + "0" * 64, "blake3:" + "g" * 64])
def test_bad_action_keys_are_rejected(store: LocalStore, bad: str) -> None:
    with pytest.raises(InvalidDigestError):
        store.get_action(bad)
    with pytest.raises(InvalidDigestError):
        store.has_action(bad)


def test_missing_blob(store: LocalStore, root: Path) -> None:
    digest = sha(b"never stored")
    assert not store.has_blob(digest)
    with pytest.raises(BlobNotFoundError) as info:
        store.read_blob(digest)
    assert digest in str(info.value) and str(blob_file(root, digest)) in str(info.value)
    with pytest.raises(BlobNotFoundError):
        store.blob_path(digest)


def test_corrupt_blob_is_quarantined_counted_and_never_returned(
    store: LocalStore, root: Path
) -> None:
    keep = store.put_blob_bytes(b"an innocent bystander")
    data = b"x" * 4096
    digest = store.put_blob_bytes(data)
    path = blob_file(root, digest)
    flip_byte(path, 100)
    with pytest.raises(CASIntegrityError) as info:
        store.read_blob(digest)
    message = str(info.value)
    assert str(path) in message and "quarantine" in message and digest in message
    assert not path.exists() and not store.has_blob(digest)
    (moved,) = files_under(root / "quarantine")
    assert moved.read_bytes()[100] == ord("x") ^ 0x01  # the bad bytes are kept for inspection
    assert store.stats()["integrity_failures"] == 1 and store.stats()["quarantined"] == 1
    assert store.usage().quarantined == 1 and store.usage().blobs == 1
    with pytest.raises(BlobNotFoundError):
        store.read_blob(digest)
    assert store.read_blob(keep) == b"an innocent bystander"
    # the blob can be stored again afterwards
    store.put_blob_bytes(data)
    assert store.read_blob(digest) == data


def test_truncated_blob_fails_blob_path(store: LocalStore, root: Path) -> None:
    digest = store.put_blob_bytes(b"y" * 10000)
    path = blob_file(root, digest)
    with open(path, "r+b") as f:
        f.truncate(5000)
    with pytest.raises(CASIntegrityError) as info:
        store.blob_path(digest)
    assert info.value.size == 5000
    assert not path.exists() and store.usage().quarantined == 1


# --- action entries -----------------------------------------------------------------------------


def test_action_round_trip_and_counters(store: LocalStore) -> None:
    entry = entry_for(store, "a", b"layer one", b"layer two")
    assert store.has_action(entry.key)
    assert store.get_action(entry.key) == entry
    assert store.get_action(key("unknown")) is None
    assert not store.has_action(key("unknown"))
    stats = store.stats()
    assert stats["hits"] == 1 and stats["misses"] == 1
    (info,) = store.list_actions()
    assert info.key == entry.key and info.layers == 2
    assert info.layer_bytes == len(b"layer one") + len(b"layer two")


def test_entry_without_layers(store: LocalStore) -> None:
    entry = ActionEntry(key("env"), (), {"Env": ["A=1"]}, (("parent", key("p")),), 5)
    store.put_action(entry)
    assert store.get_action(entry.key) == entry
    assert store.get_action(entry.key).created == 5.0


def test_put_action_requires_its_blobs(store: LocalStore, root: Path) -> None:
    data = b"not stored"
    entry = ActionEntry(key("a"), (LayerRef(sha(data), sha(data), len(data)),), {}, (), 1.0)
    with pytest.raises(CacheCoherencyError) as info:
        store.put_action(entry)
    assert sha(data) in str(info.value) and entry.key in str(info.value)
    store.put_blob_bytes(data)
    wrong_size = ActionEntry(key("a"), (LayerRef(sha(data), sha(data), 3),), {}, (), 1.0)
    with pytest.raises(CacheCoherencyError, match="10 bytes in the cache, the entry says 3"):
        store.put_action(wrong_size)
    assert not store.has_action(entry.key)
    assert files_under(root / "actions") == [] and files_under(root / "tmp") == []
    store.put_action(entry)
    assert store.get_action(entry.key) == entry


def test_unstorable_config_is_an_input_error(store: LocalStore) -> None:
    entry = ActionEntry(key("a"), (), {"Env": object()}, (), 1.0)
    with pytest.raises(InputError, match="msgpack"):
        store.put_action(entry)
    assert not store.has_action(entry.key)


def test_action_entry_validation() -> None:
    good = sha(b"x")
    with pytest.raises(InvalidDigestError):
        ActionEntry("blake3:../../x", (), {}, (), 1.0)
    with pytest.raises(InvalidDigestError):
        ActionEntry(good, (), {}, (), 1.0)  # keys are blake3
    with pytest.raises(InvalidDigestError):
        LayerRef(key("x"), good, 1)  # layers are sha256
    with pytest.raises(ValueError):
        LayerRef(good, good, -1)
    with pytest.raises(TypeError):
        ActionEntry(key("a"), (good,), {}, (), 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ActionEntry(key("a"), (), {}, (("only-a-name",),), 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ActionEntry(key("a"), (), {}, (), float("nan"))


def test_corrupt_blob_makes_its_entry_a_miss_and_spares_the_others(
    store: LocalStore, root: Path
) -> None:
    a = entry_for(store, "a", b"A" * 3000)
    b = entry_for(store, "b", b"B" * 3000, b"shared")
    c = entry_for(store, "c", b"C" * 3000, b"shared")
    flip_byte(blob_file(root, a.layers[0].digest), 7)
    assert store.get_action(a.key) is None
    assert store.stats()["integrity_failures"] == 1 and store.stats()["misses"] == 1
    assert store.usage().quarantined == 1
    assert store.get_action(b.key) == b and store.get_action(c.key) == c
    # the step reruns, stores its layer again, and the entry answers again
    store.put_blob_bytes(b"A" * 3000)
    assert store.get_action(a.key) == a


def test_truncated_blob_makes_its_entry_a_miss(store: LocalStore, root: Path) -> None:
    a = entry_for(store, "a", b"A" * 3000)
    path = blob_file(root, a.layers[0].digest)
    path.write_bytes(path.read_bytes()[:100])
    assert store.get_action(a.key) is None
    assert not path.exists() and store.usage().quarantined == 1


def test_entry_pointing_at_a_missing_blob_is_a_miss(store: LocalStore, root: Path) -> None:
    a = entry_for(store, "a", b"A" * 3000)
    b = entry_for(store, "b", b"B" * 3000)
    blob_file(root, a.layers[0].digest).unlink()
    assert store.get_action(a.key) is None
    assert store.has_action(a.key)  # a missing blob is not a reason to destroy the entry
    assert store.stats()["integrity_failures"] == 0
    assert store.get_action(b.key) == b


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_bytes(b"\xc1\xc1 not msgpack"), id="garbage"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:-20]), id="truncated"),
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: flip_byte(p, len(p.read_bytes()) - 30), id="bit-flip-in-body"),
        pytest.param(
            lambda p: p.write_bytes(msgpack.packb({"format": "memobuild.envelope.v1"})),
            id="envelope-without-body",
        ),
        pytest.param(
            lambda p: p.write_bytes(msgpack.packb([1, 2, 3])), id="valid-msgpack-wrong-shape"
        ),
    ],
)
def test_malformed_entry_is_a_miss_and_quarantined(store: LocalStore, root: Path, damage) -> None:
    a = entry_for(store, "a", b"A" * 3000)
    b = entry_for(store, "b", b"B" * 3000)
    path = action_file(root, a.key)
    damage(path)
    assert store.get_action(a.key) is None
    assert not path.exists() and not store.has_action(a.key)
    assert store.usage().quarantined == 1 and store.usage().actions == 1
    assert store.stats()["integrity_failures"] == 1
    assert store.get_action(b.key) == b
    assert store.read_blob(a.layers[0].digest) == b"A" * 3000  # its blob is not touched


def test_entry_filed_under_another_key_is_refused(store: LocalStore, root: Path) -> None:
    a = entry_for(store, "a", b"A")
    impostor = action_file(root, key("b"))
    impostor.parent.mkdir(parents=True, exist_ok=True)
    impostor.write_bytes(action_file(root, a.key).read_bytes())
    assert store.get_action(key("b")) is None
    assert not impostor.exists()
    assert store.get_action(a.key) == a


def test_entry_checksum_and_field_validation() -> None:
    entry = ActionEntry(key("a"), (LayerRef(sha(b"x"), sha(b"y"), 1),), {"Cmd": ["sh"]}, (), 2.0)
    data = encode_action(entry)
    assert decode_action(data, "mem", entry.key) == entry
    outer = msgpack.unpackb(data)
    body = msgpack.unpackb(outer["body"])
    body["layers"][0]["digest"] = "sha256:../../etc"
    forged_body = msgpack.packb(body)
    # a forged body with a matching checksum still fails field validation
    outer.update(body=forged_body, blake3="blake3:" + blake3.blake3(forged_body).hexdigest())
    with pytest.raises(CorruptEntryError, match="mem: corrupt cache entry"):
        decode_action(msgpack.packb(outer), "mem")
    # the same body under the old checksum fails the checksum
    outer["blake3"] = msgpack.unpackb(data)["blake3"]
    with pytest.raises(CorruptEntryError, match="checksum mismatch"):
        decode_action(msgpack.packb(outer), "mem")


def test_entry_from_a_newer_memobuild_is_a_miss_but_kept(store: LocalStore, root: Path) -> None:
    k = key("future")
    path = action_file(root, k)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgpack.packb({"format": "memobuild.envelope.v9", "body": b""}))
    assert store.get_action(k) is None
    assert path.exists() and store.usage().quarantined == 0


def test_oversized_entry_file_is_refused_without_reading_it_all(
    store: LocalStore, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("memobuild.cache.store.MAX_ENTRY_BYTES", 4096)
    monkeypatch.setattr("memobuild.cache.entries.MAX_ENTRY_BYTES", 4096)
    a = entry_for(store, "a", b"A")
    action_file(root, a.key).write_bytes(b"\0" * 100_000)
    assert store.get_action(a.key) is None
    assert not store.has_action(a.key) and store.usage().quarantined == 1


# --- records ------------------------------------------------------------------------------------


def test_records(store: LocalStore, root: Path) -> None:
    plan = {"steps": [{"key": key("a"), "line": 3}], "target": "final"}
    store.put_record("plan", "/src/Dockerfile#final", plan)
    assert store.get_record("plan", "/src/Dockerfile#final") == plan
    assert store.get_record("plan", "/src/Dockerfile#other") is None
    store.put_record("plan", "/src/Dockerfile#final", {"replaced": True})
    assert store.get_record("plan", "/src/Dockerfile#final") == {"replaced": True}
    (path,) = files_under(root / "records")
    flip_byte(path, len(path.read_bytes()) - 3)
    assert store.get_record("plan", "/src/Dockerfile#final") is None
    assert store.usage().quarantined == 1
    for bad_kind in ("../x", "", "Plan", "a/b"):
        with pytest.raises(InputError):
            store.put_record(bad_kind, "n", 1)
    with pytest.raises(InputError, match="msgpack"):
        store.put_record("plan", "n", {1, 2})


# --- housekeeping -------------------------------------------------------------------------------


def test_permissions(store: LocalStore, root: Path) -> None:
    entry_for(store, "a", b"A" * 100)
    store.put_record("plan", "p", [1])
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in root.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_gc_evicts_least_recently_used_first(store: LocalStore) -> None:
    a = entry_for(store, "a", b"A" * 1000)
    time.sleep(0.02)
    b = entry_for(store, "b", b"B" * 1000)
    time.sleep(0.02)
    c = entry_for(store, "c", b"C" * 1000)
    time.sleep(0.02)
    assert store.get_action(a.key) == a  # a is now the most recently used
    per_entry = store.usage().bytes // 3
    report = store.gc(store.usage().bytes - 1, min_age=0)
    assert report.removed_actions == 1 and report.removed_blobs == 1 and report.reached
    assert not store.has_action(b.key) and not store.has_blob(b.layers[0].digest)
    assert store.get_action(c.key) == c
    time.sleep(0.02)
    assert store.get_action(a.key) == a  # a is again the most recently used
    report = store.gc(per_entry + 10, min_age=0)
    assert report.reached and store.usage().bytes <= per_entry + 10
    assert not store.has_action(c.key) and store.has_action(a.key)
    assert store.stats()["evicted_actions"] == 2 and store.stats()["evicted_blobs"] == 2


def test_gc_keeps_blobs_a_surviving_entry_references(store: LocalStore) -> None:
    old = entry_for(store, "old", b"shared base" * 100, b"old only" * 100)
    time.sleep(0.02)
    new = entry_for(store, "new", b"shared base" * 100)
    report = store.gc(store.usage().bytes - 1, min_age=0)
    assert report.removed_actions == 1 and report.removed_blobs == 1
    assert not store.has_action(old.key) and not store.has_blob(old.layers[1].digest)
    assert store.get_action(new.key) == new


def test_gc_evicts_an_old_unreferenced_blob_before_newer_entries(store: LocalStore) -> None:
    loose = store.put_blob_bytes(b"config blob" * 50)
    time.sleep(0.02)
    a = entry_for(store, "a", b"A" * 1000)
    store.gc(store.usage().bytes - 1, min_age=0)
    assert not store.has_blob(loose) and store.get_action(a.key) == a


def test_gc_spares_what_was_used_recently(store: LocalStore) -> None:
    a = entry_for(store, "a", b"A" * 1000)
    before = store.usage().bytes
    report = store.gc(0)  # default min_age: everything here was used just now
    assert report.removed_actions == 0 and not report.reached
    assert report.remaining_bytes == before and store.get_action(a.key) == a
    report = store.gc(0, min_age=0)
    assert report.reached and report.remaining_bytes == 0
    assert store.usage().blobs == 0 and store.usage().actions == 0
    assert files_under(store.root / "blobs") == [] and files_under(store.root / "actions") == []
    with pytest.raises(InputError):
        store.gc(-1)


def test_prune(store: LocalStore, root: Path) -> None:
    kept = entry_for(store, "kept", b"K" * 500)
    orphaned = entry_for(store, "orphaned", b"O" * 500)
    loose = store.put_blob_bytes(b"no entry references me")
    blob_file(root, orphaned.layers[0].digest).unlink()  # by hand, behind the store's back
    (root / "quarantine" / "blob-old").write_bytes(b"junk")
    stale = root / "tmp" / "blob-crashed"
    stale.write_bytes(b"half a layer")
    with TempFile(root / "tmp", "blob-") as live:  # a writer that is still at work
        live.write(b"in progress")
        report = store.prune()  # default min_age keeps the fresh loose blob
        assert live.path.exists()
    assert report.removed_quarantined == 1 and report.removed_temp == 1
    assert report.removed_actions == 1 and report.removed_blobs == 0
    assert not stale.exists() and not store.has_action(orphaned.key) and store.has_blob(loose)
    report = store.prune(min_age=0)
    assert report.removed_blobs == 1 and not store.has_blob(loose)
    assert store.get_action(kept.key) == kept
    assert store.usage().quarantined == 0


# --- pins ---------------------------------------------------------------------------------------


def test_pinned_blobs_survive_gc_and_prune_until_unpinned(store: LocalStore) -> None:
    a = store.put_blob_bytes(b"A" * 500)
    b = store.put_blob_bytes(b"B" * 500)
    loose = store.put_blob_bytes(b"L" * 500)
    entry = entry_for(store, "e", b"E" * 500)
    store.pin("image:x", [a, b, a])
    assert store.pins() == {"image:x": (a, b)}
    report = store.gc(1, min_age=0)  # far below what the pins hold
    assert report.removed_actions == 1 and report.removed_blobs == 2  # loose, entry's layer
    assert not report.reached and report.remaining_bytes == 1000
    assert store.has_blob(a) and store.has_blob(b) and not store.has_blob(loose)
    assert not store.has_action(entry.key)
    assert store.prune(min_age=0).removed_blobs == 0
    assert store.read_blob(a) == b"A" * 500
    store.pin("image:x", [b])  # replaces the set: a is no longer pinned
    assert store.prune(min_age=0).removed_blobs == 1 and not store.has_blob(a)
    assert store.unpin("image:x") is True and store.unpin("image:x") is False
    assert store.pins() == {}
    assert store.prune(min_age=0).removed_blobs == 1 and not store.has_blob(b)


def test_pinning_a_missing_blob_fails_and_changes_nothing(store: LocalStore) -> None:
    a = store.put_blob_bytes(b"present")
    store.pin("p", [a])
    missing = sha(b"not stored")
    with pytest.raises(CacheCoherencyError, match=missing):
        store.pin("p", [a, missing])
    assert store.pins() == {"p": (a,)}
    with pytest.raises(InvalidDigestError):
        store.pin("p", ["sha256:nope"])
    with pytest.raises(InputError):
        store.pin("p", a)


def test_pins_survive_reopening_and_a_lost_index(root: Path) -> None:
    with LocalStore(root) as store:
        a = store.put_blob_bytes(b"kept across runs")
        store.pin("image:y", [a])
    (root / "index.sqlite").unlink()
    with LocalStore(root) as store:
        assert store.pins() == {"image:y": (a,)}
        store.gc(0, min_age=0)
        store.prune(min_age=0)
        assert store.has_blob(a)


def test_an_unreadable_pin_stops_every_blob_removal(store: LocalStore, root: Path) -> None:
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    a = store.put_blob_bytes(b"pinned by a damaged record")
    loose = store.put_blob_bytes(b"unpinned")
    store.pin("damaged", [a])
    (path,) = files_under(root / "records" / "pin")
    flip_byte(path, len(path.read_bytes()) - 3)
    assert store.pins() == {}
    assert store.gc(0, min_age=0).removed_blobs == 0
    assert store.prune(min_age=0).removed_blobs == 0
    assert store.has_blob(a) and store.has_blob(loose) and path.exists()
    logger.remove(sink)
    assert "unreadable pin record" in warnings[0] and "removing no blobs" in "".join(warnings)
    assert store.unpin("damaged") is True
    assert store.prune(min_age=0).removed_blobs == 2


def test_prune_verify_quarantines_corrupt_blobs(store: LocalStore, root: Path) -> None:
    a = entry_for(store, "a", b"A" * 500)
    b = entry_for(store, "b", b"B" * 500)
    flip_byte(blob_file(root, a.layers[0].digest))
    report = store.prune(verify=True)
    assert report.quarantined == 1 and report.removed_actions == 1
    assert store.usage().quarantined == 1  # kept until the next prune
    assert not store.has_action(a.key) and store.get_action(b.key) == b


def test_prune_indexes_files_the_index_does_not_know(store: LocalStore, root: Path) -> None:
    data = b"copied in by hand"
    path = blob_file(root, sha(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    (root / "blobs" / "sha256" / "zz").mkdir()
    (root / "blobs" / "sha256" / "zz" / "README").write_text("not a blob")  # left alone
    assert store.usage().blobs == 0
    store.prune(min_age=3600)
    assert store.usage().blobs == 1 and store.read_blob(sha(data)) == data
    assert (root / "blobs" / "sha256" / "zz" / "README").exists()


def test_corrupt_index_is_rebuilt_from_the_files(root: Path) -> None:
    with LocalStore(root) as s:
        a = entry_for(s, "a", b"A" * 100, b"shared")
        b = entry_for(s, "b", b"B" * 100, b"shared")
        usage = s.usage()
    for suffix in ("-wal", "-shm"):
        Path(f"{root / 'index.sqlite'}{suffix}").unlink(missing_ok=True)
    (root / "index.sqlite").write_bytes(os.urandom(4096))
    with LocalStore(root) as s:
        assert s.usage().blobs == usage.blobs and s.usage().actions == usage.actions
        assert s.usage().bytes == usage.bytes
        assert any(p.name.startswith("index-") for p in (root / "quarantine").iterdir())
        assert s.get_action(a.key) == a and s.get_action(b.key) == b
        s.gc(0, min_age=0)
        assert files_under(root / "blobs") == []


def test_lost_index_is_rebuilt(root: Path) -> None:
    with LocalStore(root) as s:
        a = entry_for(s, "a", b"A" * 100)
    for p in root.glob("index.sqlite*"):
        p.unlink()
    with LocalStore(root) as s:
        assert s.usage().actions == 1 and s.list_actions()[0].key == a.key
        assert s.get_action(a.key) == a


def test_errors_are_memobuild_errors() -> None:
    assert issubclass(BlobNotFoundError, StorageError)
    assert issubclass(CorruptEntryError, MemoBuildError)
    assert not CASIntegrityError("a", "b", 0).retryable


# --- locks and crashed writers ------------------------------------------------------------------


def test_waiting_exclusive_lock_is_not_overtaken_by_new_shared_holders(tmp_path: Path) -> None:
    lock = StoreLock(tmp_path / "lock")
    order: list[str] = []
    holding = threading.Event()

    def reader_then_hold() -> None:
        with lock.shared():
            holding.set()
            time.sleep(0.3)
        order.append("first reader done")

    def writer() -> None:
        with lock.exclusive():
            order.append("writer")
            time.sleep(0.1)

    def late_reader() -> None:
        with lock.shared():
            order.append("late reader")

    first = threading.Thread(target=reader_then_hold)
    first.start()
    holding.wait()
    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.1)  # the writer is now waiting for the first reader
    late = threading.Thread(target=late_reader)
    late.start()
    for t in (first, w, late):
        t.join(10)
    assert order == ["first reader done", "writer", "late reader"]


def test_lock_wait_is_bounded(tmp_path: Path) -> None:
    holder = StoreLock(tmp_path / "lock")
    waiter = StoreLock(tmp_path / "lock", timeout=0.2)
    with holder.exclusive():
        started = time.monotonic()
        with (
            pytest.raises(StorageError, match="timed out after 0s waiting for the cache lock"),
            waiter.shared(),
        ):
            pass
        assert time.monotonic() - started < 5


_SLOW_WRITER = """
import sys
from memobuild.cache import LocalStore
LocalStore(sys.argv[1]).put_blob_file(sys.argv[2])
"""


def test_writer_killed_mid_put_leaves_no_blob(root: Path, tmp_path: Path) -> None:
    """A build killed while streaming a layer in: nothing half-written is ever a blob, and the
    temp file is kept while the writer lives and removed by prune once it is dead."""
    LocalStore(root).close()
    fifo = tmp_path / "layer.fifo"
    os.mkfifo(fifo)
    child = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(root), str(fifo)])
    try:
        with open(fifo, "wb") as pipe:
            pipe.write(os.urandom(3 << 20))  # more than one copy chunk, less than a layer
            pipe.flush()
            deadline = time.time() + 30
            while time.time() < deadline:
                temps = files_under(root / "tmp")
                if temps and temps[0].stat().st_size > 0:
                    break
                time.sleep(0.01)
            (temp,) = files_under(root / "tmp")
            with LocalStore(root) as store:
                assert store.prune(min_age=0).removed_temp == 0  # its writer is alive
            assert temp.exists()
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with LocalStore(root) as store:
        assert files_under(root / "blobs") == [] and store.usage().blobs == 0
        assert store.prune(min_age=0).removed_temp == 1
    assert files_under(root / "tmp") == []


# --- several processes on one cache dir ----------------------------------------------------------

SHARED = [f"shared layer {i} ".encode() * (200 + 50 * i) for i in range(6)]


def _wait_for(path: str) -> None:
    deadline = time.time() + 120
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.005)


def _worker(root: str, seed: int, rounds: int, ready: str) -> dict[str, int]:
    """One 'build': puts and reads shared and private blobs and entries in a random order."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, not a secret
    counts = dict.fromkeys(["hit", "miss", "put", "coherency", "not_found", "corrupt"], 0)
    _wait_for(ready)  # start only once gc is running, so the two overlap
    with LocalStore(root) as store:
        for i in range(rounds):
            op = rng.random()
            try:
                if op < 0.3:
                    payload = rng.choice(SHARED) if rng.random() < 0.5 else os.urandom(2000)
                    name = f"{seed}-{i}" if rng.random() < 0.5 else f"common-{rng.randrange(8)}"
                    digest = store.put_blob_bytes(payload)
                    entry = ActionEntry(
                        key(name), (LayerRef(digest, digest, len(payload)),), {}, (), time.time()
                    )
                    store.put_action(entry)
                    counts["put"] += 1
                elif op < 0.7:
                    found = store.get_action(key(f"common-{rng.randrange(8)}"))
                    if found is not None:
                        # a hit is a promise: its layers are there and whole
                        for layer in found.layers:
                            try:
                                data = store.read_blob(layer.digest)
                                assert sha(data) == layer.digest
                            except BlobNotFoundError:
                                counts["not_found"] += 1  # gc evicted it since the lookup
                    counts["hit" if found is not None else "miss"] += 1
                else:
                    payload = rng.choice(SHARED)
                    digest = store.put_blob_bytes(payload, sha(payload))
                    try:
                        assert store.read_blob(digest) == payload
                    except BlobNotFoundError:
                        counts["not_found"] += 1
            except CacheCoherencyError:
                counts["coherency"] += 1  # gc removed the blob between put_blob and put_action
            except CASIntegrityError:
                counts["corrupt"] += 1
    return counts


def _collector(root: str, ready: str, done: str) -> tuple[int, int]:
    """Runs gc with a small limit (and a prune now and then) until the builds are done.
    Returns (rounds, items evicted)."""
    started, rounds, evicted = time.time(), 0, 0
    with LocalStore(root) as store:
        while not os.path.exists(done) and time.time() < started + 120:
            report = store.prune(min_age=0) if rounds % 10 == 9 else store.gc(20_000, min_age=0)
            evicted += report.removed_actions + report.removed_blobs
            rounds += 1
            Path(ready).touch()
            time.sleep(0.002)
    return rounds, evicted


def test_processes_share_one_cache_dir(root: Path) -> None:
    LocalStore(root).close()
    ctx = multiprocessing.get_context("spawn")
    ready, done = root.parent / "gc-running", root.parent / "builds-done"
    with ProcessPoolExecutor(max_workers=5, mp_context=ctx) as pool:
        collector = pool.submit(_collector, str(root), str(ready), str(done))
        builds = [pool.submit(_worker, str(root), seed, 300, str(ready)) for seed in range(4)]
        try:
            results = [f.result(timeout=300) for f in builds]
        finally:
            done.touch()
        gc_rounds, evicted = collector.result(timeout=300)
    assert sum(r["put"] for r in results) > 0 and sum(r["hit"] for r in results) > 0
    # the builds started only after gc's first round, and gc stopped only after they finished
    assert gc_rounds >= 2 and evicted > 0, "gc did not run alongside the builds"
    assert all(r["corrupt"] == 0 for r in results), results

    with LocalStore(root) as store:
        index = store._index
        blobs_on_disk = {
            "sha256:" + p.name: p.stat().st_size for p in (root / "blobs" / "sha256").glob("*/*")
        }
        actions_on_disk = {"blake3:" + p.name: p for p in (root / "actions").glob("*/*")}
        # the index agrees with the disk, row for row, size for size
        assert {d: r.size for d, r in index.blobs().items()} == blobs_on_disk
        assert {k: r.size for k, r in index.actions().items()} == {
            k: p.stat().st_size for k, p in actions_on_disk.items()
        }
        refs = index.refs()
        for k, path in actions_on_disk.items():
            entry = decode_action(path.read_bytes(), path, k)
            assert refs.get(k, set()) == {layer.digest for layer in entry.layers}
            for layer in entry.layers:  # every surviving entry's blobs survived with it
                assert blobs_on_disk.get(layer.digest) == layer.size
        for digest in blobs_on_disk:  # every surviving blob is whole
            verify_file(blob_file(root, digest), digest)
        assert files_under(root / "tmp") == [] and files_under(root / "quarantine") == []
        assert store.stats()["integrity_failures"] == 0
        # and a full reconcile finds nothing to fix
        before = (index.blobs(), index.actions(), index.refs())
        store.reconcile()
        assert (index.blobs(), index.actions(), index.refs()) == before
