"""Shell-word expansion must match BuildKit's lexer character for character.

The tables follow BuildKit's public test data (``shell/envVarTest``, ``shell/wordsTest`` and
``lex_test.go``) and Docker's reference ("Environment replacement"); each row is what
``docker build`` computes for that word.
"""

from __future__ import annotations

import contextlib
import re
import string

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from memobuild.dockerfile import expand_word as exported_expand_word
from memobuild.dockerfile import split_words as exported_split_words
from memobuild.dockerfile.shell import (
    Lexer,
    _reverse_pattern,
    expand_word,
    expand_word_with_refs,
    process_word,
    split_words,
)
from memobuild.errors import DockerfileParseError

ERROR = object()

# The environment of BuildKit's envVarTest.
ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}

ENV_VAR_CASES = [
    # quotes and escapes
    ("hello", "hello"),
    ("he'll'o", "hello"),
    ("he'llo", ERROR),
    ("he\\'llo", "he'llo"),
    ("he\\\\'llo", ERROR),
    ("abc\\tdef", "abctdef"),
    ('"abc\\tdef"', "abc\\tdef"),
    ('"abc\\\\tdef"', "abc\\tdef"),
    ("'abc\\tdef'", "abc\\tdef"),
    ("hello\\", "hello"),
    ("hello\\\\", "hello\\"),
    ('"hello', ERROR),
    ('"hello\\"', ERROR),
    ('"hel\'lo"', "hel'lo"),
    ("'hello", ERROR),
    ("'hello\\'", "hello\\"),
    ("'hello\\there'", "hello\\there"),
    ("'hello\\\\there'", "hello\\\\there"),
    ("\"''\"", "''"),
    # plain $ and names
    ("$.", "$."),
    ("he$1x", "hex"),
    ("he$.x", "he$.x"),
    ("he$pwd.", "he."),  # names are case-sensitive on Linux
    ("he$PWD", "he/home"),
    ("he\\$PWD", "he$PWD"),
    ("he\\\\$PWD", "he\\/home"),
    ('"he\\$PWD"', "he$PWD"),
    ('"he\\\\$PWD"', "he\\/home"),
    ("\\${}", "${}"),
    ("\\${}aaa", "${}aaa"),
    ("he\\${}", "he${}"),
    ("he\\${}xx", "he${}xx"),
    ("${}", ERROR),
    ("${}aaa", ERROR),
    ("he${}", ERROR),
    ("he${}xx", ERROR),
    ("he${hi}", "he"),
    ("he${hi}xx", "hexx"),
    ("he${PWD}", "he/home"),
    ("he${.}", ERROR),
    ("$KOREAN", "한국어"),
    ("안녕$KOREAN", "안녕한국어"),
    ("$PWD$SHELL", "/homebash"),
    ("$", "$"),
    ("a$", "a$"),
    ("$$", ""),  # a special parameter, never set
    ("$@x", "x"),
    ("$0abc", "abc"),  # a digit run is a name of its own
    ("$123abc", "abc"),
    ("$PWD_x", ""),  # _ is part of a name
    ("${PWD}_x", "/home_x"),
    # :- and -
    ("he${XXX:-000}xx", "he000xx"),
    ("he${PWD:-000}xx", "he/homexx"),
    ("he${XXX:-$PWD}xx", "he/homexx"),
    ("he${XXX:-${PWD:-yyy}}xx", "he/homexx"),
    ("he${XXX:-${YYY:-yyy}}xx", "heyyyxx"),
    ("he${NULL:-000}xx", "he000xx"),
    ("he${NULL-000}xx", "hexx"),
    ("he${XXX-000}xx", "he000xx"),
    ("he${XXX:-a b}xx", "hea bxx"),
    ('he${XXX:-"}"}xx', "he}xx"),  # quotes protect the closing brace
    ("he${XXX:-'$PWD'}xx", "he$PWDxx"),
    ("he${XXX:-\\$PWD:}xx", "he$PWD:xx"),
    ("he${XXX:-\\${PWD}z}xx", "he${PWDz}xx"),
    ("he${XXX:YYY}", ERROR),
    # :+ and +
    ("he${XXX:+${PWD}}xx", "hexx"),
    ("he${PWD:+${XXX}}xx", "hexx"),
    ("he${PWD:+${SHELL}}xx", "hebashxx"),
    ("he${XXX:+000}xx", "hexx"),
    ("he${PWD:+000}xx", "he000xx"),
    ("he${PWD+${PWD}}xx", "he/homexx"),
    ("he${NULL:+set}xx", "hexx"),
    ("he${NULL+set}xx", "hesetxx"),
    ("he${PWD:+${PWD}:}xx", "he/home:xx"),
    # :? and ?
    ("he${XXX?}", ERROR),
    ("he${XXX:?}", ERROR),
    ("he${PWD?}", "he/home"),
    ("he${PWD:?}", "he/home"),
    ("he${NULL?}", "he"),
    ("he${NULL:?}", ERROR),
    # unsupported
    ("he${PWD=000}xx", ERROR),
    ("he${PWD:=000}xx", ERROR),
    ("he${PWD", ERROR),
    ("he${PWD:-x", ERROR),
    ("${{PWD}}", ERROR),
    ("${:}", ERROR),
    ("${#PWD}", ERROR),  # length is not supported
    # quoting
    ("'he${XX}'", "he${XX}"),
    ('"he${PWD}"', "he/home"),
    ("\"he'$PWD'\"", "he'/home'"),
    ('"$PWD"', "/home"),
    ("'$PWD'", "$PWD"),
    ("'\\$PWD'", "\\$PWD"),
    ("'\"hello\"'", '"hello"'),
    ("'he\\$PWD'", "he\\$PWD"),
    ('"a\\b"', "a\\b"),  # inside double quotes only ", $ and the escape are escapable
    ('"a\\""', 'a"'),
    ('"a\\\\"', "a\\"),
    # non-ASCII
    ("안녕하세요", "안녕하세요"),
    ("안'녕'하세요", "안녕하세요"),
    ("안'녕하세요", ERROR),
    ("안녕\\'하세요", "안녕'하세요"),
    ("안녕\\t하세요", "안녕t하세요"),
    ('"안녕\\t하세요"', "안녕\\t하세요"),
    ("안녕하세요\\", "안녕하세요"),
    ("안녕$1x", "안녕x"),
    ("안녕$PWD", "안녕/home"),
    ("\ufeff$PWD", "/home"),  # a leading byte-order mark is dropped, as Go's scanner does
]


