"""Three ways to print a parsed Dockerfile.

- :func:`dump_buildkit_ast`: the s-expression dump BuildKit's parser tests compare against
  (``Node.Dump()``), one instruction per line, so our reading can be diffed against BuildKit's.
- :func:`to_json`: every AST field, for tools and for ``memobuild parse --format=json``.
- :func:`dump_dockerfile`: Dockerfile text that parses back to the same instructions; it is the
  canonical form used by the round-trip property tests.
"""

from __future__ import annotations

import re
from typing import Any

from memobuild.dockerfile.ast import Dockerfile, Heredoc, Node

__all__ = ["dump_buildkit_ast", "dump_dockerfile", "dump_node", "go_quote", "to_json"]

_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}
_PLAIN = re.compile(r"[ !#-\[\]-~]*\Z")  # printable ASCII without '"' and '\'


def go_quote(s: str) -> str:
    """Quote ``s`` as Go's strconv.Quote does (the quoting in BuildKit's dumps and errors)."""
    if _PLAIN.match(s):
        return f'"{s}"'
    out = ['"']
    for ch in s:
        escaped = _GO_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ch.isprintable():  # the same classes as Go's strconv.IsPrint: L, M, N, P, S, ' '
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x20 or code == 0x7F:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def dump_node(node: Node) -> str:
    """One instruction as BuildKit's ``Node.Dump()`` prints it, without the outer parentheses."""
    parts = [node.keyword] if node.keyword else []
    if node.flags:
        # Go's %q on a []string: ["--a" "--b"]
        parts.append("[" + " ".join(go_quote(f) for f in node.flags) + "]")
    if node.inner is not None:
        parts.append("(" + dump_node(node.inner) + ")")
    parts.extend(go_quote(a) for a in node.args)
    return " ".join(parts)


def dump_buildkit_ast(df: Dockerfile) -> str:
    """The whole file in the textual form of BuildKit's parser ``testfiles/*/result``."""
    return "".join(f"({dump_node(node)})\n" for node in df.nodes)


def _heredoc_json(doc: Heredoc) -> dict[str, Any]:
    return {
        "name": doc.name,
        "content": doc.content,
        "expand": doc.expand,
        "chomp": doc.chomp,
        "file_descriptor": doc.file_descriptor,
    }


def _node_json(node: Node) -> dict[str, Any]:
    return {
        "keyword": node.keyword,
        "flags": list(node.flags),
        "args": list(node.args),
        "json": node.json,
        "heredocs": [_heredoc_json(d) for d in node.heredocs],
        "original": node.original,
        "start_line": node.start_line,
        "end_line": node.end_line,
        "inner": _node_json(node.inner) if node.inner is not None else None,
    }


def to_json(df: Dockerfile) -> dict[str, Any]:
    """A JSON-serialisable dict holding every field of the AST."""
    return {
        "filename": df.filename,
        "escape": df.escape,
        "directives": dict(df.directives),
        "warnings": [{"message": w.message, "line": w.line, "rule": w.rule} for w in df.warnings],
        "instructions": [_node_json(node) for node in df.nodes],
    }


def dump_dockerfile(df: Dockerfile) -> str:
    """Render Dockerfile text that parses back to the same instructions.

    Each instruction is written as its joined original line (continuations, comments and
    blank lines are gone; a carriage return that ended the joined line is dropped), followed
    by its heredoc bodies and terminators; the parser directives come first. Line numbers
    change, nothing else does.
    """
    out = [f"# {key}={value}\n" for key, value in df.directives.items()]
    for node in df.nodes:
        # A trailing CR would read back as half of a CRLF line end, so it is not written.
        out.append(node.original.rstrip("\r") + "\n")
        for doc in node.heredocs:
            out.append(doc.content)
            out.append(doc.name + "\n")
    return "".join(out)
