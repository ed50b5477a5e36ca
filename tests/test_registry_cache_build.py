"""Real builds sharing a registry as their cache (``--cache-to/--cache-from type=registry``).

Against a real docker-registry (CNCF distribution 2.8) on 127.0.0.1 (tests/registry_fixture.py),
with real RUN steps on the busybox base image. Each "runner" is a CI machine: a cache dir of its
own with the base image in it, and nothing in common with the other runners but the registry.
The registry's access log says what each runner asked for.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from build_runner import Runner, of, statuses, warnings_in
from busybox_image import image_tree, make_context
from flaky_proxy import Faults, FlakyProxy
from memobuild.build import events as ev
from memobuild.build.executor import BuildResult
from memobuild.cache.registry_cache import ANNOTATION_KEY, ARTIFACT_TYPE
from memobuild.oci.push import push
from memobuild.oci.reference import parse_reference
from memobuild.oci.registry import RegistryClient, RegistryOptions
from registry_fixture import Registry, clear_registry_environment

# Two stages: "tools" makes a file the final stage copies. Both RUNs write random bytes, so a
# runner that ran a step instead of reusing the cached one would make a different image: equal
# digests prove the reuse.
DOCKERFILE = """\
FROM busybox AS tools
RUN head -c 100000 /dev/urandom > /tool.bin
FROM busybox
WORKDIR /app
COPY . .
RUN echo "built from $(cat hello.txt)" > out.txt && head -c 200000 /dev/urandom > noise.bin
COPY --from=tools /tool.bin /app/tool.bin
RUN cat out.txt > copy.txt
CMD ["cat", "/app/out.txt"]
"""
STEPS = 9
KEYS = 8  # both FROM busybox steps have one key: the second is a local hit of the first
TOOLS_STEPS = 2  # FROM busybox AS tools, RUN: the stage the image is not built FROM
FROM_AGAIN = 3  # the final stage's FROM busybox
NOISE_STEP = 6  # the RUN that writes noise.bin


@pytest.fixture
def context(tmp_path: Path) -> Path:
    return make_context(tmp_path / "ctx", DOCKERFILE, {"hello.txt": "hi"})


@pytest.fixture(autouse=True)
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials or remote from the developer's environment; retries with short waits."""
    clear_registry_environment(
        tmp_path, monkeypatch, also=("MEMOBUILD_REMOTE_URL", "MEMOBUILD_REMOTE_TOKEN")
    )
    monkeypatch.setenv("MEMOBUILD_RETRY_INITIAL", "0.01")
    monkeypatch.setenv("MEMOBUILD_RETRY_CAP", "0.1")


def cache_manifest(host: str, ref: str) -> dict[str, Any]:
    with RegistryClient(RegistryOptions(insecure=frozenset({host}))) as client:
        doc = json.loads(client.manifest(parse_reference(ref)).data)
    assert isinstance(doc, dict)
    return doc


def listed_keys(manifest: dict[str, Any]) -> set[str]:
    return {
        d["annotations"][ANNOTATION_KEY]
        for d in manifest["layers"]
        if ANNOTATION_KEY in d.get("annotations", {})
    }


def blob_gets(registry: Registry, since: int, repository: str) -> list[str]:
    """The digests of the blobs GET from ``repository`` since request ``since``."""
    prefix = f"/v2/{repository}/blobs/"
    return [
        r.path[len(prefix) :]
        for r in registry.requests()[since:]
        if r.method == "GET" and r.path.startswith(prefix)
    ]


def layers_of(result: BuildResult, steps: range | None = None) -> set[str]:
    chosen = result.steps if steps is None else [s for s in result.steps if s.step in steps]
    return {layer.digest for step in chosen for layer in step.layers}


# --- two runners, one registry ---------------------------------------------------------------


