"""Typed Dockerfile instructions, built from the parser's AST nodes as BuildKit builds them.

This is the second step of the front end (text -> AST -> typed instructions -> stages). Each
instruction is a frozen dataclass that keeps its source :class:`~memobuild.dockerfile.ast.Node`
(``node``, for line numbers) and holds its arguments exactly as written: variable expansion needs
the environment of the stage at that point, which only :mod:`memobuild.dockerfile.stages` knows.
The instructions that Docker expands have an ``expand(...)`` method returning an expanded copy.

Public API::

    parse_instruction(node: Node, *, file: str | None = None) -> Instruction
    parse_mount(spec: str, expand: Expander | None = None) -> Mount | None
    parse_go_duration(text: str) -> int          # nanoseconds
    parse_port_specs(words: Sequence[str]) -> tuple[str, ...]   # "80/tcp", ...
    is_valid_signal(text: str) -> bool
    heredoc_word(word: str) -> HeredocWord | None

    Instruction (base; .node, .keyword, .line)
    FromInstruction ArgInstruction EnvInstruction LabelInstruction RunInstruction
    CopyInstruction AddInstruction WorkdirInstruction UserInstruction ExposeInstruction
    VolumeInstruction CmdInstruction EntrypointInstruction ShellInstruction
    HealthcheckInstruction StopsignalInstruction OnbuildInstruction MaintainerInstruction
    Mount = BindMount | CacheMount | TmpfsMount | SecretMount | SshMount
    KeyValue, ArgDecl, InlineFile, SourceContent

Flags follow BuildKit's ``bflag``: ``--name=value`` for string flags, ``--name`` or
``--name=true|false`` for boolean ones, repeatable flags (``--mount``, ``--exclude``) collect
every value, anything else is an error that names the flag. ARG and STOPSIGNAL ignore flags, as
BuildKit does; their ``ignored_flags`` say which were given so the stage loader can warn.

Every error is a :class:`~memobuild.errors.DockerfileParseError` carrying the file and the
instruction's line.
"""

from __future__ import annotations

import dataclasses
import difflib
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from memobuild.dockerfile.ast import Heredoc, Node
from memobuild.dockerfile.shell import Lexer
from memobuild.errors import DockerfileParseError

__all__ = [
    "AddInstruction",
    "ArgDecl",
    "ArgInstruction",
    "BindMount",
    "CacheMount",
    "CmdInstruction",
    "CopyInstruction",
    "EntrypointInstruction",
    "EnvInstruction",
    "Expander",
    "ExposeInstruction",
    "FromInstruction",
    "HealthcheckInstruction",
    "HeredocWord",
    "InlineFile",
    "Instruction",
    "KeyValue",
    "LabelInstruction",
    "MaintainerInstruction",
    "Mount",
    "OnbuildInstruction",
    "RunInstruction",
    "SecretMount",
    "ShellInstruction",
    "SourceContent",
    "SshMount",
    "StopsignalInstruction",
    "TmpfsMount",
    "UserInstruction",
    "VolumeInstruction",
    "WorkdirInstruction",
    "heredoc_word",
    "is_valid_signal",
    "parse_go_duration",
    "parse_instruction",
    "parse_mount",
    "parse_port_specs",
]

Expander = Callable[[str], str]
"""Expands one word against the stage's environment (see memobuild.dockerfile.shell)."""


# --------------------------------------------------------------------------------------------
# Flags (BuildKit's bflag)


_BOOL, _STRING, _STRINGS = "bool", "string", "strings"


@dataclass
class _Flags:
    """The parsed flags of one instruction: values by name, and which were given."""

    values: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)

    def string(self, name: str) -> str:
        return self.values.get(name, "")

    def boolean(self, name: str) -> bool:
        return self.values.get(name) == "true"


def _parse_flags(keyword: str, raw: Sequence[str], spec: dict[str, str]) -> _Flags:
    flags = _Flags()
    for arg in raw:
        if not arg.startswith("--"):
            raise DockerfileParseError(f"{keyword}: invalid flag {arg!r}: flags start with --")
        if arg == "--":
            break
        name, eq, value = arg[2:].partition("=")
        kind = spec.get(name)
        if kind is None:
            raise DockerfileParseError(_unknown_flag_message(keyword, name, spec))
        if name in flags.used and kind != _STRINGS:
            raise DockerfileParseError(
                f"{keyword}: duplicate flag --{name}: it may be given only once"
            )
        flags.used.append(name)
        if kind == _BOOL:
            if eq and value == "":
                raise DockerfileParseError(
                    f"{keyword}: missing a value on flag --{name} (write --{name} or "
                    f"--{name}=true|false)"
                )
            lower = value.lower()
            if lower == "":
                flags.values[name] = "true"
            elif lower in ("true", "false"):
                flags.values[name] = lower
            else:
                raise DockerfileParseError(
                    f"{keyword}: expecting a boolean value for flag --{name}, not {value!r}"
                )
        else:
            if not eq:
                raise DockerfileParseError(
                    f"{keyword}: missing a value on flag --{name} (write --{name}=VALUE)"
                )
            if kind == _STRING:
                flags.values[name] = value
            else:
                flags.lists.setdefault(name, []).append(value)
    return flags


def _unknown_flag_message(keyword: str, name: str, spec: dict[str, str]) -> str:
    message = f"unknown flag --{name} for {keyword}"
    close = difflib.get_close_matches(name, list(spec), n=1, cutoff=0.6)
    if close:
        message += f" (did you mean --{close[0]}?)"
    if spec:
        message += f"; {keyword} accepts " + ", ".join(f"--{n}" for n in sorted(spec))
    else:
        message += f"; {keyword} takes no flags"
    return message


# --------------------------------------------------------------------------------------------
# Shared value types


