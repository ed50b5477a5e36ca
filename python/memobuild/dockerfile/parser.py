"""Dockerfile text -> AST, read exactly the way BuildKit's ``frontend/dockerfile/parser`` reads it.

Compatibility is the whole point: a Dockerfile that builds with ``docker build`` must mean the same
thing here, including BuildKit's odd corners (an instruction's first line loses its leading
whitespace but continuation lines keep theirs; ``CMD ["a"] junk`` is still exec form because Go's
JSON decoder stops after the first value; ``[1]`` is an error but ``[1`` falls back to shell
form; a heredoc is only a heredoc on RUN, COPY and ADD in shell form). So this module follows
BuildKit's algorithm step by step rather than a grammar, and the comments name the BuildKit
function each piece mirrors.

The one layer BuildKit keeps separate is the instruction layer (``instructions/parse.go``): it
rejects unknown instructions and wrong argument counts. ``parse`` runs those checks too (so a
broken Dockerfile fails here, with file and line), unless ``validate=False`` asks for the bare
parser layer, which is what BuildKit's own parser test files exercise.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from memobuild.dockerfile.ast import Dockerfile, Heredoc, Node, ParseWarning
from memobuild.dockerfile.dump import go_quote
from memobuild.errors import DockerfileParseError

__all__ = [
    "GO_SPACES",
    "INSTRUCTIONS",
    "MAX_DOCKERFILE_BYTES",
    "MAX_INSTRUCTIONS",
    "parse",
    "read_dockerfile",
]

# Go's unicode.IsSpace: the Latin-1 spaces plus Unicode's White_Space. Python's str.isspace()
# also counts U+001C..U+001F, which Go does not, so every strip in this module uses this set.
GO_SPACES = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SPACE = frozenset(GO_SPACES)
_RE_GO_SPACES = re.compile("[" + re.escape(GO_SPACES) + "]+")

# Every instruction Docker documents, lower case (BuildKit's command package).
INSTRUCTIONS = (
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
)
_INSTRUCTION_SET = frozenset(INSTRUCTIONS)
_UNCHECKED = frozenset({"run", "cmd", "entrypoint"})  # any argument list will do
_HEREDOC_INSTRUCTIONS = frozenset({"add", "copy", "run"})
_VALID_DIRECTIVES = frozenset({"syntax", "escape", "check"})
_MAX_ONBUILD_DEPTH = 64

# Bounds BuildKit does not have, so that a hostile Dockerfile costs bounded time and memory to
# read and plan (a planned step costs a few kilobytes). Far above real files: Docker itself
# cannot stack more than about 125 layers in one image.
MAX_DOCKERFILE_BYTES = 4 << 20
MAX_INSTRUCTIONS = 10_000

_RE_WHITESPACE = re.compile(r"[\t\v\f\r ]+")  # BuildKit's reWhitespace (no \n, no Unicode spaces)
# BuildKit's `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`, where Go's \s is [\t\n\f\r ] (no \v,
# unlike Python's). The value is captured greedily and its trailing blanks trimmed in code:
# a lazy group before trailing blanks backtracks quadratically on long lines.
_DIRECTIVE_BLANKS = "\t\n\f\r "
_RE_DIRECTIVE = re.compile(r"#[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+)\Z")
_RE_HEREDOC = re.compile(r"([0-9]*)<<(-?)([^<]*)\Z")
_RE_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)
_RE_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_STRING_ARRAY = "when using JSON array syntax, arrays must be comprised of strings only"


def _continuation_regex(escape: str) -> re.Pattern[str]:
    # BuildKit's lineContinuationRegex: the escape token as the last non-blank character, unless
    # it is itself escaped; or alone on its line.
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|\A{e}[ \t]*\Z")


_CONTINUATION = {"\\": _continuation_regex("\\"), "`": _continuation_regex("`")}


class _LineError(Exception):
    """A problem found inside one instruction; the caller adds the file and line."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


class _UnknownInstruction(_LineError):
    """The keyword itself is wrong, so the caller can point at its column."""


# --- directives -----------------------------------------------------------------------------


@dataclass
class _Directives:
    """BuildKit's DirectiveParser: ``# key=value`` lines, only before anything else."""

    values: dict[str, str] = field(default_factory=dict)
    done: bool = False

    def feed(self, token: str) -> str | None:
        """Look at a left-trimmed line; return the directive name it set, if it is one."""
        if self.done:
            return None
        m = _RE_DIRECTIVE.match(token)
        if m is None:
            self.done = True
            return None
        key = m.group(1).lower()
        if key not in _VALID_DIRECTIVES:
            # An unknown directive is an ordinary comment, and ends the directive block.
            self.done = True
            return None
        if key in self.values:
            raise _LineError(f"only one {key} parser directive can be used", m.start(1) + 1)
        value = m.group(2)
        # (.+?)\s*$ keeps one character when the value is all blanks: the last one.
        self.values[key] = value.rstrip(_DIRECTIVE_BLANKS) or value[-1]
        return key