@pytest.mark.parametrize(("word", "expected"), ENV_VAR_CASES, ids=[c[0] for c in ENV_VAR_CASES])
def test_env_var_table(word: str, expected: object) -> None:
    if expected is ERROR:
        with pytest.raises(DockerfileParseError):
            expand_word(word, ENV)
    else:
        assert expand_word(word, ENV) == expected


# BuildKit's lex_test.go TestProcessWithMatches: value, matched and unmatched names.
MATCH_CASES = [
    ("x", {"DUMMY": "dummy"}, "x", set(), set()),
    ("x ${UNUSED}", {"DUMMY": "dummy"}, "x ", set(), {"UNUSED"}),
    ("x ${FOO}", {"FOO": "y"}, "x y", {"FOO"}, set()),
    (
        "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
        {"FOO": "xxx", "BAR": ""},
        "xxx  ccc",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    (
        "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
        {"FOO": "xxx", "BAR": ""},
        "xxx bbb ccc",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    ("${FOO:-}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${FOO:-}", {}, "", set(), {"FOO"}),
    (
        "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
        {"FOO": "xxx", "BAR": ""},
        "aaa bbb ",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    (
        "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
        {"FOO": "xxx", "BAR": ""},
        "aaa  ",
        {"FOO", "BAR"},
        {"BAZ"},
    ),
    ("${FOO?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    ("${BAR?bbb}", {"FOO": "xxx", "BAR": ""}, "", {"BAR"}, set()),
    ("${FOO:?aaa}", {"FOO": "xxx", "BAR": ""}, "xxx", {"FOO"}, set()),
    # special characters in patterns; } must be escaped to not close the ${}
    ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", {"FOO": "()[]{}^$.*?|\\x"}, "x", {"FOO"}, set()),
    ("${FOO%%\\**}", {"FOO": "xx**"}, "xx", {"FOO"}, set()),
    ("${FOO#*x*y}", {"FOO": "xxyy"}, "y", {"FOO"}, set()),
    ("${FOO#*}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": "x"}, "xyy", {"FOO", "BAR"}, set()),
    ("${FOO#$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    ("${FOO#}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO##*x}", {"FOO": "xxyy"}, "yy", {"FOO"}, set()),
    ("${FOO##}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO#?\\?}", {"FOO": "???y"}, "?y", {"FOO"}, set()),
    ("${ABC:-.}${FOO%x}${ABC:-.}", {"FOO": "xxyy"}, ".xxyy.", {"FOO"}, {"ABC"}),
    ("${FOO%%\\**\\*}", {"FOO": "a***yy*"}, "a", {"FOO"}, set()),
    ("${FOO%}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO%%$BAR}", {"FOO": "xxyy", "BAR": ""}, "xxyy", {"FOO", "BAR"}, set()),
    # wildcards in replacements
    (
        "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
        {"FOO": "/foo*/*/*.txt", "NEEDLE": "\\*/"},
        "/foo.*/*.txt - /foo..*.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
        {"FOO": "/var/var/bar.txt", "NEEDLE": "/var"},
        "/var/bar.txt - /bar.txt",
        {"FOO", "NEEDLE"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
        {"FOO": "/a/foo/b/c.txt", "NEEDLE": "/?/", "REPLACEMENT": "/"},
        "/foo/b/c.txt - /foo/c.txt",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
    ),
    (
        "${FOO/$NEEDLE/$REPLACEMENT}",
        {"FOO": "http://google.de", "NEEDLE": "http://", "REPLACEMENT": "https://"},
        "https://google.de",
        {"FOO", "NEEDLE", "REPLACEMENT"},
        set(),
    ),
    ("${FOO//\\//\\/}", {"FOO": "/var/foo.txt"}, "\\/var\\/foo.txt", {"FOO"}, set()),
    ("${FOO/$BAR/ww}", {"FOO": "xxyy", "BAR": ""}, "wwxxyy", {"FOO", "BAR"}, set()),
    ("${FOO///}", {"FOO": "xxyy"}, "xxyy", {"FOO"}, set()),
    ("${FOO///}", {}, "", set(), {"FOO"}),
]


@pytest.mark.parametrize(
    ("word", "env", "value", "matched", "unmatched"),
    MATCH_CASES,
    ids=[f"{i}:{c[0]}" for i, c in enumerate(MATCH_CASES)],
)
def test_process_with_matches(
    word: str, env: dict[str, str], value: str, matched: set[str], unmatched: set[str]
) -> None:
    result = process_word(word, env)
    assert result.value == value
    assert result.matched == frozenset(matched)
    assert result.unmatched == frozenset(unmatched)
    assert result.refs == frozenset(matched | unmatched)


MATCH_ERRORS = [
    ("${BAZ?ccc}", {"FOO": "xxx"}),
    ("${BAR:?bbb}", {"BAR": ""}),
    ("${BAZ:?ccc}", {}),
    ("${BAZ:?}", {}),
    ("${FOO=aaa}", {"FOO": "xxx"}),
    ("${FOO=:aaa}", {"FOO": "xxx"}),
    ("${FOO=}", {}),
    ("${FOO//ww}", {"FOO": "xxyy"}),
    ("${FOO//}", {"FOO": "xxyy"}),
    ("${FOO/a}", {"FOO": "xxyy"}),
    ("${FOO#\\}", {"FOO": "x"}),  # a pattern cannot end in an escape
    ("${FOO#\\x}", {"FOO": "x"}),  # only \*, \? and \\ are pattern escapes
    ("${FOO#\\\\\\}", {"FOO": "x"}),
]


@pytest.mark.parametrize(("word", "env"), MATCH_ERRORS, ids=[c[0] for c in MATCH_ERRORS])
def test_process_with_matches_errors(word: str, env: dict[str, str]) -> None:
    with pytest.raises(DockerfileParseError):
        process_word(word, env)


def test_mandatory_variables_use_the_message_with_its_own_expansion() -> None:
    no_empty = "${VAR:?message here$ARG}"
    no_unset = "${VAR?message here$ARG}"
    assert expand_word(no_empty, {"VAR": "plain", "ARG": "x"}) == "plain"
    assert expand_word(no_unset, {"VAR": "plain", "ARG": "x"}) == "plain"
    assert expand_word(no_unset, {"VAR": "", "ARG": "x"}) == ""
    for word, env in (
        (no_empty, {"VAR": "", "ARG": "x"}),
        (no_empty, {"ARG": "x"}),
        (no_unset, {"ARG": "x"}),
    ):
        with pytest.raises(DockerfileParseError, match="VAR: message herex"):
            expand_word(word, env)


def test_default_error_messages_say_unset_or_empty() -> None:
    with pytest.raises(DockerfileParseError, match="X: is not allowed to be unset"):
        expand_word("${X?}", {})
    with pytest.raises(DockerfileParseError, match="X: is not allowed to be empty"):
        expand_word("${X:?}", {"X": ""})


def test_errors_name_the_word_and_have_no_location() -> None:
    with pytest.raises(DockerfileParseError) as info:
        expand_word('a "b', {})
    assert 'failed to process "a \\"b"' in str(info.value)
    assert "double-quote" in str(info.value)
    assert info.value.line is None and info.value.file is None


def test_unused_default_word_is_still_expanded() -> None:
    # BuildKit expands the word of ${X:-word} before it looks at X: errors and references count.
    value, refs = expand_word_with_refs("${SET:-$OTHER}", {"SET": "1"})
    assert value == "1"
    assert refs == frozenset({"SET", "OTHER"})
    with pytest.raises(DockerfileParseError, match="INNER: boom"):
        expand_word("${SET:-${INNER:?boom}}", {"SET": "1"})


def test_release_file_name_with_optional_variant() -> None:
    word = "v-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz"
    env = {"VERSION": "v1.2.3", "TARGETOS": "linux", "TARGETARCH": "arm", "TARGETVARIANT": "v7"}
    assert expand_word(word, env) == "v-v1.2.3.linux-arm-v7.tar.gz"
    env["TARGETVARIANT"] = ""
    assert expand_word(word, env) == "v-v1.2.3.linux-arm.tar.gz"


# BuildKit's wordsTest: ("ENV", "k=v") rows extend the environment of the rows below them;
# None means an error.
WORDS_TABLE: list[tuple[str, list[str] | str | None]] = [
    ("hello", ["hello"]),
    ("hello${hi}bye", ["hellobye"]),
    ("ENV", "hi=hi"),
    ("hello${hi}bye", ["hellohibye"]),
    ("ENV", "space=abc  def"),
    ("hello${space}bye", ["helloabc", "defbye"]),
    ('hello"${space}"bye', ["helloabc  defbye"]),
    ('hello "${space}"bye', ["hello", "abc  defbye"]),
    ("ENV", "leading=  ab   c"),
    ("hello${leading}def", ["hello", "ab", "cdef"]),
    ('hello"${leading}" def', ["hello  ab   c", "def"]),
    ('hello"${leading}"', ["hello  ab   c"]),
    ("hello${leading}", ["hello", "ab", "c"]),
    ("ENV", "trailing=ab   c   "),
    ("hello${trailing}", ["helloab", "c"]),
    ("hello${trailing}d", ["helloab", "c", "d"]),
    ('hello"${trailing}"d', ["helloab   c   d"]),
    ('hel"lo${trailing}"', ["helloab   c   "]),
    ('hello" there  "', ["hello there  "]),
    ("hello there     ", ["hello", "there"]),
    ("hello\\ there", ["hello there"]),
    ('hello" there', None),
    ('hello\\" there', ['hello"', "there"]),
    ('hello"\\\\there"', ["hello\\there"]),
    ('hello"\\there"', ["hello\\there"]),
    ("hello'\\\\there'", ["hello\\\\there"]),
    ("hello'\\there'", ["hello\\there"]),
    ("hello'$there'", ["hello$there"]),
    ('""', []),
    ('a "" b', ["a", "b"]),
    ('a ""x b', ["a", "x", "b"]),
    ('"a""b"', ["ab"]),
    ("$space", ["abc", "def"]),
    ("'' \"\"", []),
]


def _words_rows() -> list[tuple[str, dict[str, str], list[str] | None]]:
    rows: list[tuple[str, dict[str, str], list[str] | None]] = []
    env: dict[str, str] = {}
    for source, expected in WORDS_TABLE:
        if source == "ENV":
            assert isinstance(expected, str)
            key, _, value = expected.partition("=")
            env[key] = value
            continue
        assert not isinstance(expected, str)
        rows.append((source, dict(env), expected))
    return rows


WORDS_ROWS = _words_rows()


@pytest.mark.parametrize(("word", "env", "expected"), WORDS_ROWS, ids=[r[0] for r in WORDS_ROWS])
def test_words_table(word: str, env: dict[str, str], expected: list[str] | None) -> None:
    if expected is None:
        with pytest.raises(DockerfileParseError):
            split_words(word, env)
    else:
        assert split_words(word, env) == expected


def test_splitting_uses_go_whitespace_not_python_whitespace() -> None:
    # U+001F is whitespace for str.split() but not for Go's unicode.IsSpace.
    assert split_words("$V", {"V": "a\x1fb c\u3000d"}) == ["a\x1fb", "c", "d"]


def test_backtick_escape_token() -> None:
    env = {"PWD": "/home"}
    assert expand_word("a`$PWD", env, escape="`") == "a$PWD"
    assert expand_word("a\\$PWD", env, escape="`") == "a\\/home"
    assert expand_word('"a`"b"', env, escape="`") == 'a"b'
    assert expand_word("C:\\path\\$PWD", env, escape="`") == "C:\\path\\/home"
    assert split_words("a` b c", env, escape="`") == ["a b", "c"]
    assert expand_word("a``b", env, escape="`") == "a`b"
    # a trailing escape token is dropped, as with backslash
    assert expand_word("ab`", env, escape="`") == "ab"


def test_invalid_escape_token_is_a_parse_error() -> None:
    with pytest.raises(DockerfileParseError):
        expand_word("x", {}, escape="")
    with pytest.raises(DockerfileParseError):
        expand_word("x", {}, escape="ab")


def test_replace_all_follows_go_regexp_semantics() -> None:
    # Go skips an empty match right after a match; Python's re.sub would give "--".
    assert expand_word("${X//*/-}", {"X": "abc"}) == "-"
    # * does not match a newline (Go's . without the s flag).
    assert expand_word("${X//*/-}", {"X": "a\nb"}) == "-\n-"
    # The replacement of // is a Go template: $0 is the match, reachable through an escape.
    assert expand_word("${X//o/[\\$0]}", {"X": "foo"}) == "f[\\o][\\o]"
    # A single replacement is literal.
    assert expand_word("${X/o/[\\$0]}", {"X": "foo"}) == "f[\\$0]o"
    # An empty pattern matches everywhere.
    assert expand_word("${X//$E/-}", {"X": "ab", "E": ""}) == "-a-b-"


def test_trim_shortest_and_longest() -> None:
    env = {"F": "a.tar.gz"}
    assert expand_word("${F%.*}", env) == "a.tar"
    assert expand_word("${F%%.*}", env) == "a"
    assert expand_word("${F#*.}", env) == "tar.gz"
    assert expand_word("${F##*.}", env) == "gz"
    assert expand_word("${F#zzz}", env) == "a.tar.gz"
    assert expand_word("${UNSET%%*}", env) == ""
    # the colon is read and ignored before # and % (BuildKit's fallthrough)
    assert expand_word("${F:#*.}", env) == "tar.gz"


def test_reverse_pattern_keeps_escapes_in_front() -> None:
    cases = {
        "a\\*c": "c\\*a",
        "\\\\\\ab": "b\\a\\\\",
        "ab\\": "\\ba",
        "👽\\🚀🖖": "🖖\\🚀👽",
        "\\\\b": "b\\\\",
    }
    for pattern, expected in cases.items():
        assert _reverse_pattern(pattern) == expected


def test_lexer_options_used_by_buildkit() -> None:
    env = {"A": "1"}
    raw = Lexer(raw_quotes=True, skip_unset_env=True)
    assert raw.process("'x' \"$A\" $B ${C:-d}", env).value == "'x' \"1\" $B ${C:-d}"
    heredoc = Lexer(skip_process_quotes=True)
    assert heredoc.process("echo \"$A\" '$A'\n", env).value == "echo \"1\" '1'\n"
    escapes = Lexer(raw_escapes=True)
    assert escapes.process("a\\$A", env).value == "a\\$A"


def test_module_reexports_the_shell_functions() -> None:
    assert exported_expand_word is expand_word
    assert exported_split_words is split_words


def test_deep_nesting_is_a_parse_error_not_a_recursion_error() -> None:
    word = "${A:-" * 3000 + "x" + "}" * 3000
    with contextlib.suppress(DockerfileParseError):
        assert expand_word(word, {}) == "x"


# ---------------------------------------------------------------------------------------------
# Properties

_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
_envs = st.dictionaries(_names, st.text(max_size=8), max_size=4)
_plain = st.text(alphabet=string.ascii_letters + string.digits + " \t./:-_=,@+", max_size=30)


@settings(max_examples=400)
@given(word=st.text(max_size=40), env=_envs)
@example(word="${", env={})
@example(word="${A:-${B//*/\\$0}}", env={"B": "x"})
@example(word="${A#\\", env={"A": "x"})
def test_expansion_never_raises_anything_but_parse_errors(word: str, env: dict[str, str]) -> None:
    try:
        result = process_word(word, env)
    except DockerfileParseError:
        return
    assert isinstance(result.value, str)
    assert all(w for w in result.words)
    assert result.matched <= set(env)
    assert not (result.unmatched & set(env))


@settings(max_examples=300)
@given(
    word=st.text(alphabet="${}:-+?#%/'\"\\ abAB_01*\n", max_size=30),
    env=st.dictionaries(st.sampled_from(["A", "B", "_", "a"]), st.text("ab*? \n", max_size=4)),
)
def test_expansion_fuzz_with_operator_heavy_alphabet(word: str, env: dict[str, str]) -> None:
    for escape in ("\\", "`"):
        try:
            expand_word(word, env, escape=escape)
            split_words(word, env, escape=escape)
        except DockerfileParseError:
            pass


@given(word=_plain, env=_envs)
def test_plain_words_expand_to_themselves_and_split_on_whitespace(
    word: str, env: dict[str, str]
) -> None:
    assert expand_word(word, env) == word
    assert split_words(word, env) == word.split()


@given(text=st.text(max_size=30).filter(lambda t: "'" not in t))
def test_single_quotes_keep_everything(text: str) -> None:
    assert expand_word("'" + text + "'", {"A": "x"}) == text


@given(text=st.text(alphabet=string.printable, max_size=30))
def test_escaping_every_character_gives_the_text_back(text: str) -> None:
    word = "".join("\\" + ch for ch in text)
    assert expand_word(word, {"A": "x"}) == text


@given(name=_names, value=st.text(max_size=10), env=_envs)
def test_a_set_variable_expands_to_its_value_and_is_a_reference(
    name: str, value: str, env: dict[str, str]
) -> None:
    env = {**env, name: value}
    for word in (f"${{{name}}}", f'"${name}"'):
        expanded, refs = expand_word_with_refs(word, env)
        assert expanded == value
        assert refs == frozenset({name})


@given(name=_names, value=st.text(max_size=10), default=_plain)
def test_colon_operators_treat_empty_like_unset(name: str, value: str, default: str) -> None:
    env = {name: value}
    expected = value if value else default
    assert expand_word(f"${{{name}:-{default}}}", env) == expected
    alternative = default if value else ""
    assert expand_word(f"${{{name}:+{default}}}", env) == alternative
    assert expand_word(f"${{{name}-{default}}}", env) == value


# ---------------------------------------------------------------------------------------------
# Pattern operators: the Rust core's linear-time engine against a backtracking reference
#
# On inputs this small a backtracking regex is cheap, and its answer is the definition of
# leftmost-first (Go's, BuildKit's): the engine must give the same answer for every operator.


def _reference_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    out = ["^"] if anchored else []
    i = 0
    while i < len(pattern):
        tok = pattern[i]
        i += 1
        if tok == "*":
            out.append(".*" if greedy else ".*?")
        elif tok == "?":
            out.append(".")
        elif tok == "\\" and i < len(pattern):
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(tok))
    return re.compile("".join(out))


def _reference(op: str, pattern: str, value: str, replacement: str) -> str:
    if op in ("#", "##"):
        m = _reference_regex(pattern, greedy=op == "##", anchored=True).match(value)
        return value[m.end() :] if m else value
    if op in ("%", "%%"):
        rev = _reference_regex(pattern[::-1], greedy=op == "%%", anchored=True).match(value[::-1])
        return value[: len(value) - rev.end()] if rev else value
    regex = _reference_regex(pattern, greedy=True, anchored=False)
    if op == "/":
        m = regex.search(value)
        return value[: m.start()] + replacement + value[m.end() :] if m else value
    out, last_end, pos = [], 0, 0  # Go's ReplaceAllString
    while pos <= len(value):
        m = regex.search(value, pos)
        if m is None:
            break
        out.append(value[last_end : m.start()])
        if m.end() > last_end or m.start() == 0:
            out.append(replacement)
        last_end = m.end()
        pos = max(pos + 1, m.end())
    out.append(value[last_end:])
    return "".join(out)


@settings(max_examples=500)
@given(
    op=st.sampled_from(["#", "##", "%", "%%", "/", "//"]),
    pattern=st.text(alphabet="ab*?\né", max_size=7),
    value=st.text(alphabet="ab\né", max_size=12),
)
@example(
    op="//",
    pattern="",
    value="ab",
)
@example(op="//", pattern="a*", value="baaac")
@example(op="%", pattern="*a", value="aXa\na")
def test_pattern_operators_match_a_backtracking_reference(
    op: str, pattern: str, value: str
) -> None:
    # '${A//R}' would read as the // operator: / needs a pattern ('/' itself is not drawn).
    assume(not (op == "/" and pattern == ""))
    expected = _reference(op, pattern, value, "R")
    replacement = "/R" if op.startswith("/") else ""
    assert expand_word(f"${{A{op}{pattern}{replacement}}}", {"A": value}) == expected