@dataclass(frozen=True)
class KeyValue:
    """One ``key=value`` of ENV or LABEL; ``legacy`` for the old ``ENV key value`` form."""

    key: str
    value: str
    legacy: bool = False


@dataclass(frozen=True)
class ArgDecl:
    """One ``NAME`` or ``NAME=default`` of an ARG instruction (default as written)."""

    name: str
    default: str | None = None


@dataclass(frozen=True)
class InlineFile:
    """A heredoc attached to RUN/CMD/ENTRYPOINT (BuildKit's ShellInlineFile)."""

    name: str
    data: str
    chomp: bool


@dataclass(frozen=True)
class SourceContent:
    """A heredoc used as a COPY/ADD source: a file named ``path`` holding ``data``."""

    path: str
    data: str
    expand: bool


@dataclass(frozen=True)
class HeredocWord:
    """What a ``<<EOF`` word says: the delimiter, whether to expand, whether to chomp tabs."""

    name: str
    expand: bool
    chomp: bool


_HEREDOC_WORD = re.compile(r"^(\d*)<<(-?)([^<]*)$", re.DOTALL)
_RAW_QUOTES = Lexer(raw_quotes=True)
_PLAIN = Lexer()


def heredoc_word(word: str) -> HeredocWord | None:
    """Recognise a heredoc word (``<<EOF``, ``<<-"EOF"``, ``3<<'X'``) as BuildKit does.

    The content is expanded only when no part of the delimiter was quoted.
    """
    match = _HEREDOC_WORD.match(word)
    if match is None:
        return None
    try:
        words = _PLAIN.process(match.group(3), {}).words
        raw_words = _RAW_QUOTES.process(match.group(3), {}).words
    except DockerfileParseError:
        return None
    if len(words) != 1 or len(raw_words) != 1:
        return None
    quotes = words[0].count("'") + words[0].count('"')
    raw_quotes = raw_words[0].count("'") + raw_words[0].count('"')
    return HeredocWord(name=words[0], expand=quotes == raw_quotes, chomp=match.group(2) == "-")


_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)


def _chomp(content: str) -> str:
    return _LEADING_TABS.sub("", content)


# --------------------------------------------------------------------------------------------
# RUN --mount


_MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_SHARING_MODES = ("shared", "private", "locked")
_MOUNT_KEYS = (
    "type", "from", "source", "target", "readonly", "id", "sharing", "required", "size",
    "mode", "uid", "gid", "src", "dst", "destination", "ro", "rw", "readwrite", "env",
)  # fmt: skip


@dataclass(frozen=True)
class BindMount:
    """``type=bind``: a read-only (by default) view of the context, a stage or an image."""

    target: str
    source: str = ""
    from_: str | None = None  # None: the build context
    readonly: bool = True


@dataclass(frozen=True)
class CacheMount:
    """``type=cache``: a persistent directory shared between builds, keyed by ``id``."""

    target: str
    id: str
    sharing: str = "shared"
    source: str = ""
    from_: str | None = None  # None: starts empty
    readonly: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@dataclass(frozen=True)
class TmpfsMount:
    """``type=tmpfs``: an empty in-memory directory; ``size`` in bytes, 0 for no limit."""

    target: str
    size: int = 0
    readonly: bool = False


@dataclass(frozen=True)
class SecretMount:
    """``type=secret``: a secret as a file at ``target`` and/or an environment variable."""

    id: str
    target: str | None  # None only when the secret goes to ``env`` alone
    env: str | None = None
    required: bool = False
    mode: int = 0o400
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class SshMount:
    """``type=ssh``: the SSH agent socket ``id``; ``target`` None for BuildKit's default path."""

    id: str = "default"
    target: str | None = None
    required: bool = False
    mode: int = 0o600
    uid: int = 0
    gid: int = 0


Mount = BindMount | CacheMount | TmpfsMount | SecretMount | SshMount


def _csv_fields(text: str) -> list[str]:
    """One CSV record as Go's encoding/csv reads it (double quotes, no bare quotes)."""
    fields: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            i += 1
            value: list[str] = []
            while True:
                j = text.find('"', i)
                if j < 0:
                    raise DockerfileParseError(
                        f'failed to parse csv mounts: extraneous or missing " in quoted-field '
                        f"in {text!r}"
                    )
                value.append(text[i:j])
                if j + 1 < n and text[j + 1] == '"':
                    value.append('"')
                    i = j + 2
                    continue
                i = j + 1
                break
            if i < n and text[i] != ",":
                raise DockerfileParseError(
                    f'failed to parse csv mounts: extraneous or missing " in quoted-field '
                    f"in {text!r}"
                )
            fields.append("".join(value))
        else:
            j = text.find(",", i)
            end = n if j < 0 else j
            chunk = text[i:end]
            if '"' in chunk:
                raise DockerfileParseError(
                    f'failed to parse csv mounts: bare " in non-quoted-field in {text!r}'
                )
            fields.append(chunk)
            i = end
        if i >= n:
            return fields
        i += 1  # the comma
        if i == n:
            fields.append("")
            return fields


def _parse_bool(value: str) -> bool | None:
    # Go's strconv.ParseBool
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return None


def _parse_uint(value: str, base: int, bits: int) -> int | None:
    # Go's strconv.ParseUint without base prefixes: digits only, in range.
    digits = "01234567" if base == 8 else "0123456789"
    if not value or any(c not in digits for c in value):
        return None
    number = int(value, base)
    return number if number < (1 << bits) else None


_RAM_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_RAM_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?$")


def _parse_ram_size(value: str) -> int | None:
    """docker/go-units RAMInBytes: ``64m``, ``1.5g``, ``512KiB``, ``1024`` (binary units)."""
    match = _RAM_SIZE.match(value)
    if match is None:
        return None
    number = float(match.group(1))
    unit = (match.group(2) or "").lower()
    return int(number * _RAM_UNITS[unit])