@dataclass(frozen=True)
class _CheckConfig:
    """The ``# check=skip=...;error=true`` directive that BuildKit's linter honours."""

    skip_all: bool = False
    skip: frozenset[str] = frozenset()
    error: bool = False


_GO_BOOLS = {
    "1": True,
    "t": True,
    "T": True,
    "TRUE": True,
    "true": True,
    "True": True,
    "0": False,
    "f": False,
    "F": False,
    "FALSE": False,
    "false": False,
    "False": False,
}


def _parse_check(value: str) -> _CheckConfig:
    # Mirrors BuildKit's linter.ParseLintOptions.
    value = value.strip(GO_SPACES)
    if not value:
        return _CheckConfig()
    skip_all = False
    skip: set[str] = set()
    error = False
    for part in value.split(";", 2):
        key, sep, val = part.partition("=")
        if not sep:
            raise _LineError(f"invalid check option {part!r}: expected key=value")
        key = key.strip(GO_SPACES)
        val = val.strip(GO_SPACES)
        if key == "skip":
            if val == "all":
                skip_all = True
            else:
                skip.update(rule.strip(GO_SPACES) for rule in val.split(","))
        elif key == "error":
            if val not in _GO_BOOLS:
                raise _LineError(f"invalid check option {part!r}: error must be true or false")
            error = _GO_BOOLS[val]
        elif key != "experimental":
            raise _LineError(
                f"invalid check option {key!r}: expected skip=, error= or experimental="
            )
    return _CheckConfig(skip_all=skip_all, skip=frozenset(skip), error=error)


# --- splitting an instruction line (split_command.go) ---------------------------------------


_ASCII_BLANKS = "\t\n\v\f\r "
# Go's unicode.IsSpace applied to single bytes, as extractBuilderFlags does: ASCII blanks plus
# 0x85 and 0xA0, which in UTF-8 text only ever occur inside a multi-byte character.
_BYTE_SPACES = frozenset(b"\t\n\v\f\r \x85\xa0")
# Leading flags made of printable ASCII without quotes, backslashes or backticks.
_RE_PLAIN_FLAGS = re.compile(r"(?:--[!#-&(-\[\]-_a-~]*(?:[\t\v\f\r ]+|\Z))+")


def _extract_builder_flags(line: str, escape: str) -> tuple[str, list[str]]:
    """Peel leading ``--flag`` words off the arguments; return (rest, flags).

    Flags are recognised on every instruction (BuildKit validates names later), quotes and the
    escape token are processed inside them, and a bare ``--`` ends them.

    BuildKit scans this part byte by byte and turns each byte into a character, so a non-ASCII
    flag value comes out as its UTF-8 bytes read as Latin-1 (``--chown=josé`` becomes
    ``--chown=josÃ©``). That is what ``docker build`` then uses, so it is reproduced here.
    """
    stripped = line.lstrip(_ASCII_BLANKS)
    if not stripped.startswith("--"):
        return stripped, []
    # Fast path: ASCII flags without quotes or escapes are just blank-separated words.
    m = _RE_PLAIN_FLAGS.match(stripped)
    if m is not None:
        after = stripped[m.end() :]
        flags = m.group().split()
        if not after.startswith("-") and "--" not in flags and escape not in m.group():
            return after, flags
    data = line.encode("utf-8", "surrogatepass")
    esc = ord(escape)
    words: list[str] = []
    word = bytearray()
    in_word = in_quote = False  # neither: between words
    quote = 0
    blank_ok = False
    n = len(data)
    pos = 0
    ch = 0
    while pos <= n:
        if pos != n:
            ch = data[pos]
        if not in_word and not in_quote:
            if pos == n:
                break
            if ch in _BYTE_SPACES:
                pos += 1
                continue
            if ch != 0x2D or pos + 1 == n or data[pos + 1] != 0x2D:  # not "--"
                return data[pos:].decode("utf-8", "replace"), words
            in_word = True
        if pos == n:
            if word != b"--" and (blank_ok or word):
                words.append(word.decode("latin-1"))
            break
        if in_word:
            if ch in _BYTE_SPACES:
                in_word = False
                if word == b"--":
                    return data[pos:].decode("utf-8", "replace"), words
                if blank_ok or word:
                    words.append(word.decode("latin-1"))
                word = bytearray()
                blank_ok = False
                pos += 1
                continue
            if ch in (0x22, 0x27):  # " '
                quote = ch
                blank_ok = True
                in_word, in_quote = False, True
                pos += 1
                continue
            if ch == esc:
                if pos + 1 == n:
                    pos += 1
                    continue
                pos += 1
                ch = data[pos]
            word.append(ch)
            pos += 1
            continue
        # in_quote
        if ch == quote:
            in_word, in_quote = True, False
            pos += 1
            continue
        if ch == esc:
            if pos + 1 == n:
                in_word, in_quote = True, False
                pos += 1
                continue
            pos += 1
            ch = data[pos]
        word.append(ch)
        pos += 1
    return "", words


