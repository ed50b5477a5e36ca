"""`memobuild plan` and `memobuild explain`, end to end: real contexts, a real local store."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memobuild import plan
from memobuild.cache.store import ActionEntry, LocalStore
from memobuild.cli import main
from memobuild.plan import explain, record_plan

DOCKERFILE = """\
FROM golang:1.22 AS build
WORKDIR /src
COPY go.mod ./
RUN go mod download
COPY src/ /app
ARG VERSION=1.2
RUN make VERSION=$VERSION

FROM alpine:3.20 AS tools
RUN apk add curl

FROM scratch
COPY --from=build /app/bin /bin
COPY --from=tools /usr/bin/curl /curl
"""

FILES = {"go.mod": "module x\n", "src/main.py": "print(1)\n", "src/lib.py": "X = 1\n"}


def make(root: Path, dockerfile: str = DOCKERFILE, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Dockerfile").write_text(dockerfile)
    for name, text in (FILES if files is None else files).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def store_result(key: str) -> None:
    """What a build will do for a step it ran: store an entry under the step's key."""
    with LocalStore() as store:
        store.put_action(ActionEntry(key, (), {}, (), time.time()))


def table_rows(out: str) -> dict[int, list[str]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[0].isdigit() and parts[1].isdigit():
            rows[int(parts[0])] = parts
    return rows


def test_plan_prints_graph_levels_keys_and_cache_hits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make(tmp_path / "ctx")
    expected = plan(context)
    store_result(expected.nodes[0].key)
    code, out, _ = cli(capsys, "plan", str(context))
    assert code == 0
    assert f"plan for Dockerfile@stage-2 (context {context}" in out
    assert "stages by level: [build, tools] -> [stage-2]" in out
    rows = table_rows(out)
    assert sorted(rows) == [n.number for n in expected.nodes]
    for node in expected.nodes:
        _, level, stage, cache, key, needs = rows[node.number][:6]
        assert (int(level), stage) == (node.level, node.stage_name)
        assert node.key.split(":")[1].startswith(key)
        assert needs == (",".join(str(d + 1) for d in node.deps) or "-")
        assert cache == ("hit" if node.id == 0 else "miss")
    assert f"{len(expected.nodes)} steps in {len(expected.levels)} levels: 1 would hit" in out


def test_plan_json_has_every_key_and_preimage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make(tmp_path / "ctx")
    code, out, _ = cli(capsys, "plan", str(context), "--json", "--build-arg", "VERSION=2")
    assert code == 0
    document = json.loads(out)
    expected = plan(context, build_args={"VERSION": "2"})
    assert [n["key"] for n in document["nodes"]] == list(expected.keys)
    assert [n["preimage"] for n in document["nodes"]] == [
        [list(p) for p in n.preimage] for n in expected.nodes
    ]
    assert document["levels"] == [list(level) for level in expected.levels]
    assert document["edges"] == [list(e) for e in expected.edges]
    assert document["record"] == "Dockerfile@stage-2"
    assert not any(n["cached"] for n in document["nodes"])
    copy = next(n for n in document["nodes"] if n["instruction"] == "COPY src/ /app")
    assert copy["sources"][0]["matches"] == ["src"]


def test_build_arg_forms_match_docker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    context = make(tmp_path / "ctx")

    def keys(*args: str) -> list[str]:
        code, out, _ = cli(capsys, "plan", str(context), "--json", *args)
        assert code == 0
        return [n["key"] for n in json.loads(out)["nodes"]]

    default = keys()
    explicit = keys("--build-arg", "VERSION=9")
    assert explicit != default
    monkeypatch.setenv("VERSION", "9")
    assert keys("--build-arg", "VERSION") == explicit  # NAME alone: from the environment
    monkeypatch.delenv("VERSION")
    assert keys("--build-arg", "VERSION") == default  # ...and dropped when unset there
    assert keys("--build-arg", "VERSION=1", "--build-arg", "VERSION=9") == explicit
    code, _, err = cli(capsys, "plan", str(context), "--build-arg", "=oops")
    assert code == 2 and "invalid --build-arg '=oops'" in err


def test_target_file_and_platform_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    context = make(tmp_path / "ctx")
    code, out, _ = cli(capsys, "plan", str(context), "--target", "tools", "--json")
    assert code == 0 and {n["stage"] for n in json.loads(out)["nodes"]} == {"tools"}
    # -f is relative to the current directory, as with docker build.
    elsewhere = tmp_path / "dockerfiles"
    elsewhere.mkdir()
    (elsewhere / "tools.Dockerfile").write_text("FROM alpine\nCOPY go.mod /\n")
    monkeypatch.chdir(elsewhere)
    code, out, _ = cli(capsys, "plan", str(context), "-f", "tools.Dockerfile", "--json")
    document = json.loads(out)
    assert code == 0 and document["record"] == f"{elsewhere / 'tools.Dockerfile'}@stage-0"
    code, out, _ = cli(capsys, "plan", str(context), "--platform", "linux/arm64", "--json")
    assert code == 0 and json.loads(out)["platform"] == "linux/arm64"
    assert json.loads(out)["nodes"][0]["key"] != plan(context, platform="linux/amd64").keys[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "nope"], "target stage 'nope' could not be found"),
        (["--platform", "linux/"], "--platform: invalid platform 'linux/'"),
        (["-f", "missing.Dockerfile"], "missing.Dockerfile: Dockerfile does not exist"),
        (["--build-arg", " X=1"], "invalid --build-arg"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    context = make(tmp_path / "ctx")
    monkeypatch.chdir(tmp_path)
    for command in ("plan", "explain"):
        code, out, err = cli(capsys, command, str(context), *args)
        assert code == 2, err
        assert message in err and err.count("\n") == 1 and out == ""


def test_missing_context_broken_dockerfile_and_missing_source_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "plan", str(tmp_path / "nowhere"))
    assert code == 2 and "build context does not exist" in err
    context = make(tmp_path / "ctx", "FROM alpine\nCOPY nothing-here /x\n", {})
    code, _, err = cli(capsys, "plan", str(context))
    assert code == 2 and "Dockerfile:2: COPY source 'nothing-here'" in err
    make(context, "FROM alpine\nBOGUS x\n", {})
    code, _, err = cli(capsys, "explain", str(context))
    assert code == 2 and "Dockerfile:2:1: unknown instruction: BOGUS" in err