def _go_path_clean(path: str) -> str:
    """Go's path.Clean (posixpath.normpath keeps a leading '//', Go does not)."""
    if path == "":
        return "."
    cleaned = posixpath.normpath(path)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    return cleaned


def _check_mount_spec(spec: str) -> None:
    """The parse-time check BuildKit makes before the environment is known."""
    for item in _csv_fields(spec):
        key, eq, value = item.partition("=")
        if eq and key.lower() == "from":
            idx = value.find("$")
            if idx != -1 and idx != len(value) - 1:
                raise DockerfileParseError(
                    f"RUN --mount from={value!r}: 'from' doesn't support variable expansion, "
                    "define an alias stage instead (FROM <image> AS <name>, then from=<name>)"
                )


def parse_mount(spec: str, expand: Expander | None = None) -> Mount:
    """Parse one ``--mount`` value into a typed mount, expanding each value with ``expand``.

    Without ``expand`` the values are taken as written. Defaults are BuildKit's: bind and secret
    and ssh read-only, cache shared with ``id`` = the target, secret ``id`` = source, id or the
    target's base name, secret target ``/run/secrets/<id>`` unless only ``env`` is asked for.
    """
    mount_type = "bind"
    values: dict[str, str] = {}
    readonly: bool | None = None
    required = False
    size = 0
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None
    sharing = ""
    for item in _csv_fields(spec):
        raw_key, eq, value = item.partition("=")
        key = raw_key.lower()
        if not eq:
            if key in ("readonly", "ro"):
                readonly = True
                continue
            if key in ("readwrite", "rw"):
                readonly = False
                continue
            if key == "required":
                if mount_type not in ("secret", "ssh"):
                    raise DockerfileParseError(
                        f"unexpected key '{key}' for mount type '{mount_type}' (only secret and "
                        "ssh mounts can be required; put type= first)"
                    )
                required = True
                continue
            raise DockerfileParseError(f"invalid field '{item}' must be a key=value pair")
        if expand is not None:
            value = expand(value)
        if key == "type":
            lowered = value.lower()
            if lowered not in _MOUNT_TYPES:
                raise DockerfileParseError(
                    f"unsupported mount type {value!r}" + _did_you_mean(lowered, _MOUNT_TYPES)
                )
            mount_type = lowered
        elif key in ("from", "source", "src", "target", "dst", "destination", "id"):
            canonical = {"src": "source", "dst": "target", "destination": "target"}.get(key, key)
            values[canonical] = value
        elif key in ("readonly", "ro", "readwrite", "rw"):
            flag = _parse_bool(value)
            if flag is None:
                raise DockerfileParseError(f"invalid value for {key}: {value}")
            readonly = flag if key in ("readonly", "ro") else not flag
        elif key == "required":
            if mount_type not in ("secret", "ssh"):
                raise DockerfileParseError(
                    f"unexpected key '{key}' for mount type '{mount_type}' (only secret and ssh "
                    "mounts can be required; put type= first)"
                )
            flag = _parse_bool(value)
            if flag is None:
                raise DockerfileParseError(f"invalid value for {key}: {value}")
            required = flag
        elif key == "size":
            if mount_type != "tmpfs":
                raise DockerfileParseError(
                    f"unexpected key '{key}' for mount type '{mount_type}' (size applies to "
                    "tmpfs mounts; put type= first)"
                )
            parsed_size = _parse_ram_size(value)
            if parsed_size is None:
                raise DockerfileParseError(f"invalid value for {key}: {value}")
            size = parsed_size
        elif key == "sharing":
            lowered = value.lower()
            if lowered not in _SHARING_MODES:
                raise DockerfileParseError(
                    f"unsupported sharing value {value!r}" + _did_you_mean(lowered, _SHARING_MODES)
                )
            sharing = lowered
        elif key == "mode":
            mode = _parse_uint(value, 8, 32)
            if mode is None:
                raise DockerfileParseError(f"invalid value {value} for mode (octal expected)")
        elif key in ("uid", "gid"):
            number = _parse_uint(value, 10, 32)
            if number is None:
                raise DockerfileParseError(f"invalid value {value} for {key}")
            if key == "uid":
                uid = number
            else:
                gid = number
        elif key == "env":
            env = value
        else:
            raise DockerfileParseError(
                f"unexpected key '{key}' in '{item}'" + _did_you_mean(key, _MOUNT_KEYS)
            )

    file_info_allowed = mount_type in ("secret", "ssh", "cache")
    if not file_info_allowed:
        for name, given in (("mode", mode), ("uid", uid), ("gid", gid)):
            if given is not None:
                raise DockerfileParseError(f'{name} not allowed for "{mount_type}" type mounts')
    if readonly is None:
        readonly = mount_type not in ("cache", "tmpfs")

    target = values.get("target", "")
    source = values.get("source", "")
    from_ = values.get("from") or None
    mount_id = values.get("id", "")
    if mount_type == "secret":
        if from_ is not None:
            raise DockerfileParseError("secret mount should not have a from")
        if sharing:
            raise DockerfileParseError("secret mount should not define sharing")
        if not source and not target and not mount_id:
            raise DockerfileParseError("invalid secret mount: one of source, target or id required")
        if source and mount_id:
            raise DockerfileParseError("invalid secret mount: both source and id can't be set")
    if sharing and mount_type != "cache":
        raise DockerfileParseError(f"invalid cache sharing set for {mount_type} mount")
    if mount_type == "bind":
        return BindMount(target=target, source=source, from_=from_, readonly=readonly)
    if mount_type == "cache":
        return CacheMount(
            target=target,
            id=mount_id or _go_path_clean(target),
            sharing=sharing or "shared",
            source=source,
            from_=from_,
            readonly=readonly,
            mode=mode,
            uid=uid,
            gid=gid,
        )
    if mount_type == "tmpfs":
        return TmpfsMount(target=target, size=size, readonly=readonly)
    if mount_type == "secret":
        secret_id = source or mount_id or posixpath.basename(target.rstrip("/")) or target
        secret_target: str | None = target or None
        if secret_target is None and env is None:
            secret_target = "/run/secrets/" + posixpath.basename(secret_id)
        return SecretMount(
            id=secret_id,
            target=secret_target,
            env=env,
            required=required,
            mode=0o400 if mode is None else mode,
            uid=uid or 0,
            gid=gid or 0,
        )
    if source:
        raise DockerfileParseError("ssh mount does not support source")
    return SshMount(
        id=mount_id or "default",
        target=target or None,
        required=required,
        mode=0o600 if mode is None else mode,
        uid=uid or 0,
        gid=gid or 0,
    )