def test_the_second_runner_executes_nothing_and_downloads_only_the_layers_it_needs(
    registry: Registry,
    new_runner: Callable[[], Runner],
    context: Path,
    tmp_path: Path,
    logs: list[tuple[str, str]],
) -> None:
    host = registry.host
    ref = f"{host}/cache/app:main"
    spec = f"type=registry,ref={ref}"
    first = new_runner()
    built, events = first.build(context, cache_to=spec, insecure_registries=[host])
    assert (built.executed, built.local_hits) == (KEYS, 1)
    assert built.uploads == KEYS  # mode=max (the default): every step, config-only ones too
    done = events[-1]
    assert isinstance(done, ev.BuildFinished) and done.remote_cache and done.uploads == KEYS
    manifest = cache_manifest(host, ref)
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert listed_keys(manifest) == {step.key for step in built.steps}
    entry_blobs = {d["digest"] for d in manifest["layers"] if "annotations" in d}

    second = new_runner()
    before = len(registry.requests())
    again, events = second.build(context, cache_from=spec, insecure_registries=[host])
    assert again.executed == 0
    expected = [("cached", "remote")] * STEPS
    expected[FROM_AGAIN - 1] = ("cached", "local")  # the first FROM brought its entry
    assert statuses(again) == expected
    assert again.digest == built.digest
    assert (again.remote_hits, again.local_hits, again.uploads) == (KEYS, 1, 0)
    # One manifest read; then each hit's entry and the layers of the hits, nothing else.
    manifests = [r for r in registry.requests()[before:] if "/manifests/" in r.path]
    assert [(r.method, r.path) for r in manifests] == [("GET", "/v2/cache/app/manifests/main")]
    fetched = blob_gets(registry, before, "cache/app")
    assert set(fetched) == layers_of(built) | entry_blobs
    assert len(fetched) == len(set(fetched))  # each once
    downloads = {e.digest for e in of(events, ev.RemoteSync) if e.kind == "blob"}
    assert downloads == layers_of(built)
    tree = image_tree(second.store, again.image, second.root / "tree")
    assert (tree / "app" / "out.txt").read_text() == "built from hi\n"
    assert (tree / "app" / "tool.bin").stat().st_size == 100_000

    # A runner whose context changed: the steps before COPY . . hit, the rest run. It
    # downloads the layers of its hits (the tools stage's, which COPY --from unpacks) and
    # never those of the steps it runs again (the noise layer).
    changed = make_context(tmp_path / "changed", DOCKERFILE, {"hello.txt": "changed"})
    third = new_runner()
    before = len(registry.requests())
    partial, _ = third.build(changed, cache_from=spec, insecure_registries=[host])
    assert statuses(partial) == [
        ("cached", "remote"),
        ("cached", "remote"),
        ("cached", "local"),
        ("cached", "remote"),
        ("executed", None),
        ("executed", None),
        ("executed", None),
        ("executed", None),
        ("executed", None),
    ]
    fetched = blob_gets(registry, before, "cache/app")
    assert layers_of(built, range(1, TOOLS_STEPS + 1)) <= set(fetched)
    assert not layers_of(built, range(5, STEPS + 1)) & set(fetched)
    mine = image_tree(third.store, partial.image, third.root / "tree")
    assert (mine / "app" / "tool.bin").read_bytes() == (tree / "app" / "tool.bin").read_bytes()
    assert (mine / "app" / "out.txt").read_text() == "built from changed\n"
    assert warnings_in(logs) == []


def test_mode_min_exports_only_the_steps_of_the_image_and_max_all(
    registry: Registry, new_runner: Callable[[], Runner], context: Path
) -> None:
    host = registry.host
    first = new_runner()
    insecure = [host]
    built, _ = first.build(
        context,
        cache_to=f"type=registry,ref={host}/cache/min:1,mode=min",
        insecure_registries=insecure,
    )
    final_stage = {s.key for s in built.steps if s.step > TOOLS_STEPS}
    assert built.uploads == len(final_stage) == STEPS - TOOLS_STEPS
    assert listed_keys(cache_manifest(host, f"{host}/cache/min:1")) == final_stage

    # The same steps, now local hits, exported with mode=max: every one.
    exported, _ = first.build(
        context,
        cache_to=f"type=registry,ref={host}/cache/max:1,mode=max",
        insecure_registries=insecure,
    )
    assert exported.executed == 0 and exported.uploads == KEYS
    assert listed_keys(cache_manifest(host, f"{host}/cache/max:1")) == {s.key for s in built.steps}

    # From the min cache, a runner runs the tools stage again and gets the image's steps from
    # the registry: the same image, since every layer of it came from there.
    second = new_runner()
    pulled, _ = second.build(
        context, cache_from=f"type=registry,ref={host}/cache/min:1", insecure_registries=[host]
    )
    # (The tools stage's FROM has the final stage's key, which the min cache holds.)
    expected = [("cached", "remote"), ("executed", None)] + [("cached", "remote")] * (
        STEPS - TOOLS_STEPS
    )
    expected[FROM_AGAIN - 1] = ("cached", "local")
    assert statuses(pulled) == expected
    assert pulled.digest == built.digest


def test_a_registry_that_fails_and_drops_connections_for_a_while_is_survived(
    registry: Registry,
    new_runner: Callable[[], Runner],
    context: Path,
    monkeypatch: pytest.MonkeyPatch,
    logs: list[tuple[str, str]],
) -> None:
    monkeypatch.setenv("MEMOBUILD_RETRY_MAX_ATTEMPTS", "8")
    monkeypatch.setenv("MEMOBUILD_RETRY_CAP", "0.05")
    faults = Faults(drop=0.05, reset=0.05, fail=0.1, busy=0.05, cut=0.05, cut_after=300)
    # The first connections are dealt one fault each; the dice deal the rest.
    script = ["fail", "drop", "fail", "reset", "busy", "cut"]
    with FlakyProxy(("127.0.0.1", registry.port), faults, seed=3, script=script) as proxy:
        host = f"127.0.0.1:{proxy.port}"
        spec = f"type=registry,ref={host}/cache/flaky:1"
        first = new_runner()
        built, _ = first.build(context, cache_to=spec, insecure_registries=[host])
        second = new_runner()
        pulled, _ = second.build(context, cache_from=spec, insecure_registries=[host])
        # From here on the registry is healthy again: what was stored is all there.
        proxy.set_faults(Faults())
        assert listed_keys(cache_manifest(host, f"{host}/cache/flaky:1")) == {
            s.key for s in built.steps
        }
    assert built.uploads == KEYS
    assert pulled.executed == 0 and pulled.digest == built.digest
    stats = [r.cache_stats for r in (built, pulled)]
    assert all(s is not None and s.remote_failures == 0 and not s.remote_disabled for s in stats)
    assert sum(s.retries for s in stats if s is not None) > 0
    assert {"fail", "drop", "reset", "busy", "cut"} <= {f for f, n in proxy.fates.items() if n}
    assert warnings_in(logs) == []


