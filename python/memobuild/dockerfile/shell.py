"""Shell-word expansion with the rules of BuildKit's ``frontend/dockerfile/shell`` lexer.

The Dockerfile frontend, not a shell, expands ``$VAR`` in ADD, COPY, ENV, EXPOSE, FROM, LABEL,
STOPSIGNAL, USER, VOLUME, WORKDIR (and ONBUILD triggers, ARG defaults, RUN ``--mount`` values).
Those results end up in image configs and cache keys, so they must match BuildKit character for
character, including its quirks. This module is a re-implementation from BuildKit's public
behaviour (its ``lex.go`` and test tables), not a POSIX shell.

Public API::

    expand_word(word: str, env: Mapping[str, str], *, escape: str = "\\\\") -> str
    split_words(word: str, env: Mapping[str, str], *, escape: str = "\\\\") -> list[str]
    expand_word_with_refs(word, env, *, escape="\\\\") -> tuple[str, frozenset[str]]
    process_word(word, env, *, escape="\\\\") -> ShellWord      # value, words, matched, unmatched
    Lexer(escape="\\\\", raw_quotes=False, raw_escapes=False,
          skip_process_quotes=False, skip_unset_env=False).process(word, env, budget=None)
    ExpansionBudget()       # what the expansions of one Dockerfile may cost, shared by its words

Every error (``${X:?msg}``, a bad substitution, an unterminated quote or brace, an invalid
pattern) is a :class:`~memobuild.errors.DockerfileParseError` without a location; the instruction
layer re-raises it with the file and line.

Rules, as BuildKit applies them:

* ``$NAME`` / ``${NAME}``: a name is letters, digits and ``_``; a leading digit run (``$10``) or
  one special parameter (``$@ $* $# $? $- $$ $! $0``) is a name of its own. ``$`` followed by
  anything else is a literal ``$``. Names are looked up exactly (Linux semantics).
* ``${N:-w}`` ``${N-w}`` ``${N:+w}`` ``${N+w}`` ``${N:?m}`` ``${N?m}``: the colon forms treat an
  empty value like an unset one. The word is always expanded, even when it is not used, so its
  errors and variable references always count.
* ``${N#p}`` ``${N##p}`` ``${N%p}`` ``${N%%p}`` ``${N/p/r}`` ``${N//p/r}``: ``p`` is a glob
  with ``*`` and ``?`` (no brackets); ``\\*``, ``\\?`` and ``\\\\`` are literal, ``\\}`` and
  ``\\/`` stand for ``}`` and ``/``. ``*`` and ``?`` do not match a newline. ``${N//p/r}``
  expands ``$0`` in ``r`` (reachable only through an escaped ``$`` or a variable) to the match,
  as Go's regexp does.
* Single quotes keep everything literal; double quotes keep everything but ``$`` and the escape
  token, which escapes only ``"``, ``$`` and itself there. Outside quotes the escape token makes the
  next character literal and disappears; a trailing escape token is dropped.
* Word splitting (:func:`split_words`) splits on whitespace outside quotes, including whitespace
  that came from a variable's value; quoted or escaped whitespace stays in the word. An empty
  quoted string (``""``) does not make a word on its own.

Bounds, where BuildKit has none (each a DockerfileParseError, never exhausted memory or time):
one word's expansion may add at most :data:`MAX_WORD_GROWTH` characters to it; all the words
expanded with one :class:`ExpansionBudget` (a Dockerfile's) may produce at most
:data:`MAX_EXPANDED` characters and do :data:`MAX_PATTERN_WORK` units of pattern matching
(value length times pattern length). ``ENV A=$A$A`` twenty times over, or ``${A//?/$A}``, hits
the first; patterns are matched by the Rust core's linear-time engine (``_core``), with Go's
semantics, so ``${A#*a*a*a*b}`` costs what its text and pattern cost, not minutes of backtracking.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from memobuild import _core
from memobuild.errors import DockerfileParseError

__all__ = [
    "MAX_EXPANDED",
    "MAX_PATTERN_WORK",
    "MAX_WORD_GROWTH",
    "ExpansionBudget",
    "Lexer",
    "ShellWord",
    "expand_word",
    "expand_word_with_refs",
    "process_word",
    "split_words",
]

_EOF = ""  # what _Scanner.peek/next return at the end of the input

# Go's unicode.IsSpace: the Latin-1 spaces plus the Unicode White_Space property. Python's
# str.isspace() also accepts U+001C..U+001F, which BuildKit would keep inside a word.
_GO_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SPECIAL_PARAMS = frozenset("@*#?-$!0")
_GO_SPACE_CLASS = re.escape("".join(sorted(_GO_SPACES)))
_RE_FIELDS = re.compile(f"[{_GO_SPACE_CLASS}]+|[^{_GO_SPACE_CLASS}]+")  # runs of space / not
_RE_SURROGATE = re.compile("[\ud800-\udfff]")
_RE_SURROGATE_STAND_INS = re.compile("[\U000f0000-\U000f07ff]")

MAX_WORD_GROWTH = 1 << 20
"""Characters one word's expansion may add to the word's own length (1 Mi)."""
MAX_EXPANDED = 64 << 20
"""Characters the expansions sharing one :class:`ExpansionBudget` may produce (64 Mi)."""
MAX_PATTERN_WORK = 1 << 28
"""Sum of value length times pattern length over one budget's ``${VAR#p}``-family matches."""