def _did_you_mean(value: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(options), n=1, cutoff=0.6)
    suffix = f" (did you mean {close[0]}?)" if close else ""
    return suffix + "; expected one of " + ", ".join(options)


# --------------------------------------------------------------------------------------------
# Small value parsers


_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def parse_go_duration(text: str) -> int:
    """Parse a Go duration (``30s``, ``1m30s``, ``1.5h``, ``250ms``) into nanoseconds."""
    rest = text
    negative = False
    if rest[:1] in ("-", "+"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0
    if rest == "":
        raise DockerfileParseError(f"invalid duration {text!r}")
    total = 0
    while rest:
        match = _DURATION_PART.match(rest)
        if match is None or match.end() == 0:
            raise DockerfileParseError(f"invalid duration {text!r}")
        whole, fraction, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not fraction:
            raise DockerfileParseError(f"invalid duration {text!r}")
        if not unit:
            raise DockerfileParseError(f"missing unit in duration {text!r}")
        scale = _DURATION_UNITS.get(unit)
        if scale is None:
            raise DockerfileParseError(f"unknown unit {unit!r} in duration {text!r}")
        total += int(whole or "0") * scale
        if fraction:
            total += int(float(int(fraction)) * (scale / 10 ** len(fraction)))
        rest = rest[match.end() :]
    return -total if negative else total


_SIGNAL_NAMES = (
    "ABRT ALRM BUS CHLD CLD CONT FPE HUP ILL INT IO IOT KILL PIPE POLL PROF PWR QUIT SEGV "
    "STKFLT STOP SYS TERM TRAP TSTP TTIN TTOU URG USR1 USR2 VTALRM WINCH XCPU XFSZ RTMIN RTMAX"
)
_SIGNALS = frozenset(
    _SIGNAL_NAMES.split(" ")
    + [f"RTMIN+{i}" for i in range(1, 16)]
    + [f"RTMAX-{i}" for i in range(1, 15)]
)


def is_valid_signal(text: str) -> bool:
    """moby/sys/signal.ParseSignal on Linux: a non-zero number, or a name with or without SIG."""
    if re.fullmatch(r"[+-]?[0-9]+", text):
        return int(text) != 0
    upper = text.upper()
    return upper.removeprefix("SIG") in _SIGNALS


_PORT_PROTOCOLS = ("tcp", "udp", "sctp")


def parse_port_specs(words: Sequence[str]) -> tuple[str, ...]:
    """Expose specs (``80``, ``53/udp``, ``8000-8002/tcp``) as sorted ``port/proto`` strings.

    Like docker/go-connections nat.ParsePortSpecs: ranges are enumerated, the protocol is
    lower-cased and must be tcp, udp or sctp, an ``[ip:]hostport:`` prefix is accepted and the
    container port is what is exposed.
    """
    exposed: set[str] = set()
    for word in words:
        port, _, proto = word.partition("/")
        proto = (proto or "tcp").lower()
        if proto not in _PORT_PROTOCOLS:
            raise DockerfileParseError(f"invalid proto: {proto} (expected tcp, udp or sctp)")
        if "]:" in port or port.count(":") > 0:
            port = port.rsplit(":", 1)[1]
        start_text, dash, end_text = port.partition("-")
        start = _parse_uint(start_text, 10, 16)
        end = _parse_uint(end_text, 10, 16) if dash else start
        if start is None or end is None:
            raise DockerfileParseError(f"invalid containerPort: {port or word!r}")
        if end < start:
            raise DockerfileParseError(f"invalid range specified for port: {port}")
        for number in range(start, end + 1):
            exposed.add(f"{number}/{proto}")
    return tuple(sorted(exposed, key=lambda p: (int(p.split("/")[0]), p)))


# --------------------------------------------------------------------------------------------
# Instructions


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """Base of every typed instruction; ``node`` is where it came from."""

    keyword: ClassVar[str] = ""
    node: Node = field(compare=False, repr=False)

    @property
    def line(self) -> int:
        """The 1-based line the instruction starts on."""
        return self.node.start_line


@dataclass(frozen=True, kw_only=True)
class FromInstruction(Instruction):
    """``FROM [--platform=P] base [AS name]``; ``stage_name`` is lower-cased as in BuildKit."""

    keyword: ClassVar[str] = "FROM"
    base: str
    stage_name: str | None = None
    platform: str | None = None


@dataclass(frozen=True, kw_only=True)
class ArgInstruction(Instruction):
    """``ARG NAME[=default] ...``; defaults are expanded by the stage loader, not here."""

    keyword: ClassVar[str] = "ARG"
    args: tuple[ArgDecl, ...]
    ignored_flags: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class EnvInstruction(Instruction):
    """``ENV key=value ...``; keys and values are both expanded."""

    keyword: ClassVar[str] = "ENV"
    pairs: tuple[KeyValue, ...]

    def expand(self, expand: Expander) -> EnvInstruction:
        """All pairs see the environment from before the instruction (Docker's rule)."""
        return dataclasses.replace(self, pairs=_expand_pairs(self.pairs, expand))


@dataclass(frozen=True, kw_only=True)
class LabelInstruction(Instruction):
    """``LABEL key=value ...``; keys and values are both expanded."""

    keyword: ClassVar[str] = "LABEL"
    pairs: tuple[KeyValue, ...]

    def expand(self, expand: Expander) -> LabelInstruction:
        return dataclasses.replace(self, pairs=_expand_pairs(self.pairs, expand))


def _expand_pairs(pairs: tuple[KeyValue, ...], expand: Expander) -> tuple[KeyValue, ...]:
    return tuple(KeyValue(key=expand(p.key), value=expand(p.value), legacy=p.legacy) for p in pairs)


@dataclass(frozen=True, kw_only=True)
class RunInstruction(Instruction):
    """``RUN [--mount=...] [--network=...] [--security=...] command``.

    The command is never expanded by the frontend (the shell does it at run time). ``mounts``
    is None until :meth:`expand` has typed the ``--mount`` values with the stage environment.
    """

    keyword: ClassVar[str] = "RUN"
    cmd_line: tuple[str, ...]
    prepend_shell: bool
    files: tuple[InlineFile, ...] = ()
    mount_specs: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] | None = None
    network: str = "default"
    security: str = "sandbox"
    flags_used: tuple[str, ...] = ()

    def expand(self, expand: Expander) -> RunInstruction:
        mounts = tuple(parse_mount(spec, expand) for spec in self.mount_specs)
        return dataclasses.replace(self, mounts=mounts)


