"""``RUN --mount=type=secret`` values never leave the step that mounts them.

One real build through the CLI, with a file secret and an environment secret, debug logging,
``--events`` and every kind of output; then every byte MemoBuild wrote (the cache dir, the
events file, stdout and stderr of the build and of the commands that read the cache, the
outputs, and what is left in /dev/shm where run files go) is searched for each secret, plain,
hex and base64, inside tars and compressed streams too.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import secrets
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import zstandard

from busybox_image import make_busybox_image, make_context
from memobuild.cache.store import LocalStore

SHM = Path("/dev/shm")  # noqa: S108 - only read: where a run's private files go, if anywhere


def encodings(value: bytes) -> dict[str, bytes]:
    """Ways a value could be written that a plain search would miss."""
    out = {"plain": value, "hex": value.hex().encode(), "HEX": value.hex().upper().encode()}
    for shift in range(3):
        # base64 of the value at each alignment, without the characters that depend on the
        # bytes around it
        encoded = base64.b64encode(b"\0" * shift + value)
        core = encoded[(shift * 4 + 2) // 3 + 1 : -4]
        out[f"base64+{shift}"] = core
        out[f"base64url+{shift}"] = core.replace(b"+", b"-").replace(b"/", b"_")
    return out


def expanded(label: str, data: bytes, depth: int = 0) -> Iterator[tuple[str, bytes]]:
    """``data`` and, recursively, what it holds: gzip, zlib and zstd streams, tar members."""
    yield label, data
    if depth > 4:
        return
    inner: bytes | None = None
    if data[:2] == b"\x1f\x8b":
        try:
            inner = gzip.decompress(data)
        except (OSError, EOFError, zlib.error):
            inner = None
    elif data[:4] == b"\x28\xb5\x2f\xfd":
        try:
            inner = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        except zstandard.ZstdError:
            inner = None
    if inner is not None:
        yield from expanded(label + "!unzip", inner, depth + 1)
        return
    if len(data) >= 512 and data[257:262] == b"ustar":
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar.getmembers():
                extracted = tar.extractfile(member) if member.isfile() else None
                content = extracted.read() if extracted is not None else b""
                yield from expanded(f"{label}!{member.name}", content, depth + 1)


def files_under(root: Path) -> Iterator[tuple[str, bytes]]:
    for current, _dirs, names in os.walk(root):
        for name in names:
            path = Path(current, name)
            if path.is_symlink() or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except PermissionError:
                continue
            yield from expanded(str(path), data)


def leaks(haystacks: Iterator[tuple[str, bytes]], needles: dict[str, bytes]) -> list[str]:
    found = []
    for label, data in haystacks:
        for secret_name, value in needles.items():
            for form, needle in encodings(value).items():
                if needle in data:
                    found.append(f"{secret_name} ({form}) in {label}")
    return found


def memobuild(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "memobuild.cli", *args],
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_secrets_reach_the_step_and_nothing_else(tmp_path: Path, isolated_cache: Path) -> None:
    file_secret = ("Fs-" + secrets.token_urlsafe(24)).encode()
    env_secret = ("Es-" + secrets.token_urlsafe(24)).encode()
    needles = {"file secret": file_secret, "env secret": env_secret}
    secret_file = tmp_path / "secret-source" / "token"
    secret_file.parent.mkdir()
    secret_file.write_bytes(file_secret)

    with LocalStore(isolated_cache) as store:
        make_busybox_image(tmp_path / "base", store)
    # Each step proves it saw its secret by writing the secret's hash; a failing step would
    # print its last lines, so none fails.
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox\n"
        "RUN --mount=type=secret,id=token sha256sum /run/secrets/token | cut -c1-64 > /file.sum\n"
        "RUN --mount=type=secret,id=token,target=/etc/app/token,required=true "
        "wc -c < /etc/app/token > /file.len\n"
        "RUN --mount=type=secret,id=envtok,env=TOKEN "
        'printf %s "$TOKEN" | sha256sum | cut -c1-64 > /env.sum\n'
        "RUN echo built\n",
    )
    env = {
        **os.environ,
        "MEMOBUILD_CACHE_DIR": str(isolated_cache),
        "MEMOBUILD_LOG_LEVEL": "DEBUG",
        "BUILD_TOKEN": env_secret.decode(),
    }
    shm_before = set(SHM.iterdir()) if SHM.is_dir() else set()
    out = tmp_path / "out"
    out.mkdir()
    build_args = [
        "build",
        str(context),
        "--secret",
        f"id=token,src={secret_file}",
        "--secret",
        "id=envtok,env=BUILD_TOKEN",
        "--progress=plain",
        "--events",
        str(out / "events.jsonl"),
        "-t",
        "leak-check:1",
        "-o",
        f"type=oci,dest={out / 'image-oci.tar'}",
        "-o",
        f"type=docker,dest={out / 'image-docker.tar'}",
        "-o",
        f"type=local,dest={out / 'rootfs'}",
        "-o",
        f"type=tar,dest={out / 'rootfs.tar'}",
    ]
    first = memobuild("--debug", *build_args, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode(errors="replace")
    rootfs = out / "rootfs"
    assert (rootfs / "file.sum").read_text().strip() == hashlib.sha256(file_secret).hexdigest()
    assert (rootfs / "env.sum").read_text().strip() == hashlib.sha256(env_secret).hexdigest()
    assert int((rootfs / "file.len").read_text()) == len(file_secret)
    assert not (rootfs / "run" / "secrets").exists() and not (rootfs / "etc" / "app").exists()

    # A second, fully cached build with JSON progress, and every command that reads records.
    outputs = [("build stdout", first.stdout), ("build stderr", first.stderr)]
    again = memobuild(*build_args[:-8], "--progress=json", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode(errors="replace")
    assert b'"StepCached"' in again.stdout
    outputs += [("cached build stdout", again.stdout), ("cached build stderr", again.stderr)]
    for command in (
        ["plan", str(context), "--json"],
        ["explain", str(context)],
        ["stats", "--json"],
        ["cache", "ls", "--json"],
        ["cache", "du"],
        ["images"],
    ):
        done = memobuild(*command, env=env, cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr.decode(errors="replace"))
        outputs += [(f"{command[0]} stdout", done.stdout), (f"{command[0]} stderr", done.stderr)]

    written = [
        *files_under(isolated_cache),
        *files_under(out),
        *(item for label, data in outputs for item in expanded(label, data)),
    ]
    shm_after = set(SHM.iterdir()) if SHM.is_dir() else set()
    for leftover in shm_after - shm_before:
        written += list(files_under(leftover)) if leftover.is_dir() else []
    # The searches can find what they look for: the secret file itself is a positive control.
    assert leaks(files_under(secret_file.parent), needles) != []
    assert len(written) > 20  # blobs, entries, records, outputs, logs
    assert leaks(iter(written), needles) == []


def test_the_encodings_find_a_secret_wherever_it_sits() -> None:
    value = b"Zq-7Kx_" + secrets.token_bytes(12)
    for prefix in (b"", b"a", b"ab", b"abc"):
        blob = prefix + value + b"tail"
        for data in (
            blob,
            blob.hex().encode(),
            base64.b64encode(blob),
            base64.urlsafe_b64encode(blob),
        ):
            assert leaks(iter([("x", data)]), {"s": value}), (prefix, data)
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        info = tarfile.TarInfo("etc/leak")
        info.size = len(value)
        tar.addfile(info, io.BytesIO(value))
    found = leaks(expanded("layer", gzip.compress(packed.getvalue())), {"s": value})
    assert "s (plain) in layer!unzip!etc/leak" in found


def test_secrets_never_appear_in_the_process_list(tmp_path: Path, isolated_cache: Path) -> None:
    """Other users on the machine can read every process's command line (/proc/PID/cmdline): a
    secret must not be in the argv of memobuild, bwrap or the step."""
    file_secret = ("Pf-" + secrets.token_urlsafe(24)).encode()
    env_secret = ("Pe-" + secrets.token_urlsafe(24)).encode()
    secret_file = tmp_path / "token"
    secret_file.write_bytes(file_secret)
    with LocalStore(isolated_cache) as store:
        make_busybox_image(tmp_path / "base", store)
    marker = "sleep-" + secrets.token_hex(4)
    context = make_context(
        tmp_path / "ctx",
        "FROM busybox\n"
        f"RUN --mount=type=secret,id=token --mount=type=secret,id=envtok,env=TOKEN "
        f"sh -c 'test -s /run/secrets/token && test -n \"$TOKEN\" && sleep 2 && echo {marker}'\n",
    )
    env = {**os.environ, "MEMOBUILD_CACHE_DIR": str(isolated_cache), "BUILD_TOKEN": "x"}
    env["BUILD_TOKEN"] = env_secret.decode()
    seen: list[bytes] = []
    with subprocess.Popen(
        [sys.executable, "-m", "memobuild.cli", "build", str(context), "--progress=plain",
         "--secret", f"id=token,src={secret_file}", "--secret", "id=envtok,env=BUILD_TOKEN"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    ) as proc:  # fmt: skip
        while proc.poll() is None:
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    seen.append(cmdline.read_bytes())
                except OSError:
                    continue  # the process ended
            time.sleep(0.05)
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode(errors="replace")
    assert marker.encode() in stderr  # the step ran with both secrets
    assert any(b"bwrap" in c for c in seen) and any(b"sleep\x002" in c for c in seen)
    assert leaks(iter([("cmdline", c) for c in seen]), {"f": file_secret, "e": env_secret}) == []