class ExpansionBudget:
    """What expansions may still cost. A Dockerfile's loader passes one to every word it
    expands, so a file cannot multiply its own size by expanding many words either."""

    __slots__ = ("chars", "pattern_work")

    def __init__(self, chars: int = MAX_EXPANDED, pattern_work: int = MAX_PATTERN_WORK) -> None:
        self.chars = chars
        self.pattern_work = pattern_work


def _is_space(ch: str) -> bool:
    return ch in _GO_SPACES


def _is_digit(ch: str) -> bool:
    # Go's unicode.IsDigit is category Nd; str.isdigit() would also accept superscripts.
    return unicodedata.category(ch) == "Nd"


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


class _LexError(Exception):
    """An expansion error before it is given the ``failed to process`` prefix."""


@dataclass(frozen=True)
class ShellWord:
    """What expanding one word produced.

    ``value`` is the word with quotes removed and variables substituted (BuildKit's
    ``ProcessWord``); ``words`` the same text split into fields (``ProcessWords``). ``matched``
    are the names looked up and found, ``unmatched`` those looked up and missing; a later cache
    key depends on exactly these, so a word that never mentions ``$FOO`` never depends on FOO.
    """

    value: str
    words: tuple[str, ...]
    matched: frozenset[str]
    unmatched: frozenset[str]

    @property
    def refs(self) -> frozenset[str]:
        """Every variable name the word looked up, set or not."""
        return self.matched | self.unmatched


class _Words:
    """Field splitting as BuildKit's wordsStruct does it, quirks included."""

    def __init__(self) -> None:
        self.word: list[str] = []
        self.size = 0  # characters in self.word; an empty quoted string adds none
        self.words: list[str] = []
        self.in_word = False

    def _flush(self) -> None:
        self.words.append("".join(self.word))
        self.word = []
        self.size = 0
        self.in_word = False

    def add_char(self, ch: str) -> None:
        if _is_space(ch):
            if self.in_word and self.size:
                self._flush()
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.word.append(ch)
        self.size += 1
        self.in_word = True

    def add_string(self, text: str) -> None:
        # add_char for every character, a run at a time: a value can be a megabyte long.
        for run in _RE_FIELDS.findall(text):
            if run[0] in _GO_SPACES:
                if self.in_word and self.size:
                    self._flush()
            else:
                self.add_raw_string(run)

    def add_raw_string(self, text: str) -> None:
        self.word.append(text)
        self.size += len(text)
        self.in_word = True

    def get(self) -> list[str]:
        if self.size:
            self._flush()
        return self.words