def _split_command(line: str, escape: str) -> tuple[str, list[str], str]:
    line = line.strip(GO_SPACES)
    space = line.find(" ")
    if space > 0 and line[:space].isalpha():
        # The common case, a keyword and a space: no need for the regex split.
        cmd, rest = line[:space], line[space + 1 :].lstrip("\t\v\f\r ")
    else:
        parts = _RE_WHITESPACE.split(line, maxsplit=1)
        if len(parts) == 1:
            return parts[0], [], ""
        cmd, rest = parts
    if not rest.startswith("--"):
        return cmd, [], rest.strip(GO_SPACES)
    rest, flags = _extract_builder_flags(rest, escape)
    return cmd, flags, rest.strip(GO_SPACES)


# --- per-instruction argument parsers (line_parsers.go) -------------------------------------


def _words_regexes(escape: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """A word of parseWords as a regex (quotes and escapes kept), and "only such words"."""
    e = re.escape(escape)
    blank = "[" + re.escape(GO_SPACES) + "]"
    word = rf"(?:[^{re.escape(GO_SPACES)}'\"{e}]|{e}[\s\S]|'[^']*'|\"(?:[^\"{e}]|{e}[\s\S])*\")+"
    # Each word must be followed by blanks or the end: unambiguous, so no exponential backtracking.
    return re.compile(word), re.compile(rf"{blank}*(?:{word}(?:{blank}+|\Z))*\Z")


_WORDS = {"\\": _words_regexes("\\"), "`": _words_regexes("`")}


def _parse_words(rest: str, escape: str) -> list[str]:
    """BuildKit's parseWords: split on whitespace, keeping quotes and escapes in the words."""
    if escape not in rest and "'" not in rest and '"' not in rest:
        return [w for w in _RE_GO_SPACES.split(rest) if w]
    word_re, whole_re = _WORDS[escape]
    if whole_re.match(rest):  # well-formed: every quote closed, no escape at the very end
        return word_re.findall(rest)
    words: list[str] = []
    word: list[str] = []
    state = 0  # 0 between words, 1 in a word, 2 in quotes
    quote = ""
    blank_ok = False
    n = len(rest)
    pos = 0
    ch = ""
    while pos <= n:
        if pos != n:
            ch = rest[pos]
        if state == 0:
            if pos == n:
                break
            if ch in _SPACE:
                pos += 1
                continue
            state = 1
        if pos == n:
            if blank_ok or word:
                words.append("".join(word))
            break
        if state == 1:
            if ch in _SPACE:
                state = 0
                if blank_ok or word:
                    words.append("".join(word))
                word = []
                blank_ok = False
                pos += 1
                continue
            if ch in "'\"":
                quote = ch
                blank_ok = True
                state = 2
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue  # an escape token at the very end is dropped
                word.append(ch)
                pos += 1
                ch = rest[pos]
            word.append(ch)
            pos += 1
            continue
        # state == 2: inside quotes; the escape token works except between single quotes
        if ch == quote:
            state = 1
        if ch == escape and quote != "'":
            if pos + 1 == n:
                state = 1
                pos += 1
                continue
            pos += 1
            word.append(ch)
            ch = rest[pos]
        word.append(ch)
        pos += 1
    return words


def _go_json_number(text: str) -> float:
    # Go decodes JSON numbers into float64; one that overflows is a decode error, which makes
    # BuildKit fall back to shell form instead of reporting "strings only".
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text} out of range")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python accepts NaN and Infinity; Go does not


_JSON = json.JSONDecoder(
    parse_float=_go_json_number, parse_int=_go_json_number, parse_constant=_reject_constant
)


def _parse_json(rest: str) -> list[str] | None:
    """BuildKit's parseJSON: a JSON array of strings, or None when ``rest`` is not JSON.

    Like Go's json.Decoder, only the first JSON value counts and anything after it is ignored.
    A well-formed array holding anything but strings is an error, not a fallback.
    """
    text = rest.lstrip(GO_SPACES)
    if not text.startswith("["):
        return None
    try:
        value, _end = _JSON.raw_decode(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list):
        return None
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise _LineError(_NOT_STRING_ARRAY)
        # Go replaces a lone surrogate escape (\ud800) with U+FFFD.
        out.append(_RE_SURROGATE.sub("\ufffd", item) if "\\u" in text else item)
    return out


