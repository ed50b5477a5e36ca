"""The Python API, `memobuild.build(...)`, as a script would use it: real builds, real outputs.

The base image is saved in the store at ``$MEMOBUILD_CACHE_DIR`` (every test has its own), which
is where ``memobuild.build`` looks, as it would on a user's machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import memobuild
from busybox_image import BusyboxImage, make_context
from memobuild.build.events import (
    BuildEvent,
    BuildFailed,
    BuildFinished,
    BuildStarted,
    LayerBuilt,
    OutputWritten,
    StepStarted,
)
from memobuild.build.metrics import MetricsLog
from memobuild.cache.store import LocalStore
from memobuild.cli import main
from memobuild.errors import InputError
from memobuild.images import ImageStore

DOCKERFILE = """\
FROM busybox AS deps
ARG FLAVOUR=plain
RUN echo "$FLAVOUR" > /flavour.txt

FROM busybox
WORKDIR /app
COPY --from=deps /flavour.txt ./
COPY main.txt .
RUN cat main.txt flavour.txt > built.txt
CMD ["cat", "/app/built.txt"]
"""


def test_import_memobuild_loads_no_build_module_until_one_is_used() -> None:
    script = (
        "import sys, memobuild\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('memobuild.build.'))\n"
        "assert loaded == [], loaded\n"
        "from memobuild.build.events import StepStarted\n"
        "import memobuild.build.executor\n"
        "assert callable(memobuild.build), memobuild.build\n"
        "assert memobuild.StepStarted is StepStarted\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


def test_the_api_types_are_the_executors() -> None:
    from memobuild.build import events, executor, metrics, outputs

    assert memobuild.BuildResult is executor.BuildResult
    assert memobuild.StepRecord is executor.StepRecord
    assert memobuild.BuildMetrics is metrics.BuildMetrics
    assert memobuild.OutputSpec is outputs.OutputSpec
    assert memobuild.OutputResult is outputs.OutputResult
    for name in ("BuildStarted", "StepStarted", "StepCached", "OutputWritten", "BuildFinished"):
        assert getattr(memobuild, name) is getattr(events, name)
        assert name in memobuild.__all__
    with pytest.raises(AttributeError):
        _ = memobuild.NoSuchThing  # type: ignore[attr-defined]


def test_build_tags_exports_and_reports_every_event(
    tmp_path: Path, store: LocalStore, base: BusyboxImage
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"main.txt": "main\n"})
    events: list[BuildEvent] = []
    result = memobuild.build(
        context,
        tag="app:1",
        outputs=[f"type=oci,dest={tmp_path / 'app-oci.tar'}", f"type=local,dest={tmp_path / 'fs'}"],
        on_event=events.append,
    )
    assert isinstance(result, memobuild.BuildResult)
    assert result.tags == ("app:1",)
    assert ImageStore(store).resolve_digest("app:1") == result.digest == result.manifest_digest

    oci, local = result.outputs
    assert (oci.type, oci.dest, oci.digest) == ("oci", str(tmp_path / "app-oci.tar"), result.digest)
    assert oci.bytes == (tmp_path / "app-oci.tar").stat().st_size
    with tarfile.open(tmp_path / "app-oci.tar") as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert index["manifests"][0]["digest"] == result.digest
    assert (local.type, local.digest) == ("local", None)
    assert (tmp_path / "fs" / "app" / "built.txt").read_text() == "main\nplain\n"

    assert isinstance(events[0], BuildStarted)
    assert isinstance(events[-1], BuildFinished)
    written = [e for e in events if isinstance(e, OutputWritten)]
    assert [(e.type, e.dest, e.digest, e.bytes) for e in written] == [
        (o.type, o.dest, o.digest, o.bytes) for o in result.outputs
    ]
    assert events.index(written[-1]) == len(events) - 2  # exported once the image is made
    layers = sum(e.size for e in events if isinstance(e, LayerBuilt))
    assert result.metrics.bytes_written == layers + oci.bytes + local.bytes
    assert events[-1].bytes_written == result.metrics.bytes_written
    # Every step that ran says why; the first build has nothing to compare with.
    started = [e for e in events if isinstance(e, StepStarted)]
    assert {e.reason for e in started} == {
        "no recorded build of Dockerfile@stage-1 to compare with"
    }
    assert {s.reason for s in result.steps if s.status == "executed"} == {started[0].reason}

    # Several names, a build arg, a target, one output given as a bare directory.
    again = memobuild.build(
        context,
        tag=["app:2", "app:latest"],
        build_args={"FLAVOUR": "spicy"},
        target="deps",
        outputs=str(tmp_path / "deps-fs"),
    )
    assert again.tags == ("app:2", "app:latest")
    assert ImageStore(store).resolve_digest("app:latest") == again.digest
    assert again.plan.target == "deps"
    assert (tmp_path / "deps-fs" / "flavour.txt").read_text() == "spicy\n"
    (run,) = [s for s in again.steps if s.status == "executed" and s.text.startswith("RUN")]
    # Plans are recorded per Dockerfile and target: deps has no earlier build to compare with.
    assert run.reason == "no recorded build of Dockerfile@deps to compare with"

    assert [r.image for r in MetricsLog().read()] == [result.digest, again.digest]


def test_a_bad_output_fails_before_anything_runs(
    tmp_path: Path,
    store: LocalStore,
    base: BusyboxImage,
    capsys: pytest.CaptureFixture[str],
) -> None:
    context = make_context(tmp_path / "ctx", DOCKERFILE, {"main.txt": "main\n"})
    events: list[BuildEvent] = []
    with pytest.raises(InputError, match="unknown type 'zip'"):
        memobuild.build(context, outputs=["type=zip,dest=out.zip"], on_event=events.append)
    assert len(events) == 1 and isinstance(events[0], BuildFailed)
    assert store.list_actions() == []
    assert MetricsLog().read() == []

    assert main(["build", str(context), "--output", "type=local"]) == 2
    assert "dest= is required" in capsys.readouterr().err
    assert store.list_actions() == []
