"""Dockerfile parsing against dockerfile-parse (Red Hat's Python parser), on the same texts.

Two workloads: one 5,000-line Dockerfile (the test corpus concatenated), and 200 realistic
multi-stage Dockerfiles (the corpus with per-file variations), each parsed from text. When the
``dockerfile`` package (BuildKit's Go parser as a C extension) is installed it runs as a second
anchor. Every contender must find the same number of FROM instructions, so none can win by
reading less.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from memobuild.dockerfile import parse

CORPUS_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "dockerfiles"
BIG_LINES = 5000
FILES = 200


def _corpus() -> list[str]:
    texts = [p.read_text() for p in sorted(CORPUS_DIR.glob("*.Dockerfile"))]
    assert len(texts) >= 10, "the Dockerfile corpus is missing"
    return texts


@cache
def big_dockerfile() -> str:
    """The corpus files concatenated until the text has at least BIG_LINES lines.

    Files with an escape directive are left out: past the first line the directive is a
    comment, and their backtick continuations would no longer join.
    """
    parts: list[str] = []
    lines = 0
    usable = [t for t in _corpus() if "escape=" not in t]
    while lines < BIG_LINES:
        for text in usable:
            parts.append(text)
            lines += text.count("\n")
    return "".join(parts)


@cache
def many_dockerfiles() -> list[str]:
    """FILES realistic Dockerfiles: the corpus, each copy with its own extra instructions."""
    corpus = _corpus()
    out = []
    for i in range(FILES):
        text = corpus[i % len(corpus)]
        escape = "`" if "escape=`" in text else "\\"
        variant = (
            f"\nARG VARIANT={i}\n"
            f'LABEL com.example.variant="{i}" com.example.build="{i * 7919 % 1000}"\n'
            f"RUN echo variant {i} {escape}\n"
            + "".join(f"    && echo step {j} {escape}\n" for j in range(i % 6))
            + "    && true\n"
        )
        out.append(text + variant)
    return out


def _froms_memobuild(text: str) -> int:
    return sum(1 for node in parse(text).nodes if node.keyword == "from")


def _froms_dockerfile_parse(text: str) -> int:
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()), env_replace=False)
    return sum(1 for item in parser.structure if item["instruction"] == "FROM")


def _buildkit() -> Callable[[str], int]:
    dockerfile = pytest.importorskip("dockerfile")

    def froms(text: str) -> int:
        return sum(1 for cmd in dockerfile.parse_string(text) if cmd.cmd.upper() == "FROM")

    return froms


IMPLS: dict[str, Callable[[], Callable[[str], int]]] = {
    "memobuild": lambda: _froms_memobuild,
    "dockerfile-parse": lambda: _froms_dockerfile_parse,
    "dockerfile (BuildKit Go)": _buildkit,
}


def _froms_by_regex(text: str) -> int:
    # An independent count: no corpus heredoc body has a line starting with FROM.
    return len(re.findall(r"(?im)^[ \t]*from[ \t]", text))


def _setup(benchmark, group: str, impl: str) -> None:
    benchmark.group = group
    benchmark.extra_info["impl"] = impl


@pytest.mark.parametrize("impl", list(IMPLS))
def test_parse_5000_lines(benchmark, impl):
    text = big_dockerfile()
    assert text.count("\n") >= BIG_LINES
    count = IMPLS[impl]()
    _setup(benchmark, f"dockerfile parse {BIG_LINES} lines", impl)
    benchmark.extra_info["lines"] = text.count("\n")
    froms = benchmark(count, text)
    assert froms == _froms_by_regex(text) > 100


@pytest.mark.parametrize("impl", list(IMPLS))
def test_parse_200_dockerfiles(benchmark, impl):
    texts = many_dockerfiles()
    assert len(texts) == FILES
    count = IMPLS[impl]()
    _setup(benchmark, f"dockerfile parse {FILES} files", impl)
    benchmark.extra_info["lines"] = sum(t.count("\n") for t in texts)

    def parse_all() -> int:
        return sum(count(t) for t in texts)

    froms = benchmark(parse_all)
    assert froms == sum(_froms_by_regex(t) for t in texts)
    assert froms >= 2 * FILES  # nearly every corpus file is multi-stage
