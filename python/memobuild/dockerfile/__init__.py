"""The Dockerfile front end: text -> AST (parser), words and variables (shell).

``parse`` reads a Dockerfile the way BuildKit does; ``expand_word`` and ``split_words`` apply
BuildKit's shell-word rules to the arguments afterwards.
"""

from __future__ import annotations

from memobuild.dockerfile.ast import Dockerfile, Heredoc, Node, ParseWarning
from memobuild.dockerfile.dump import dump_buildkit_ast, dump_dockerfile, to_json
from memobuild.dockerfile.parser import INSTRUCTIONS, parse
from memobuild.dockerfile.shell import expand_word, split_words

__all__ = [
    "INSTRUCTIONS",
    "Dockerfile",
    "Heredoc",
    "Node",
    "ParseWarning",
    "dump_buildkit_ast",
    "dump_dockerfile",
    "expand_word",
    "parse",
    "split_words",
    "to_json",
]