@dataclass(frozen=True, kw_only=True)
class CopyInstruction(Instruction):
    """``COPY [--from] [--chown] [--chmod] [--link] [--parents] [--exclude] src... dest``.

    ``sources`` are paths (or patterns), ``contents`` the heredoc sources. ``from_`` is never
    expanded, as in BuildKit; it names a stage (by name or index) or an image.
    """

    keyword: ClassVar[str] = "COPY"
    sources: tuple[str, ...]
    contents: tuple[SourceContent, ...] = ()
    dest: str
    from_: str | None = None
    chown: str = ""
    chmod: str = ""
    link: bool = False
    parents: bool = False
    exclude: tuple[str, ...] = ()

    def expand(
        self, expand: Expander, *, expand_heredoc: Expander | None = None
    ) -> CopyInstruction:
        return dataclasses.replace(
            self,
            sources=tuple(expand(s) for s in self.sources),
            contents=_expand_contents(self.contents, expand_heredoc),
            dest=expand(self.dest),
            chown=expand(self.chown),
            chmod=expand(self.chmod),
            exclude=tuple(expand(e) for e in self.exclude),
        )


@dataclass(frozen=True, kw_only=True)
class AddInstruction(Instruction):
    """``ADD [--chown] [--chmod] [--link] [--keep-git-dir] [--checksum] [--unpack] [--exclude]``."""

    keyword: ClassVar[str] = "ADD"
    sources: tuple[str, ...]
    contents: tuple[SourceContent, ...] = ()
    dest: str
    chown: str = ""
    chmod: str = ""
    link: bool = False
    keep_git_dir: bool = False
    checksum: str = ""
    unpack: bool | None = None  # None: BuildKit's default (unpack local archives only)
    exclude: tuple[str, ...] = ()

    def expand(self, expand: Expander, *, expand_heredoc: Expander | None = None) -> AddInstruction:
        return dataclasses.replace(
            self,
            sources=tuple(expand(s) for s in self.sources),
            contents=_expand_contents(self.contents, expand_heredoc),
            dest=expand(self.dest),
            chown=expand(self.chown),
            chmod=expand(self.chmod),
            checksum=expand(self.checksum),
            exclude=tuple(expand(e) for e in self.exclude),
        )


def _expand_contents(
    contents: tuple[SourceContent, ...], expand: Expander | None
) -> tuple[SourceContent, ...]:
    if expand is None:
        return contents
    return tuple(dataclasses.replace(c, data=expand(c.data)) if c.expand else c for c in contents)


@dataclass(frozen=True, kw_only=True)
class WorkdirInstruction(Instruction):
    """``WORKDIR path``; a relative path is resolved against the previous WORKDIR by stages."""

    keyword: ClassVar[str] = "WORKDIR"
    path: str

    def expand(self, expand: Expander) -> WorkdirInstruction:
        return dataclasses.replace(self, path=expand(self.path))


@dataclass(frozen=True, kw_only=True)
class UserInstruction(Instruction):
    """``USER user[:group]``."""

    keyword: ClassVar[str] = "USER"
    user: str

    def expand(self, expand: Expander) -> UserInstruction:
        return dataclasses.replace(self, user=expand(self.user))


@dataclass(frozen=True, kw_only=True)
class ExposeInstruction(Instruction):
    """``EXPOSE port[/proto] ...``; ``ports`` are words (split after expansion), ``exposed`` the
    normalised ``port/proto`` set once expanded."""

    keyword: ClassVar[str] = "EXPOSE"
    ports: tuple[str, ...]
    exposed: tuple[str, ...] | None = None

    def expand(self, split: Callable[[str], Sequence[str]]) -> ExposeInstruction:
        words = tuple(w for port in self.ports for w in split(port))
        return dataclasses.replace(self, ports=words, exposed=parse_port_specs(words))


@dataclass(frozen=True, kw_only=True)
class VolumeInstruction(Instruction):
    """``VOLUME path ...`` or ``VOLUME ["path", ...]``."""

    keyword: ClassVar[str] = "VOLUME"
    volumes: tuple[str, ...]

    def expand(self, expand: Expander) -> VolumeInstruction:
        volumes = tuple(expand(v) for v in self.volumes)
        if any(v == "" for v in volumes):
            raise DockerfileParseError("VOLUME specified can not be an empty string")
        return dataclasses.replace(self, volumes=volumes)