def _parse_maybe_json(rest: str, escape: str) -> tuple[list[str], bool]:
    """RUN, CMD, ENTRYPOINT, SHELL: exec form, else the whole rest as one shell-form string."""
    if not rest:
        return [], False
    parsed = _parse_json(rest)
    if parsed is not None:
        return parsed, True
    return [rest], False


def _parse_maybe_json_to_list(rest: str, escape: str) -> tuple[list[str], bool]:
    """ADD, COPY, VOLUME: exec form, else whitespace-separated words."""
    parsed = _parse_json(rest)
    if parsed is not None:
        return parsed, True
    return _parse_strings_whitespace_delimited(rest, escape)


def _parse_strings_whitespace_delimited(rest: str, escape: str) -> tuple[list[str], bool]:
    """FROM, EXPOSE: words split on ASCII blanks, quotes not interpreted."""
    if not rest:
        return [], False
    return _RE_WHITESPACE.split(rest), False


def _parse_string(rest: str, escape: str) -> tuple[list[str], bool]:
    """USER, WORKDIR, STOPSIGNAL, MAINTAINER: the rest of the line as one argument."""
    return ([rest] if rest else []), False


def _parse_name_val(rest: str, escape: str, key: str) -> tuple[list[str], bool]:
    """ENV, LABEL: (name, value, separator) triples, as BuildKit's parser emits them.

    The separator is ``=`` for ``KEY=value`` and empty for the legacy ``KEY value`` form, which
    takes the rest of the line as the value.
    """
    words = _parse_words(rest, escape)
    if not words:
        return [], False
    if "=" not in words[0]:
        parts = _RE_WHITESPACE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise _LineError(f"{key} must have two arguments (use {key} name=value)")
        return [parts[0], parts[1], ""], False
    out: list[str] = []
    for word in words:
        name, sep, value = word.partition("=")
        if not sep:
            raise _LineError(
                f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value"
            )
        out += (name, value, "=")
    return out, False


def _parse_env(rest: str, escape: str) -> tuple[list[str], bool]:
    return _parse_name_val(rest, escape, "ENV")


def _parse_label(rest: str, escape: str) -> tuple[list[str], bool]:
    return _parse_name_val(rest, escape, "LABEL")


def _parse_name_or_name_val(rest: str, escape: str) -> tuple[list[str], bool]:
    """ARG: one word per declaration (``name`` or ``name=value``), quotes kept."""
    return _parse_words(rest, escape), False


def _parse_health_config(rest: str, escape: str) -> tuple[list[str], bool]:
    """HEALTHCHECK: the type word (CMD, NONE), then the command like CMD's.

    BuildKit finds the end of the type word byte by byte, so only ASCII blanks (and the bytes
    0x85 and 0xA0) end it; a Unicode space such as U+2003 does not.
    """
    data = rest.encode("utf-8", "surrogatepass")
    n = len(data)
    sep = 0
    while sep < n and data[sep] not in _BYTE_SPACES:
        sep += 1
    nxt = sep
    while nxt < n and data[nxt] in _BYTE_SPACES:
        nxt += 1
    if sep == 0:
        return [], False
    cmd, is_json = _parse_maybe_json(data[nxt:].decode("utf-8", "replace"), escape)
    return [data[:sep].decode("utf-8", "replace"), *cmd], is_json


_DISPATCH: dict[str, Callable[[str, str], tuple[list[str], bool]]] = {
    "add": _parse_maybe_json_to_list,
    "arg": _parse_name_or_name_val,
    "cmd": _parse_maybe_json,
    "copy": _parse_maybe_json_to_list,
    "entrypoint": _parse_maybe_json,
    "env": _parse_env,
    "expose": _parse_strings_whitespace_delimited,
    "from": _parse_strings_whitespace_delimited,
    "healthcheck": _parse_health_config,
    "label": _parse_label,
    "maintainer": _parse_string,
    "run": _parse_maybe_json,
    "shell": _parse_maybe_json,
    "stopsignal": _parse_string,
    "user": _parse_string,
    "volume": _parse_maybe_json_to_list,
    "workdir": _parse_string,
}


