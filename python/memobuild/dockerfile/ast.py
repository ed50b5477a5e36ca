"""The Dockerfile AST: what the parser produces and the instruction layer consumes.

It mirrors BuildKit's ``frontend/dockerfile/parser.Node`` closely enough that our reading can
be dumped in the same textual form BuildKit's parser tests use and diffed against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heredoc:
    """One heredoc attached to an instruction (``RUN <<EOF``, ``COPY <<EOF /dst``)."""

    name: str  # the delimiter word, without quotes or '-'
    content: str  # the body, ending with a newline as BuildKit keeps it
    expand: bool  # False when the delimiter was quoted: no variable expansion in the body
    chomp: bool  # True for <<-: leading tabs were stripped from each body line
    file_descriptor: int = 0  # a leading digit, as in ``3<<EOF``; 0 when none


@dataclass(frozen=True)
class ParseWarning:
    """A problem BuildKit reports as a warning rather than an error."""

    message: str
    line: int
    rule: str = ""  # the BuildKit lint rule name where there is one


@dataclass(frozen=True)
class Node:
    """One instruction.

    ``keyword`` is lower case (BuildKit's ``Node.Value``); ``flags`` are the raw ``--flag`` words
    in order (``"--from=build"``); ``args`` is the argument list as BuildKit's parser splits it
    for that instruction (its ``Next`` chain); ``json`` is True for the exec (JSON array) form;
    ``original`` is the instruction's text with continuations joined as BuildKit keeps it;
    ``start_line`` and ``end_line`` are 1-based and inclusive (heredoc bodies included);
    ``inner`` is the nested instruction of ONBUILD.

    How BuildKit splits ``args``: RUN/CMD/ENTRYPOINT/SHELL in shell form, and USER, WORKDIR,
    STOPSIGNAL, MAINTAINER, hold one string (the rest of the line); exec form holds the JSON
    array's strings. ADD/COPY/VOLUME/FROM/EXPOSE hold whitespace-separated words, quotes kept.
    ENV and LABEL hold (name, value, separator) triples, the separator being ``"="`` or ``""``
    for the legacy ``ENV name value`` form; values keep their quotes and escapes. ARG holds one
    word per declaration (``name`` or ``name=value``). HEALTHCHECK holds the type (``CMD``,
    ``NONE``) then the command as CMD would. ONBUILD's args are empty: its trigger is ``inner``,
    and a trigger's heredocs are on both the ONBUILD node (where BuildKit keeps them) and
    ``inner``.
    """

    keyword: str
    args: tuple[str, ...]
    flags: tuple[str, ...] = ()
    json: bool = False
    heredocs: tuple[Heredoc, ...] = ()
    original: str = ""
    start_line: int = 0
    end_line: int = 0
    inner: Node | None = None


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile: its directives, instructions in order, and warnings."""

    nodes: tuple[Node, ...]
    escape: str = "\\"
    # The parser directives (syntax, escape, check), keyed by lower-case name.
    directives: dict[str, str] = field(default_factory=dict)
    warnings: tuple[ParseWarning, ...] = ()
    filename: str | None = None