def explain_lines(capsys: pytest.CaptureFixture[str], context: Path, *args: str) -> list[str]:
    code, out, err = cli(capsys, "explain", str(context), *args)
    assert code == 0, err
    return out.splitlines()


def test_explain_names_the_changed_file_the_build_arg_and_the_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make(tmp_path / "ctx")
    code, out, _ = cli(capsys, "plan", str(context), "--record")
    assert code == 0 and "recorded as Dockerfile@stage-2" in out
    before = plan(context)
    for node in before.nodes:  # as if that build had run and stored every step
        store_result(node.key)
    assert explain_lines(capsys, context) == [
        f"all {len(before.nodes)} steps of Dockerfile@stage-2 would be cache hits"
    ]

    (context / "src/main.py").write_text("print(2)\n")
    lines = explain_lines(capsys, context, "--build-arg", "VERSION=1.3")
    assert lines[:4] == [
        "step 5 COPY src/ /app: src/main.py changed",
        "step 6 RUN make VERSION=$VERSION: parent step 5 changed",
        "step 10 COPY --from=build /app/bin /bin: --from stage build changed",
        "step 11 COPY --from=tools /usr/bin/curl /curl: parent step 10 changed",
    ]
    assert lines[-1] == "4 of 11 steps would miss"

    (context / "src/main.py").write_text("print(1)\n")
    assert explain_lines(capsys, context, "--build-arg", "VERSION=1.3")[:2] == [
        "step 6 RUN make VERSION=$VERSION: build arg VERSION 1.2 -> 1.3",
        "step 10 COPY --from=build /app/bin /bin: --from stage build changed",
    ]