def _node_from_line(line: str, escape: str, start: int, end: int, depth: int = 0) -> Node:
    """BuildKit's newNodeFromLine: keyword, flags, then the instruction's own argument parser."""
    cmd, flags, rest = _split_command(line, escape)
    keyword = cmd.lower()
    if keyword == "onbuild":
        inner = None
        if rest:
            if depth >= _MAX_ONBUILD_DEPTH:
                raise _LineError(f"ONBUILD nested more than {_MAX_ONBUILD_DEPTH} levels deep")
            inner = _node_from_line(rest, escape, start, end, depth + 1)
        return Node(keyword, (), tuple(flags), False, (), line, start, end, inner)
    parser = _DISPATCH.get(keyword)
    if parser is None:
        # BuildKit's parseIgnore: an unknown instruction keeps one empty argument; the
        # instruction layer rejects it.
        return Node(keyword, ("",), tuple(flags), False, (), line, start, end, None)
    args, is_json = parser(rest, escape)
    # Positional arguments: this runs once per instruction, and keywords cost a third more.
    return Node(keyword, tuple(args), tuple(flags), is_json, (), line, start, end, None)


def _can_contain_heredoc(node: Node) -> bool:
    """Only RUN, COPY and ADD in shell form, or such an ONBUILD trigger, take heredocs."""
    target = node.inner if node.inner is not None else node
    return target.keyword in _HEREDOC_INSTRUCTIONS and not target.json


def _with_heredocs(node: Node, heredocs: tuple[Heredoc, ...], end: int) -> Node:
    """The node once its heredoc bodies are read (for ONBUILD, its trigger gets them too)."""
    inner = node.inner and _with_heredocs(node.inner, heredocs, end)
    return dataclasses.replace(node, heredocs=heredocs, end_line=end, inner=inner)


# --- heredocs (parser.go heredocsFromLine / heredocFromMatch, shell/lex.go) ------------------


class _LexError(Exception):
    pass


class _HeredocLexer:
    """The slice of BuildKit's shell lexer that heredoc detection uses.

    BuildKit finds heredocs by shell-splitting the whole instruction line with no variables
    set, unset variables left as written (SkipUnsetEnv) and, for the first pass, quotes and
    escapes kept (RawQuotes, RawEscapes). A lexing error means "no heredocs on this line". The
    escape token here is always a backslash, whatever ``# escape=`` says, as in BuildKit.
    (Recent BuildKit lexers share one word buffer between nested ``${...}`` scans, which can drop
    the text before a ``${x:-y}`` from a word; BuildKit 0.12 does not, and neither does this.)
    """

    def __init__(self, text: str, *, raw_quotes: bool, raw_escapes: bool) -> None:
        self.s = text
        self.n = len(text)
        self.pos = 0
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes

    def words(self) -> list[str]:
        _result, words = self._stop_on("", self.raw_escapes)
        return words

    def _stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            return self._scan(stop)
        finally:
            self.raw_escapes = saved

    def _scan(self, stop: str) -> tuple[str, list[str]]:
        """Scan up to ``stop`` (or the end); return the processed text and its words."""
        result: list[str] = []
        words: list[str] = []
        buf: list[str] = []
        in_word = False
        s = self.s

        def add_char(c: str) -> None:
            # Unquoted characters: blanks end a word, everything else extends it.
            nonlocal in_word
            if c in _SPACE:
                if in_word and buf:
                    words.append("".join(buf))
                    buf.clear()
                    in_word = False
            else:
                buf.append(c)
                in_word = True

        while self.pos < self.n:
            ch = s[self.pos]
            if stop and ch == stop:
                self.pos += 1
                if buf:
                    words.append("".join(buf))
                return "".join(result), words
            if ch == "$":
                tmp = self._dollar()
                result.append(tmp)
                for c in tmp:
                    add_char(c)
                continue
            if ch in "'\"":
                tmp = self._single_quote() if ch == "'" else self._double_quote()
                result.append(tmp)
                buf.append(tmp)
                in_word = True
                continue
            self.pos += 1
            if ch == "\\":
                if self.raw_escapes:
                    buf.append(ch)
                    in_word = True
                    result.append(ch)
                if self.pos >= self.n:
                    break
                ch = s[self.pos]
                self.pos += 1
                buf.append(ch)
                in_word = True
            else:
                add_char(ch)
            result.append(ch)
        if stop:
            raise _LexError(f"unexpected end of statement while looking for matching {stop}")
        if buf:
            words.append("".join(buf))
        return "".join(result), words

    def _single_quote(self) -> str:
        self.pos += 1
        out = ["'"] if self.raw_quotes else []
        while True:
            if self.pos >= self.n:
                raise _LexError("unexpected end of statement while looking for matching '")
            ch = self.s[self.pos]
            self.pos += 1
            if ch == "'":
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def _double_quote(self) -> str:
        self.pos += 1
        out = ['"'] if self.raw_quotes else []
        while True:
            if self.pos >= self.n:
                raise _LexError('unexpected end of statement while looking for matching "')
            ch = self.s[self.pos]
            if ch == '"':
                self.pos += 1
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if ch == "$":
                out.append(self._dollar())
                continue
            self.pos += 1
            if ch == "\\":
                if self.raw_escapes:
                    out.append(ch)
                if self.pos >= self.n:
                    continue
                if self.s[self.pos] in '"$\\':
                    ch = self.s[self.pos]
                    self.pos += 1
            out.append(ch)

    def _name(self) -> str:
        s, n = self.s, self.n
        start = self.pos
        if start < n and s[start].isdecimal():
            while self.pos < n and s[self.pos].isdecimal():
                self.pos += 1
            return s[start : self.pos]
        if start < n and s[start] in "@*#?-$!0":
            self.pos += 1
            return s[start]
        while self.pos < n and (
            s[self.pos].isalpha() or s[self.pos].isdecimal() or s[self.pos] == "_"
        ):
            self.pos += 1
        return s[start : self.pos]

    def _dollar(self) -> str:
        # Every variable is unset, so each reference is re-emitted as written.
        self.pos += 1
        if self.pos >= self.n or self.s[self.pos] != "{":
            name = self._name()
            return "$" + name
        self.pos += 1
        if self.pos >= self.n:
            raise _LexError("syntax error: missing '}'")
        if self.s[self.pos] in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self._name()
        if self.pos >= self.n:
            raise _LexError("syntax error: missing '}'")
        ch = self.s[self.pos]
        self.pos += 1
        if ch == "}":
            return "${" + name + "}"
        modifier = ch
        if ch == ":":
            if self.pos < self.n:
                ch = self.s[self.pos]
                modifier += ch
            self.pos += 1
            if ch in "#%":
                raise _LexError(f"unsupported modifier ({modifier}) in substitution")
        elif ch == "/":
            if self.pos < self.n and self.s[self.pos] == "/":
                self.pos += 1
            pattern, _ = self._nested("/", True, "syntax error: missing '/' in ${}")
            replacement, _ = self._nested("}", True, "syntax error: missing '}'")
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        elif ch not in "+-?#%":
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")
        word, _ = self._nested("}", ch in "#%", "syntax error: missing '}'")
        return "${" + name + modifier + word + "}"

    def _nested(self, stop: str, raw_escapes: bool, at_eof: str) -> tuple[str, list[str]]:
        try:
            return self._stop_on(stop, raw_escapes)
        except _LexError:
            if self.pos >= self.n:
                raise _LexError(at_eof) from None
            raise


