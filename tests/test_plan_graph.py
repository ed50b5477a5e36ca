"""The build graph: nodes, edges, pruning, levels and its errors, on real Dockerfiles."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from memobuild import plan
from memobuild.dockerfile import parse
from memobuild.dockerfile.stages import Source, load_stages
from memobuild.errors import DockerfileParseError
from memobuild.plan import Plan, build_graph


def make(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    context = tmp_path / "ctx"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        path = context / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return context


def kinds(p: Plan) -> list[tuple[str, str]]:
    return [(n.stage_name, n.kind) for n in p.nodes]


def by_text(p: Plan, text: str) -> int:
    (node,) = [n for n in p.nodes if n.text == text]
    return node.id


def test_one_node_per_from_and_per_instruction_that_is_not_arg(tmp_path: Path) -> None:
    context = make(
        tmp_path,
        """\
ARG BASE=alpine
FROM ${BASE} AS app
ARG VERSION=1
ENV A=1
LABEL version=$VERSION
WORKDIR /app
USER nobody
EXPOSE 80
VOLUME /data
SHELL ["/bin/bash", "-c"]
RUN echo hi
COPY a.txt .
ADD a.txt b.txt
HEALTHCHECK CMD true
STOPSIGNAL SIGTERM
ONBUILD RUN echo child
MAINTAINER someone
CMD ["run"]
ENTRYPOINT ["/bin/app"]
""",
        {"a.txt": "a"},
    )
    p = plan(context)
    assert [k for _, k in kinds(p)] == [
        "FROM", "ENV", "LABEL", "WORKDIR", "USER", "EXPOSE", "VOLUME", "SHELL", "RUN", "COPY",
        "ADD", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD", "MAINTAINER", "CMD", "ENTRYPOINT",
    ]  # fmt: skip
    assert [n.id for n in p.nodes] == list(range(len(p.nodes)))
    assert [n.position for n in p.nodes] == list(range(len(p.nodes)))
    assert p.nodes[0].line == 2 and p.nodes[-1].line == 19
    # A single chain: each node waits for the one before it.
    assert [n.deps for n in p.nodes] == [(), *((i,) for i in range(len(p.nodes) - 1))]
    assert p.levels == tuple((i,) for i in range(len(p.nodes)))


MULTI = """\
FROM golang:1.22 AS build
COPY main.go .
RUN go build -o /out/app main.go

FROM alpine:3.20 AS tools
RUN apk add curl
RUN apk add jq

FROM alpine:3.20 AS unused
RUN echo never needed

FROM build AS test
RUN --mount=type=bind,from=tools,source=/usr/bin,target=/tools go test ./...