@dataclass(frozen=True)
class Lexer:
    """A configured lexer; the module functions use the default configuration.

    The options exist because BuildKit uses them: ``skip_process_quotes`` for heredoc bodies
    (quotes are content there), ``raw_quotes`` + ``skip_unset_env`` for the human-readable step
    names, ``raw_escapes`` to keep escape tokens in the result.
    """

    escape: str = "\\"
    raw_quotes: bool = False
    raw_escapes: bool = False
    skip_process_quotes: bool = False
    skip_unset_env: bool = False

    def process(
        self, word: str, env: Mapping[str, str], budget: ExpansionBudget | None = None
    ) -> ShellWord:
        """Expand ``word`` against ``env``; raise DockerfileParseError on a bad expression or
        when the expansion would exceed its bounds (``budget``: a fresh one when None)."""
        if len(self.escape) != 1:
            raise DockerfileParseError(
                f"invalid escape token {self.escape!r}: it must be a single character"
            )
        scanner = _Scanner(self, word, env, budget if budget is not None else ExpansionBudget())
        try:
            value, words = scanner.process_stop_on(_EOF, self.raw_escapes)
        except _LexError as err:
            raise DockerfileParseError(f"failed to process {_go_quote(word)}: {err}") from None
        except RecursionError:
            raise DockerfileParseError(
                f"failed to process {_go_quote(word)}: substitutions are nested too deeply"
            ) from None
        return ShellWord(
            value=value,
            words=tuple(words),
            matched=frozenset(scanner.matches),
            unmatched=frozenset(scanner.nonmatches),
        )


def _go_quote(text: str) -> str:
    # Close enough to Go's %q for a message: double quotes, escapes for control characters.
    return json.dumps(text, ensure_ascii=False)