def _shell_words(text: str, *, raw_quotes: bool, raw_escapes: bool) -> list[str]:
    return _HeredocLexer(text, raw_quotes=raw_quotes, raw_escapes=raw_escapes).words()


def _heredoc_from_word(word: str) -> Heredoc | None:
    """BuildKit's ParseHeredoc: ``[n]<<[-]WORD``; a quoted WORD disables expansion."""
    m = _RE_HEREDOC.match(word)
    if m is None:
        return None
    digits, dash, rest = m.groups()
    if not rest:
        return None
    try:
        words = _shell_words(rest, raw_quotes=False, raw_escapes=False)
        if len(words) != 1:
            return None
        raw = _shell_words(rest, raw_quotes=True, raw_escapes=False)
    except _LexError as err:
        raise _LineError(f"invalid heredoc delimiter {rest!r}: {err}") from None
    if len(raw) != 1:
        raise _LineError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    name = words[0]
    # Quotes that the lexer removed mean part of the delimiter was quoted: no expansion.
    expand = name.count("'") + name.count('"') == raw[0].count("'") + raw[0].count('"')
    fd = min(int(digits), 2**64 - 1) if digits else 0  # Go's ParseUint saturates
    return Heredoc(name=name, content="", expand=expand, chomp=dash == "-", file_descriptor=fd)


def _heredocs_from_line(line: str) -> list[Heredoc]:
    try:
        words = _shell_words(line, raw_quotes=True, raw_escapes=True)
    except _LexError:
        return []
    docs = []
    for word in words:
        doc = _heredoc_from_word(word)
        if doc is not None:
            docs.append(doc)
    return docs


# --- instruction-layer checks (instructions/parse.go) ---------------------------------------


def _suggest(word: str) -> str:
    close = difflib.get_close_matches(word.lower(), INSTRUCTIONS, n=1, cutoff=0.6)
    return f" (did you mean {close[0].upper()}?)" if close else ""