@dataclass(frozen=True, kw_only=True)
class CmdInstruction(Instruction):
    """``CMD``: exec form (``prepend_shell`` False) or shell form (one string)."""

    keyword: ClassVar[str] = "CMD"
    cmd_line: tuple[str, ...]
    prepend_shell: bool
    files: tuple[InlineFile, ...] = ()


@dataclass(frozen=True, kw_only=True)
class EntrypointInstruction(Instruction):
    """``ENTRYPOINT``; an empty exec form (``[]``) gives ``cmd_line`` None, as in BuildKit."""

    keyword: ClassVar[str] = "ENTRYPOINT"
    cmd_line: tuple[str, ...] | None
    prepend_shell: bool
    files: tuple[InlineFile, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ShellInstruction(Instruction):
    """``SHELL ["executable", "param"]`` (JSON form only)."""

    keyword: ClassVar[str] = "SHELL"
    shell: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class HealthcheckInstruction(Instruction):
    """``HEALTHCHECK NONE`` or ``HEALTHCHECK [--interval..] CMD ...``; durations in nanoseconds
    (0 = the runtime default), ``test`` as in the image config (``NONE``, ``CMD``,
    ``CMD-SHELL``)."""

    keyword: ClassVar[str] = "HEALTHCHECK"
    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, kw_only=True)
class StopsignalInstruction(Instruction):
    """``STOPSIGNAL signal``; validated after expansion."""

    keyword: ClassVar[str] = "STOPSIGNAL"
    signal: str
    ignored_flags: tuple[str, ...] = ()

    def expand(self, expand: Expander) -> StopsignalInstruction:
        signal = expand(self.signal)
        if not is_valid_signal(signal):
            raise DockerfileParseError(
                f"invalid signal: {signal} (use a name like SIGTERM or a non-zero number)"
            )
        return dataclasses.replace(self, signal=signal)


@dataclass(frozen=True, kw_only=True)
class OnbuildInstruction(Instruction):
    """``ONBUILD <instruction>``: stored, not run. ``expression`` is the trigger as BuildKit
    writes it into the image config; :meth:`trigger_instruction` parses it when a child build
    runs it."""

    keyword: ClassVar[str] = "ONBUILD"
    expression: str
    trigger: Node = field(compare=False, repr=False)

    def trigger_instruction(self, *, file: str | None = None) -> Instruction:
        return parse_instruction(self.trigger, file=file)


@dataclass(frozen=True, kw_only=True)
class MaintainerInstruction(Instruction):
    """``MAINTAINER name`` (deprecated; sets the image author)."""

    keyword: ClassVar[str] = "MAINTAINER"
    maintainer: str


# --------------------------------------------------------------------------------------------
# Node -> instruction


def parse_instruction(node: Node, *, file: str | None = None) -> Instruction:
    """Turn one AST node into its typed instruction; errors carry ``file`` and the line."""
    keyword = node.keyword.lower()
    parser = _PARSERS.get(keyword)
    try:
        if parser is None:
            raise DockerfileParseError(
                f"unknown instruction: {node.keyword.upper()}"
                + _did_you_mean(node.keyword.upper(), sorted(k.upper() for k in _PARSERS))
            )
        return parser(node, keyword.upper())
    except DockerfileParseError as err:
        raise _located(err, node, file) from None


def _located(err: DockerfileParseError, node: Node, file: str | None) -> DockerfileParseError:
    if err.line is not None:
        return err
    return DockerfileParseError(
        err.reason, file=file or err.file, line=node.start_line or None, column=err.column
    )


def _flags(node: Node, keyword: str, spec: dict[str, str] | None = None) -> _Flags:
    return _parse_flags(keyword, node.flags, spec or {})


def _exactly_one(node: Node, keyword: str) -> str:
    if len(node.args) != 1:
        raise DockerfileParseError(f"{keyword} requires exactly one argument")
    return node.args[0]


def _json_args(node: Node) -> tuple[str, ...]:
    # BuildKit's handleJSONArgs: exec form as is, shell form joined into one string.
    if not node.args:
        return ()
    if node.json:
        return tuple(node.args)
    return (" ".join(node.args),)


def _inline_files(node: Node) -> tuple[InlineFile, ...]:
    return tuple(InlineFile(name=h.name, data=h.content, chomp=h.chomp) for h in node.heredocs)


def _key_values(node: Node, keyword: str) -> tuple[KeyValue, ...]:
    args = node.args
    if not args:
        raise DockerfileParseError(f"{keyword} requires at least one argument")
    # BuildKit's parser emits (key, value, separator) triples; older parsers emitted pairs.
    # A key can never be "" or "=", so a third element of "=" or "" identifies triples.
    triples = len(args) % 3 == 0 and all(sep in ("=", "") for sep in args[2::3])
    if triples:
        chunks = [(args[i], args[i + 1], args[i + 2] == "") for i in range(0, len(args), 3)]
    elif len(args) % 2 == 0:
        chunks = [(args[i], args[i + 1], False) for i in range(0, len(args), 2)]
    else:
        raise DockerfileParseError(f"Bad input to {keyword}, too many arguments")
    pairs = []
    for key, value, legacy in chunks:
        if key == "":
            raise DockerfileParseError(f"{keyword} names can not be blank")
        pairs.append(KeyValue(key=key, value=value, legacy=legacy))
    return tuple(pairs)