def test_a_cache_ref_that_names_an_image_costs_one_warning_and_is_not_overwritten(
    registry: Registry,
    new_runner: Callable[[], Runner],
    context: Path,
    logs: list[tuple[str, str]],
) -> None:
    host = registry.host
    ref = f"{host}/cache/not-a-cache:1"
    runner = new_runner()
    with RegistryClient(RegistryOptions(insecure=frozenset({host}))) as client:
        image_digest = push(runner.base.image, runner.store, ref, client=client)
    spec = f"type=registry,ref={ref}"
    result, events = runner.build(
        context, cache_from=spec, cache_to=spec, insecure_registries=[host]
    )
    assert result.executed == KEYS and result.uploads == 0
    [warning] = warnings_in(logs)
    assert "not a MemoBuild cache" in warning and "switched off" in warning
    assert len(of(events, ev.RemoteDisabled)) == 1
    assert result.cache_stats is not None and result.cache_stats.remote_disabled
    with RegistryClient(RegistryOptions(insecure=frozenset({host}))) as client:
        assert client.manifest(parse_reference(ref)).digest == image_digest  # untouched


# --- the command line --------------------------------------------------------------------------


def memobuild(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMOBUILD_REMOTE_")}
    return subprocess.run(
        [sys.executable, "-m", "memobuild.cli", *args],
        capture_output=True,
        text=True,
        env={**env, "MEMOBUILD_CACHE_DIR": str(cache)},
        timeout=300,
        check=False,
    )


def test_the_cli_shares_a_registry_cache_and_stats_shows_the_tiers(
    registry: Registry, new_runner: Callable[[], Runner], context: Path
) -> None:
    host = registry.host
    one, two = new_runner(), new_runner()
    for runner in (one, two):
        runner.close()  # the CLI opens the cache dir itself
    ref = f"{host}/cache/cli:main"
    pushed = memobuild(
        one.cache_dir, "build", str(context), "--progress=plain", "--insecure-registry", host,
        "--cache-to", f"type=registry,ref={ref},mode=max",
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    digest = pushed.stdout.strip()
    assert f"cache: 1 local hit, 0 remote hits, {KEYS} uploads (" in pushed.stderr
    assert "WARNING" not in pushed.stderr

    pulled = memobuild(
        two.cache_dir, "build", str(context), "--progress=plain", "--insecure-registry", host,
        "--cache-from", f"type=registry,ref={ref}",
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == digest
    lines = pulled.stderr.splitlines()
    assert f"#{NOISE_STEP} CACHED (remote) [stage-1] RUN echo" in "\n".join(lines)
    assert any(line.startswith(f"cache: 1 local hit, {KEYS} remote hits (") for line in lines)

    stats = memobuild(two.cache_dir, "stats")
    assert stats.returncode == 0, stats.stderr
    out = stats.stdout.splitlines()
    assert f"cache tiers     1 local hit, {KEYS} remote hits" in out
    [remote] = [line for line in out if line.startswith("remote cache    ")]
    assert re.fullmatch(r"remote cache    0 uploads, \S+ \S+ downloaded, 0 B uploaded", remote)
    header = out[out.index("last 1 build:") + 1].split()
    assert header[3:7] == ["STEPS", "CACHED", "REMOTE", "UPLOADS"]
    as_json = json.loads(memobuild(two.cache_dir, "stats", "--json").stdout)
    assert (as_json["remote_hits"], as_json["local_hits"], as_json["uploads"]) == (KEYS, 1, 0)
    assert as_json["bytes_downloaded"] > 300_000 and as_json["bytes_uploaded"] == 0

    for value, message in (
        ("type=registry", "type=registry needs ref="),
        (f"type=registry,ref={ref},mode=all", "mode must be max or min"),
        (f"type=registry,ref={ref}@sha256:{'a' * 64}", "a cache ref is a tag, not a digest"),
    ):
        refused = memobuild(one.cache_dir, "build", str(context), "--cache-to", value)
        assert refused.returncode == 2, refused.stderr
        assert message in refused.stderr.splitlines()[-1]
