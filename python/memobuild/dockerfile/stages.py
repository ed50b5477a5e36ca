"""Build stages: typed, expanded instructions grouped by FROM, with BuildKit's ARG/ENV scoping.

This is the last step of the front end. It walks the Dockerfile the way BuildKit's
``dockerfile2llb`` dispatches it, so that every value the frontend expands (FROM, ADD, COPY,
ENV, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR, ARG defaults, RUN ``--mount`` values,
ONBUILD triggers when they run) comes out exactly as ``docker build`` would compute it, and
records what each step could see, because the cache key of a step is made of exactly that.

Public API::

    load_stages(df: Dockerfile, *, build_args: Mapping[str, str] | None = None,
                target_platform: str | Platform | None = None,
                build_platform: str | Platform | None = None,
                target: str | None = None,
                resolve_image: ImageResolver | None = None) -> BuildStages

    BuildStages  .stages .global_args .proxy_env .warnings .target
                 .stage(name_or_index) .reachable(target=None) .unused_build_args(target=None)
    Stage        .index .name .base .base_stage .platform .requested_platform .steps
                 .instructions .env .state_env .workdir .user .shell .used_args
                 .build_args_used .stage_deps .image_refs .is_scratch
    Step         .instruction .env .args .workdir .user .shell .refs .sources .onbuild
    Source       .kind ("stage" | "image" | "scratch") .stage .image
    Platform     .parse(text) .os .architecture .variant, str(platform) -> "linux/arm/v7"
    BaseImageConfig, ImageResolver, host_platform()

The rules, from Docker's reference and BuildKit's behaviour:

* ARGs before the first FROM form the global scope, with the automatic platform args
  (TARGETPLATFORM, TARGETOS, TARGETARCH, TARGETVARIANT, BUILDPLATFORM, BUILDOS, BUILDARCH,
  BUILDVARIANT) and TARGETSTAGE (the ``--target``, else the last stage's name, else
  ``default``); ``--build-arg`` overrides any of them. The global scope is
  used by FROM (base and ``--platform``) only; inside a stage a global ARG is visible once it is
  re-declared with ``ARG NAME`` (no default).
* In a stage, ``ARG NAME=default`` takes the ``--build-arg`` value when one is given (not
  expanded), else the default expanded with the stage's environment. ARG values and ENV values
  share one environment in instruction order, so an ENV after an ARG of the same name wins (the
  documented rule) and the image config gets only the ENVs.
* HTTP_PROXY, HTTPS_PROXY, FTP_PROXY, NO_PROXY, ALL_PROXY (any case) given as build args reach
  RUN's environment without a declaration (``BuildStages.proxy_env``); like BuildKit they are
  not in the expansion environment unless declared, and not part of a step's ``env``.
* A stage that starts FROM an earlier stage inherits that stage's environment, ARGs, WORKDIR,
  USER, SHELL and platform (its own ``--platform`` is then ignored, as in BuildKit) and runs
  its ONBUILD triggers first, placed on the FROM line. A base image's config comes from
  ``resolve_image`` when given (ENV, WORKDIR, USER, SHELL, ONBUILD); PATH is always set.
* FROM names an earlier stage by its exact (lower-case) name, never by index (BuildKit would
  pull an image called ``0``); ``COPY --from`` and ``RUN --mount from=`` match stage names
  case-insensitively and ``COPY --from`` also takes a stage index; anything else is an image.
  The stage must be defined above. ``--from`` values are never expanded (BuildKit's rule:
  define an alias stage instead).

Deliberate differences from BuildKit, all towards an earlier, clearer error: a stage name used
twice is an error (BuildKit only warns), ``COPY --from=`` with an empty value is an error
(BuildKit copies from the context), and invalid image references are reported here rather than
when the image is pulled.
"""

from __future__ import annotations

import dataclasses
import platform as _host
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from memobuild.dockerfile.ast import Dockerfile, Node, ParseWarning
from memobuild.dockerfile.instructions import (
    AddInstruction,
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
    Instruction,
    LabelInstruction,
    MaintainerInstruction,
    Mount,
    OnbuildInstruction,
    RunInstruction,
    ShellInstruction,
    StopsignalInstruction,
    TmpfsMount,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
    parse_instruction,
)
from memobuild.dockerfile.shell import ExpansionBudget, Lexer, ShellWord
from memobuild.errors import DockerfileParseError

__all__ = [
    "BaseImageConfig",
    "BuildStages",
    "ImageResolver",
    "Platform",
    "Source",
    "Stage",
    "Step",
    "host_platform",
    "load_stages",
]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ("/bin/sh", "-c")
PROXY_ARGS = (
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
)  # fmt: skip
# Build args the frontend itself reads; passing them never counts as unused.
FRONTEND_ARGS = frozenset(
    {
        "BUILDKIT_CACHE_MOUNT_NS",
        "BUILDKIT_CONTEXT_KEEP_GIT_DIR",
        "BUILDKIT_INLINE_CACHE",
        "BUILDKIT_MULTI_PLATFORM",
        "BUILDKIT_SANDBOX_HOSTNAME",
        "BUILDKIT_SYNTAX",
        "BUILDKIT_SBOM_SCAN_CONTEXT",
        "BUILDKIT_SBOM_SCAN_STAGE",
        "SOURCE_DATE_EPOCH",
    }
)
# ARGs BuildKit keeps out of the environment (they configure the frontend, not the build).
_NON_ENV_ARGS = frozenset({"BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"})
_RESERVED_STAGE_NAMES = frozenset({"context", "scratch"})

