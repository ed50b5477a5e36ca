# ruff: noqa: E501  (table rows are literal Dockerfile lines and BuildKit dumps; they stay whole)
"""The Dockerfile parser: tables of cases from Docker's Dockerfile reference and BuildKit's parser.

Expected values are written in the textual dump BuildKit's parser tests use
(``frontend/dockerfile/parser/testfiles/*/result``), so each row reads as "BuildKit reads this
line as that s-expression". When the PyPI package ``dockerfile`` (BuildKit's Go parser behind a
C extension) is installed, the corpus under tests/data/dockerfiles is also checked against it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memobuild.dockerfile import (
    Dockerfile,
    Heredoc,
    Node,
    dump_buildkit_ast,
    dump_dockerfile,
    parse,
    to_json,
)
from memobuild.dockerfile.dump import dump_node, go_quote
from memobuild.errors import DockerfileParseError, InputError

CORPUS = sorted((Path(__file__).parent / "data" / "dockerfiles").glob("*.Dockerfile"))


def ast(text: str, *, validate: bool = True) -> list[str]:
    """The BuildKit dump of ``text``, one string per instruction."""
    return dump_buildkit_ast(parse(text, validate=validate)).splitlines()


def one(text: str) -> Node:
    df = parse(text)
    assert len(df.nodes) == 1, df.nodes
    return df.nodes[0]


def error_of(text: str, filename: str | None = None) -> DockerfileParseError:
    with pytest.raises(DockerfileParseError) as info:
        parse(text, filename=filename)
    return info.value


# --- every instruction Docker documents --------------------------------------------------

INSTRUCTION_CASES = [
    # FROM: whitespace-separated words; AS is just a word to the parser
    ("FROM ubuntu:22.04", '(from "ubuntu:22.04")'),
    ("FROM golang:1.22 AS build", '(from "golang:1.22" "AS" "build")'),
    ("from alpine as base", '(from "alpine" "as" "base")'),
    (
        "FROM --platform=$BUILDPLATFORM tonistiigi/xx AS xx",
        '(from ["--platform=$BUILDPLATFORM"] "tonistiigi/xx" "AS" "xx")',
    ),
    ("FROM scratch", '(from "scratch")'),
    # RUN: shell form is one string, exec form the array
    (
        "RUN apt-get update && apt-get install -y curl",
        '(run "apt-get update && apt-get install -y curl")',
    ),
    ('RUN ["/bin/bash", "-c", "echo hello"]', '(run "/bin/bash" "-c" "echo hello")'),
    (
        "RUN --mount=type=cache,target=/root/.cache/go-build go build",
        '(run ["--mount=type=cache,target=/root/.cache/go-build"] "go build")',
    ),
    ("RUN --network=none pip install .", '(run ["--network=none"] "pip install .")'),
    (
        "RUN --security=insecure cat /proc/self/status",
        '(run ["--security=insecure"] "cat /proc/self/status")',
    ),
    (
        "RUN --mount=type=secret,id=aws,target=/root/.aws/credentials --mount=type=ssh make",
        '(run ["--mount=type=secret,id=aws,target=/root/.aws/credentials" "--mount=type=ssh"] "make")',
    ),
    # CMD and ENTRYPOINT
    ('CMD ["executable", "param1", "param2"]', '(cmd "executable" "param1" "param2")'),
    ('CMD ["param1","param2"]', '(cmd "param1" "param2")'),
    ("CMD echo $HOME", '(cmd "echo $HOME")'),
    ('ENTRYPOINT ["top", "-b"]', '(entrypoint "top" "-b")'),
    ("ENTRYPOINT exec top -b", '(entrypoint "exec top -b")'),
    # LABEL and ENV: (name value separator) triples, values keep their quotes
    (
        'LABEL "com.example.vendor"="ACME Incorporated"',
        '(label "\\"com.example.vendor\\"" "\\"ACME Incorporated\\"" "=")',
    ),
    (
        'LABEL version="1.0" description="This text illustrates \\\n that label-values can span multiple lines."',
        '(label "version" "\\"1.0\\"" "=" "description" "\\"This text illustrates  that label-values can span multiple lines.\\"" "=")',
    ),
    (
        'ENV MY_NAME="John Doe" MY_DOG=Rex\\ The\\ Dog MY_CAT=fluffy',
        '(env "MY_NAME" "\\"John Doe\\"" "=" "MY_DOG" "Rex\\\\ The\\\\ Dog" "=" "MY_CAT" "fluffy" "=")',
    ),
    ("ENV MY_VAR my-value", '(env "MY_VAR" "my-value" "")'),
    ("ENV ONE TWO= THREE=world", '(env "ONE" "TWO= THREE=world" "")'),
    ("ENV A=", '(env "A" "" "=")'),
    # MAINTAINER, USER, WORKDIR, STOPSIGNAL: the rest of the line
    ("MAINTAINER Jane Doe <jane@example.com>", '(maintainer "Jane Doe <jane@example.com>")'),
    ("USER patrick", '(user "patrick")'),
    ("USER 1000:1000", '(user "1000:1000")'),
    ("WORKDIR /path/to/workdir", '(workdir "/path/to/workdir")'),
    ("WORKDIR /a b", '(workdir "/a b")'),
    ("STOPSIGNAL SIGKILL", '(stopsignal "SIGKILL")'),
    # EXPOSE, VOLUME
    ("EXPOSE 80/udp", '(expose "80/udp")'),
    ("EXPOSE 80/tcp  80/udp", '(expose "80/tcp" "80/udp")'),
    ('VOLUME ["/data"]', '(volume "/data")'),
    ("VOLUME /var/log /var/db", '(volume "/var/log" "/var/db")'),
    # ADD and COPY, with their flags
    ("ADD hom* /mydir/", '(add "hom*" "/mydir/")'),
    ('ADD ["arr[[]0].txt", "/dest dir/"]', '(add "arr[[]0].txt" "/dest dir/")'),
    (
        "ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://mirrors.edge.kernel.org/pub/linux/kernel/Historic/linux-0.01.tar.gz /",
        '(add ["--checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d"] "https://mirrors.edge.kernel.org/pub/linux/kernel/Historic/linux-0.01.tar.gz" "/")',
    ),
    (
        "ADD --keep-git-dir=true https://github.com/moby/buildkit.git#v0.10.1 /buildkit",
        '(add ["--keep-git-dir=true"] "https://github.com/moby/buildkit.git#v0.10.1" "/buildkit")',
    ),
    (
        "ADD --chown=myuser:mygroup --chmod=655 files* /somedir/",
        '(add ["--chown=myuser:mygroup" "--chmod=655"] "files*" "/somedir/")',
    ),
    (
        "COPY --from=nginx:latest /etc/nginx/nginx.conf /nginx.conf",
        '(copy ["--from=nginx:latest"] "/etc/nginx/nginx.conf" "/nginx.conf")',
    ),
    ("COPY --link /foo /bar", '(copy ["--link"] "/foo" "/bar")'),
    (
        "COPY --parents ./x/a.txt ./y/a.txt /no_parents/",
        '(copy ["--parents"] "./x/a.txt" "./y/a.txt" "/no_parents/")',
    ),
    (
        "COPY --exclude=*.txt --exclude=*.md hom* /mydir/",
        '(copy ["--exclude=*.txt" "--exclude=*.md"] "hom*" "/mydir/")',
    ),
    ('COPY ["a b.txt", "/c/"]', '(copy "a b.txt" "/c/")'),
    # ARG: one word per declaration
    ("ARG user1", '(arg "user1")'),
    ("ARG buildno=1", '(arg "buildno=1")'),
    ('ARG TARGETOS TARGETARCH VERSION="1 2"', '(arg "TARGETOS" "TARGETARCH" "VERSION=\\"1 2\\"")'),
    # HEALTHCHECK: the type, then a CMD-like command; its options are flags
    (
        "HEALTHCHECK --interval=5m --timeout=3s CMD curl -f http://localhost/ || exit 1",
        '(healthcheck ["--interval=5m" "--timeout=3s"] "CMD" "curl -f http://localhost/ || exit 1")',
    ),
    (
        'HEALTHCHECK --start-period=30s --start-interval=5s --retries=3 CMD ["/bin/check", "-q"]',
        '(healthcheck ["--start-period=30s" "--start-interval=5s" "--retries=3"] "CMD" "/bin/check" "-q")',
    ),
    ("HEALTHCHECK NONE", '(healthcheck "NONE")'),
    # SHELL: exec form only
    ('SHELL ["powershell", "-command"]', '(shell "powershell" "-command")'),
    # ONBUILD: the trigger is a nested instruction
    ("ONBUILD ADD . /app/src", '(onbuild (add "." "/app/src"))'),
    (
        "ONBUILD RUN /usr/local/bin/python-build --dir /app/src",
        '(onbuild (run "/usr/local/bin/python-build --dir /app/src"))',
    ),
    ('ONBUILD RUN ["make", "install"]', '(onbuild (run "make" "install"))'),
    ("ONBUILD COPY --from=build /a /b", '(onbuild (copy ["--from=build"] "/a" "/b"))'),
]


@pytest.mark.parametrize(("line", "expected"), INSTRUCTION_CASES)
def test_instruction_reads_as_buildkit_reads_it(line: str, expected: str) -> None:
    assert ast(line) == [expected]


def test_every_documented_instruction_is_covered() -> None:
    covered = {expected[1:].split()[0].rstrip(")") for _, expected in INSTRUCTION_CASES}
    assert covered == {
        "add", "arg", "cmd", "copy", "entrypoint", "env", "expose", "from", "healthcheck",
        "label", "maintainer", "onbuild", "run", "shell", "stopsignal", "user", "volume", "workdir",
    }  # fmt: skip


def test_unterminated_quotes_in_name_value_words() -> None:
    # BuildKit's parseWords keeps an unterminated quote's word; the escape token works inside
    # double quotes but not single ones (the U+2003 keeps the backslash from being a line
    # continuation, then the argument trimming removes it).
    assert one("ARG x='a\\\u2003").args == ("x='a\\",)
    assert one('ARG x="a\\\u2003').args == ('x="a',)
    assert one("ENV A='b c").args == ("A", "'b c", "=")


@pytest.mark.parametrize("keyword", ["run", "RUN", "Run", "rUn"])
def test_keywords_are_case_insensitive(keyword: str) -> None:
    node = one(f"{keyword} echo hi")
    assert node.keyword == "run"
    assert node.original == f"{keyword} echo hi"


def test_exec_form_and_shell_form_are_told_apart() -> None:
    assert one('CMD ["a", "b"]').json is True
    assert one("CMD a b").json is False
    assert one('HEALTHCHECK CMD ["a"]').json is True
    assert one("HEALTHCHECK CMD a").json is False
    inner = one('ONBUILD CMD ["a"]').inner
    assert inner is not None and inner.json is True


# --- JSON (exec) form vs shell form: BuildKit's fallback rules -----------------------------

JSON_FALLBACK_CASES = [
    # not JSON at all: shell form, the text as written
    ("CMD [\"a\" 'b']", '(cmd "[\\"a\\" \'b\']")'),
    ("CMD ['single', 'quotes']", "(cmd \"['single', 'quotes']\")"),
    ('CMD ["unterminated"', '(cmd "[\\"unterminated\\"")'),
    ("CMD [1", '(cmd "[1")'),
    ("CMD [NaN]", '(cmd "[NaN]")'),
    ("CMD [1e400]", '(cmd "[1e400]")'),
    ('CMD ["trailing comma",]', '(cmd "[\\"trailing comma\\",]")'),
    ('VOLUME ["/data", 1', '(volume "[\\"/data\\"," "1")'),
    # Go's json.Decoder stops after the first value: trailing text is ignored
    ('RUN ["ls"],', '(run "ls")'),
    ('CMD ["a"] && echo b', '(cmd "a")'),
    # whitespace inside the array, escapes, an empty array
    ('CMD [ "a" , "b" ]', '(cmd "a" "b")'),
    ('CMD ["tab\\there", "quote\\"", "\\u00e9"]', '(cmd "tab\\there" "quote\\"" "é")'),
    ("CMD []", "(cmd)"),
    ('CMD ["\\ud800"]', '(cmd "�")'),
]


@pytest.mark.parametrize(("line", "expected"), JSON_FALLBACK_CASES)
def test_json_or_shell_form(line: str, expected: str) -> None:
    assert ast(line) == [expected]


@pytest.mark.parametrize(
    "line",
    [
        "CMD [1]",
        'CMD ["a", 2]',
        'RUN [["nested"]]',
        "ENTRYPOINT [null]",
        'VOLUME [{"a": 1}]',
        "HEALTHCHECK CMD [true]",
    ],
)
def test_json_array_of_non_strings_is_an_error(line: str) -> None:
    err = error_of(f"FROM a\n{line}\n")
    assert err.line == 2
    assert "arrays must be comprised of strings only" in str(err)


# --- flags ---------------------------------------------------------------------------------


FLAG_CASES = [
    ('COPY --chown="user name:group" a b', '(copy ["--chown=user name:group"] "a" "b")'),
    ("COPY --chown='a b' x y", '(copy ["--chown=a b"] "x" "y")'),
    ('COPY --from="" a b', '(copy ["--from="] "a" "b")'),
    ("RUN --mount=type=bind,target=/x\\ y make", '(run ["--mount=type=bind,target=/x y"] "make")'),
    ("COPY --from=a -- --not-a-flag /dst", '(copy ["--from=a"] "--not-a-flag" "/dst")'),
    ("COPY -- a b", '(copy "a" "b")'),
    ("RUN make --jobs=4", '(run "make --jobs=4")'),
    ("COPY a --from=b c", '(copy "a" "--from=b" "c")'),
    # a flag value cannot be separated by a space: --platform is a bare flag here
    ("FROM --platform linux/amd64 alpine", '(from ["--platform"] "linux/amd64" "alpine")'),
    ('CMD --doit [ "a", "b" ]', '(cmd ["--doit"] "a" "b")'),
    ("COPY --user=me --doit=true foo /tmp/", '(copy ["--user=me" "--doit=true"] "foo" "/tmp/")'),
]


@pytest.mark.parametrize(("line", "expected"), FLAG_CASES)
def test_flags(line: str, expected: str) -> None:
    # Flag names and values are checked by the instruction layer; here only their extraction.
    assert ast(line, validate=False) == [expected]


def test_flags_keep_buildkits_byte_wise_reading_of_non_ascii() -> None:
    # BuildKit extracts flags byte by byte: each UTF-8 byte becomes its own character.
    assert one("COPY --chown=josé a b").flags == ("--chown=josÃ©",)
    assert parse("COPY --chown=josé", validate=False).nodes[0].flags == ("--chown=josÃ©",)
    # ...and a Unicode space does not end a flag (only ASCII blanks do)
    assert one("COPY --from=a\u2003b c d").flags == ("--from=a\xe2\x80\x83b",)


# --- parser directives -----------------------------------------------------------------------


def test_directives_are_read_and_lower_cased() -> None:
    df = parse("# syntax=docker/dockerfile:1.7\n# ESCAPE = `\n#Check=skip=all\nFROM a\n")
    assert df.directives == {"syntax": "docker/dockerfile:1.7", "escape": "`", "check": "skip=all"}
    assert df.escape == "`"


@pytest.mark.parametrize(
    "text",
    [
        "# escape=`\nFROM a\nRUN a `\n  b\n",
        "#escape=`\nFROM a\nRUN a `\n  b\n",
        "# ESCAPE = ` \nFROM a\nRUN a `\n  b\n",
        "  # escape=`\nFROM a\nRUN a `\n  b\n",
        "\ufeff# escape=`\nFROM a\nRUN a `\n  b\n",
        "# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN a `\n  b\n",
    ],
)
def test_escape_directive_takes_effect(text: str) -> None:
    df = parse(text)
    assert df.escape == "`"
    assert df.nodes[1].args == ("a   b",)


@pytest.mark.parametrize(
    "text",
    [
        "\n# escape=`\nFROM a\n",  # after an empty line
        "# a comment\n# escape=`\nFROM a\n",  # after a comment
        "# unknown=directive\n# escape=`\nFROM a\n",  # after an unknown directive
        "FROM a\n# escape=`\n",  # after an instruction
    ],
)
def test_directive_after_anything_else_is_a_comment(text: str) -> None:
    df = parse(text)
    assert df.escape == "\\"
    assert "escape" not in df.directives


def test_backslash_is_literal_once_backtick_is_the_escape() -> None:
    # The Windows example from Docker's reference: with the default escape these two lines
    # would join; with a backtick escape the trailing backslashes are literal.
    text = "# escape=`\nFROM windows\nCOPY testfile.txt c:\\\nRUN dir c:\\\n"
    assert ast(text) == ['(from "windows")', '(copy "testfile.txt" "c:\\\\")', '(run "dir c:\\\\")']
    assert ast(text.replace("# escape=`\n", "")) == [
        '(from "windows")',
        '(copy "testfile.txt" "c:RUN" "dir" "c:")',
    ]


def test_duplicate_directive_is_an_error() -> None:
    err = error_of("# escape=\\\n# escape=`\nFROM a\n")
    assert (err.line, err.column) == (2, 3)
    assert "only one escape parser directive can be used" in str(err)
    assert "only one syntax" in str(error_of("# syntax=a\n#SYNTAX=b\nFROM a\n"))


def test_invalid_escape_token_is_an_error() -> None:
    err = error_of("# escape=x\nFROM a\n")
    assert err.line == 1
    assert "invalid escape token 'x'" in str(err)


# --- continuations, comments, whitespace -----------------------------------------------------


def test_continuation_keeps_continuation_lines_whitespace_and_drops_comments() -> None:
    text = "RUN a \\\n   b \\\n  # a comment\n    c\n"
    node = one(text)
    assert node.original == "RUN a    b     c"
    assert node.args == ("a    b     c",)
    assert (node.start_line, node.end_line) == (1, 4)


def test_leading_whitespace_of_an_instruction_is_dropped() -> None:
    node = one("  \t RUN   a  \n")
    assert node.original == "RUN   a  "
    assert node.args == ("a",)


def test_escaped_escape_at_end_of_line_is_not_a_continuation() -> None:
    assert ast("RUN echo \\\\\nRUN b\n") == ['(run "echo \\\\\\\\")', '(run "b")']


def test_continuation_at_end_of_file() -> None:
    node = parse("FROM a\nRUN a \\").nodes[1]
    assert node.args == ("a",)
    assert node.end_line == 2


def test_lone_continuation_line_joins_the_next() -> None:
    node = one("\\\nRUN x\n")
    assert node.original == "RUN x"
    assert (node.start_line, node.end_line) == (1, 2)


def test_crlf_line_endings() -> None:
    df = parse("FROM a\r\nRUN b \\\r\n c\r\n")
    assert [n.original for n in df.nodes] == ["FROM a", "RUN b  c"]
    assert df.nodes[1].end_line == 3


def test_only_ascii_blanks_separate_the_keyword() -> None:
    # BuildKit splits the keyword off on [\t\v\f\r ] only: a no-break space keeps it glued.
    err = error_of("RUN\xa0echo hi\n")
    assert "unknown instruction: RUN\xa0ECHO" in str(err)


# --- warnings ----------------------------------------------------------------------------


def test_empty_continuation_line_warns() -> None:
    df = parse("FROM a\nRUN apt-get update \\\n\n    && apt-get install -y curl\n")
    [warning] = df.warnings
    assert warning.rule == "NoEmptyContinuation"
    assert warning.line == 3
    assert warning.message == (
        "Empty continuation line found in: RUN apt-get update     && apt-get install -y curl"
    )


def test_a_comment_line_in_a_continuation_does_not_warn() -> None:
    assert parse("FROM a\nRUN a \\\n# comment\n b\n").warnings == ()


def test_check_directive_skips_a_rule() -> None:
    text = "# check=skip=NoEmptyContinuation\nFROM a\nRUN a \\\n\n b\n"
    assert parse(text).warnings == ()
    assert parse(text.replace("NoEmptyContinuation", "all")).warnings == ()
    assert len(parse(text.replace("NoEmptyContinuation", "Other")).warnings) == 1


def test_check_directive_error_true_turns_warnings_into_an_error() -> None:
    err = error_of("# check=error=true\nFROM a\nRUN a \\\n\n b\n")
    assert err.line == 4
    assert "lint violation found for rules: NoEmptyContinuation" in str(err)
    assert len(parse("# check=error=false\nFROM a\nRUN a \\\n\n b\n").warnings) == 1


def test_invalid_check_directive_is_an_error() -> None:
    assert "invalid check option" in str(error_of("# check=bogus\nFROM a\n"))
    assert "invalid check option" in str(error_of("# check=error=maybe\nFROM a\n"))


# --- heredocs ---------------------------------------------------------------------------------


def test_run_heredoc() -> None:
    node = one("RUN <<EOF\napt-get update\napt-get install -y vim\nEOF\n")
    assert node.args == ("<<EOF",)
    assert node.heredocs == (
        Heredoc(
            name="EOF", content="apt-get update\napt-get install -y vim\n", expand=True, chomp=False
        ),
    )
    assert (node.start_line, node.end_line) == (1, 4)
    assert node.original == "RUN <<EOF"


def test_heredoc_with_a_program_and_redirect_file_descriptor() -> None:
    node = one("RUN python3 <<EOF\nprint('hi')\nEOF\n")
    assert node.args == ("python3 <<EOF",)
    assert node.heredocs[0].content == "print('hi')\n"
    assert one("RUN 3<<EOF cat /dev/fd/3\nx\nEOF\n").heredocs[0].file_descriptor == 3


def test_dash_heredoc_strips_leading_tabs_from_body_and_terminator() -> None:
    node = one("RUN <<-EOF\n\techo a\n\t\techo b\n\t\tEOF\n")
    [doc] = node.heredocs
    assert doc.chomp is True
    assert doc.content == "echo a\necho b\n"
    assert node.end_line == 4


def test_plain_heredoc_keeps_tabs_and_needs_an_exact_terminator() -> None:
    node = one("RUN <<EOF\n\tx\n EOF\n\tEOF\nEOF\n")
    assert node.heredocs[0].content == "\tx\n EOF\n\tEOF\n"


@pytest.mark.parametrize(
    ("word", "name", "expand"),
    [
        ("<<EOF", "EOF", True),
        ("<<'EOF'", "EOF", False),
        ('<<"EOF"', "EOF", False),
        ("<<-'EOF'", "EOF", False),
        ('<<E"O"F', "EOF", False),
        ("<<\\EOF", "EOF", True),
        ("<<$EOF", "$EOF", True),
    ],
)
def test_quoted_delimiter_disables_expansion(word: str, name: str, expand: bool) -> None:
    node = one(f"RUN {word}\necho $HOME\n{name}\n")
    assert node.heredocs[0].name == name
    assert node.heredocs[0].expand is expand
    assert node.heredocs[0].content == "echo $HOME\n"


def test_several_heredocs_on_one_line_are_read_in_order() -> None:
    node = one("COPY <<FILE1 <<FILE2 /dest/\ncontent 1\nFILE1\ncontent 2\nFILE2\n")
    assert node.args == ("<<FILE1", "<<FILE2", "/dest/")
    assert [(d.name, d.content) for d in node.heredocs] == [
        ("FILE1", "content 1\n"),
        ("FILE2", "content 2\n"),
    ]
    # a terminator of the second heredoc inside the first is just content
    node = one("COPY <<X <<Y /dest\nY\nX\nX\nY\n")
    assert [(d.name, d.content) for d in node.heredocs] == [("X", "Y\n"), ("Y", "X\n")]


def test_copy_and_add_heredoc_to_a_destination() -> None:
    node = one("COPY <<EOF /etc/app.conf\nkey=value\nEOF\n")
    assert node.args == ("<<EOF", "/etc/app.conf")
    assert node.heredocs[0].content == "key=value\n"
    assert one("ADD <<EOF /x\ny\nEOF\n").heredocs[0].content == "y\n"
    node = one("COPY --chmod=755 <<EOF /run.sh\n#!/bin/sh\nEOF\n")
    assert node.flags == ("--chmod=755",)
    assert node.heredocs[0].content == "#!/bin/sh\n"


def test_heredoc_body_keeps_comments_blank_lines_and_continuations() -> None:
    node = one("RUN <<EOF\n# not a comment\n\necho a \\\n  b\nEOF\n")
    assert node.heredocs[0].content == "# not a comment\n\necho a \\\n  b\n"


def test_heredoc_keeps_crlf_in_the_body() -> None:
    node = one("RUN <<EOF\r\nx\r\nEOF\r\n")
    assert node.heredocs[0].content == "x\r\n"


def test_heredoc_with_a_mount_flag() -> None:
    node = one("RUN --mount=type=cache,target=/foo <<MOUNT\necho hello\nMOUNT\n")
    assert node.flags == ("--mount=type=cache,target=/foo",)
    assert node.heredocs[0].content == "echo hello\n"


@pytest.mark.parametrize(
    "text",
    [
        'RUN ["<<EOF"]\nEOF\n',  # exec form
        'RUN ["cat"] <<EOF\nEOF\n',  # exec form, even with text after the array
        "USER <<INVALID\nINVALID\n",  # not RUN, COPY or ADD
        "RUN '<<EOF'\nEOF\n",  # quoted
        'RUN "<<EOF"\nEOF\n',
        "RUN x<<EOF\nEOF\n",  # not at the start of a word
        "RUN <<  EOF\nEOF\n",  # no delimiter
        "RUN <<<EOF\nEOF\n",  # a here-string
        "RUN <<EOF echo 'unterminated\nEOF\n",  # the line does not lex: no heredocs at all
    ],
)
def test_not_a_heredoc(text: str) -> None:
    df = parse(text, validate=False)
    assert all(n.heredocs == () for n in df.nodes)
    assert len(df.nodes) == 2  # the "terminator" is read as the next instruction


def test_heredoc_in_onbuild_trigger() -> None:
    node = one("ONBUILD RUN <<EOF\necho hi\nEOF\n")
    assert node.inner is not None and node.inner.keyword == "run"
    assert (
        node.heredocs
        == node.inner.heredocs
        == (Heredoc(name="EOF", content="echo hi\n", expand=True, chomp=False),)
    )
    assert node.end_line == 3


def test_heredoc_name_after_a_continuation() -> None:
    node = one("RUN cat \\\n  <<EOF\nx\nEOF\n")
    assert node.heredocs[0].content == "x\n"
    assert node.end_line == 4


def test_unterminated_heredoc_is_an_error() -> None:
    err = error_of("FROM a\nRUN <<EOF\necho hi\n")
    assert err.line == 2
    assert "unterminated heredoc <<EOF" in str(err)
    # the second of two heredocs
    assert "unterminated heredoc <<B" in str(error_of("FROM a\nCOPY <<A <<B /x\n1\nA\n2\n"))
    # a redirect glued to the delimiter makes it part of the name, as in BuildKit
    assert "unterminated heredoc <<EOF>/x" in str(error_of("FROM a\nRUN cat <<EOF>/x\na\nEOF\n"))


# --- line numbers --------------------------------------------------------------------------------


def test_start_and_end_lines() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"  # 1
        "\n"  # 2
        "FROM a AS b\n"  # 3
        "# comment\n"  # 4
        "RUN a \\\n"  # 5
        "  b \\\n"  # 6
        "  c\n"  # 7
        "COPY <<EOF /x\n"  # 8
        "1\n"  # 9
        "EOF\n"  # 10
        "\n"  # 11
        "CMD x\n"  # 12
    )
    assert [(n.keyword, n.start_line, n.end_line) for n in parse(text).nodes] == [
        ("from", 3, 3),
        ("run", 5, 7),
        ("copy", 8, 10),
        ("cmd", 12, 12),
    ]


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("RUNN echo", "unknown instruction: RUNN (did you mean RUN?)"),
        ("COPPY a b", "unknown instruction: COPPY (did you mean COPY?)"),
        ("FOOBAR x", "unknown instruction: FOOBAR"),
        ("ENV", "ENV requires at least one argument"),
        ("ENV PATH", "ENV must have two arguments"),
        ("ENV A=1 B", 'Syntax error - can\'t find = in "B". Must be of the form: name=value'),
        ("ENV =x", "ENV names can not be blank"),
        ("LABEL", "LABEL requires at least one argument"),
        ("LABEL version", "LABEL must have two arguments"),
        ("MAINTAINER", "MAINTAINER requires exactly one argument"),
        ("COPY", "COPY requires at least two arguments"),
        (
            "COPY onlysource",
            "COPY requires at least two arguments, but only one was provided. Destination could not be determined.",
        ),
        ("ADD x", "ADD requires at least two arguments"),
        ('COPY ["a"]', "COPY requires at least two arguments"),
        ("FROM", "FROM requires either one or three arguments"),
        ("FROM a b", "FROM requires either one or three arguments"),
        ("FROM a FOR b", "FROM requires either one or three arguments"),
        ("WORKDIR", "WORKDIR requires exactly one argument"),
        ("USER", "USER requires exactly one argument"),
        ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
        ("EXPOSE", "EXPOSE requires at least one argument"),
        ("VOLUME", "VOLUME requires at least one argument"),
        ('VOLUME [""]', "VOLUME specified can not be an empty string"),
        ("ARG", "ARG requires at least one argument"),
        ("ARG =1", "ARG names can not be blank"),
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK CONNECT TCP 7000", 'Unknown type "CONNECT" in HEALTHCHECK (try CMD)'),
        ("SHELL", "SHELL requires at least one argument"),
        ("SHELL []", "SHELL requires at least one argument"),
        ("SHELL /bin/sh -c", "SHELL requires the arguments to be in JSON form"),
        ("ONBUILD", "ONBUILD requires at least one argument"),
        ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD FROM alpine", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD MAINTAINER me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
    ],
)
def test_errors_say_what_is_wrong_and_where(line: str, message: str) -> None:
    err = error_of(f"FROM alpine\n\n{line}\nRUN true\n")
    assert err.line == 3
    assert err.reason.startswith(message), err.reason
    assert str(err).startswith("Dockerfile:3:"), str(err)


def test_error_names_the_file_and_the_column_of_a_bad_keyword() -> None:
    err = error_of("FROM a\n    RUNN x\n", filename="build/Dockerfile.prod")
    assert (err.file, err.line, err.column) == ("build/Dockerfile.prod", 2, 5)
    assert str(err) == "build/Dockerfile.prod:2:5: unknown instruction: RUNN (did you mean RUN?)"
    assert isinstance(err, InputError)


@pytest.mark.parametrize(
    ("text", "line"),
    [("", 1), ("\n\n", 2), ("# just a comment\n", 1), ("# syntax=docker/dockerfile:1\n\n# x\n", 3)],
)
def test_file_with_no_instructions(text: str, line: int) -> None:
    err = error_of(text)
    assert err.reason == "file with no instructions"
    assert str(err).startswith(f"Dockerfile:{line}:")  # BuildKit points at the last line


def test_a_continuation_with_nothing_after_it() -> None:
    assert "empty instruction" in str(error_of("FROM a\n\\\n# only a comment\n"))


def test_error_line_of_an_instruction_spanning_lines_is_its_first_line() -> None:
    err = error_of("FROM a\nENV A=1 \\\n    B\n")
    assert err.line == 2


def test_validate_false_leaves_instruction_checks_to_the_instruction_layer() -> None:
    df = parse("FROM a b\nFOO bar\nCOPY x\nHEALTHCHECK\n", validate=False)
    assert dump_buildkit_ast(df).splitlines() == [
        '(from "a" "b")',
        '(foo "")',
        '(copy "x")',
        "(healthcheck)",
    ]


@pytest.mark.parametrize(
    "text",
    [
        "FROM a\nENV A=" + "a" * 100_000 + "'\n",  # an unterminated quote after a long word
        "FROM a\nARG " + "a b " * 30_000 + '"\n',
        "#a=x" + " " * 100_000 + "y\nFROM a\n",  # a long directive-like comment
        "FROM a\nRUN " + "x \\\n" * 20_000 + "y\n",  # a long continuation
        "FROM a\nCOPY " + "--a=b " * 20_000 + "--'c' d e\n",  # many flags, then a quoted one
        "FROM a\nCMD " + "[" * 50_000 + "\n",  # deeply nested, unterminated JSON
    ],
    ids=["quote", "words", "directive", "continuation", "flags", "json"],
)
def test_pathological_input_parses_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    parse(text, validate=False)
    assert time.perf_counter() - started < 2.0  # quadratic or exponential would take minutes


# --- BuildKit's own parser test files (frontend/dockerfile/parser/testfiles) -------------------------


def test_buildkit_testfile_health() -> None:
    dockerfile = (
        "FROM debian\n"
        "ADD check.sh main.sh /app/\n"
        "CMD /app/main.sh\n"
        "HEALTHCHECK\n"
        "HEALTHCHECK --interval=5s --timeout=3s --retries=3 \\\n"
        "  CMD /app/check.sh --quiet\n"
        "HEALTHCHECK CMD\n"
        "HEALTHCHECK   CMD   a b\n"
        'HEALTHCHECK --timeout=3s CMD ["foo"]\n'
        "HEALTHCHECK CONNECT TCP 7000\n"
    )
    result = (
        '(from "debian")\n'
        '(add "check.sh" "main.sh" "/app/")\n'
        '(cmd "/app/main.sh")\n'
        "(healthcheck)\n"
        '(healthcheck ["--interval=5s" "--timeout=3s" "--retries=3"] "CMD" "/app/check.sh --quiet")\n'
        '(healthcheck "CMD")\n'
        '(healthcheck "CMD" "a b")\n'
        '(healthcheck ["--timeout=3s"] "CMD" "foo")\n'
        '(healthcheck "CONNECT" "TCP 7000")\n'
    )
    assert dump_buildkit_ast(parse(dockerfile, validate=False)) == result


def test_buildkit_testfile_docker_excerpt() -> None:
    dockerfile = (
        "FROM\tubuntu:14.04\n"
        "LABEL maintainer Tianon Gravi <admwiggin@gmail.com> (@tianon)\n"
        "RUN\tapt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -yq \\\n"
        "\tapt-utils \\\n"
        "\taufs-tools \\\n"
        "\t--no-install-recommends\n"
        "ENV\tPATH\t/usr/local/go/bin:$PATH\n"
        "ENV\tDOCKER_CROSSPLATFORMS\tlinux/386 linux/arm \\\n"
        "\tdarwin/amd64 darwin/386\n"
        "RUN\t/bin/echo -e '[default]\\naccess_key=$AWS_ACCESS_KEY' > /.s3cfg\n"
        "VOLUME\t/var/lib/docker\n"
        'ENTRYPOINT\t["hack/dind"]\n'
        "COPY\t.\t/go/src/github.com/docker/docker\n"
    )
    result = (
        '(from "ubuntu:14.04")\n'
        '(label "maintainer" "Tianon Gravi <admwiggin@gmail.com> (@tianon)" "")\n'
        '(run "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -yq \\tapt-utils \\taufs-tools \\t--no-install-recommends")\n'
        '(env "PATH" "/usr/local/go/bin:$PATH" "")\n'
        '(env "DOCKER_CROSSPLATFORMS" "linux/386 linux/arm \\tdarwin/amd64 darwin/386" "")\n'
        "(run \"/bin/echo -e '[default]\\\\naccess_key=$AWS_ACCESS_KEY' > /.s3cfg\")\n"
        '(volume "/var/lib/docker")\n'
        '(entrypoint "hack/dind")\n'
        '(copy "." "/go/src/github.com/docker/docker")\n'
    )
    assert dump_buildkit_ast(parse(dockerfile)) == result


# --- dumps -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", '"plain"'),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("\t\n\r\a\b\f\v", '"\\t\\n\\r\\a\\b\\f\\v"'),
        ("\x00\x1f\x7f", '"\\x00\\x1f\\x7f"'),
        ("é中😀", '"é中😀"'),
        ("\xa0\u2028\ufeff", '"\\u00a0\\u2028\\ufeff"'),
        ("\U000e0001", '"\\U000e0001"'),
    ],
)
def test_go_quote_matches_strconv_quote(value: str, quoted: str) -> None:
    assert go_quote(value) == quoted


def test_dump_node_of_onbuild_with_flags() -> None:
    node = one("ONBUILD --x RUN --mount=type=cache,target=/c make")
    assert dump_node(node) == 'onbuild ["--x"] (run ["--mount=type=cache,target=/c"] "make")'


def test_to_json_holds_every_field() -> None:
    df = parse("# escape=`\nFROM a\nONBUILD COPY <<-EOF /x\n\thi\n\tEOF\n", filename="Dockerfile.x")
    data = json.loads(json.dumps(to_json(df)))
    assert data["filename"] == "Dockerfile.x"
    assert data["escape"] == "`"
    assert data["directives"] == {"escape": "`"}
    assert data["warnings"] == []
    onbuild = data["instructions"][1]
    assert onbuild["keyword"] == "onbuild"
    assert (onbuild["start_line"], onbuild["end_line"]) == (3, 5)
    assert onbuild["inner"]["keyword"] == "copy"
    assert onbuild["inner"]["args"] == ["<<-EOF", "/x"]
    assert onbuild["heredocs"] == [
        {"name": "EOF", "content": "hi\n", "expand": True, "chomp": True, "file_descriptor": 0}
    ]


def test_dump_dockerfile_is_canonical_text_that_parses_back() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n# escape=`\n\n  FROM a `\n   AS b\n# c\n"
        "RUN <<-EOF sh\n\techo $x\n\tEOF\nCOPY <<A <<B /d\n1\nA\n2\nB\n"
    )
    df = parse(text)
    rendered = dump_dockerfile(df)
    assert rendered == (
        "# syntax=docker/dockerfile:1\n# escape=`\nFROM a    AS b\n"
        "RUN <<-EOF sh\necho $x\nEOF\nCOPY <<A <<B /d\n1\nA\n2\nB\n"
    )
    again = parse(rendered)
    assert dump_buildkit_ast(again) == dump_buildkit_ast(df)
    assert [n.heredocs for n in again.nodes] == [n.heredocs for n in df.nodes]


# --- the corpus --------------------------------------------------------------------------------


def test_corpus_is_there() -> None:
    assert len(CORPUS) >= 10
    for path in CORPUS:
        assert path.read_text().count("FROM ") >= 1


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus_parses_and_round_trips(path: Path) -> None:
    df = parse(path.read_text(), filename=str(path))
    assert df.warnings == ()
    assert any(n.keyword == "from" for n in df.nodes)
    again = parse(dump_dockerfile(df))
    strip = [(n.keyword, n.flags, n.args, n.json, n.heredocs, n.original) for n in df.nodes]
    assert [
        (n.keyword, n.flags, n.args, n.json, n.heredocs, n.original) for n in again.nodes
    ] == strip


def test_corpus_multi_stage_shapes() -> None:
    stages = {
        p.stem: [n for n in parse(p.read_text()).nodes if n.keyword == "from"] for p in CORPUS
    }
    assert all(
        len(froms) >= 2
        for name, froms in stages.items()
        if name not in ("python-onbuild-base", "legacy-debian")
    )
    go = parse((CORPUS[0].parent / "go-service.Dockerfile").read_text())
    assert go.nodes[2].flags == ("--platform=$BUILDPLATFORM",)
    assert next(n.flags for n in go.nodes if n.keyword == "copy" and n.flags) == ("--from=build",)


def _oracle_view(text: str) -> list[tuple[object, ...]]:
    import dockerfile  # the BuildKit oracle is a test dependency: its absence is a failure

    out = []
    for cmd in dockerfile.parse_string(text):
        original = cmd.original.split("\n", 1)[0] if cmd.heredocs else cmd.original
        out.append(
            (cmd.cmd.lower(), (cmd.sub_cmd or "").lower(), cmd.json, original, cmd.start_line,
             cmd.end_line, tuple(cmd.flags), tuple(cmd.value), tuple((h.name, h.content) for h in cmd.heredocs))
        )  # fmt: skip
    return out


def _our_view(df: Dockerfile) -> list[tuple[object, ...]]:
    out = []
    for node in df.nodes:
        target = node.inner if node.inner is not None else node
        args = target.args
        if target.keyword in ("env", "label"):  # BuildKit 0.12 had no separator node
            args = tuple(a for i, a in enumerate(args) if i % 3 != 2)
        # the oracle shows raw heredoc bodies and none for ONBUILD triggers
        docs = () if node.inner is not None else tuple((h.name, h.content) for h in node.heredocs)
        out.append(
            (node.keyword, target.keyword if node.inner is not None else "", target.json,
             node.original, node.start_line, node.end_line, node.flags, args, docs)
        )  # fmt: skip
    return out


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus_matches_buildkits_own_parser(path: Path) -> None:
    text = path.read_text()
    oracle = _oracle_view(text)
    df = parse(text)
    # the oracle keeps <<- bodies raw; chomp them the way BuildKit's instruction layer does
    chomped = []
    for row, node in zip(oracle, df.nodes, strict=True):
        docs = tuple(
            (name, re.sub(r"(?m)^\t+", "", body) if ours.chomp else body)
            for (name, body), ours in zip(row[8], node.heredocs, strict=True)
        )
        chomped.append((*row[:8], docs))
    assert _our_view(df) == chomped


# --- the CLI -----------------------------------------------------------------------------------


def memobuild(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memobuild.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=cwd,
    )


def test_cli_parse_buildkit_ast(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        'FROM alpine AS base\nRUN --mount=type=cache,target=/c apk add curl\nCMD ["sh"]\n'
    )
    proc = memobuild("parse", "--format=buildkit-ast", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        '(from "alpine" "AS" "base")\n'
        '(run ["--mount=type=cache,target=/c"] "apk add curl")\n'
        '(cmd "sh")\n'
    )


def test_cli_parse_json_from_stdin() -> None:
    proc = memobuild("parse", "-f", "-", stdin="FROM a\nRUN <<EOF\nhi\nEOF\n")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["filename"] == "<stdin>"
    assert [i["keyword"] for i in data["instructions"]] == ["from", "run"]
    assert data["instructions"][1]["heredocs"][0]["content"] == "hi\n"
    assert data["instructions"][1]["end_line"] == 4


def test_cli_parse_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile.bad"
    path.write_text("FROM a\nRUN <<EOF\necho\n")
    proc = memobuild("parse", "-f", str(path))
    assert proc.returncode == 2
    assert (
        proc.stderr
        == f"memobuild: error: {path}:2: unterminated heredoc <<EOF: no line 'EOF' closes it before the end of the file\n"
    )
    assert proc.stdout == ""


def test_cli_parse_default_file_and_its_errors(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM a\nRUNN x\n")
    proc = memobuild("parse", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("memobuild: error: Dockerfile:2:1: unknown instruction: RUNN")
    missing = memobuild("parse", "-f", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "nope: Dockerfile does not exist" in missing.stderr


def test_cli_parse_prints_warnings_to_stderr(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM a\nRUN a \\\n\n  b\n")
    proc = memobuild("parse", "--format=buildkit-ast", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == '(from "a")\n(run "a   b")\n'
    assert (
        proc.stderr
        == "Dockerfile:3: warning: Empty continuation line found in: RUN a   b (NoEmptyContinuation)\n"
    )


def test_cli_parse_reads_a_latin1_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_bytes(b"# Auteur: Jos\xe9\nFROM a\nLABEL author=Jos\xe9\n")
    proc = memobuild("parse", "--format=buildkit-ast", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '(from "a")\n(label "author" "Jos\ufffd" "=")\n'