class _Scanner:
    """One pass over one word; mirrors the structure of BuildKit's shellWord."""

    def __init__(
        self, lexer: Lexer, text: str, env: Mapping[str, str], budget: ExpansionBudget
    ) -> None:
        self.lexer = lexer
        self.budget = budget
        self.room = len(text) + MAX_WORD_GROWTH  # characters this word may still produce
        self.escape = lexer.escape
        self.text = text
        # Go's text/scanner drops a byte-order mark at the very start of its input.
        self.pos = 1 if text.startswith("\ufeff") else 0
        self.env = env
        self.raw_escapes = lexer.raw_escapes
        self.matches: set[str] = set()
        self.nonmatches: set[str] = set()

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else _EOF

    def next(self) -> str:
        if self.pos >= len(self.text):
            return _EOF
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def grow(self, size: int) -> None:
        """Account for ``size`` characters of expansion output (substituted values, replaced
        text): every copy counts, since every copy costs time and memory."""
        self.room -= size
        self.budget.chars -= size
        if self.room < 0:
            raise _LexError(
                f"the expansion is too large: it adds more than {MAX_WORD_GROWTH} characters "
                "to the word"
            )
        if self.budget.chars < 0:
            raise _LexError(
                f"expansions in this Dockerfile produce more than {MAX_EXPANDED} characters"
            )

    def get_env(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matches.add(name)
            return self.env[name], True
        self.nonmatches.add(name)
        return "", False

    def process_stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Process up to ``stop`` (consumed) or the end of input when ``stop`` is _EOF."""
        saved = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            result: list[str] = []
            words = _Words()
            quotes = not self.lexer.skip_process_quotes
            while (ch := self.peek()) != _EOF:
                if stop != _EOF and ch == stop:
                    self.next()
                    return "".join(result), words.get()
                if ch == "$":
                    text = self.process_dollar()
                    self.grow(len(text))
                    result.append(text)
                    words.add_string(text)
                elif quotes and ch == "'":
                    text = self.process_single_quote()
                    result.append(text)
                    words.add_raw_string(text)
                elif quotes and ch == '"':
                    text = self.process_double_quote()
                    result.append(text)
                    words.add_raw_string(text)
                else:
                    ch = self.next()
                    if ch == self.escape:
                        if self.raw_escapes:
                            words.add_raw_char(ch)
                            result.append(ch)
                        ch = self.next()
                        if ch == _EOF:
                            break
                        words.add_raw_char(ch)
                    else:
                        words.add_char(ch)
                    result.append(ch)
            if stop != _EOF:
                raise _LexError(f"unexpected end of statement while looking for matching {stop}")
            return "".join(result), words.get()
        finally:
            self.raw_escapes = saved

    def process_single_quote(self) -> str:
        # Everything up to the next ' is literal; a single quote cannot be escaped inside.
        result: list[str] = []
        opening = self.next()
        if self.lexer.raw_quotes:
            result.append(opening)
        while True:
            ch = self.next()
            if ch == _EOF:
                raise _LexError(
                    "unexpected end of statement while looking for matching single-quote"
                )
            if ch == "'":
                if self.lexer.raw_quotes:
                    result.append(ch)
                return "".join(result)
            result.append(ch)

    def process_double_quote(self) -> str:
        # Literal except $ and the escape token, which escapes only ", $ and itself.
        result: list[str] = []
        opening = self.next()
        if self.lexer.raw_quotes:
            result.append(opening)
        while True:
            ch = self.peek()
            if ch == _EOF:
                raise _LexError(
                    "unexpected end of statement while looking for matching double-quote"
                )
            if ch == '"':
                self.next()
                if self.lexer.raw_quotes:
                    result.append(ch)
                return "".join(result)
            if ch == "$":
                text = self.process_dollar()
                self.grow(len(text))
                result.append(text)
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    result.append(ch)
                following = self.peek()
                if following == _EOF:
                    continue  # the unterminated quote is reported on the next turn
                if following in ('"', "$", self.escape):
                    ch = self.next()
            result.append(ch)

    def process_name(self) -> str:
        name: list[str] = []
        while (ch := self.peek()) != _EOF:
            if not name and _is_digit(ch):
                while (digit := self.peek()) != _EOF and _is_digit(digit):
                    name.append(self.next())
                return "".join(name)
            if not name and ch in _SPECIAL_PARAMS:
                return self.next()
            if not (_is_letter(ch) or _is_digit(ch) or ch == "_"):
                break
            name.append(self.next())
        return "".join(name)

    def process_dollar(self) -> str:
        self.next()  # the $
        if self.peek() != "{":
            name = self.process_name()
            if not name:
                return "$"
            value, found = self.get_env(name)
            if not found and self.lexer.skip_unset_env:
                return "$" + name
            return value

        self.next()  # the {
        first = self.peek()
        if first == _EOF:
            raise _LexError("syntax error: missing '}'")
        if first in "{}:":
            raise _LexError("syntax error: bad substitution")
        name = self.process_name()
        ch = self.next()
        if ch == _EOF:
            raise _LexError("syntax error: missing '}'")
        if ch == "}":
            value, found = self.get_env(name)
            if not found and self.lexer.skip_unset_env:
                return "${" + name + "}"
            return value
        if ch == "/":
            return self.process_replace(name)

        modifier = ch
        null_is_unset = False
        if ch == ":":
            # BuildKit reads any character after the colon and lets the switch below decide, so
            # ${X:#p} behaves like ${X#p} and ${X:=w} is an unsupported modifier.
            null_is_unset = True
            ch = self.next()
            modifier += ch
        elif ch not in "+-?#%":
            raise _LexError(f"unsupported modifier ({modifier}) in substitution")

        try:
            word, _ = self.process_stop_on("}", ch in ("#", "%"))
        except _LexError:
            if self.peek() == _EOF:
                raise _LexError("syntax error: missing '}'") from None
            raise

        value, found = self.get_env(name)
        if self.lexer.skip_unset_env and not found:
            return "${" + name + modifier + word + "}"

        if ch == "-":
            return word if not found or (null_is_unset and value == "") else value
        if ch == "+":
            return "" if not found or (null_is_unset and value == "") else word
        if ch == "?":
            if not found:
                raise _LexError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _LexError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("#", "%"):
            # % and # remove the shortest match, %% and ## the longest. The check is on the
            # expanded word, as in BuildKit.
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            self.charge_pattern(word, value)
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _LexError(f"unsupported modifier ({modifier}) in substitution")

    def process_replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.process_stop_on("/", True)
        except _LexError:
            if self.peek() == _EOF:
                raise _LexError("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement, _ = self.process_stop_on("}", True)
        except _LexError:
            if self.peek() == _EOF:
                raise _LexError("syntax error: missing '}'") from None
            raise

        value, found = self.get_env(name)
        if self.lexer.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"

        _pattern_source(pattern, greedy=True, anchored=False)  # a bad escape is an error first
        self.charge_pattern(pattern, value)
        if replace_all:
            return _go_replace_all(pattern, value, replacement, self.grow)
        spans = _matches(pattern, value, greedy=True, anchored=False, mode="first")
        if not spans:
            return value
        start, end = spans[0]
        self.grow(len(value) - (end - start) + len(replacement))
        return value[:start] + replacement + value[end:]

    def charge_pattern(self, pattern: str, value: str) -> None:
        self.budget.pattern_work -= len(value) * (len(pattern) + 1)
        if self.budget.pattern_work < 0:
            raise _LexError(
                "pattern substitutions in this Dockerfile match too much text: more than "
                f"{MAX_PATTERN_WORK} (value length x pattern length) in all"
            )


def _pattern_source(pattern: str, *, greedy: bool, anchored: bool) -> str:
    """Translate a ``${VAR#pattern}`` glob into an expression for the Rust core's engine
    (the ``regex`` crate: Go's syntax and leftmost-first semantics, linear time)."""
    out = ["^"] if anchored else []
    star = "[^\n]*" if greedy else "[^\n]*?"
    i = 0
    n = len(pattern)
    while i < n:
        tok = pattern[i]
        i += 1
        if tok == "*":
            # "**" means the same as "*"
            if not out or out[-1] != star:
                out.append(star)
            continue
        if tok == "?":
            out.append("[^\n]")
            continue
        if tok == "\\":
            following = pattern[i] if i < n else _EOF
            if following in ("}", "/") and following != _EOF:
                continue  # \} and \/ only protect the delimiter; the escape is not in the pattern
            if following == _EOF or following not in "*?\\":
                shown = following if following != _EOF else ""
                raise _LexError(
                    f"invalid pattern ({pattern}) in substitution: invalid escape '\\{shown}'"
                )
            out.append(_literal(following))
            i += 1
            continue
        out.append(_literal(tok))
    return "".join(out)


def _literal(ch: str) -> str:
    # Every literal as a code point escape: no character is special, whatever it is.
    return f"\\x{{{ord(ch):x}}}"


def _stand_in(text: str) -> str:
    return _RE_SURROGATE.sub(lambda m: chr(ord(m.group()) - 0xD800 + 0xF0000), text)


def _matches(
    pattern: str, value: str, *, greedy: bool, anchored: bool, mode: str
) -> list[tuple[int, int]]:
    """The ``(start, end)`` character offsets of a glob's matches in ``value`` (the Rust core)."""
    if _RE_SURROGATE.search(pattern) or _RE_SURROGATE.search(value):
        # Lone surrogates (undecodable bytes) have no UTF-8 form for the engine: each stands in
        # as a private-use character of its own, one for one, so offsets are unchanged. That is
        # exact only while those characters are not there already.
        if _RE_SURROGATE_STAND_INS.search(pattern) or _RE_SURROGATE_STAND_INS.search(value):
            raise _LexError(
                "cannot match a pattern when the pattern and value hold both undecodable bytes "
                "and characters U+F0000..U+F07FF"
            )
        pattern, value = _stand_in(pattern), _stand_in(value)
    source = _pattern_source(pattern, greedy=greedy, anchored=anchored)
    try:
        return _core.shell_pattern_spans(source, value, mode)
    except ValueError as err:
        raise _LexError(f"invalid pattern ({pattern}) in substitution: {err}") from None


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    spans = _matches(pattern, value, greedy=greedy, anchored=True, mode="first")
    return value[spans[0][1] :] if spans else value


def _reverse_pattern(pattern: str) -> str:
    # Reverse while keeping each escape in front of the character it escapes: a\*c -> c\*a.
    chars = list(pattern)
    last = len(chars) - 1
    out = [""] * len(chars)
    i = 0
    while i <= last:
        tok = chars[i]
        out_idx = last - i
        if tok == "\\" and i != last:
            out[out_idx - 1] = tok
            out[out_idx] = chars[i + 1]
            i += 2
        else:
            out[out_idx] = tok
            i += 1
    return "".join(out)


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regex cannot find the shortest rightmost match, so search the reversed value with the
    # reversed pattern from the left instead, as BuildKit does.
    trimmed = _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)
    return trimmed[::-1]


def _go_replace_all(pattern: str, src: str, template: str, grow: Callable[[int], None]) -> str:
    """Go's Regexp.ReplaceAllString: empty matches right after a match are skipped (the Rust
    core picks the matches); ``grow`` accounts for the output as it is made."""
    out: list[str] = []
    last_end = 0
    for start, end in _matches(pattern, src, greedy=True, anchored=False, mode="all"):
        piece = src[last_end:start]
        replaced = _go_expand_template(template, src[start:end])
        grow(len(piece) + len(replaced))
        out.append(piece)
        out.append(replaced)
        last_end = end
    out.append(src[last_end:])
    return "".join(out)


def _go_expand_template(template: str, whole_match: str) -> str:
    """Go's Regexp.Expand for a pattern without groups: ``$0``/``${0}`` is the match, ``$$`` is
    ``$``, any other well-formed reference is empty, a malformed one stays literal."""
    out: list[str] = []
    rest = template
    while True:
        idx = rest.find("$")
        if idx < 0:
            break
        out.append(rest[:idx])
        rest = rest[idx + 1 :]
        if rest.startswith("$"):
            out.append("$")
            rest = rest[1:]
            continue
        parsed = _go_extract_ref(rest)
        if parsed is None:
            out.append("$")
            continue
        is_whole_match, rest = parsed
        if is_whole_match:
            out.append(whole_match)
    out.append(rest)
    return "".join(out)


def _go_extract_ref(text: str) -> tuple[bool, str] | None:
    """Parse ``name`` or ``{name}`` after a ``$``: whether it names group 0, and the rest.

    The pattern has no groups of its own, so every other well-formed reference is empty.
    """
    brace = text.startswith("{")
    body = text[1:] if brace else text
    i = 0
    while i < len(body) and (_is_letter(body[i]) or _is_digit(body[i]) or body[i] == "_"):
        i += 1
    if i == 0:
        return None
    name = body[:i]
    if brace:
        if i >= len(body) or body[i] != "}":
            return None
        i += 1
    return name == "0", body[i:]


_DEFAULT = Lexer()


def _lexer(escape: str) -> Lexer:
    return _DEFAULT if escape == "\\" else Lexer(escape=escape)


def process_word(word: str, env: Mapping[str, str], *, escape: str = "\\") -> ShellWord:
    """Expand ``word`` and report everything: value, fields, matched and unmatched names."""
    return _lexer(escape).process(word, env)


def expand_word(word: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """Expand one word the way the Dockerfile frontend does (quotes removed, no splitting)."""
    return _lexer(escape).process(word, env).value


def split_words(word: str, env: Mapping[str, str], *, escape: str = "\\") -> list[str]:
    """Expand and split into fields, for instructions that split (EXPOSE)."""
    return list(_lexer(escape).process(word, env).words)


def expand_word_with_refs(
    word: str, env: Mapping[str, str], *, escape: str = "\\"
) -> tuple[str, frozenset[str]]:
    """Expand ``word``; also return every variable name it looked up (set or unset).

    A step's cache key depends on exactly these names: a variable the word never mentions can
    change without changing the result.
    """
    result = _lexer(escape).process(word, env)
    return result.value, result.refs