def test_explain_reports_added_and_removed_files_and_new_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make(tmp_path / "ctx")
    cli(capsys, "plan", str(context), "--record")
    (context / "src/lib.py").unlink()
    (context / "src/new.py").write_text("")
    (context / "src/z1.py").write_text("")
    (context / "src/z2.py").write_text("")
    lines = explain_lines(capsys, context)
    assert (
        "step 5 COPY src/ /app: src/lib.py removed, src/new.py added, src/z1.py added (and 1 more)"
    ) in lines
    make(context, DOCKERFILE.replace("RUN go mod download\n", "RUN go mod download\nRUN go vet\n"))
    lines = explain_lines(capsys, context)
    assert "step 5 RUN go vet: new step: not in the last recorded build" in lines
    assert any(line.startswith("step 6 COPY src/ /app: parent step 5 changed") for line in lines)
    # Steps whose key did not change were simply never stored by this test.
    assert lines[0] == (
        "step 1 FROM golang:1.22 AS build: unchanged since the last recorded build, but not in "
        "the local store"
    )


def test_explain_without_a_recorded_build_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make(tmp_path / "ctx")
    lines = explain_lines(capsys, context)
    assert lines[0].startswith(
        "step 1 FROM golang:1.22 AS build: no recorded build of Dockerfile@stage-2"
    )


def test_explain_json_and_the_python_api_agree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make(tmp_path / "ctx")
    with LocalStore() as store:
        record_plan(store, plan(context))  # what a finished build will call
    (context / "go.mod").write_text("module y\n")
    code, out, _ = cli(capsys, "explain", str(context), "--json")
    assert code == 0
    document = json.loads(out)
    with LocalStore() as store:
        report = explain(store, plan(context))
    assert report.recorded and document["recorded"]
    assert [m["reason"] for m in document["misses"]] == [e.reason for e in report.misses]
    go_mod = next(m for m in document["misses"] if m["instruction"] == "COPY go.mod ./")
    assert go_mod["reason"] == "go.mod changed"
    assert go_mod["input"] == "source go.mod"
    assert go_mod["changes"] == [["go.mod", "modified"]]
    assert go_mod["old"] != go_mod["new"]


def test_a_moved_checkout_still_finds_its_recorded_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = make(tmp_path / "a" / "ctx")
    cli(capsys, "plan", str(first), "--record")
    second = make(tmp_path / "b" / "elsewhere")
    (second / "src/main.py").write_text("print(3)\n")
    lines = explain_lines(capsys, second)
    assert "step 5 COPY src/ /app: src/main.py changed" in lines


def test_the_console_script_runs_plan(tmp_path: Path) -> None:
    context = make(tmp_path / "ctx")
    proc = subprocess.run(
        [sys.executable, "-m", "memobuild.cli", "plan", str(context), "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["nodes"][0]["key"] == plan(context).keys[0]


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (
            "FROM alpine:3.19\nRUN true\n",
            "FROM alpine:3.20\nRUN true\n",
            "step 1 FROM alpine:3.20: base image alpine:3.19 -> alpine:3.20",
        ),
        (
            "FROM alpine\nRUN make\n",
            "FROM alpine\nRUN make all\n",
            "step 2 RUN make all: instruction changed: RUN make -> RUN make all",
        ),
        (
            "FROM alpine\nWORKDIR /a\nRUN make\n",
            "FROM alpine\nWORKDIR /b\nRUN make\n",
            "step 2 WORKDIR /b: instruction changed: WORKDIR /a -> WORKDIR /b",
        ),
        (
            "FROM alpine\nENV MODE=a\nRUN make\n",
            "FROM alpine\nENV MODE=b\nRUN make\n",
            "step 3 RUN make: parent step 2 changed",
        ),
        (
            "FROM alpine\nARG DIR=a\nWORKDIR /$DIR\n",
            "FROM alpine\nARG DIR=b\nWORKDIR /$DIR\n",
            'step 2 WORKDIR /$DIR: expanded instruction changed: path: "/a" -> "/b"',
        ),
        (
            "FROM alpine\nCOPY --chmod=644 go.mod /\n",
            "FROM alpine\nCOPY --chmod=755 go.mod /\n",
            "step 2 COPY --chmod=755 go.mod /: --chmod 644 -> 755",
        ),
        (
            "FROM alpine\nRUN --mount=type=cache,id=a,target=/c make\n",
            "FROM alpine\nRUN --mount=type=cache,id=b,target=/c make\n",
            'step 2 RUN --mount=type=cache,id=b,target=/c make: --mount /c changed: id: "a" -> "b"',
        ),
        (
            "FROM alpine\nRUN <<EOF\necho 1\nEOF\n",
            "FROM alpine\nRUN <<EOF\necho 2\nEOF\n",
            "step 2 RUN <<EOF: heredoc EOF changed",
        ),
    ],
)
def test_explain_words_each_kind_of_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], before: str, after: str, expected: str
) -> None:
    context = make(tmp_path / "ctx", before)
    cli(capsys, "plan", str(context), "--record")
    make(context, after)
    assert expected in explain_lines(capsys, context)


