"""Typed instructions: every instruction, its flags and its errors, as BuildKit reads them.

Rows go through the real parser (``memobuild.dockerfile.parse``) so they exercise what a user
writes; error rows that the parser would already reject use ``validate=False`` so that this
layer's own check is what answers.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memobuild.dockerfile import parse
from memobuild.dockerfile.ast import Node
from memobuild.dockerfile.instructions import (
    AddInstruction,
    ArgDecl,
    ArgInstruction,
    BindMount,
    CacheMount,
    CmdInstruction,
    CopyInstruction,
    EntrypointInstruction,
    EnvInstruction,
    ExposeInstruction,
    FromInstruction,
    HealthcheckInstruction,
    InlineFile,
    Instruction,
    KeyValue,
    LabelInstruction,
    MaintainerInstruction,
    OnbuildInstruction,
    RunInstruction,
    SecretMount,
    ShellInstruction,
    SourceContent,
    SshMount,
    StopsignalInstruction,
    TmpfsMount,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
    heredoc_word,
    is_valid_signal,
    parse_go_duration,
    parse_instruction,
    parse_mount,
    parse_port_specs,
)
from memobuild.errors import DockerfileParseError

SECOND = 1_000_000_000


def one(text: str, *, validate: bool = True) -> Instruction:
    """The typed form of the last instruction of ``text``."""
    df = parse(text, filename="Dockerfile", validate=validate)
    return parse_instruction(df.nodes[-1], file="Dockerfile")


def fields(instruction: Instruction) -> dict[str, object]:
    return {k: v for k, v in vars(instruction).items() if k != "node"}


CASES: list[tuple[str, type[Instruction], dict[str, object]]] = [
    ("FROM alpine", FromInstruction, {"base": "alpine", "stage_name": None, "platform": None}),
    (
        "FROM --platform=$BUILDPLATFORM golang:1.22 AS Build",
        FromInstruction,
        {"base": "golang:1.22", "stage_name": "build", "platform": "$BUILDPLATFORM"},
    ),
    ("from alpine as x.y-z_1", FromInstruction, {"stage_name": "x.y-z_1"}),
    ("FROM ${IMAGE}:${TAG}", FromInstruction, {"base": "${IMAGE}:${TAG}"}),
    ("ARG A", ArgInstruction, {"args": (ArgDecl("A", None),), "ignored_flags": ()}),
    ("ARG A=1 B=", ArgInstruction, {"args": (ArgDecl("A", "1"), ArgDecl("B", ""))}),
    ('ARG A="x y"', ArgInstruction, {"args": (ArgDecl("A", '"x y"'),)}),
    ("ARG A=b=c", ArgInstruction, {"args": (ArgDecl("A", "b=c"),)}),
    ("ENV A=1", EnvInstruction, {"pairs": (KeyValue("A", "1"),)}),
    (
        'ENV A=1 B="two words" C=',
        EnvInstruction,
        {"pairs": (KeyValue("A", "1"), KeyValue("B", '"two words"'), KeyValue("C", ""))},
    ),
    ("ENV A 1 2", EnvInstruction, {"pairs": (KeyValue("A", "1 2", legacy=True),)}),
    ("LABEL a=b c=d", LabelInstruction, {"pairs": (KeyValue("a", "b"), KeyValue("c", "d"))}),
    (
        "RUN echo hi",
        RunInstruction,
        {
            "cmd_line": ("echo hi",),
            "prepend_shell": True,
            "mount_specs": (),
            "mounts": None,
            "network": "default",
            "security": "sandbox",
        },
    ),
    ('RUN ["echo", "hi"]', RunInstruction, {"cmd_line": ("echo", "hi"), "prepend_shell": False}),
    (
        "RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --network=none "
        "--security=insecure make",
        RunInstruction,
        {
            "mount_specs": ("type=cache,target=/c", "type=tmpfs,target=/t"),
            "network": "none",
            "security": "insecure",
            "flags_used": ("mount", "network", "security"),
        },
    ),
    ("RUN --network=host true", RunInstruction, {"network": "host"}),
    (
        "COPY a b /dst/",
        CopyInstruction,
        {"sources": ("a", "b"), "dest": "/dst/", "from_": None, "link": False},
    ),
    (
        "COPY --from=build --chown=1:2 --chmod=0755 --link --parents --exclude=*.md "
        "--exclude=tmp src /dst",
        CopyInstruction,
        {
            "sources": ("src",),
            "from_": "build",
            "chown": "1:2",
            "chmod": "0755",
            "link": True,
            "parents": True,
            "exclude": ("*.md", "tmp"),
        },
    ),
    ("COPY --link=false a b", CopyInstruction, {"link": False}),
    ("COPY --link=TRUE a b", CopyInstruction, {"link": True}),
    ('COPY ["a b", "c"]', CopyInstruction, {"sources": ("a b",), "dest": "c"}),
    (
        "ADD --keep-git-dir --checksum=sha256:abc --unpack=false --chmod=u+x https://x/y /y",
        AddInstruction,
        {
            "sources": ("https://x/y",),
            "keep_git_dir": True,
            "checksum": "sha256:abc",
            "unpack": False,
            "chmod": "u+x",
        },
    ),
    ("ADD a.tar /x", AddInstruction, {"unpack": None, "link": False, "exclude": ()}),
    ("WORKDIR /a b", WorkdirInstruction, {"path": "/a b"}),
    ("USER app:staff", UserInstruction, {"user": "app:staff"}),
    (
        "MAINTAINER Jane <j@example.com>",
        MaintainerInstruction,
        {"maintainer": "Jane <j@example.com>"},
    ),
    ("EXPOSE 8080 443/tcp 53/udp", ExposeInstruction, {"ports": ("443/tcp", "53/udp", "8080")}),
    ("VOLUME /a /b", VolumeInstruction, {"volumes": ("/a", "/b")}),
    ('VOLUME ["/a", "/b c"]', VolumeInstruction, {"volumes": ("/a", "/b c")}),
    ("CMD echo hi", CmdInstruction, {"cmd_line": ("echo hi",), "prepend_shell": True}),
    ('CMD ["a", "b"]', CmdInstruction, {"cmd_line": ("a", "b"), "prepend_shell": False}),
    ("CMD []", CmdInstruction, {"cmd_line": (), "prepend_shell": False}),
    ("ENTRYPOINT []", EntrypointInstruction, {"cmd_line": None}),
    ("ENTRYPOINT top -b", EntrypointInstruction, {"cmd_line": ("top -b",), "prepend_shell": True}),
    (
        'SHELL ["/bin/bash", "-o", "pipefail", "-c"]',
        ShellInstruction,
        {"shell": ("/bin/bash", "-o", "pipefail", "-c")},
    ),
    ("HEALTHCHECK NONE", HealthcheckInstruction, {"test": ("NONE",), "interval": 0}),
    (
        "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=1.5s --start-interval=250ms "
        "--retries=3 CMD curl -f http://localhost/",
        HealthcheckInstruction,
        {
            "test": ("CMD-SHELL", "curl -f http://localhost/"),
            "interval": 30 * SECOND,
            "timeout": 90 * SECOND,
            "start_period": 1_500_000_000,
            "start_interval": 250_000_000,
            "retries": 3,
        },
    ),
    (
        'HEALTHCHECK CMD ["curl", "-f", "x"]',
        HealthcheckInstruction,
        {"test": ("CMD", "curl", "-f", "x")},
    ),
    ("HEALTHCHECK --interval=0s CMD true", HealthcheckInstruction, {"interval": 0}),
    ("STOPSIGNAL SIGKILL", StopsignalInstruction, {"signal": "SIGKILL"}),
    ("ONBUILD RUN echo $HOME", OnbuildInstruction, {"expression": "RUN echo $HOME"}),
    ("onbuild   COPY . /app", OnbuildInstruction, {"expression": "COPY . /app"}),
]


@pytest.mark.parametrize(("text", "cls", "expected"), CASES, ids=[c[0] for c in CASES])
def test_instruction_table(text: str, cls: type[Instruction], expected: dict[str, object]) -> None:
    instruction = one(text)
    assert type(instruction) is cls
    assert cls.keyword == text.split()[0].upper()
    got = fields(instruction)
    for key, value in expected.items():
        assert got[key] == value, key
    assert instruction.line == 1
    assert instruction.node.keyword == text.split()[0].lower()


def test_every_instruction_docker_documents_has_a_type() -> None:
    documented = {
        "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
        "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
        "WORKDIR",
    }  # fmt: skip
    covered = {cls.keyword for _, cls, _ in CASES}
    assert covered == documented


def test_arg_and_stopsignal_ignore_flags_like_buildkit() -> None:
    arg = one("ARG --foo=1 A")
    assert isinstance(arg, ArgInstruction)
    assert arg.ignored_flags == ("--foo=1",)
    assert arg.args == (ArgDecl("A"),)
    stop = one("STOPSIGNAL --bar SIGTERM")
    assert isinstance(stop, StopsignalInstruction)
    assert stop.ignored_flags == ("--bar",)


def test_run_heredoc_files() -> None:
    run = one("RUN <<EOF\necho a\nEOF\n")
    assert isinstance(run, RunInstruction)
    assert run.cmd_line == ("<<EOF",)
    assert run.files == (InlineFile(name="EOF", data="echo a\n", chomp=False),)
    assert run.node.end_line == 3


def test_copy_heredoc_sources_expand_unless_quoted() -> None:
    copy = one("COPY <<A <<'B' /dst/\na $X\nA\nb $X\nB\n")
    assert isinstance(copy, CopyInstruction)
    assert copy.sources == ()
    assert copy.contents == (
        SourceContent(path="A", data="a $X\n", expand=True),
        SourceContent(path="B", data="b $X\n", expand=False),
    )
    chomped = one("COPY <<-EOT /f\n\t\tindented\nEOT\n")
    assert isinstance(chomped, CopyInstruction)
    assert chomped.contents == (SourceContent(path="EOT", data="indented\n", expand=True),)


def test_copy_mixes_paths_and_heredocs() -> None:
    copy = one("COPY a <<EOF b /dst/\nbody\nEOF\n")
    assert isinstance(copy, CopyInstruction)
    assert copy.sources == ("a", "b")
    assert [c.path for c in copy.contents] == ["EOF"]


def test_expand_methods_expand_exactly_the_documented_fields() -> None:
    def upper(word: str) -> str:
        return word.upper()

    copy = one("COPY --from=stage --chown=u --chmod=$m --exclude=x a /d")
    assert isinstance(copy, CopyInstruction)
    expanded = copy.expand(upper)
    assert (expanded.sources, expanded.dest, expanded.chown, expanded.chmod) == (
        ("A",),
        "/D",
        "U",
        "$M",
    )
    assert expanded.exclude == ("X",)
    assert expanded.from_ == "stage"  # --from is never expanded
    env = one("ENV a=b")
    assert isinstance(env, EnvInstruction)
    assert env.expand(upper).pairs == (KeyValue("A", "B"),)
    cmd = one("CMD echo $x")
    assert not hasattr(cmd, "expand")  # the shell expands CMD, not the frontend


def test_run_expand_types_the_mounts() -> None:
    run = one("RUN --mount=type=cache,target=$T,id=$ID --mount=type=secret,id=npm true")
    assert isinstance(run, RunInstruction)
    assert run.mounts is None
    env = {"$T": "/root/.npm", "$ID": "npm-cache"}
    typed = run.expand(lambda word: env.get(word, word))
    assert typed.mounts == (
        CacheMount(target="/root/.npm", id="npm-cache", sharing="shared"),
        SecretMount(id="npm", target="/run/secrets/npm"),
    )


def test_onbuild_trigger_is_parsed_on_demand() -> None:
    onbuild = one("ONBUILD COPY --chown=app . /src")
    assert isinstance(onbuild, OnbuildInstruction)
    trigger = onbuild.trigger_instruction()
    assert isinstance(trigger, CopyInstruction)
    assert trigger.chown == "app"


def test_onbuild_keeps_its_heredoc_in_the_expression() -> None:
    onbuild = one("ONBUILD RUN <<EOF\necho hi\nEOF\n")
    assert isinstance(onbuild, OnbuildInstruction)
    assert onbuild.expression == "RUN <<EOF\necho hi\nEOF"
    trigger = onbuild.trigger_instruction()
    assert isinstance(trigger, RunInstruction)
    assert trigger.files == (InlineFile(name="EOF", data="echo hi\n", chomp=False),)


FLAG_ERRORS = [
    ("COPY --form=a a b", r"unknown flag --form for COPY \(did you mean --from\?\)"),
    ("COPY --bogus a b", r"unknown flag --bogus for COPY; COPY accepts --chmod, --chown"),
    ("ADD --from=x a b", r"unknown flag --from for ADD"),
    ("ADD --parents a b", r"unknown flag --parents for ADD"),
    ("ENV --x=1 A=b", r"unknown flag --x for ENV; ENV takes no flags"),
    ("LABEL --x a=b", r"ENV|LABEL takes no flags"),
    ("WORKDIR --x=1 /a", r"WORKDIR takes no flags"),
    ("USER --x=1 me", r"USER takes no flags"),
    ("EXPOSE --x=1 80", r"EXPOSE takes no flags"),
    ("VOLUME --x=1 /v", r"VOLUME takes no flags"),
    ("CMD --x=1 a", r"CMD takes no flags"),
    ("ENTRYPOINT --x=1 a", r"ENTRYPOINT takes no flags"),
    ('SHELL --x=1 ["a"]', r"SHELL takes no flags"),
    ("MAINTAINER --x=1 me", r"MAINTAINER takes no flags"),
    ("FROM --plattform=linux/amd64 a", r"did you mean --platform"),
    ("RUN --mount type=bind x", r"missing a value on flag --mount"),
    ("COPY --chown a b", r"missing a value on flag --chown"),
    ("COPY --link= a b", r"missing a value on flag --link"),
    ("COPY --link=maybe a b", r"expecting a boolean value for flag --link, not 'maybe'"),
    ("COPY --from=a --from=b x y", r"duplicate flag --from"),
    ("COPY --from= a b", r"COPY --from needs a stage name"),
    ("RUN --network=bridge x", r"invalid network mode 'bridge'"),
    ("RUN --security=none x", r"security 'none' is not valid"),
    ("RUN --mount=type=bind,from=$STAGE x", r"doesn't support variable expansion"),
    ('RUN --mount=type=bind,\\"from x', r"failed to parse csv mounts"),
    ("HEALTHCHECK --interval=1us CMD x", r'Interval "interval" cannot be less than 1ms'),
    ("HEALTHCHECK --timeout=abc CMD x", r"invalid duration 'abc'"),
    ("HEALTHCHECK --timeout=10 CMD x", r"missing unit"),
    ("HEALTHCHECK --retries=-1 CMD x", r"--retries cannot be negative \(-1\)"),
    ("HEALTHCHECK --retries=x CMD x", r"invalid --retries value"),
    ("HEALTHCHECK FOO x", r'Unknown type "FOO" in HEALTHCHECK \(try CMD\)'),
]


@pytest.mark.parametrize(("text", "message"), FLAG_ERRORS, ids=[c[0] for c in FLAG_ERRORS])
def test_flag_errors(text: str, message: str) -> None:
    with pytest.raises(DockerfileParseError, match=message) as info:
        one("FROM scratch\n" + text)
    assert info.value.line == 2
    assert info.value.file == "Dockerfile"
    assert str(info.value).startswith("Dockerfile:2: ")


def test_healthcheck_none_does_not_read_flags_like_buildkit() -> None:
    health = one("HEALTHCHECK --bogus=1 NONE")
    assert isinstance(health, HealthcheckInstruction)
    assert health.test == ("NONE",)


def test_a_double_dash_ends_the_flags() -> None:
    copy = parse_instruction(Node(keyword="copy", args=("a", "b"), flags=("--link", "--", "--x")))
    assert isinstance(copy, CopyInstruction)
    assert copy.link


ARGUMENT_ERRORS = [
    ("FROM a b", r"FROM requires either one or three arguments"),
    ("FROM a AS 1st", r"invalid name for build stage: '1st'"),
    ("FROM a AS my@stage", r"invalid name for build stage"),
    ("COPY a", r"COPY requires at least two arguments"),
    ("ADD a", r"ADD requires at least two arguments"),
    ("COPY a <<EOF\nx\nEOF\n", r"COPY cannot accept a heredoc as a destination"),
    ("WORKDIR", r"WORKDIR requires exactly one argument"),
    ("USER", r"USER requires exactly one argument"),
    ("STOPSIGNAL", r"STOPSIGNAL requires exactly one argument"),
    ("MAINTAINER", r"MAINTAINER requires exactly one argument"),
    ("EXPOSE", r"EXPOSE requires at least one argument"),
    ("VOLUME", r"VOLUME requires at least one argument"),
    ('VOLUME ["/a", " "]', r"VOLUME specified can not be an empty string"),
    ("ENV", r"ENV requires at least one argument"),
    ("LABEL", r"LABEL requires at least one argument"),
    ("ARG", r"ARG requires at least one argument"),
    ("ARG =x", r"ARG names can not be blank"),
    ("ENV =x", r"ENV names can not be blank"),
    ("SHELL sh -c", r"SHELL requires the arguments to be in JSON form"),
    ("SHELL []", r"SHELL requires at least one argument"),
    ("HEALTHCHECK", r"HEALTHCHECK requires at least one argument"),
    ("HEALTHCHECK NONE x", r"HEALTHCHECK NONE takes no arguments"),
    ("HEALTHCHECK CMD", r"Missing command after HEALTHCHECK CMD"),
    ("ONBUILD ONBUILD RUN x", r"Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("ONBUILD FROM alpine", r"FROM isn't allowed as an ONBUILD trigger"),
    ("ONBUILD MAINTAINER me", r"MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("BOGUS x", r"unknown instruction: BOGUS"),
    ("COPPY a b", r"unknown instruction: COPPY \(did you mean COPY\?\)"),
]


@pytest.mark.parametrize(("text", "message"), ARGUMENT_ERRORS, ids=[c[0] for c in ARGUMENT_ERRORS])
def test_argument_errors(text: str, message: str) -> None:
    with pytest.raises(DockerfileParseError, match=message) as info:
        one("FROM scratch\n\n" + text, validate=False)
    assert (info.value.file, info.value.line) == ("Dockerfile", 3)


def test_key_value_pairs_from_older_parsers_are_accepted() -> None:
    # Before BuildKit 0.13 ENV nodes were (key, value) pairs; both shapes mean the same.
    pairs = parse_instruction(Node(keyword="env", args=("A", "1", "B", "2")))
    triples = parse_instruction(Node(keyword="env", args=("A", "1", "=", "B", "2", "=")))
    assert fields(pairs) == fields(triples)
    with pytest.raises(DockerfileParseError, match="too many arguments"):
        parse_instruction(Node(keyword="env", args=("A", "1", "B")))


MOUNTS = [
    ("type=bind,target=/src", BindMount(target="/src")),
    ("target=/src", BindMount(target="/src")),  # bind is the default type
    (
        "type=bind,from=build,source=/out,target=/in,rw",
        BindMount(target="/in", source="/out", from_="build", readonly=False),
    ),
    ("type=bind,src=a,dst=b,readwrite=true", BindMount(target="b", source="a", readonly=False)),
    ("type=bind,destination=/d,ro=false", BindMount(target="/d", readonly=False)),
    ("type=cache,target=/root/.cache", CacheMount(target="/root/.cache", id="/root/.cache")),
    ("type=cache,target=/a/../b/", CacheMount(target="/a/../b/", id="/b")),
    (
        "type=cache,id=go,target=/go,sharing=LOCKED,mode=0700,uid=1000,gid=1000,ro",
        CacheMount(
            target="/go",
            id="go",
            sharing="locked",
            readonly=True,
            mode=0o700,
            uid=1000,
            gid=1000,
        ),
    ),
    ("Type=CACHE,Target=/c", CacheMount(target="/c", id="/c")),  # keys and type are lower-cased
    ("type=tmpfs,target=/scratch", TmpfsMount(target="/scratch")),
    ("type=tmpfs,target=/scratch,size=64m", TmpfsMount(target="/scratch", size=64 << 20)),
    ("type=tmpfs,target=/s,size=1.5g", TmpfsMount(target="/s", size=int(1.5 * (1 << 30)))),
    ("type=secret,id=aws", SecretMount(id="aws", target="/run/secrets/aws")),
    ("type=secret,target=/root/.npmrc", SecretMount(id=".npmrc", target="/root/.npmrc")),
    ("type=secret,source=token", SecretMount(id="token", target="/run/secrets/token")),
    (
        "type=secret,id=tok,env=TOKEN,required",
        SecretMount(id="tok", target=None, env="TOKEN", required=True),
    ),
    (
        "type=secret,id=k,target=/k,mode=0440,uid=5,gid=6,required=false",
        SecretMount(id="k", target="/k", mode=0o440, uid=5, gid=6),
    ),
    ("type=ssh", SshMount()),
    (
        "type=ssh,id=github,target=/ssh,required=true,mode=0666",
        SshMount(id="github", target="/ssh", required=True, mode=0o666),
    ),
    ('type=bind,"source=a,b",target=/x', BindMount(target="/x", source="a,b")),
]


@pytest.mark.parametrize(("spec", "expected"), MOUNTS, ids=[m[0] for m in MOUNTS])
def test_mount_table(spec: str, expected: object) -> None:
    assert parse_mount(spec) == expected


MOUNT_ERRORS = [
    ("type=volume,target=/v", r"unsupported mount type 'volume'"),
    ("type=bnd,target=/v", r"did you mean bind"),
    ("type=bind,target=/v,mode=0700", r'mode not allowed for "bind" type mounts'),
    ("type=tmpfs,target=/v,uid=1", r'uid not allowed for "tmpfs" type mounts'),
    ("type=bind,target=/v,gid=1", r'gid not allowed for "bind" type mounts'),
    ("type=cache,target=/v,sharing=everyone", r"unsupported sharing value 'everyone'"),
    ("type=bind,target=/v,sharing=locked", r"invalid cache sharing set for bind mount"),
    ("type=secret,id=a,from=b", r"secret mount should not have a from"),
    ("type=secret,id=a,sharing=shared", r"secret mount should not define sharing"),
    ("type=secret", r"one of source, target or id required"),
    ("type=secret,source=a,id=b", r"both source and id can't be set"),
    ("type=bind,target=/v,required", r"unexpected key 'required' for mount type 'bind'"),
    ("required,type=secret,id=x", r"put type= first"),
    ("type=cache,target=/v,size=1g", r"unexpected key 'size' for mount type 'cache'"),
    ("type=tmpfs,target=/v,size=lots", r"invalid value for size: lots"),
    ("type=cache,target=/v,mode=0999", r"invalid value 0999 for mode"),
    ("type=cache,target=/v,uid=-1", r"invalid value -1 for uid"),
    ("type=bind,target=/v,ro=maybe", r"invalid value for ro: maybe"),
    ("type=bind,target=/v,trget=/x", r"unexpected key 'trget'.*did you mean target"),
    ("type=bind,target", r"invalid field 'target' must be a key=value pair"),
    ("type=ssh,source=/a", r"ssh mount does not support source"),
    ('type=bind,x"y', r'bare " in non-quoted-field'),
]


@pytest.mark.parametrize(("spec", "message"), MOUNT_ERRORS, ids=[m[0] for m in MOUNT_ERRORS])
def test_mount_errors(spec: str, message: str) -> None:
    with pytest.raises(DockerfileParseError, match=message):
        parse_mount(spec)


def test_mount_values_are_expanded_before_they_are_read() -> None:
    env = {"MODE": "0755", "T": "cache"}

    def expand(word: str) -> str:
        return re.sub(r"\$(\w+)", lambda m: env[m.group(1)], word)

    mount = parse_mount("type=$T,target=/c,mode=$MODE", expand)
    assert mount == CacheMount(target="/c", id="/c", mode=0o755)


DURATIONS = [
    ("0", 0),
    ("30s", 30 * SECOND),
    ("1m30s", 90 * SECOND),
    ("1.5h", 5400 * SECOND),
    ("250ms", 250_000_000),
    ("10us", 10_000),
    ("10µs", 10_000),
    ("7ns", 7),
    ("-2s", -2 * SECOND),
    ("+1m", 60 * SECOND),
    (".5s", 500_000_000),
    ("1h2m3s4ms", 3723 * SECOND + 4_000_000),
]


@pytest.mark.parametrize(("text", "nanos"), DURATIONS)
def test_go_durations(text: str, nanos: int) -> None:
    assert parse_go_duration(text) == nanos


@pytest.mark.parametrize("text", ["", "s", "1", "1x", "1.s.", "--1s", "1 s", "."])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(DockerfileParseError):
        parse_go_duration(text)


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("SIGTERM", True),
        ("TERM", True),
        ("sigkill", True),
        ("9", True),
        ("SIGRTMIN+3", True),
        ("RTMAX-1", True),
        ("0", False),
        ("SIGFOO", False),
        ("", False),
        ("SIG", False),
    ],
)
def test_signals(text: str, valid: bool) -> None:
    assert is_valid_signal(text) is valid


@pytest.mark.parametrize(
    ("words", "exposed"),
    [
        (["80"], ("80/tcp",)),
        (["80/TCP", "53/udp", "9/sctp"], ("9/sctp", "53/udp", "80/tcp")),
        (["8000-8002/udp"], ("8000/udp", "8001/udp", "8002/udp")),
        (["80", "80/tcp"], ("80/tcp",)),
        (["127.0.0.1:8080:80"], ("80/tcp",)),
    ],
)
def test_port_specs(words: list[str], exposed: tuple[str, ...]) -> None:
    assert parse_port_specs(words) == exposed


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["80/icmp"], "invalid proto: icmp"),
        (["http"], "invalid containerPort"),
        (["70000"], "invalid containerPort"),
        (["90-80"], "invalid range"),
    ],
)
def test_bad_port_specs(words: list[str], message: str) -> None:
    with pytest.raises(DockerfileParseError, match=message):
        parse_port_specs(words)


@pytest.mark.parametrize(
    ("word", "name", "expand", "chomp"),
    [
        ("<<EOF", "EOF", True, False),
        ("<<-EOF", "EOF", True, True),
        ("<<'EOF'", "EOF", False, False),
        ('<<"EOF"', "EOF", False, False),
        ('<<E"O"F', "EOF", False, False),
        ("3<<EOF", "EOF", True, False),
    ],
)
def test_heredoc_words(word: str, name: str, expand: bool, chomp: bool) -> None:
    parsed = heredoc_word(word)
    assert parsed is not None
    assert (parsed.name, parsed.expand, parsed.chomp) == (name, expand, chomp)


@pytest.mark.parametrize("word", ["<EOF", "a<<EOF", "<<", "<<a b", "EOF", "<<<EOF"])
def test_not_heredoc_words(word: str) -> None:
    assert heredoc_word(word) is None


@given(
    flags=st.lists(
        st.text(alphabet="-abcdefghijklmnoprstuvwxyz=01", min_size=1, max_size=12), max_size=4
    ),
    keyword=st.sampled_from(["copy", "add", "run", "from", "env", "healthcheck", "workdir"]),
)
def test_any_flags_give_an_instruction_or_a_located_parse_error(
    flags: list[str], keyword: str
) -> None:
    args = {"healthcheck": ("CMD", "true"), "env": ("A", "b", "=")}.get(keyword, ("a", "b"))
    if keyword in ("from", "workdir"):
        args = ("a",)
    node = Node(keyword=keyword, args=args, flags=tuple(flags), start_line=7, end_line=7)
    try:
        instruction = parse_instruction(node, file="Dockerfile")
    except DockerfileParseError as err:
        assert err.line == 7
        return
    assert instruction.node is node