FROM scratch AS final
COPY --from=build /out/app /app
COPY --from=1 /usr/bin/curl /curl
ENTRYPOINT ["/app"]
"""


def test_edges_from_previous_step_from_stage_copy_from_and_mount_from(tmp_path: Path) -> None:
    context = make(tmp_path, MULTI, {"main.go": "package main"})
    p = plan(context, target="test")
    ids = {n.text: n.id for n in p.nodes}
    assert ids["FROM build AS test"] not in [e[1] for e in p.edges if e[0] == e[1]]
    # FROM build: waits for build's last step.
    assert p.nodes[ids["FROM build AS test"]].deps == (ids["RUN go build -o /out/app main.go"],)
    # RUN --mount from=tools: the previous step and tools' last step.
    mount = p.nodes[
        by_text(p, "RUN --mount=type=bind,from=tools,source=/usr/bin,target=/tools go test ./...")
    ]
    assert mount.deps == tuple(sorted((ids["FROM build AS test"], ids["RUN apk add jq"])))
    assert set(p.edges) == {(d, n.id) for n in p.nodes for d in n.deps}

    final = plan(context)
    ids = {n.text: n.id for n in final.nodes}
    copy_build = final.nodes[ids["COPY --from=build /out/app /app"]]
    assert copy_build.deps == (
        ids["RUN go build -o /out/app main.go"],
        ids["FROM scratch AS final"],
    )
    copy_index = final.nodes[ids["COPY --from=1 /usr/bin/curl /curl"]]
    assert copy_index.deps == (ids["RUN apk add jq"], copy_build.id)


def test_stages_the_target_does_not_need_are_pruned(tmp_path: Path) -> None:
    context = make(tmp_path, MULTI, {"main.go": "package main"})
    default = plan(context)
    assert default.target == "final"
    assert {n.stage_name for n in default.nodes} == {"build", "tools", "final"}
    test = plan(context, target="test")
    assert {n.stage_name for n in test.nodes} == {"build", "tools", "test"}
    tools = plan(context, target="TOOLS")  # stage names match case-insensitively
    assert kinds(tools) == [("tools", "FROM"), ("tools", "RUN"), ("tools", "RUN")]
    assert tools.record_name == "Dockerfile@tools"
    unused = plan(context, target="unused")
    assert {n.stage_name for n in unused.nodes} == {"unused"}


def test_independent_stages_land_in_the_same_level(tmp_path: Path) -> None:
    context = make(tmp_path, MULTI, {"main.go": "package main"})
    p = plan(context)
    ids = {n.text: n.id for n in p.nodes}
    assert p.levels[0] == tuple(
        sorted(
            (
                ids["FROM golang:1.22 AS build"],
                ids["FROM alpine:3.20 AS tools"],
                ids["FROM scratch AS final"],
            )
        )
    )
    assert {ids["COPY main.go ."], ids["RUN apk add curl"]} <= set(p.levels[1])
    assert {ids["RUN go build -o /out/app main.go"], ids["RUN apk add jq"]} <= set(p.levels[2])
    for node in p.nodes:  # every node sits one level after its deepest dependency
        assert node.level == max((p.nodes[d].level + 1 for d in node.deps), default=0)
        assert node.id in p.levels[node.level]
    stage_index = {n.stage_name: n.stage for n in p.nodes}
    assert p.stage_levels == ((stage_index["build"], stage_index["tools"]), (stage_index["final"],))


def test_onbuild_triggers_of_a_base_stage_are_nodes_on_the_from_line(tmp_path: Path) -> None:
    context = make(
        tmp_path,
        "FROM alpine AS base\nONBUILD RUN echo triggered\nFROM base AS child\nRUN echo own\n",
    )
    p = plan(context)
    child = [n for n in p.nodes if n.stage_name == "child"]
    assert [(n.kind, n.line) for n in child] == [("FROM", 3), ("RUN", 3), ("RUN", 4)]
    assert child[1].step is not None and child[1].step.onbuild


def test_unknown_target_is_a_clear_error(tmp_path: Path) -> None:
    context = make(tmp_path, MULTI, {"main.go": "package main"})
    with pytest.raises(DockerfileParseError) as err:
        plan(context, target="nope")
    assert "target stage 'nope' could not be found" in str(err.value)
    assert "build, tools, unused, test, final" in str(err.value)
    stages = load_stages(parse(MULTI, filename="Dockerfile"))
    with pytest.raises(DockerfileParseError, match="target stage 'nope'"):
        build_graph(stages, "nope", file="Dockerfile")


@pytest.mark.parametrize(
    ("dockerfile", "message", "line"),
    [
        (
            "FROM alpine AS a\nCOPY --from=a /x /y\n",
            "circular dependency detected on stage: a",
            2,
        ),
        (
            "FROM alpine AS a\nCOPY --from=b /x /y\nFROM alpine AS b\n",
            "needs to be defined before current stage 'a'",
            2,
        ),
        (
            "FROM alpine AS a\nRUN --mount=from=b,target=/m true\nFROM alpine AS b\n",
            "needs to be defined before current stage 'a'",
            2,
        ),
        ("FROM alpine\nCOPY --from=7 /x /y\n", "invalid stage index 7", 2),
    ],
)
def test_references_to_unknown_or_later_stages_are_errors_with_a_line(
    tmp_path: Path, dockerfile: str, message: str, line: int
) -> None:
    context = make(tmp_path, dockerfile)
    with pytest.raises(DockerfileParseError) as err:
        plan(context)
    assert message in str(err.value)
    assert err.value.line == line
    # Messages name the file relative to the current directory when it lies below it.
    path = context / "Dockerfile"
    relative = os.path.relpath(path)
    shown = str(path) if relative.startswith("..") else relative
    assert str(err.value).startswith(f"{shown}:{line}:")


def test_a_stage_cycle_is_a_clear_error_naming_the_stages() -> None:
    text = "FROM alpine AS a\nRUN true\nFROM alpine AS b\nCOPY --from=a /x /y\n"
    stages = load_stages(parse(text, filename="Dockerfile"))
    a, b = stages.stages
    # The front end never produces a cycle; forge one to hold the graph to its own check.
    step = dataclasses.replace(a.steps[0], sources=(Source(kind="stage", stage=1),))
    forged = dataclasses.replace(stages, stages=(dataclasses.replace(a, steps=(step,)), b))
    with pytest.raises(DockerfileParseError) as err:
        build_graph(forged, file="Dockerfile")
    assert "cycle" in str(err.value)
    assert "a -> b -> a" in str(err.value) or "b -> a -> b" in str(err.value)
    dangling = dataclasses.replace(
        stages,
        stages=(a, dataclasses.replace(b, base_stage=5)),
    )
    with pytest.raises(DockerfileParseError, match="refers to stage 5, which does not exist"):
        build_graph(dangling, file="Dockerfile")


def test_likely_stage_typos_are_warned_about_but_build_as_images(tmp_path: Path) -> None:
    context = make(
        tmp_path,
        "FROM alpine AS builder\nRUN true\nFROM later AS first\n"
        "COPY --from=buidler /x /y\nFROM alpine AS later\nCOPY --from=first /x /y\n",
    )
    p = plan(context)
    joined = "\n".join(p.warnings)
    assert "--from 'buidler' is not a stage name (did you mean 'builder'?)" in joined
    assert "FROM 'later' names the stage on line 5, which is not above this one" in joined
    first_from = next(n for n in p.nodes if n.stage_name == "first")
    assert first_from.deps == () and ("image", "later") in first_from.preimage