def test_explain_names_files_behind_a_bind_mount_of_the_context(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make(
        tmp_path / "ctx",
        "FROM alpine\nRUN --mount=type=bind,source=src,target=/s make\n",
    )
    cli(capsys, "plan", str(context), "--record")
    (context / "src/lib.py").write_text("X = 2\n")
    assert (
        "step 2 RUN --mount=type=bind,source=src,target=/s make: src/lib.py changed"
        in explain_lines(capsys, context)
    )


def test_a_recorded_plan_keeps_the_context_listing_by_digest(tmp_path: Path) -> None:
    from memobuild import _core
    from memobuild.plan.record import LISTING_RECORD, PLAN_RECORD, recorded_plan

    context = make(tmp_path / "ctx")
    planned = plan(context)
    assert planned.context_digest is not None
    with LocalStore() as store:
        record_plan(store, planned)
        recorded = recorded_plan(store, planned.record_name)
        assert recorded is not None
        assert [n.key for n in recorded.nodes] == list(planned.keys)
        assert recorded.listing == planned.context_digest.split(":")[1]
        listing = store.get_record(LISTING_RECORD, recorded.listing)
        assert _core.ContextIndex.from_listing(listing).digest == planned.context_digest
        # A record this MemoBuild cannot read is ignored, never trusted.
        store.put_record(PLAN_RECORD, planned.record_name, {"schema": "memobuild.plan.v0"})
        assert recorded_plan(store, planned.record_name) is None
        report = explain(store, planned)
    assert not report.recorded
    assert report.misses[0].reason.startswith("no recorded build of Dockerfile@stage-2")


def test_explain_says_when_a_whole_stage_is_new(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make(tmp_path / "ctx", "FROM alpine AS app\nRUN make\n")
    cli(capsys, "plan", str(context), "--record")
    make(context, "FROM alpine AS gen\nRUN gen\nFROM alpine AS app\nCOPY --from=gen /g /g\n")
    lines = explain_lines(capsys, context)
    assert lines[:4] == [
        # Stage names are not in keys: the same base is the same work.
        "step 1 FROM alpine AS gen: unchanged since the last recorded build, but not in the "
        "local store",
        "step 2 RUN gen: stage gen is not in the last recorded build",
        "step 3 FROM alpine AS app: unchanged since the last recorded build, but not in the "
        "local store",
        "step 4 COPY --from=gen /g /g: instruction changed: RUN make -> COPY --from=gen /g /g",
    ]


def test_a_directory_as_dockerfile_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    context = make(tmp_path / "ctx")
    code, _, err = cli(capsys, "plan", str(context), "-f", str(context / "src"))
    assert code == 2 and "is a directory, not a Dockerfile" in err
