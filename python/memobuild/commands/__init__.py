"""The subcommands of ``memobuild``: each module adds its parser and runs it."""

from __future__ import annotations

from memobuild.commands import build as build_command
from memobuild.commands import cache as cache_command
from memobuild.commands import hash as hash_command
from memobuild.commands import images as images_command
from memobuild.commands import imports as import_command
from memobuild.commands import parse as parse_command
from memobuild.commands import plan as plan_command
from memobuild.commands import server as server_command
from memobuild.commands import stats as stats_command

# Each entry has add_parser(subparsers); the parser's func default runs the command.
COMMANDS = [
    build_command,
    cache_command,
    hash_command,
    images_command,
    import_command,
    parse_command,
    plan_command,
    server_command,
    stats_command,
]