# --------------------------------------------------------------------------------------------
# Platforms (containerd's platforms.Parse / Normalize, the subset a Linux builder meets)

_OS_NAMES = (
    "aix android darwin dragonfly freebsd hurd illumos ios js linux nacl netbsd openbsd plan9 "
    "solaris wasip1 windows zos"
)
_ARCH_NAMES = (
    "386 amd64 amd64p32 arm armbe arm64 arm64be loong64 mips mipsle mips64 mips64le mips64p32 "
    "mips64p32le ppc ppc64 ppc64le riscv riscv64 s390 s390x sparc sparc64 wasm"
)
_KNOWN_OS = frozenset(_OS_NAMES.split())
_KNOWN_ARCH = frozenset(_ARCH_NAMES.split())
_PLATFORM_PART = re.compile(r"[A-Za-z0-9_-]+")


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "" if variant in ("8", "v8", "v8.0") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
    return arch, variant


@dataclass(frozen=True, order=True)
class Platform:
    """An OCI platform, normalised as containerd does (``linux/arm`` means ``linux/arm/v7``)."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os``, ``arch``, ``os/arch`` or ``os/arch/variant``."""
        parts = text.split("/")
        if not text or len(parts) > 3 or not all(_PLATFORM_PART.fullmatch(p) for p in parts):
            raise DockerfileParseError(
                f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/amd64"
            )
        os_name = parts[0].lower()
        if os_name == "macos":
            os_name = "darwin"
        if len(parts) == 1:
            host = host_platform()
            if os_name in _KNOWN_OS:
                return cls(os_name, host.architecture, host.variant)
            arch, variant = _normalize_arch(parts[0], "")
            if arch in _KNOWN_ARCH:
                return cls(host.os, arch, variant)
            raise DockerfileParseError(
                f"invalid platform {text!r}: unknown operating system or architecture"
            )
        if os_name not in _KNOWN_OS:
            raise DockerfileParseError(f"invalid platform {text!r}: unknown operating system")
        arch, variant = _normalize_arch(parts[1], parts[2] if len(parts) == 3 else "")
        if arch not in _KNOWN_ARCH:
            raise DockerfileParseError(f"invalid platform {text!r}: unknown architecture")
        return cls(os_name, arch, variant)

    def __str__(self) -> str:
        tail = f"/{self.variant}" if self.variant else ""
        return f"{self.os}/{self.architecture}{tail}"


def host_platform() -> Platform:
    """The platform this process runs on (BuildKit's default build platform)."""
    machine = _host.machine().lower()
    table = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", ""),
        "arm64": ("arm64", ""),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "i386": ("386", ""),
        "i686": ("386", ""),
    }
    arch, variant = table.get(machine, (machine or "amd64", ""))
    return Platform("linux", arch, variant)


def _as_platform(value: str | Platform | None, default: Platform) -> Platform:
    if value is None:
        return default
    if isinstance(value, Platform):
        return value
    return Platform.parse(value)


# --------------------------------------------------------------------------------------------
# Image references (distribution/reference grammar, enough to reject what a pull would reject)

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)


def _reference_error(ref: str) -> str | None:
    """Why ``ref`` is not an image reference docker could pull, or None if it is one."""
    if not ref:
        return "invalid reference format: empty"
    if re.fullmatch(r"[a-f0-9]{64}", ref):
        return "cannot specify 64-byte hexadecimal strings as a repository name"
    head, slash, _ = ref.partition("/")
    has_domain = bool(slash) and (
        any(c in head for c in ".:") or head == "localhost" or head.lower() != head
    )
    remainder = ref.partition("/")[2] if has_domain else ref
    name = remainder.split("@", 1)[0]
    if ":" in name:
        name = name.rsplit(":", 1)[0]
    if name.lower() != name:
        return "invalid reference format: repository name must be lowercase"
    match = _REFERENCE.fullmatch(ref)
    if match is None or (has_domain and match.group("domain") is None):
        return "invalid reference format"
    full_name = (match.group("domain") + "/" if match.group("domain") else "") + match.group("path")
    if len(full_name) > 255:
        return "invalid reference format: repository name must not be more than 255 characters"
    return None


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class BaseImageConfig:
    """What a base image's config contributes to a stage before its first instruction."""

    env: tuple[tuple[str, str], ...] = ()
    workdir: str = ""
    user: str = ""
    shell: tuple[str, ...] = ()
    onbuild: tuple[str, ...] = ()


ImageResolver = Callable[[str, Platform], BaseImageConfig | None]
"""Looks up an image's config for (reference, platform); None when it is not known."""


