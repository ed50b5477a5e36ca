"""Stages, ARG/ENV scoping and expansion, checked against Docker's reference and BuildKit's
integration tests (``dockerfile_args_test.go``): each test states the Dockerfile, the build
arguments and what ``docker build`` with BuildKit computes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memobuild.dockerfile import parse
from memobuild.dockerfile.instructions import (
    ArgInstruction,
    BindMount,
    CacheMount,
    CopyInstruction,
    EnvInstruction,
    ExposeInstruction,
    LabelInstruction,
    RunInstruction,
    StopsignalInstruction,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
)
from memobuild.dockerfile.stages import (
    DEFAULT_PATH,
    BaseImageConfig,
    BuildStages,
    Platform,
    Source,
    Stage,
    Step,
    load_stages,
)
from memobuild.errors import DockerfileParseError


def load(text: str, **kwargs: object) -> BuildStages:
    kwargs.setdefault("build_platform", "linux/amd64")
    return load_stages(parse(text, filename="Dockerfile"), **kwargs)  # type: ignore[arg-type]


def env(stage: Stage) -> dict[str, str]:
    return dict(stage.state_env)


def step_env(step: Step) -> dict[str, str]:
    return dict(step.env)


def last(stages: BuildStages) -> Stage:
    return stages.stages[-1]


# --- global ARGs and FROM ---------------------------------------------------------------------


def test_global_arg_in_from_and_build_arg_override() -> None:
    text = "ARG tag=nosuchtag\nFROM busybox:${tag}\n"
    assert load(text).stages[0].base == "busybox:nosuchtag"
    stages = load(text, build_args={"tag": "latest"})
    assert stages.stages[0].base == "busybox:latest"
    assert stages.stages[0].build_args_used == frozenset({"tag"})
    assert stages.unused_build_args() == frozenset()


def test_global_arg_is_visible_in_a_stage_only_when_redeclared() -> None:
    stages = load("ARG V=1\nFROM scratch\nENV A=$V\nARG V\nENV B=$V\n")
    assert env(stages.stages[0])["A"] == ""
    assert env(stages.stages[0])["B"] == "1"


def test_multiple_args_per_instruction_and_global_defaults() -> None:
    # BuildKit's testMultiArgs
    stages = load(
        'ARG a1="foo bar" a2=box\nARG a3="$a2-foo"\nFROM busy$a2 AS build\n'
        'ARG a3 a4="123 456" a1\nRUN echo -n "$a1:$a3:$a4" > /out\n'
    )
    build = stages.stages[0]
    assert build.base == "busybox"
    run = build.steps[-1]
    assert {k: step_env(run)[k] for k in ("a1", "a3", "a4")} == {
        "a1": "foo bar",
        "a3": "box-foo",
        "a4": "123 456",
    }
    assert run.args == (("a3", "box-foo"), ("a4", "123 456"), ("a1", "foo bar"))


def test_quoted_meta_args() -> None:
    # BuildKit's testQuotedMetaArgs
    stages = load(
        'ARG a1="box"\nARG a2="$a1-foo"\nFROM busy$a1 AS build\nARG a2\nARG a3="bar-$a2"\n'
    )
    assert env(stages.stages[0])["a3"] == "bar-box-foo"


@pytest.mark.parametrize(
    ("extra", "target", "expected"),
    [("", "foo", "foo"), ("", None, "default"), ("FROM scratch AS final\n", None, "final")],
)
def test_targetstage_arg(extra: str, target: str | None, expected: str) -> None:
    # BuildKit's testTargetStageNameArg
    text = (
        "FROM alpine AS base\nRUN echo $TARGETSTAGE\nARG TARGETSTAGE\nRUN echo $TARGETSTAGE\n"
        "FROM scratch AS foo\nCOPY --from=base /out/ /\nFROM scratch\nCOPY --from=base /out/ /\n"
    )
    stages = load(text + extra, target=target)
    base = stages.stages[0]
    assert "TARGETSTAGE" not in step_env(base.steps[0])
    assert step_env(base.steps[2])["TARGETSTAGE"] == expected


@pytest.mark.parametrize(
    ("build_args", "my_arg", "trimmed"),
    [
        ({}, "my_arg=def_val", "my_arg=d"),
        ({"my_arg": ""}, "my_arg=def_val", "my_arg=d"),
        ({"my_arg": "override"}, "my_arg=override", "my_arg=ov"),
    ],
)
def test_default_env_with_args(build_args: dict[str, str], my_arg: str, trimmed: str) -> None:
    # BuildKit's testDefaultEnvWithArgs
    stages = load(
        "ARG image=idlebox\nFROM busy${image#idle} AS build\nARG my_arg\n"
        'ENV my_arg "my_arg=${my_arg:-def_val}"\nENV my_trimmed_arg "${my_arg%%e*}"\n',
        build_args=build_args,
    )
    build = stages.stages[0]
    assert build.base == "busybox"
    image_env = dict(build.env)
    assert image_env["my_arg"] == my_arg
    assert image_env["my_trimmed_arg"] == trimmed


def test_arg_without_value_is_unset_and_empty_value_is_set() -> None:
    # BuildKit's testEmptyStringArgInEnv
    stages = load("FROM busybox AS build\nARG FOO\nARG BAR=\nRUN env > env.txt\n")
    run_env = step_env(stages.stages[0].steps[-1])
    assert run_env["BAR"] == ""
    assert "FOO" not in run_env


def test_proxy_args_reach_run_without_declaration() -> None:
    # BuildKit's testBuiltinArgs
    stages = load(
        "FROM busybox AS build\nARG FOO\nARG BAR\nARG BAZ=bazcontent\n"
        "RUN echo -n $HTTP_PROXY::$NO_PROXY::$FOO::$BAR::$BAZ > /out\n",
        build_args={"FOO": "foocontents", "http_proxy": "hpvalue", "NO_PROXY": "npvalue"},
    )
    assert dict(stages.proxy_env) == {"http_proxy": "hpvalue", "NO_PROXY": "npvalue"}
    run_env = step_env(stages.stages[0].steps[-1])
    assert run_env["FOO"] == "foocontents"
    assert run_env["BAZ"] == "bazcontent"
    assert "BAR" not in run_env
    # not part of the expansion environment (nor of a step's env) unless declared
    assert "http_proxy" not in run_env and "HTTP_PROXY" not in run_env
    assert stages.unused_build_args() == frozenset()


def test_declared_proxy_arg_takes_the_build_arg() -> None:
    stages = load(
        "FROM scratch\nARG HTTPS_PROXY\nENV P=$HTTPS_PROXY\n",
        build_args={"HTTPS_PROXY": "http://proxy:3128"},
    )
    assert env(stages.stages[0])["P"] == "http://proxy:3128"


def test_global_arg_errors() -> None:
    # BuildKit's testGlobalArgErrors
    text = 'ARG FOO=${FOO:?"custom error"}\nFROM busybox\n'
    with pytest.raises(DockerfileParseError, match="FOO: custom error") as info:
        load(text)
    assert (info.value.file, info.value.line) == ("Dockerfile", 1)
    assert load(text, build_args={"FOO": "bar"}).stages[0].base == "busybox"


def test_arg_default_expansion_errors_only_when_the_default_is_used() -> None:
    # BuildKit's testArgDefaultExpansion
    text = 'FROM scratch\nARG FOO\nARG BAR=${FOO:?"foo missing"}\n'
    with pytest.raises(DockerfileParseError, match="FOO: foo missing") as info:
        load(text)
    assert info.value.line == 3
    load(text, build_args={"FOO": "123"})
    load(text, build_args={"BAR": "123"})


def test_build_arg_values_are_not_expanded() -> None:
    stages = load("FROM scratch\nARG A=x\nARG B\nENV C=$B\n", build_args={"B": "$A"})
    assert env(stages.stages[0])["C"] == "$A"


def test_args_in_one_instruction_see_each_other() -> None:
    stages = load("ARG G1=a G2=${G1}b\nFROM scratch\nARG S1=x S2=${S1}y\nARG G2\n")
    assert env(stages.stages[0])["S2"] == "xy"
    assert env(stages.stages[0])["G2"] == "ab"


# --- ENV and ARG precedence ----------------------------------------------------------------


def test_env_declared_after_arg_wins_over_the_build_arg() -> None:
    # Docker reference, "Using ARG variables"
    stages = load(
        "FROM ubuntu\nARG CONT_IMG_VER\nENV CONT_IMG_VER=v1.0.0\nRUN echo $CONT_IMG_VER\n",
        build_args={"CONT_IMG_VER": "v2.0.1"},
    )
    stage = stages.stages[0]
    assert step_env(stage.steps[-1])["CONT_IMG_VER"] == "v1.0.0"
    assert dict(stage.env)["CONT_IMG_VER"] == "v1.0.0"


@pytest.mark.parametrize(("build_args", "expected"), [({}, "v1.0.0"), ({"V": "v2.0.1"}, "v2.0.1")])
def test_env_with_arg_default(build_args: dict[str, str], expected: str) -> None:
    # Docker reference: ENV CONT_IMG_VER=${CONT_IMG_VER:-v1.0.0}
    stages = load("FROM ubuntu\nARG V\nENV V=${V:-v1.0.0}\n", build_args=build_args)
    assert dict(stages.stages[0].env)["V"] == expected


def test_arg_declared_after_env_wins_for_the_build_but_not_the_image() -> None:
    # BuildKit's state environment is ordered: the later ARG value is what RUN and expansion see
    # (unlike the classic builder); the image config keeps the ENV value.
    stages = load("FROM scratch\nENV X=env\nARG X=arg\nRUN true\nENV Y=$X\n")
    stage = stages.stages[0]
    assert step_env(stage.steps[2])["X"] == "arg"
    assert dict(stage.env)["X"] == "env"
    assert dict(stage.env)["Y"] == "arg"


def test_env_values_see_the_environment_before_the_instruction() -> None:
    # Docker reference, "Environment replacement"
    stages = load("FROM busybox\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n")
    image_env = dict(stages.stages[0].env)
    assert (image_env["abc"], image_env["def"], image_env["ghi"]) == ("bye", "hello", "bye")


def test_env_keys_are_expanded_and_path_is_always_set() -> None:
    stages = load("FROM scratch\nENV K=name\nENV ${K}_X=1\n")
    image_env = dict(stages.stages[0].env)
    assert image_env["name_X"] == "1"
    assert image_env["PATH"] == DEFAULT_PATH
    assert next(iter(image_env)) == "PATH"


# --- which values are expanded ----------------------------------------------------------------


def test_expanded_instructions_follow_the_reference() -> None:
    stages = load(
        "FROM scratch\n"
        "ENV D=/data U=app:app P=8080 S=SIGTERM L=v1 V=/vol N=x\n"
        "WORKDIR $D\n"
        "USER $U\n"
        "EXPOSE $P\n"
        "STOPSIGNAL $S\n"
        "LABEL version=$L ${N}y=z\n"
        "VOLUME $V\n"
        "COPY --chown=$U --chmod=0644 $N ${D}/\n"
        "RUN echo $D\n"
        "CMD echo $D\n"
        'ENTRYPOINT ["$D"]\n'
    )
    steps = {type(s.instruction).__name__: s for s in stages.stages[0].steps}
    assert isinstance(w := steps["WorkdirInstruction"].instruction, WorkdirInstruction)
    assert w.path == "/data"
    assert isinstance(u := steps["UserInstruction"].instruction, UserInstruction)
    assert u.user == "app:app"
    assert isinstance(e := steps["ExposeInstruction"].instruction, ExposeInstruction)
    assert e.exposed == ("8080/tcp",)
    assert isinstance(s := steps["StopsignalInstruction"].instruction, StopsignalInstruction)
    assert s.signal == "SIGTERM"
    assert isinstance(lb := steps["LabelInstruction"].instruction, LabelInstruction)
    assert [(p.key, p.value) for p in lb.pairs] == [("version", "v1"), ("xy", "z")]
    assert isinstance(v := steps["VolumeInstruction"].instruction, VolumeInstruction)
    assert v.volumes == ("/vol",)
    assert isinstance(c := steps["CopyInstruction"].instruction, CopyInstruction)
    assert (c.sources, c.dest, c.chown) == (("x",), "/data/", "app:app")
    assert steps["CopyInstruction"].refs == frozenset({"U", "N", "D"})
    # RUN, CMD and ENTRYPOINT are left to the shell
    assert steps["RunInstruction"].instruction.cmd_line == ("echo $D",)  # type: ignore[attr-defined]
    assert steps["RunInstruction"].refs == frozenset()
    assert steps["CmdInstruction"].instruction.cmd_line == ("echo $D",)  # type: ignore[attr-defined]
    assert steps["EntrypointInstruction"].instruction.cmd_line == ("$D",)  # type: ignore[attr-defined]


def test_expose_splits_words_after_expansion() -> None:
    stages = load('FROM scratch\nENV PORTS="80 443/tcp 53/udp"\nEXPOSE $PORTS\n')
    expose = stages.stages[0].steps[-1].instruction
    assert isinstance(expose, ExposeInstruction)
    assert expose.exposed == ("53/udp", "80/tcp", "443/tcp")


def test_copy_heredoc_is_expanded_unless_its_delimiter_is_quoted() -> None:
    stages = load(
        "FROM scratch\nENV A=1\nCOPY <<EOF <<'RAW' /dst/\n\"$A\" '$A'\nEOF\n\"$A\"\nRAW\n"
    )
    copy = stages.stages[0].steps[-1].instruction
    assert isinstance(copy, CopyInstruction)
    assert [c.data for c in copy.contents] == ["\"1\" '1'\n", '"$A"\n']


def test_escape_directive_changes_expansion() -> None:
    stages = load("# escape=`\nFROM scratch\nENV A=x\nENV B=`$A C=\\$A\n")
    image_env = dict(stages.stages[0].env)
    assert (image_env["B"], image_env["C"]) == ("$A", "\\x")
    assert stages.escape == "`"


def test_step_records_env_args_and_refs_before_the_instruction() -> None:
    stages = load("FROM scratch\nARG V=1\nENV A=$V\nWORKDIR /w\nUSER u\nRUN true\n")
    arg, env_step, workdir, user, run = stages.stages[0].steps
    assert isinstance(arg.instruction, ArgInstruction)
    assert arg.args == () and "V" not in step_env(arg)
    assert isinstance(env_step.instruction, EnvInstruction)
    assert env_step.args == (("V", "1"),)
    assert env_step.refs == frozenset({"V"})
    assert "A" not in step_env(env_step)
    assert step_env(workdir)["A"] == "1"
    assert (run.workdir, run.user, run.shell) == ("/w", "u", ("/bin/sh", "-c"))
    assert user.user == ""
    assert workdir.workdir == "/"


# --- WORKDIR ----------------------------------------------------------------------------------


def test_relative_workdir_builds_on_the_previous_one() -> None:
    # Docker reference, WORKDIR
    stages = load("FROM scratch\nWORKDIR /a\nWORKDIR b\nWORKDIR c\nRUN pwd\n")
    assert stages.stages[0].steps[-1].workdir == "/a/b/c"
    assert load("FROM scratch\nWORKDIR app\n").stages[0].workdir == "/app"
    assert load("FROM scratch\nWORKDIR /a/b/\nWORKDIR ../c\n").stages[0].workdir == "/a/c"


def test_workdir_expands_unset_variables_to_nothing() -> None:
    stages = load("FROM busybox\nENV DIRPATH=/path\nWORKDIR $DIRPATH/$DIRNAME\n")
    assert stages.stages[0].workdir == "/path"


def test_empty_workdir_is_an_error() -> None:
    with pytest.raises(DockerfileParseError, match="WORKDIR cannot be empty") as info:
        load("FROM scratch\nWORKDIR $NOTHING\n")
    assert info.value.line == 2


# --- stages and references --------------------------------------------------------------------


def test_stage_from_stage_inherits_env_args_workdir_user_shell() -> None:
    stages = load(
        "FROM alpine AS base\nARG V=1\nENV E=2\nWORKDIR /app\nUSER me\n"
        'SHELL ["/bin/bash", "-c"]\nFROM base AS child\nENV F=$V$E\n'
    )
    child = stages.stages[1]
    assert (child.base, child.base_stage, child.stage_deps) == ("base", 0, frozenset({0}))
    assert env(child)["F"] == "12"
    assert (child.workdir, child.user, child.shell) == ("/app", "me", ("/bin/bash", "-c"))
    assert child.args == (("V", "1"),)


def test_onbuild_triggers_of_a_base_stage_run_first_on_the_from_line() -> None:
    stages = load(
        "FROM alpine AS base\nENV A=x\nONBUILD WORKDIR /$A\nONBUILD RUN echo\n"
        "FROM base AS child\nRUN make\n"
    )
    child = stages.stages[1]
    assert [s.onbuild for s in child.steps] == [True, True, False]
    assert [s.line for s in child.steps] == [5, 5, 6]
    assert child.steps[2].workdir == "/x"
    assert stages.stages[0].workdir == "/"  # ONBUILD does nothing in its own stage


def test_from_matches_earlier_stage_names_exactly() -> None:
    stages = load("FROM alpine AS build\nFROM build\nFROM later AS x\nFROM alpine AS later\n")
    assert stages.stages[1].base_stage == 0
    assert stages.stages[2].base_stage is None  # a later stage is not visible: an image
    assert stages.stages[2].base == "later"
    with pytest.raises(DockerfileParseError, match="use 'build'") as info:
        load("FROM alpine AS build\nFROM Build\n")
    assert info.value.line == 2


def test_from_scratch_and_platform_args() -> None:
    stages = load(
        "FROM --platform=$BUILDPLATFORM golang AS b\nARG TARGETARCH\nENV T=$TARGETARCH\n"
        "FROM scratch\nENV U=$TARGETARCH\n",
        target_platform="linux/arm64",
    )
    build, final = stages.stages
    assert build.platform == Platform("linux", "amd64")
    assert build.requested_platform == "linux/amd64"
    assert env(build)["T"] == "arm64"
    assert final.is_scratch and final.platform == Platform("linux", "arm64")
    assert env(final)["U"] == ""
    scope = dict(stages.global_args)
    assert scope["TARGETPLATFORM"] == "linux/arm64"
    assert scope["BUILDPLATFORM"] == "linux/amd64"
    assert (scope["TARGETOS"], scope["TARGETVARIANT"]) == ("linux", "")


def test_platform_args_can_be_overridden_and_variants_normalised() -> None:
    stages = load(
        "FROM scratch\nARG TARGETPLATFORM\nARG TARGETVARIANT\n",
        target_platform="linux/arm",
        build_args={"BUILDOS": "plan9"},
    )
    assert env(stages.stages[0])["TARGETPLATFORM"] == "linux/arm/v7"
    assert env(stages.stages[0])["TARGETVARIANT"] == "v7"
    assert dict(stages.global_args)["BUILDOS"] == "plan9"


@pytest.mark.parametrize(
    ("text", "platform"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/arm64/v8", Platform("linux", "arm64")),
        ("linux/arm/v6", Platform("linux", "arm", "v6")),
        ("Linux/ARM64", Platform("linux", "arm64")),
        ("windows/amd64", Platform("windows", "amd64")),
    ],
)
def test_platform_parsing(text: str, platform: Platform) -> None:
    assert Platform.parse(text) == platform


@pytest.mark.parametrize("text", ["", "linux/", "foo/amd64", "linux/foo", "a/b/c/d", "linux/*"])
def test_bad_platforms(text: str) -> None:
    with pytest.raises(DockerfileParseError):
        Platform.parse(text)


def test_copy_from_by_name_any_case_by_index_and_image() -> None:
    stages = load(
        "FROM alpine AS Build\nRUN make\nFROM scratch\nCOPY --from=BUILD /a /a\n"
        "COPY --from=0 /b /b\nCOPY --from=busybox:1.36 /bin/sh /sh\nCOPY --from=scratch / /\n"
    )
    sources = [s.sources for s in stages.stages[1].steps]
    assert sources == [
        (Source("stage", stage=0),),
        (Source("stage", stage=0),),
        (Source("image", image="busybox:1.36"),),
        (Source("scratch", image="scratch"),),
    ]
    assert stages.stages[1].stage_deps == frozenset({0})
    assert stages.stages[1].image_refs == frozenset({"busybox:1.36"})
    copy = stages.stages[1].steps[0].instruction
    assert isinstance(copy, CopyInstruction) and copy.from_ == "BUILD"


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("FROM a AS x\nCOPY --from=2 / /\nFROM b\n", r"invalid stage index 2", 2),
        ("FROM a AS x\nCOPY --from=-1 / /\n", r"invalid stage index -1", 2),
        ("FROM a AS x\nCOPY --from=x / /\n", r"circular dependency detected on stage: x", 2),
        ("FROM a\nCOPY --from=0 / /\n", r"circular dependency detected on stage: stage-0", 2),
        (
            "FROM a AS x\nCOPY --from=y / /\nFROM b AS y\n",
            r"cannot copy from stage 'y', it needs to be defined before current stage 'x'",
            2,
        ),
        (
            "FROM a AS x\nCOPY --from=1 / /\nFROM b AS y\n",
            r"cannot copy from stage '1', it needs to be defined before",
            2,
        ),
        (
            "ARG S=x\nFROM a AS x\nFROM b\nCOPY --from=$S / /\n",
            r"does not support variable expansion; define an alias stage",
            4,
        ),
        (
            "FROM a AS x\nFROM b\nCOPY --from=Not/Valid:: / /\n",
            r"COPY --from 'Not/Valid::' is not a stage name or index, and not a valid image",
            3,
        ),
        (
            "FROM a\nRUN --mount=from=later,target=/x true\nFROM b AS later\n",
            r"cannot mount from stage 'later' to '/x', it needs to be defined before",
            2,
        ),
        ("FROM a\nRUN --mount=type=bind,target=/ true\n", r"invalid mount target '/'", 2),
    ],
)
def test_stage_reference_errors(text: str, message: str, line: int) -> None:
    with pytest.raises(DockerfileParseError, match=message) as info:
        load(text)
    assert (info.value.file, info.value.line) == ("Dockerfile", line)


def test_run_mounts_are_expanded_resolved_and_linked_to_stages() -> None:
    stages = load(
        "FROM golang AS deps\nFROM golang\nARG GOCACHE=/root/.cache/go\nWORKDIR /src\n"
        "RUN --mount=type=cache,target=$GOCACHE --mount=type=bind,from=DEPS,target=vendor "
        "--mount=type=cache,target=.cache,id=${GOCACHE##*/} go build\n"
    )
    run_step = stages.stages[1].steps[-1]
    run = run_step.instruction
    assert isinstance(run, RunInstruction)
    assert run.mounts == (
        CacheMount(target="/root/.cache/go", id="/root/.cache/go"),
        BindMount(target="/src/vendor", from_="DEPS"),
        CacheMount(target="/src/.cache", id="go"),
    )
    assert run_step.sources == (Source("stage", stage=0),)
    assert run_step.refs == frozenset({"GOCACHE"})
    assert run.cmd_line == ("go build",)


def test_cache_id_defaults_to_the_target_as_written() -> None:
    stages = load("FROM a\nWORKDIR /w\nRUN --mount=type=cache,target=c true\n")
    run = stages.stages[0].steps[-1].instruction
    assert isinstance(run, RunInstruction)
    assert run.mounts == (CacheMount(target="/w/c", id="c"),)


def test_mount_from_an_image() -> None:
    stages = load("FROM a\nRUN --mount=from=busybox,src=/bin,target=/b true\n")
    assert stages.stages[0].steps[0].sources == (Source("image", image="busybox"),)


def test_stage_name_reused_is_an_error() -> None:
    with pytest.raises(
        DockerfileParseError, match=r"stage name 'a' is already used by the stage on line 1"
    ) as info:
        load("FROM x AS a\nRUN true\nFROM y AS A\n")
    assert info.value.line == 3


# --- errors with locations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("RUN true\nFROM a\n", r"RUN before the first FROM: only ARG may come before FROM", 1),
        ("ARG A=1\n", r"dockerfile contains no stages to build", 1),
        ("ARG IMG\nFROM $IMG\n", r"base name \(\$IMG\) should not be blank", 2),
        ("FROM --platform=$NOPE a\n", r"empty platform value from expression \$NOPE", 1),
        ("FROM --platform=linux/nope a\n", r"invalid platform 'linux/nope'", 1),
        ("FROM Alpine\n", r"repository name must be lowercase", 1),
        (
            'FROM a\nENV A="${B:?need B}"\n',
            r'failed to process "\\"\$\{B:\?need B\}\\"": B: need B',
            2,
        ),
        ('FROM a\nCOPY $"x /y\n', r"double-quote", 2),
        ("FROM a\nCOPY https://x/y /y\n", r"source can't be a URL for COPY", 2),
        ("FROM a\nCOPY --chmod=0999 x /y\n", r"invalid chmod parameter: '0999'", 2),
        ("FROM a\nCOPY --chmod=17777 x /y\n", r"between 0 and 07777", 2),
        (
            "FROM a\nADD --checksum=sha256:00 a b /c\n",
            r"checksum can't be specified for multiple",
            2,
        ),
        ("FROM a\nADD --checksum=sha256:00 a /c\n", r"non-HTTP\(S\) sources", 2),
        ("FROM a\nADD --checksum=md5:00 https://x/y /c\n", r"invalid checksum", 2),
        ("FROM a\nENV S=\nVOLUME /a $S\n", r"VOLUME specified can not be an empty string", 3),
        ("FROM a\nSTOPSIGNAL SIGNOPE\n", r"invalid signal: SIGNOPE", 2),
        ("FROM a\nEXPOSE 80/icmp\n", r"invalid proto: icmp", 2),
        ("FROM a\nRUN --mount=type=cache,target=/c,uid=$U x\n", r"invalid value  for uid", 2),
    ],
)
def test_located_errors(text: str, message: str, line: int) -> None:
    with pytest.raises(DockerfileParseError, match=message) as info:
        load(text)
    assert (info.value.file, info.value.line) == ("Dockerfile", line)
    assert str(info.value).startswith(f"Dockerfile:{line}: ")


def test_unknown_target_lists_the_stages() -> None:
    with pytest.raises(
        DockerfileParseError, match=r"target stage 'nope' could not be found; stages: a, b"
    ):
        load("FROM x AS a\nFROM y AS b\n", target="nope")
    assert load("FROM x AS a\nFROM y AS b\n", target="A").target == 0


def test_valid_chmod_and_checksum_values() -> None:
    load(
        "FROM a\nCOPY --chmod=u+x,g-w x /y\nCOPY --chmod=755 x /y\n"
        "ADD --checksum=sha256:" + "a" * 64 + " https://example.com/f /f\n"
    )


# --- usage tracking and warnings -----------------------------------------------------------------


def test_build_args_used_per_stage_and_unused_ones() -> None:
    stages = load(
        "ARG A\nARG B=$A\nARG G\nFROM img:$B AS one\nARG S\nFROM scratch AS two\nARG T\n",
        build_args={
            "A": "1",
            "G": "g",
            "S": "s",
            "T": "t",
            "X": "x",
            "https_proxy": "p",
            "BUILDKIT_INLINE_CACHE": "1",
        },
    )
    one, two = stages.stages
    assert one.base == "img:1"
    assert one.used_args == frozenset({"B", "S"})
    assert one.build_args_used == frozenset({"S"})
    assert two.build_args_used == frozenset({"T"})
    # Only stages the target needs count: the default target "two" does not need "one".
    assert stages.unused_build_args() == frozenset({"A", "G", "S", "X"})
    # For "one": A is used through B's default; G is declared but never used; X never declared.
    assert stages.unused_build_args(target="one") == frozenset({"G", "T", "X"})


def test_reachable_follows_bases_and_copies() -> None:
    stages = load(
        "FROM a AS base\nFROM base AS mid\nFROM b AS side\nFROM c AS out\nCOPY --from=mid / /\n"
    )
    assert stages.reachable() == (0, 1, 3)
    assert stages.reachable("side") == (2,)
    assert stages.stage("MID").index == 1
    assert stages.stage(3).name == "out"


def test_warnings_for_legacy_forms_ignored_flags_and_reserved_names() -> None:
    stages = load("ARG --nope A\nFROM a AS context\nENV K v\nLABEL k v\nSTOPSIGNAL --x 9\n")
    rules = [(w.rule, w.line) for w in stages.warnings]
    assert rules == [
        ("ReservedStageName", 2),
        ("IgnoredFlags", 1),
        ("LegacyKeyValueFormat", 3),
        ("LegacyKeyValueFormat", 4),
        ("IgnoredFlags", 5),
    ]


def test_non_env_args_stay_out_of_the_environment() -> None:
    stages = load("FROM a\nARG BUILDKIT_SBOM_SCAN_STAGE=true\nRUN true\n")
    assert "BUILDKIT_SBOM_SCAN_STAGE" not in step_env(stages.stages[0].steps[-1])
    assert stages.stages[0].args == (("BUILDKIT_SBOM_SCAN_STAGE", "true"),)


# --- base image configs ------------------------------------------------------------------------


def test_base_image_config_seeds_the_stage() -> None:
    seen: list[tuple[str, Platform]] = []

    def resolve(ref: str, platform: Platform) -> BaseImageConfig | None:
        seen.append((ref, platform))
        if ref != "node:20":
            return None
        return BaseImageConfig(
            env=(("PATH", "/node/bin"), ("NODE_VERSION", "20")),
            workdir="/home/node",
            user="node",
            onbuild=("COPY . /app/$NODE_VERSION",),
        )

    stages = load(
        "FROM node:20\nWORKDIR app\nENV V=$NODE_VERSION\nFROM scratch\n", resolve_image=resolve
    )
    node = stages.stages[0]
    assert seen == [("node:20", Platform("linux", "amd64"))]  # never asked for scratch
    assert env(node)["PATH"] == "/node/bin"
    assert env(node)["V"] == "20"
    assert node.workdir == "/home/node/app"
    assert node.user == "node"
    trigger = node.steps[0]
    assert trigger.onbuild and trigger.line == 1
    assert isinstance(trigger.instruction, CopyInstruction)
    assert trigger.instruction.dest == "/app/20"


# --- properties ----------------------------------------------------------------------------------

LINES = [
    "ARG A=1",
    "ARG B=${A:-x}",
    "ARG C",
    "FROM alpine AS s${A}",
    "FROM scratch",
    "FROM s1",
    "ENV E=$A F=${B#x}",
    "ENV G ${E:?}",
    "WORKDIR $E/w",
    "WORKDIR rel",
    "COPY --from=s1 /a /b",
    "COPY --from=0 /a /b",
    "COPY --from=nope /a /b",
    "RUN --mount=type=cache,target=$E echo",
    "RUN --mount=from=s1,target=/m true",
    "EXPOSE ${P:-80}",
    "LABEL k=$A",
    "USER ${U:-root}",
    "VOLUME /v$A",
    "ONBUILD RUN x",
    "STOPSIGNAL ${SIG:-TERM}",
]


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.sampled_from(LINES), min_size=1, max_size=8),
    build_args=st.dictionaries(
        st.sampled_from(["A", "B", "C", "P", "SIG"]), st.sampled_from(["", "1", "x y"])
    ),
)
def test_loading_never_raises_anything_but_located_parse_errors(
    lines: list[str], build_args: dict[str, str]
) -> None:
    text = "\n".join(lines) + "\n"
    try:
        df = parse(text, filename="Dockerfile")
    except DockerfileParseError:
        return
    try:
        stages = load_stages(df, build_args=build_args, build_platform="linux/amd64")
    except DockerfileParseError as err:
        assert err.file == "Dockerfile"
        assert err.line is not None or "target" in err.reason
        return
    for stage in stages.stages:
        assert stage.workdir.startswith("/")
        for step in stage.steps:
            assert step.refs <= {"A", "B", "C", "E", "P", "U", "SIG"}
            for source in step.sources:
                if source.kind == "stage":
                    assert source.stage is not None and source.stage < stage.index