def _check_instruction(node: Node) -> None:
    """The argument checks BuildKit's instruction layer makes before anything runs."""
    kw = node.keyword
    if kw in _UNCHECKED:
        return
    args = node.args
    n = len(args)
    name = kw.upper()
    if kw not in _INSTRUCTION_SET:
        cmd = _RE_WHITESPACE.split(node.original.strip(GO_SPACES), maxsplit=1)[0]  # as written
        if not cmd:
            raise _UnknownInstruction(
                "empty instruction: a line continuation character with no instruction after it"
            )
        raise _UnknownInstruction(f"unknown instruction: {cmd.upper()}{_suggest(cmd)}")
    if kw in ("env", "label"):
        if n == 0:
            raise _LineError(f"{name} requires at least one argument")
        if any(args[i] == "" for i in range(0, n, 3)):
            raise _LineError(f"{name} names can not be blank")
    elif kw in ("maintainer", "workdir", "user", "stopsignal"):
        if n != 1:
            raise _LineError(f"{name} requires exactly one argument")
    elif kw in ("add", "copy"):
        if n < 2:
            raise _LineError(
                f"{name} requires at least two arguments, but only one was provided. "
                "Destination could not be determined."
            )
    elif kw == "from":
        if not (n == 1 or (n == 3 and args[1].lower() == "as")):
            raise _LineError("FROM requires either one or three arguments (FROM image [AS name])")
    elif kw == "onbuild":
        inner = node.inner
        if inner is None:
            raise _LineError("ONBUILD requires at least one argument")
        if inner.keyword == "onbuild":
            raise _LineError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if inner.keyword in ("maintainer", "from"):
            raise _LineError(f"{inner.keyword.upper()} isn't allowed as an ONBUILD trigger")
    elif kw in ("expose", "volume"):
        if n == 0:
            raise _LineError(f"{name} requires at least one argument")
        if kw == "volume" and any(not a.strip(GO_SPACES) for a in args):
            raise _LineError("VOLUME specified can not be an empty string")
    elif kw == "arg":
        if n == 0:
            raise _LineError("ARG requires at least one argument")
        if any(a.startswith("=") for a in args):
            raise _LineError("ARG names can not be blank")
    elif kw == "healthcheck":
        if n == 0:
            raise _LineError("HEALTHCHECK requires at least one argument (CMD command, or NONE)")
        kind = args[0].upper()
        if kind == "NONE":
            if n != 1:
                raise _LineError("HEALTHCHECK NONE takes no arguments")
        elif kind == "CMD":
            if n == 1:
                raise _LineError("Missing command after HEALTHCHECK CMD")
        else:
            raise _LineError(f"Unknown type {go_quote(kind)} in HEALTHCHECK (try CMD)")
    elif kw == "shell":
        if n == 0:
            raise _LineError("SHELL requires at least one argument")
        if not node.json:
            raise _LineError(
                'SHELL requires the arguments to be in JSON form, as in SHELL ["/bin/sh", "-c"]'
            )


# --- the main loop (parser.go Parse) --------------------------------------------------------


def read_dockerfile(file: BinaryIO, name: str | None = None) -> str:
    """A Dockerfile's text from an open binary file. Undecodable bytes become U+FFFD (BuildKit
    reads bytes: a stray Latin-1 comment must not stop a build); a file larger than
    :data:`MAX_DOCKERFILE_BYTES` is refused without reading the rest of it."""
    data = file.read(MAX_DOCKERFILE_BYTES + 1)
    if len(data) > MAX_DOCKERFILE_BYTES:
        raise DockerfileParseError(
            f"the Dockerfile is larger than {MAX_DOCKERFILE_BYTES >> 20} MiB", file=name
        )
    return data.decode("utf-8", "replace")


def parse(text: str, *, filename: str | None = None, validate: bool = True) -> Dockerfile:
    """Parse Dockerfile text into a :class:`Dockerfile`, as BuildKit's parser reads it.

    Raises :class:`DockerfileParseError` (with file and line) for anything BuildKit rejects at
    parse time, plus, unless ``validate`` is False, what its instruction layer rejects before a
    build starts: unknown instructions and wrong argument counts. Text longer than
    :data:`MAX_DOCKERFILE_BYTES` characters, or holding more than :data:`MAX_INSTRUCTIONS`
    instructions, is refused too.
    """
    if len(text) > MAX_DOCKERFILE_BYTES:
        raise DockerfileParseError(
            f"the Dockerfile is larger than {MAX_DOCKERFILE_BYTES >> 20} MiB", file=filename
        )
    return _Parser(text, filename).run(validate)