def _parse_from(node: Node, keyword: str) -> FromInstruction:
    args = node.args
    stage_name: str | None = None
    if len(args) == 3 and args[1].lower() == "as":
        stage_name = args[2].lower()
        if not re.fullmatch(r"[a-z][a-z0-9\-_.]*", stage_name):
            raise DockerfileParseError(
                f"invalid name for build stage: {args[2]!r}, name can't start with a number or "
                "contain symbols"
            )
    elif len(args) != 1:
        raise DockerfileParseError(
            "FROM requires either one or three arguments (FROM <image> [AS <name>])"
        )
    flags = _flags(node, keyword, {"platform": _STRING})
    return FromInstruction(
        node=node,
        base=args[0],
        stage_name=stage_name,
        platform=flags.string("platform") if "platform" in flags.used else None,
    )


def _parse_arg(node: Node, keyword: str) -> ArgInstruction:
    if not node.args:
        raise DockerfileParseError("ARG requires at least one argument")
    decls = []
    for arg in node.args:
        name, eq, default = arg.partition("=")
        if eq and name == "":
            raise DockerfileParseError("ARG names can not be blank")
        decls.append(ArgDecl(name=name, default=default if eq else None))
    # BuildKit never parses ARG's flags: they are accepted and ignored.
    return ArgInstruction(node=node, args=tuple(decls), ignored_flags=tuple(node.flags))


def _parse_env(node: Node, keyword: str) -> EnvInstruction:
    _flags(node, keyword)
    return EnvInstruction(node=node, pairs=_key_values(node, keyword))


def _parse_label(node: Node, keyword: str) -> LabelInstruction:
    _flags(node, keyword)
    return LabelInstruction(node=node, pairs=_key_values(node, keyword))


_NETWORK_MODES = ("default", "none", "host")
_SECURITY_MODES = ("sandbox", "insecure")


def _parse_run(node: Node, keyword: str) -> RunInstruction:
    flags = _flags(node, keyword, {"mount": _STRINGS, "network": _STRING, "security": _STRING})
    network = flags.values.get("network", "default")
    if network not in _NETWORK_MODES:
        raise DockerfileParseError(
            f"invalid network mode {network!r}; expected one of " + ", ".join(_NETWORK_MODES)
        )
    security = flags.values.get("security", "sandbox")
    if security not in _SECURITY_MODES:
        raise DockerfileParseError(
            f"security {security!r} is not valid; expected one of " + ", ".join(_SECURITY_MODES)
        )
    specs = tuple(flags.lists.get("mount", ()))
    for spec in specs:
        _check_mount_spec(spec)
    return RunInstruction(
        node=node,
        cmd_line=_json_args(node),
        prepend_shell=not node.json,
        files=_inline_files(node),
        mount_specs=specs,
        network=network,
        security=security,
        flags_used=tuple(dict.fromkeys(flags.used)),
    )


def _sources_and_dest(
    node: Node, keyword: str
) -> tuple[tuple[str, ...], tuple[SourceContent, ...], str]:
    if len(node.args) < 2:
        raise DockerfileParseError(
            f"{keyword} requires at least two arguments, but only one was provided. "
            "Destination could not be determined"
        )
    *sources, dest = node.args
    if heredoc_word(dest) is not None:
        raise DockerfileParseError(f"{keyword} cannot accept a heredoc as a destination")
    bodies: dict[str, Heredoc] = {h.name: h for h in node.heredocs}
    paths: list[str] = []
    contents: list[SourceContent] = []
    for src in sources:
        word = heredoc_word(src)
        if word is None:
            paths.append(src)
            continue
        body = bodies.get(word.name)
        data = body.content if body is not None else ""
        if word.chomp:
            data = _chomp(data)
        expand = body.expand if body is not None else word.expand
        contents.append(SourceContent(path=word.name, data=data, expand=expand))
    return tuple(paths), tuple(contents), dest


def _parse_copy(node: Node, keyword: str) -> CopyInstruction:
    sources, contents, dest = _sources_and_dest(node, keyword)
    flags = _flags(
        node,
        keyword,
        {
            "from": _STRING,
            "chown": _STRING,
            "chmod": _STRING,
            "link": _BOOL,
            "parents": _BOOL,
            "exclude": _STRINGS,
        },
    )
    if "from" in flags.used and flags.string("from") == "":
        raise DockerfileParseError("COPY --from needs a stage name, stage index or image")
    return CopyInstruction(
        node=node,
        sources=sources,
        contents=contents,
        dest=dest,
        from_=flags.string("from") or None,
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        link=flags.boolean("link"),
        parents=flags.boolean("parents"),
        exclude=tuple(flags.lists.get("exclude", ())),
    )


def _parse_add(node: Node, keyword: str) -> AddInstruction:
    sources, contents, dest = _sources_and_dest(node, keyword)
    flags = _flags(
        node,
        keyword,
        {
            "chown": _STRING,
            "chmod": _STRING,
            "link": _BOOL,
            "keep-git-dir": _BOOL,
            "checksum": _STRING,
            "unpack": _BOOL,
            "exclude": _STRINGS,
        },
    )
    return AddInstruction(
        node=node,
        sources=sources,
        contents=contents,
        dest=dest,
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        link=flags.boolean("link"),
        keep_git_dir=flags.boolean("keep-git-dir"),
        checksum=flags.string("checksum"),
        unpack=flags.boolean("unpack") if "unpack" in flags.used else None,
        exclude=tuple(flags.lists.get("exclude", ())),
    )


def _parse_workdir(node: Node, keyword: str) -> WorkdirInstruction:
    path = _exactly_one(node, keyword)
    _flags(node, keyword)
    return WorkdirInstruction(node=node, path=path)


def _parse_user(node: Node, keyword: str) -> UserInstruction:
    user = _exactly_one(node, keyword)
    _flags(node, keyword)
    return UserInstruction(node=node, user=user)


def _parse_maintainer(node: Node, keyword: str) -> MaintainerInstruction:
    maintainer = _exactly_one(node, keyword)
    _flags(node, keyword)
    return MaintainerInstruction(node=node, maintainer=maintainer)