@dataclass(frozen=True)
class Source:
    """Where ``COPY --from`` or ``RUN --mount from=`` reads from."""

    kind: str  # "stage", "image" or "scratch"
    stage: int | None = None
    image: str | None = None


@dataclass(frozen=True)
class Step:
    """One instruction of a stage, expanded, with what it could see when it ran.

    ``env`` is the environment the instruction saw (ENV values and declared ARG values, in
    order, before the instruction took effect); ``args`` the ARGs declared so far in the stage
    with their values; ``refs`` the variable names its expansion looked up. ``sources`` has one
    entry per ``--from``/``from=`` reference, in order. ``onbuild`` marks a trigger inherited
    from the base.
    """

    instruction: Instruction
    env: tuple[tuple[str, str], ...]
    args: tuple[tuple[str, str | None], ...]
    workdir: str
    user: str
    shell: tuple[str, ...]
    refs: frozenset[str] = frozenset()
    sources: tuple[Source, ...] = ()
    onbuild: bool = False

    @property
    def node(self) -> Node:
        return self.instruction.node

    @property
    def line(self) -> int:
        return self.instruction.line


@dataclass(frozen=True)
class Stage:
    """One FROM and the steps after it.

    ``base`` is the FROM value after expansion; ``base_stage`` the index of the earlier stage
    it names, if any. ``env`` is what the image config's Env will hold (base image env plus
    ENV), ``state_env`` the build-time environment at the end (ARG values included).
    ``args`` are the ARGs in scope at the end (declared here or inherited from the base stage).
    ``used_args`` are the ARG names the stage used (declared, or matched in FROM/--platform, as
    BuildKit counts them); ``build_args_used`` those of them given with ``--build-arg``.
    """

    index: int
    name: str | None
    base: str
    base_stage: int | None
    platform: Platform
    requested_platform: str | None
    node: Node = field(compare=False, repr=False)
    steps: tuple[Step, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    state_env: tuple[tuple[str, str], ...] = ()
    workdir: str = "/"
    user: str = ""
    shell: tuple[str, ...] = DEFAULT_SHELL
    args: tuple[tuple[str, str | None], ...] = ()
    used_args: frozenset[str] = frozenset()
    build_args_used: frozenset[str] = frozenset()
    stage_deps: frozenset[int] = frozenset()
    image_refs: frozenset[str] = frozenset()

    @property
    def instructions(self) -> tuple[Instruction, ...]:
        return tuple(step.instruction for step in self.steps)

    @property
    def is_scratch(self) -> bool:
        return self.base_stage is None and self.base == "scratch"

    @property
    def display_name(self) -> str:
        return self.name if self.name else f"stage-{self.index}"


@dataclass(frozen=True)
class BuildStages:
    """Every stage of a Dockerfile, plus the build-wide values they were computed with."""

    stages: tuple[Stage, ...]
    target: int
    global_args: tuple[tuple[str, str], ...]
    meta_args: tuple[ArgInstruction, ...]
    build_args: tuple[tuple[str, str], ...]
    proxy_env: tuple[tuple[str, str], ...]
    build_platform: Platform
    target_platform: Platform
    escape: str = "\\"
    warnings: tuple[ParseWarning, ...] = ()
    _global_deps: tuple[tuple[str, frozenset[str]], ...] = field(default=(), repr=False)

    def stage(self, ref: str | int) -> Stage:
        """A stage by index or by name (case-insensitive)."""
        if isinstance(ref, int):
            if 0 <= ref < len(self.stages):
                return self.stages[ref]
            raise KeyError(ref)
        for stage in self.stages:
            if stage.name is not None and stage.name == ref.lower():
                return stage
        raise KeyError(ref)

    def reachable(self, target: str | int | None = None) -> tuple[int, ...]:
        """Indexes of the stages ``target`` (default: the build target) needs, sorted."""
        start = self.target if target is None else self.stage(target).index
        seen: set[int] = set()
        todo = [start]
        while todo:
            index = todo.pop()
            if index in seen:
                continue
            seen.add(index)
            todo.extend(self.stages[index].stage_deps)
        return tuple(sorted(seen))

    def unused_build_args(self, target: str | int | None = None) -> frozenset[str]:
        """``--build-arg`` names no stage needed for ``target`` consumed (BuildKit warns)."""
        used: set[str] = set()
        for index in self.reachable(target):
            used |= self.stages[index].used_args
        deps = dict(self._global_deps)
        todo = list(used)
        while todo:
            for dep in deps.get(todo.pop(), frozenset()):
                if dep not in used:
                    used.add(dep)
                    todo.append(dep)
        proxies = {k for k, _ in self.proxy_env}
        return (
            frozenset(k for k, _ in self.build_args if k not in used and k not in proxies)
            - FRONTEND_ARGS
        )


# --------------------------------------------------------------------------------------------
# Loading


def load_stages(
    df: Dockerfile,
    *,
    build_args: Mapping[str, str] | None = None,
    target_platform: str | Platform | None = None,
    build_platform: str | Platform | None = None,
    target: str | None = None,
    resolve_image: ImageResolver | None = None,
) -> BuildStages:
    """Group ``df`` into stages and expand every value the frontend expands.

    ``build_args`` are the ``--build-arg`` values; ``target_platform`` defaults to
    ``build_platform``, which defaults to this machine; ``target`` is the stage ``--target``
    names (default: the last); ``resolve_image`` provides base image configs (ENV, WORKDIR,
    USER, SHELL, ONBUILD) when the caller has them, otherwise a base image contributes only the
    default PATH, as scratch does. Raises DockerfileParseError with file and line.
    """
    return _Loader(
        df,
        build_args=dict(build_args or {}),
        build_platform=_as_platform(build_platform, host_platform()),
        target_platform=target_platform,
        target=target,
        resolve_image=resolve_image,
    ).load()


# What the steps of one Dockerfile may see of their environment, summed over the steps: each
# step's ENV/ARG values are copied into it, and a RUN's cache key hashes all of them, so a file
# alternating thousands of ENV and RUN lines would cost time and memory quadratic in its size.
# Real Dockerfiles stay far below (300 steps seeing 100 variables are 30,000 entries).
MAX_ENVIRONMENT_ENTRIES = 2_000_000
MAX_ENVIRONMENT_BYTES = 256 << 20


@dataclass
class _State:
    """The mutable dispatch state of one stage (BuildKit's dispatchState)."""

    env: dict[str, str]  # build-time environment: ENV and ARG values
    image_env: dict[str, str]  # the image config's Env: base image env and ENV only
    args: list[tuple[str, str | None]]
    workdir: str
    user: str
    shell: tuple[str, ...]


class _Loader:
    def __init__(
        self,
        df: Dockerfile,
        *,
        build_args: dict[str, str],
        build_platform: Platform,
        target_platform: str | Platform | None,
        target: str | None,
        resolve_image: ImageResolver | None,
    ) -> None:
        self.df = df
        self.file = df.filename
        self.lexer = Lexer(escape=df.escape)
        # Heredoc bodies are expanded with quotes as content and a fixed backslash escape.
        self.heredoc_lexer = Lexer(escape="\\", skip_process_quotes=True)
        # One budget for every expansion in the file (see shell.ExpansionBudget).
        self.budget = ExpansionBudget()
        self.environment_entries = 0
        self.environment_bytes = 0
        self.build_args = build_args
        self.build_platform = build_platform
        self.target_platform = _as_platform(target_platform, build_platform)
        self.target_name = target
        self.resolve_image = resolve_image
        self.warnings: list[ParseWarning] = []
        self.global_args: dict[str, str] = {}
        self.proxy_env: tuple[tuple[str, str], ...] = ()
        self.names: dict[str, int] = {}
        self.stage_count = 0
        self.stages: list[Stage] = []
        self.current: tuple[int, str] = (0, "")

    # -- errors ------------------------------------------------------------------------------

    def error(self, message: str, node: Node) -> DockerfileParseError:
        return DockerfileParseError(message, file=self.file, line=node.start_line or None)

    def relocate(self, err: DockerfileParseError, node: Node) -> DockerfileParseError:
        if err.line is not None:
            return err
        return self.error(err.reason, node)

    def warn(self, message: str, node: Node, rule: str = "") -> None:
        self.warnings.append(ParseWarning(message=message, line=node.start_line, rule=rule))

    # -- top level ---------------------------------------------------------------------------

    def load(self) -> BuildStages:
        meta: list[ArgInstruction] = []
        groups: list[tuple[FromInstruction, list[Instruction]]] = []
        for node in self.df.nodes:
            instruction = parse_instruction(node, file=self.file)
            if isinstance(instruction, FromInstruction):
                groups.append((instruction, []))
            elif not groups:
                if not isinstance(instruction, ArgInstruction):
                    raise self.error(
                        f"{instruction.keyword} before the first FROM: only ARG may come before "
                        "FROM (no build stage in current context)",
                        node,
                    )
                meta.append(instruction)
            else:
                groups[-1][1].append(instruction)
        if not groups:
            node = self.df.nodes[-1] if self.df.nodes else Node(keyword="", args=())
            raise self.error("dockerfile contains no stages to build (add a FROM)", node)

        self.check_stage_names(groups)
        target_index = self.find_target(groups)
        # TARGETSTAGE: the --target as given, else the last stage's name, else "default".
        target_stage_name = self.target_name or groups[-1][0].stage_name or "default"

        global_args, global_deps = self.global_scope(meta, target_stage_name)
        self.global_args = global_args
        proxy_names = {p.lower() for p in PROXY_ARGS}
        self.proxy_env = tuple(
            (k, v) for k, v in self.build_args.items() if k.lower() in proxy_names
        )

        for index, (from_instruction, _) in enumerate(groups):
            if from_instruction.stage_name:
                self.names[from_instruction.stage_name] = index
        self.stage_count = len(groups)
        for index, (from_instruction, body) in enumerate(groups):
            self.stages.append(self.load_stage(index, from_instruction, body))

        return BuildStages(
            stages=tuple(self.stages),
            target=target_index,
            global_args=tuple(global_args.items()),
            meta_args=tuple(meta),
            build_args=tuple(self.build_args.items()),
            proxy_env=self.proxy_env,
            build_platform=self.build_platform,
            target_platform=self.target_platform,
            escape=self.df.escape,
            warnings=tuple(self.warnings),
            _global_deps=tuple(global_deps.items()),
        )

    def check_stage_names(self, groups: list[tuple[FromInstruction, list[Instruction]]]) -> None:
        seen: dict[str, int] = {}
        for from_instruction, _ in groups:
            name = from_instruction.stage_name
            if name is None:
                continue
            if name in seen:
                raise self.error(
                    f"stage name {name!r} is already used by the stage on line {seen[name]}; "
                    "stage names must be unique",
                    from_instruction.node,
                )
            seen[name] = from_instruction.line
            if name in _RESERVED_STAGE_NAMES:
                self.warn(
                    f"Stage name should not use the same name as reserved stage {name!r}",
                    from_instruction.node,
                    "ReservedStageName",
                )

    def find_target(self, groups: list[tuple[FromInstruction, list[Instruction]]]) -> int:
        if self.target_name is None:
            return len(groups) - 1
        wanted = self.target_name.lower()
        for index, (from_instruction, _) in enumerate(groups):
            if from_instruction.stage_name == wanted:
                return index
        names = [f.stage_name for f, _ in groups if f.stage_name]
        known = ", ".join(names) if names else "none: no stage has a name (FROM ... AS name)"
        raise DockerfileParseError(
            f"target stage {self.target_name!r} could not be found; stages: {known}",
            file=self.file,
        )

    def global_scope(
        self, meta: list[ArgInstruction], target_stage_name: str
    ) -> tuple[dict[str, str], dict[str, frozenset[str]]]:
        """BuildKit's defaultArgs + buildMetaArgs: the scope FROM lines expand in."""
        build, target = self.build_platform, self.target_platform
        defaults = {
            "BUILDPLATFORM": str(build),
            "BUILDOS": build.os,
            "BUILDARCH": build.architecture,
            "BUILDVARIANT": build.variant,
            "TARGETPLATFORM": str(target),
            "TARGETOS": target.os,
            "TARGETARCH": target.architecture,
            "TARGETVARIANT": target.variant,
            "TARGETSTAGE": target_stage_name,
        }
        scope = {k: self.build_args.get(k, v) for k, v in defaults.items()}
        deps: dict[str, frozenset[str]] = {}
        for instruction in meta:
            for decl in instruction.args:
                if decl.name in self.build_args:
                    scope[decl.name] = self.build_args[decl.name]
                elif decl.default is not None:
                    result = self.process(decl.default, scope, instruction.node)
                    scope[decl.name] = result.value
                    deps[decl.name] = result.matched
            if instruction.ignored_flags:
                self.warn_ignored_flags(instruction, instruction.ignored_flags)
        return scope, deps

    def warn_ignored_flags(self, instruction: Instruction, flags: tuple[str, ...]) -> None:
        self.warn(
            f"{instruction.keyword} does not take flags; ignored: {' '.join(flags)}",
            instruction.node,
            "IgnoredFlags",
        )

    def process(self, word: str, env: Mapping[str, str], node: Node) -> ShellWord:
        try:
            return self.lexer.process(word, env, self.budget)
        except DockerfileParseError as err:
            raise self.relocate(err, node) from None

    # -- one stage ---------------------------------------------------------------------------

    def load_stage(
        self, index: int, instruction: FromInstruction, body: list[Instruction]
    ) -> Stage:
        node = instruction.node
        base_match = self.process(instruction.base, self.global_args, node)
        used: set[str] = set(base_match.matched)
        base = base_match.value
        if base == "":
            raise self.error(f"base name ({instruction.base}) should not be blank", node)

        requested: str | None = None
        stage_platform = self.target_platform
        if instruction.platform is not None:
            plat_match = self.process(instruction.platform, self.global_args, node)
            used |= plat_match.matched
            requested = plat_match.value
            if requested == "":
                raise self.error(
                    f"empty platform value from expression {instruction.platform}", node
                )
            try:
                stage_platform = Platform.parse(requested)
            except DockerfileParseError as err:
                raise self.relocate(err, node) from None

        base_stage = self.names.get(base)
        if base_stage is not None and base_stage >= index:
            base_stage = None  # FROM only sees stages defined above it
        deps: set[int] = set()
        images: set[str] = set()
        triggers: list[Instruction] = []
        if base_stage is not None:
            parent = self.stages[base_stage]
            deps.add(base_stage)
            stage_platform = parent.platform  # BuildKit inherits the base stage's platform
            state = _State(
                env=dict(parent.state_env),
                image_env=dict(parent.env),
                args=[],
                workdir=parent.workdir,
                user=parent.user,
                shell=parent.shell,
            )
            state.args = list(parent.args)
            triggers = [
                step.instruction
                for step in parent.steps
                if isinstance(step.instruction, OnbuildInstruction)
            ]
        else:
            if base != "scratch":
                error = _reference_error(base)
                if error is not None:
                    raise self.error(self.bad_reference_message("FROM", base, error), node)
            config = BaseImageConfig()
            if base != "scratch" and self.resolve_image is not None:
                config = self.resolve_image(base, stage_platform) or BaseImageConfig()
            env = dict(config.env)
            state = _State(
                env=dict(env),
                image_env=env,
                args=[],
                workdir="/",
                user=config.user,
                shell=config.shell or DEFAULT_SHELL,
            )
            if config.workdir:
                state.workdir = self.normalize_workdir("/", config.workdir, node)
            triggers = [self.parse_trigger_text(text, node) for text in config.onbuild]
        if "PATH" not in state.image_env:
            state.image_env["PATH"] = DEFAULT_PATH
            state.env.setdefault("PATH", DEFAULT_PATH)

        stage_name = instruction.stage_name
        self.current = (index, stage_name or f"stage-{index}")
        steps: list[Step] = []
        for trigger in triggers:
            trigger_instruction = self.trigger_at(trigger, node)
            steps.append(self.dispatch(trigger_instruction, state, used, deps, images, True))
        for item in body:
            steps.append(self.dispatch(item, state, used, deps, images, False))

        build_args_used = frozenset(k for k in used if k in self.build_args)
        return Stage(
            index=index,
            name=stage_name,
            base=base,
            base_stage=base_stage,
            platform=stage_platform,
            requested_platform=requested,
            node=node,
            steps=tuple(steps),
            env=tuple(state.image_env.items()),
            state_env=tuple(state.env.items()),
            workdir=state.workdir,
            user=state.user,
            shell=state.shell,
            args=tuple(state.args),
            used_args=frozenset(used),
            build_args_used=build_args_used,
            stage_deps=frozenset(deps),
            image_refs=frozenset(images),
        )

    def parse_trigger_text(self, text: str, node: Node) -> Instruction:
        from memobuild.dockerfile.parser import parse

        try:
            parsed = parse(text, filename=self.file)
        except DockerfileParseError as err:
            raise self.error(
                f"invalid ONBUILD trigger {text!r} in base image: {err.reason}", node
            ) from None
        if len(parsed.nodes) != 1:
            raise self.error("onbuild trigger should be a single expression", node)
        return parse_instruction(parsed.nodes[0], file=self.file)

    def trigger_at(self, trigger: Instruction, from_node: Node) -> Instruction:
        """Parse an inherited ONBUILD trigger and place it on the FROM line, as BuildKit does."""
        if isinstance(trigger, OnbuildInstruction):
            moved = dataclasses.replace(
                trigger.trigger, start_line=from_node.start_line, end_line=from_node.end_line
            )
            return parse_instruction(moved, file=self.file)
        moved = dataclasses.replace(
            trigger.node, start_line=from_node.start_line, end_line=from_node.end_line
        )
        return parse_instruction(moved, file=self.file)

    # -- one instruction ---------------------------------------------------------------------

    def charge_environment(
        self,
        env: tuple[tuple[str, str], ...],
        args: tuple[tuple[str, str | None], ...],
        node: Node,
    ) -> None:
        self.environment_entries += len(env) + len(args)
        self.environment_bytes += sum(len(k) + len(v) for k, v in env)
        if (
            self.environment_entries > MAX_ENVIRONMENT_ENTRIES
            or self.environment_bytes > MAX_ENVIRONMENT_BYTES
        ):
            raise self.error(
                "the Dockerfile is too large to plan: its steps see more than "
                f"{MAX_ENVIRONMENT_ENTRIES:,} ENV/ARG values ({MAX_ENVIRONMENT_BYTES >> 20} MiB) "
                "in all; use fewer variables or fewer steps (one ENV can set several)",
                node,
            )

    def dispatch(
        self,
        instruction: Instruction,
        state: _State,
        used: set[str],
        deps: set[int],
        images: set[str],
        onbuild: bool,
    ) -> Step:
        node = instruction.node
        before_env = tuple(state.env.items())
        before_args = tuple(state.args)
        self.charge_environment(before_env, before_args, node)
        workdir, user, shell = state.workdir, state.user, state.shell
        refs: set[str] = set()
        env_now = dict(state.env)

        def expand(word: str) -> str:
            result = self.process(word, env_now, node)
            refs.update(result.refs)
            return result.value

        def split(word: str) -> list[str]:
            result = self.process(word, env_now, node)
            refs.update(result.refs)
            return list(result.words)

        def expand_heredoc(word: str) -> str:
            try:
                result = self.heredoc_lexer.process(word, env_now, self.budget)
            except DockerfileParseError as err:
                raise self.relocate(err, node) from None
            refs.update(result.refs)
            return result.value

        sources: list[Source] = []
        try:
            expanded = self.apply(
                instruction, state, expand, split, expand_heredoc, used, sources, refs
            )
        except DockerfileParseError as err:
            raise self.relocate(err, node) from None
        for source in sources:
            if source.kind == "stage" and source.stage is not None:
                deps.add(source.stage)
            elif source.kind == "image" and source.image is not None:
                images.add(source.image)
        return Step(
            instruction=expanded,
            env=before_env,
            args=before_args,
            workdir=workdir,
            user=user,
            shell=shell,
            refs=frozenset(refs),
            sources=tuple(sources),
            onbuild=onbuild,
        )

    def apply(
        self,
        instruction: Instruction,
        state: _State,
        expand: Callable[[str], str],
        split: Callable[[str], list[str]],
        expand_heredoc: Callable[[str], str],
        used: set[str],
        sources: list[Source],
        refs: set[str],
    ) -> Instruction:
        node = instruction.node
        if isinstance(instruction, EnvInstruction):
            env_instruction = instruction.expand(expand)
            for pair in env_instruction.pairs:
                if pair.legacy:
                    self.warn(
                        '"ENV key=value" should be used instead of legacy "ENV key value" format',
                        node,
                        "LegacyKeyValueFormat",
                    )
                state.env[pair.key] = pair.value
                state.image_env[pair.key] = pair.value
            return env_instruction
        if isinstance(instruction, ArgInstruction):
            self.dispatch_arg(instruction, state, used, refs)
            return instruction
        if isinstance(instruction, LabelInstruction):
            label_instruction = instruction.expand(expand)
            for pair in label_instruction.pairs:
                if pair.legacy:
                    self.warn(
                        '"LABEL key=value" should be used instead of legacy "LABEL key value" '
                        "format",
                        node,
                        "LegacyKeyValueFormat",
                    )
            return label_instruction
        if isinstance(instruction, WorkdirInstruction):
            workdir_instruction = instruction.expand(expand)
            state.workdir = self.normalize_workdir(state.workdir, workdir_instruction.path, node)
            return workdir_instruction
        if isinstance(instruction, UserInstruction):
            user_instruction = instruction.expand(expand)
            state.user = user_instruction.user
            return user_instruction
        if isinstance(instruction, ShellInstruction):
            state.shell = instruction.shell
            return instruction
        if isinstance(instruction, (VolumeInstruction, StopsignalInstruction)):
            if isinstance(instruction, StopsignalInstruction) and instruction.ignored_flags:
                self.warn_ignored_flags(instruction, instruction.ignored_flags)
            return instruction.expand(expand)
        if isinstance(instruction, ExposeInstruction):
            return instruction.expand(split)
        if isinstance(instruction, CopyInstruction):
            copy_instruction = instruction.expand(expand, expand_heredoc=expand_heredoc)
            self.check_copy_sources("COPY", copy_instruction.sources)
            _check_chmod(copy_instruction.chmod)
            if copy_instruction.from_ is not None:
                sources.append(self.resolve_copy_from(copy_instruction.from_, node))
            return copy_instruction
        if isinstance(instruction, AddInstruction):
            add_instruction = instruction.expand(expand, expand_heredoc=expand_heredoc)
            _check_chmod(add_instruction.chmod)
            _check_checksum(add_instruction)
            return add_instruction
        if isinstance(instruction, RunInstruction):
            run_instruction = instruction.expand(expand)
            mounts = tuple(self.place_mount(m, state.workdir) for m in run_instruction.mounts or ())
            for mount in mounts:
                if isinstance(mount, (BindMount, CacheMount)) and mount.from_ is not None:
                    sources.append(self.resolve_mount_from(mount.from_, mount.target, node))
            return dataclasses.replace(run_instruction, mounts=mounts)
        if isinstance(instruction, FromInstruction):  # pragma: no cover - grouped by load()
            raise self.error("FROM inside a stage", node)
        if isinstance(
            instruction,
            (
                CmdInstruction,
                EntrypointInstruction,
                HealthcheckInstruction,
                MaintainerInstruction,
                OnbuildInstruction,
            ),
        ):
            return instruction  # never expanded by the frontend
        raise self.error(f"unsupported instruction {instruction.keyword}", node)

    def dispatch_arg(
        self, instruction: ArgInstruction, state: _State, used: set[str], refs: set[str]
    ) -> None:
        """BuildKit's dispatchArg: --build-arg, else the default, else the global value."""
        if instruction.ignored_flags:
            self.warn_ignored_flags(instruction, instruction.ignored_flags)
        for decl in instruction.args:
            value: str | None
            if decl.name in self.build_args:
                value = self.build_args[decl.name]
            elif decl.default is not None:
                result = self.process(decl.default, state.env, instruction.node)
                refs.update(result.refs)
                value = result.value
            else:
                value = self.global_args.get(decl.name)
            if value is not None and decl.name not in _NON_ENV_ARGS:
                state.env[decl.name] = value
            used.add(decl.name)
            state.args.append((decl.name, value))

    def normalize_workdir(self, current: str, path: str, node: Node) -> str:
        if path == "":
            raise self.error("WORKDIR cannot be empty (after expansion)", node)
        if not path.startswith("/"):
            path = posixpath.join("/", current, path)
        return _clean(path)

    def check_copy_sources(self, keyword: str, paths: Iterable[str]) -> None:
        for path in paths:
            if path.startswith(("http://", "https://")):
                raise DockerfileParseError(
                    f"source can't be a URL for {keyword}: {path} (use ADD for remote files)"
                )

    def place_mount(self, mount: Mount, workdir: str) -> Mount:
        """Resolve a bind/cache/tmpfs target against WORKDIR, as BuildKit does at dispatch."""
        if not isinstance(mount, (BindMount, CacheMount, TmpfsMount)):
            return mount
        target = mount.target
        if not _clean(target).startswith("/"):
            target = posixpath.join("/", workdir, target)
        target = _clean(target)
        if target == "/":
            raise DockerfileParseError(f"invalid mount target {target!r}")
        return dataclasses.replace(mount, target=target)

    def resolve_copy_from(self, value: str, node: Node) -> Source:
        if re.fullmatch(r"[+-]?[0-9]+", value) and abs(int(value)) < 2**63:
            number = int(value)
            if number < 0 or number >= self.stage_count:
                raise self.error(
                    f"invalid stage index {number} in COPY --from: the Dockerfile has "
                    f"{self.stage_count} stage(s), numbered from 0",
                    node,
                )
            return self.earlier_stage(number, f"cannot copy from stage {value!r}", node)
        stage_index = self.names.get(value.lower())
        if stage_index is not None:
            return self.earlier_stage(stage_index, f"cannot copy from stage {value!r}", node)
        return self.image_source("COPY --from", value, node)

    def resolve_mount_from(self, value: str, target: str, node: Node) -> Source:
        stage_index = self.names.get(value.lower())
        if stage_index is not None:
            return self.earlier_stage(
                stage_index, f"cannot mount from stage {value!r} to {target!r}", node
            )
        return self.image_source("RUN --mount from=", value, node)

    def earlier_stage(self, stage_index: int, what: str, node: Node) -> Source:
        index, name = self.current
        if stage_index == index:
            raise self.error(
                f"circular dependency detected on stage: {name} ({what}: it is the current stage)",
                node,
            )
        if stage_index > index:
            raise self.error(f"{what}, it needs to be defined before current stage {name!r}", node)
        return Source(kind="stage", stage=stage_index)

    def image_source(self, what: str, value: str, node: Node) -> Source:
        if "$" in value:
            raise self.error(
                f"{what}{value} does not support variable expansion; define an alias stage "
                f"(FROM {value} AS <name>) and use its name",
                node,
            )
        if value == "scratch":
            return Source(kind="scratch", image="scratch")
        error = _reference_error(value)
        if error is not None:
            raise self.error(self.bad_reference_message(what, value, error), node)
        return Source(kind="image", image=value)

    def bad_reference_message(self, what: str, value: str, error: str) -> str:
        separator = "" if what.endswith("=") else " "
        message = (
            f"{what}{separator}{value!r} is not a stage name or index, and not a valid image "
            f"reference ({error})"
        )
        lowered = value.lower()
        if lowered in self.names:
            message += f"; stage names are lower case: use {lowered!r}"
        return message


def _clean(path: str) -> str:
    """Go's path.Clean."""
    if path == "":
        return "."
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


_SYMBOLIC_MODE = re.compile(
    r"[ugoa]*(?:[-+=](?:[rwxXst]*|[ugo]))+(?:,[ugoa]*(?:[-+=](?:[rwxXst]*|[ugo]))+)*"
)


def _check_chmod(chmod: str) -> None:
    if chmod == "":
        return
    if re.fullmatch(r"[0-7]+", chmod):
        if int(chmod, 8) > 0o7777:
            raise DockerfileParseError(
                f"invalid chmod parameter: {chmod!r}. it should be octal string and between 0 "
                "and 07777"
            )
        return
    if not _SYMBOLIC_MODE.fullmatch(chmod):
        raise DockerfileParseError(
            f"invalid chmod parameter: {chmod!r}. it should be an octal mode up to 07777 or a "
            "symbolic mode like u+x,g-w"
        )


def _check_checksum(instruction: AddInstruction) -> None:
    if not instruction.checksum:
        return
    if len(instruction.sources) + len(instruction.contents) != 1:
        raise DockerfileParseError("checksum can't be specified for multiple sources")
    source = instruction.sources[0] if instruction.sources else ""
    is_git = source.startswith("git@") or ".git" in source or source.startswith("git://")
    if not (source.startswith(("http://", "https://")) or is_git):
        raise DockerfileParseError(
            f"checksum can't be specified for non-HTTP(S) sources: {source or '<heredoc>'}"
        )
    if not is_git and not re.fullmatch(
        r"(sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})", instruction.checksum
    ):
        raise DockerfileParseError(
            f"invalid checksum {instruction.checksum!r}: expected sha256:<64 hex digits>"
        )