class _Parser:
    def __init__(self, text: str, filename: str | None) -> None:
        self.filename = filename
        lines = text.split("\n")
        # Go's scanner yields no final empty token after a trailing newline.
        if lines[-1] == "":
            lines.pop()
        self.lines = lines
        self.has_final_newline = text.endswith("\n")

    def error(self, message: str, line: int, column: int | None = None) -> DockerfileParseError:
        return DockerfileParseError(message, file=self.filename, line=line, column=column)

    def run(self, validate: bool) -> Dockerfile:
        lines = self.lines
        total = len(lines)
        if total and lines[0].startswith("\ufeff"):
            lines[0] = lines[0][1:]  # a byte-order mark on the first line
        directives = _Directives()
        escape = "\\"
        cont = _CONTINUATION[escape]
        nodes: list[Node] = []
        warnings: list[ParseWarning] = []
        check = _CheckConfig()
        trim = self._trim_continuation
        append = nodes.append
        i = 0  # lines read so far, which is also the 1-based number of the last one read

        while i < total:
            raw = lines[i]
            i += 1
            token = raw.lstrip(GO_SPACES)
            if not directives.done:
                try:
                    key = directives.feed(token.rstrip("\r\n"))
                    if key == "escape":
                        escape = directives.values["escape"]
                        if escape not in _CONTINUATION:
                            raise _LineError(
                                f"invalid escape token {escape!r} does not match ` or \\"
                            )
                        cont = _CONTINUATION[escape]
                    elif key == "check":
                        check = _parse_check(directives.values["check"])
                except _LineError as err:
                    column = len(raw) - len(token) + err.column if err.column else None
                    raise self.error(err.message, i, column) from None
            if not token or token[0] == "#":
                continue  # blank line or comment
            start = i
            if token[-1] == "\r":
                token = token.rstrip("\r\n")
            last = token[-1]
            if last == escape or last == " " or last == "\t":
                line, more = trim(token, escape, cont)
            else:
                line, more = token, False  # the common case: no continuation
            if more:
                pieces = [line]
                empty_continuation = 0
                while more and i < total:
                    piece = lines[i].rstrip("\r\n")
                    i += 1
                    stripped = piece.lstrip(GO_SPACES)
                    if not stripped:
                        empty_continuation = empty_continuation or i
                        continue
                    if stripped[0] == "#":
                        continue  # a comment inside a continuation is dropped
                    piece, more = trim(piece, escape, cont)
                    pieces.append(piece)
                line = "".join(pieces)
                if empty_continuation:
                    warnings.append(
                        ParseWarning(
                            message=f"Empty continuation line found in: {line}",
                            line=empty_continuation,
                            rule="NoEmptyContinuation",
                        )
                    )

            try:
                node = _node_from_line(line, escape, start, i)
                if "<<" in line and _can_contain_heredoc(node):
                    heredocs, i = self._read_heredocs(_heredocs_from_line(line), i)
                    if heredocs:
                        node = _with_heredocs(node, heredocs, i)
                if validate:
                    _check_instruction(node)
            except _UnknownInstruction as err:
                raise self.error(err.message, start, len(raw) - len(token) + 1) from None
            except _LineError as err:
                raise self.error(err.message, start, err.column) from None
            if len(nodes) == MAX_INSTRUCTIONS:
                raise self.error(
                    f"the Dockerfile has more than {MAX_INSTRUCTIONS:,} instructions", start
                )
            append(node)

        if not nodes:
            raise self.error("file with no instructions", max(total, 1))

        kept = [w for w in warnings if not check.skip_all and w.rule not in check.skip]
        if check.error and kept:
            rules = ", ".join(sorted({w.rule for w in kept}))
            raise self.error(
                f"lint violation found for rules: {rules} (the check directive sets error=true)",
                kept[0].line,
            )
        return Dockerfile(
            nodes=tuple(nodes),
            escape=escape,
            directives=dict(directives.values),
            warnings=tuple(kept),
            filename=self.filename,
        )

    @staticmethod
    def _trim_continuation(piece: str, escape: str, cont: re.Pattern[str]) -> tuple[str, bool]:
        # Cheap test first: almost no line ends with the escape token.
        if not piece.rstrip(" \t").endswith(escape):
            return piece, False
        m = cont.search(piece)
        if m is None:
            return piece, False
        return piece[: m.start()] + (m.group(1) or ""), True

    def _read_heredocs(self, docs: list[Heredoc], i: int) -> tuple[tuple[Heredoc, ...], int]:
        """Read each heredoc's body, in order, from line index ``i``; return them and the next
        line index."""
        out = []
        lines = self.lines
        total = len(lines)
        for doc in docs:
            body: list[str] = []
            terminated = False
            while i < total:
                raw = lines[i]
                i += 1
                candidate = raw.rstrip("\r\n")
                if doc.chomp:
                    candidate = candidate.lstrip("\t")
                if candidate == doc.name:
                    terminated = True
                    break
                # The body keeps its line endings, as BuildKit's scanner returns them.
                body.append(raw + "\n" if i < total or self.has_final_newline else raw)
            if not terminated:
                dash = "-" if doc.chomp else ""
                raise _LineError(
                    f"unterminated heredoc <<{dash}{doc.name}: no line {doc.name!r} closes it "
                    "before the end of the file"
                )
            content = "".join(body)
            if doc.chomp:
                content = _RE_LEADING_TABS.sub("", content)
            out.append(dataclasses.replace(doc, content=content))
        return tuple(out), i