def _parse_expose(node: Node, keyword: str) -> ExposeInstruction:
    if not node.args:
        raise DockerfileParseError("EXPOSE requires at least one argument")
    _flags(node, keyword)
    return ExposeInstruction(node=node, ports=tuple(sorted(node.args)))


def _parse_volume(node: Node, keyword: str) -> VolumeInstruction:
    if not node.args:
        raise DockerfileParseError("VOLUME requires at least one argument")
    _flags(node, keyword)
    volumes = tuple(v.strip() for v in node.args)
    if any(v == "" for v in volumes):
        raise DockerfileParseError("VOLUME specified can not be an empty string")
    return VolumeInstruction(node=node, volumes=volumes)


def _parse_cmd(node: Node, keyword: str) -> CmdInstruction:
    _flags(node, keyword)
    return CmdInstruction(
        node=node,
        cmd_line=_json_args(node),
        prepend_shell=not node.json,
        files=_inline_files(node),
    )


def _parse_entrypoint(node: Node, keyword: str) -> EntrypointInstruction:
    _flags(node, keyword)
    cmd_line = _json_args(node)
    return EntrypointInstruction(
        node=node,
        cmd_line=cmd_line or None,
        prepend_shell=not node.json,
        files=_inline_files(node),
    )


def _parse_shell(node: Node, keyword: str) -> ShellInstruction:
    _flags(node, keyword)
    shell = _json_args(node)
    if not shell:
        raise DockerfileParseError("SHELL requires at least one argument")
    if not node.json:
        raise DockerfileParseError(
            'SHELL requires the arguments to be in JSON form, e.g. SHELL ["/bin/bash", "-c"]'
        )
    return ShellInstruction(node=node, shell=shell)


def _parse_healthcheck(node: Node, keyword: str) -> HealthcheckInstruction:
    if not node.args:
        raise DockerfileParseError("HEALTHCHECK requires at least one argument")
    kind = node.args[0].upper()
    rest = node.args[1:]
    if kind == "NONE":
        if rest:
            raise DockerfileParseError("HEALTHCHECK NONE takes no arguments")
        # BuildKit never parses the flags of HEALTHCHECK NONE.
        return HealthcheckInstruction(node=node, test=("NONE",))
    flags = _flags(
        node,
        keyword,
        {
            "interval": _STRING,
            "timeout": _STRING,
            "start-period": _STRING,
            "start-interval": _STRING,
            "retries": _STRING,
        },
    )
    if kind != "CMD":
        raise DockerfileParseError(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    command = tuple(rest) if node.json else ((" ".join(rest),) if rest else ())
    if not command:
        raise DockerfileParseError("Missing command after HEALTHCHECK CMD")
    test = ("CMD", *command) if node.json else ("CMD-SHELL", *command)
    durations = {
        name: _healthcheck_interval(name, flags.string(name))
        for name in ("interval", "timeout", "start-period", "start-interval")
    }
    retries = 0
    if flags.string("retries"):
        text = flags.string("retries")
        if not re.fullmatch(r"[+-]?[0-9]+", text) or not -(2**31) <= int(text) < 2**31:
            raise DockerfileParseError(f"invalid --retries value {text!r}: expected an integer")
        retries = int(text)
        if retries < 0:
            raise DockerfileParseError(f"--retries cannot be negative ({retries})")
    return HealthcheckInstruction(
        node=node,
        test=test,
        interval=durations["interval"],
        timeout=durations["timeout"],
        start_period=durations["start-period"],
        start_interval=durations["start-interval"],
        retries=retries,
    )


def _healthcheck_interval(name: str, text: str) -> int:
    if text == "":
        return 0
    value = parse_go_duration(text)
    if value == 0:
        return 0
    if value < 1_000_000:
        raise DockerfileParseError(f'Interval "{name}" cannot be less than 1ms')
    return value


def _parse_stopsignal(node: Node, keyword: str) -> StopsignalInstruction:
    signal = _exactly_one(node, keyword)
    # BuildKit never parses STOPSIGNAL's flags: they are accepted and ignored.
    return StopsignalInstruction(node=node, signal=signal, ignored_flags=tuple(node.flags))


_ONBUILD_PREFIX = re.compile(r"(?i)^\s*ONBUILD\s*")


def _parse_onbuild(node: Node, keyword: str) -> OnbuildInstruction:
    inner = node.inner
    if inner is None:
        raise DockerfileParseError("ONBUILD requires at least one argument")
    _flags(node, keyword)
    trigger_keyword = inner.keyword.strip().upper()
    if trigger_keyword == "ONBUILD":
        raise DockerfileParseError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger_keyword in ("MAINTAINER", "FROM"):
        raise DockerfileParseError(f"{trigger_keyword} isn't allowed as an ONBUILD trigger")
    heredocs = node.heredocs or inner.heredocs
    expression = _ONBUILD_PREFIX.sub("", node.original, count=1)
    for heredoc in heredocs:
        expression += "\n" + heredoc.content + heredoc.name
    if heredocs and not inner.heredocs:
        inner = dataclasses.replace(inner, heredocs=heredocs)
    return OnbuildInstruction(node=node, expression=expression, trigger=inner)


_PARSERS: dict[str, Callable[[Node, str], Instruction]] = {
    "from": _parse_from,
    "arg": _parse_arg,
    "env": _parse_env,
    "label": _parse_label,
    "run": _parse_run,
    "copy": _parse_copy,
    "add": _parse_add,
    "workdir": _parse_workdir,
    "user": _parse_user,
    "maintainer": _parse_maintainer,
    "expose": _parse_expose,
    "volume": _parse_volume,
    "cmd": _parse_cmd,
    "entrypoint": _parse_entrypoint,
    "shell": _parse_shell,
    "healthcheck": _parse_healthcheck,
    "stopsignal": _parse_stopsignal,
    "onbuild": _parse_onbuild,
}
