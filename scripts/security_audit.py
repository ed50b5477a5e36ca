#!/usr/bin/env python3
"""The checks behind scripts/security-audit.sh that are easier to write in Python (stdlib only).

    security_audit.py secrets            committed secrets in `git ls-files` (+ untracked files)
    security_audit.py suppressions       every ruff `noqa`/per-file ignore of an S rule has a reason
    security_audit.py unsafe DIR...      every `unsafe` in Rust code has a `// SAFETY:` comment
    security_audit.py yanked Cargo.lock  no locked crate is yanked (crates.io sparse index)
    security_audit.py pip-audit-report   reads `pip-audit -f json` on stdin, says what it checked
    security_audit.py requirements       the installed dependency closure of memobuild, pinned

Each prints its findings, one per line, and exits 1 if there is one; 3 means the check itself
could not run (a registry or service unreachable), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

UNREACHABLE = 3

# ---------------------------------------------------------------------------------------------
# Secrets


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    random_only: bool = False  # report only when group 1 looks random (see looks_random)


RULES = (
    Rule(
        "private key",
        re.compile(
            r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"
        ),
    ),
    Rule("AWS access key id", re.compile(r"\b((?:AKIA|ASIA)[0-9A-Z]{16})\b")),
    Rule(
        "AWS secret access key",
        re.compile(r"(?i)aws_secret_access_key\W{0,4}([A-Za-z0-9/+=]{40})\b"),
        random_only=True,
    ),
    Rule("GitHub token", re.compile(r"\b((?:gh[pousr]_[A-Za-z0-9]{36,})|github_pat_\w{22,})")),
    Rule("Slack token", re.compile(r"\b(xox[abprs]-[A-Za-z0-9-]{10,})")),
    Rule("Google API key", re.compile(r"\b(AIza[0-9A-Za-z_-]{35})\b")),
    Rule("PyPI/crates.io token", re.compile(r"\b((?:pypi-|cio)[A-Za-z0-9_-]{40,})")),
    # A string literal of 20+ token characters assigned to a name that says it is secret.
    Rule(
        "random-looking secret assigned in the source",
        re.compile(
            r"(?i)(?:secret|token|passw(?:or)?d|api[_-]?key|private[_-]?key|credential)\w*"
            r"""["']?\s*[:=]\s*[brf]?["']([A-Za-z0-9+/=_.~-]{20,})["']"""
        ),
        random_only=True,
    ),
)


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    counts: dict[str, int] = {}
    for ch in text:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def looks_random(value: str) -> bool:
    """A generated secret rather than a name or a placeholder: 32+ hex digits (``openssl rand
    -hex``), or 20+ characters mixing lower case, upper case and digits with high entropy
    (base64 and friends). ``MEMOBUILD_REGISTRY_TOKEN``, ``changeme-changeme`` and
    ``rw-token-0123456789abcdef`` are not."""
    if re.fullmatch(r"[A-Z0-9_]+", value):
        return False  # an environment variable's name
    hex_run = max((len(m) for m in re.findall(r"[0-9a-fA-F]+", value)), default=0)
    if hex_run >= 32 and entropy(value) >= 3.0:
        return True
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    return len(value) >= 20 and classes >= 3 and entropy(value) >= 4.0


# Names that are secrets by what they are, whatever they hold.
SECRET_FILES = re.compile(
    r"(?:^|/)(?:\.env(?:\.[^/]*)?|id_(?:rsa|dsa|ecdsa|ed25519)|[^/]*\.(?:pem|key|p12|pfx|jks|keystore)"
    r"|\.netrc|\.pypirc|credentials(?:\.json)?|\.git-credentials)$"
)
ALLOWED_SECRET_FILES = re.compile(r"(?:^|/)\.env\.(?:example|sample|template)$")

# Files allowed to match a rule, each with the reason. Keep this short: a fixture that needs a
# key should generate it at run time instead.
ALLOWLIST: dict[str, str] = {}


def scan_text(path: str, text: str) -> Iterator[str]:
    """Every finding in one file, as ``path:line: rule``."""
    for lineno, line in enumerate(text.splitlines(), 1):
        for rule in RULES:
            for m in rule.pattern.finditer(line):
                value = m.group(1) if m.groups() else m.group(0)
                if rule.random_only and not looks_random(value):
                    continue
                yield f"{path}:{lineno}: {rule.name}"


def scan_files(root: Path, paths: Iterable[str]) -> Iterator[str]:
    for rel in paths:
        if rel in ALLOWLIST:
            continue
        if SECRET_FILES.search(rel) and not ALLOWED_SECRET_FILES.search(rel):
            yield f"{rel}: a file of a kind that holds secrets is committed"
            continue
        path = root / rel
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (seed corpora, images): no text secrets to find
        yield from scan_text(rel, data.decode("utf-8", "replace"))


def git_files(root: Path) -> list[str]:
    """Tracked files plus untracked ones git would not ignore (what the next commit could add)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],  # noqa: S607 - git from PATH, as a developer runs it
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({p for p in out.decode("utf-8", "surrogateescape").split("\0") if p})


# ---------------------------------------------------------------------------------------------
# Suppressions of ruff's security rules

_NOQA = re.compile(
    r"#\s*(?:ruff\s*:\s*)?noqa\b(?P<colon>\s*:\s*(?P<codes>[A-Z]+[0-9]+(?:[\s,]+[A-Z]+[0-9]+)*))?(?P<rest>.*)"
)


def bare_suppressions(path: str, text: str) -> Iterator[str]:
    """`noqa` comments that silence an S rule (or every rule) without saying why."""
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in _NOQA.finditer(line):
            codes = re.split(r"[\s,]+", m.group("codes") or "")
            reason = re.search(r"[A-Za-z]{2,}", m.group("rest"))  # words, not punctuation
            if not m.group("codes"):
                yield f"{path}:{lineno}: a blanket noqa silences the security rules too"
            elif any(c.startswith("S") for c in codes) and not reason:
                yield f"{path}:{lineno}: noqa: {' '.join(codes)} without a reason after it"


def bare_per_file_ignores(path: str, text: str) -> Iterator[str]:
    """per-file-ignores entries in pyproject.toml that ignore S rules without a comment."""
    lines = text.splitlines()
    inside = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            inside = stripped == "[tool.ruff.lint.per-file-ignores]"
            continue
        if not inside or not stripped or stripped.startswith("#"):
            continue
        if not re.search(r"""["']S\d*["']""", stripped):
            continue
        commented = "#" in stripped.split("]", 1)[-1] or (
            i > 0 and lines[i - 1].strip().startswith("#")
        )
        if not commented:
            yield f"{path}:{i + 1}: per-file ignore of S rules without a comment saying why"


# ---------------------------------------------------------------------------------------------
# unsafe Rust

_UNSAFE = re.compile(r"\bunsafe\b")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def undocumented_unsafe(path: str, text: str) -> Iterator[str]:
    """`unsafe` blocks, fns and impls without a `// SAFETY:` comment (or, for an `unsafe fn`,
    a `# Safety` doc section) right above them, attributes and other comments in between."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        code = _STRING.sub('""', line).split("//", 1)[0]
        if not _UNSAFE.search(code):
            continue
        if "SAFETY:" in line:
            continue
        j = i - 1
        documented = False
        while j >= 0:
            above = lines[j].strip()
            if above.startswith("//"):
                if "SAFETY:" in above or (above.startswith("///") and "# Safety" in above):
                    documented = True
                    break
            elif not above.startswith("#[") and not above.startswith("#!["):
                break
            j -= 1
        if not documented:
            yield f"{path}:{i + 1}: unsafe without a `// SAFETY:` comment saying why it is sound"


# ---------------------------------------------------------------------------------------------
# Yanked crates


def sparse_index_path(name: str) -> str:
    name = name.lower()
    if len(name) <= 2:
        return f"{len(name)}/{name}"
    if len(name) == 3:
        return f"3/{name[0]}/{name}"
    return f"{name[:2]}/{name[2:4]}/{name}"


def locked_crates(lock: Path) -> list[tuple[str, str]]:
    import tomllib

    data = tomllib.loads(lock.read_text())
    return [
        (p["name"], p["version"])
        for p in data.get("package", [])
        if p.get("source", "").startswith("registry+https://github.com/rust-lang/crates.io-index")
        or p.get("source", "") == "sparse+https://index.crates.io/"
    ]


class Unreachable(Exception):
    pass


def is_yanked(name: str, version: str, timeout: float = 20.0) -> bool:
    url = f"https://index.crates.io/{sparse_index_path(name)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read().decode()
    except (urllib.error.URLError, OSError) as err:
        raise Unreachable(f"{url}: {err}") from None
    for line in body.splitlines():
        entry = json.loads(line)
        if entry.get("vers") == version:
            return bool(entry.get("yanked"))
    raise Unreachable(f"{url}: no version {version} in the index")


# ---------------------------------------------------------------------------------------------
# pip-audit


def pip_audit_report(report: dict[str, object]) -> tuple[list[str], list[str], int]:
    """(findings, skipped, audited) from ``pip-audit -f json``."""
    findings: list[str] = []
    skipped: list[str] = []
    audited = 0
    dependencies = report.get("dependencies", [])
    assert isinstance(dependencies, list)  # noqa: S101 - pip-audit's documented format
    for dep in dependencies:
        if dep.get("skip_reason"):
            skipped.append(f"{dep['name']}: {dep['skip_reason']}")
            continue
        audited += 1
        for vuln in dep.get("vulns", []):
            fixes = ", ".join(vuln.get("fix_versions", [])) or "no fix released"
            findings.append(
                f"{dep['name']} {dep.get('version', '?')}: {vuln['id']} (fixed in {fixes})"
            )
    return findings, skipped, audited


def requirements(pyproject: Path) -> list[str]:
    """``name==version`` for the installed closure of the project's runtime dependencies (from
    pyproject.toml, not the possibly stale metadata of an editable install)."""
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    seen: dict[str, str] = {}
    todo = [_requirement_name(r) for r in project.get("dependencies", [])]
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an environment marker that does not apply here
        seen[key] = dist.version
        for req in dist.requires or []:
            if ";" in req and "extra ==" in req.split(";", 1)[1]:
                continue  # an optional extra of that package, not installed with it
            todo.append(_requirement_name(req))
    return [f"{name}=={version}" for name, version in sorted(seen.items())]


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0]


# ---------------------------------------------------------------------------------------------


def _report(findings: list[str]) -> int:
    for finding in findings:
        print(finding)
    return 1 if findings else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("secrets")
    sub.add_parser("suppressions")
    unsafe = sub.add_parser("unsafe")
    unsafe.add_argument("dirs", nargs="+", type=Path)
    yanked = sub.add_parser("yanked")
    yanked.add_argument("lock", type=Path)
    sub.add_parser("pip-audit-report")
    sub.add_parser("requirements")
    args = parser.parse_args(argv)
    root = Path.cwd()

    if args.command == "secrets":
        return _report(list(scan_files(root, git_files(root))))
    if args.command == "suppressions":
        findings: list[str] = []
        for rel in git_files(root):
            if rel.endswith(".py") and (root / rel).is_file():
                findings += bare_suppressions(rel, (root / rel).read_text(errors="replace"))
        findings += bare_per_file_ignores("pyproject.toml", (root / "pyproject.toml").read_text())
        return _report(findings)
    if args.command == "unsafe":
        findings = []
        for directory in args.dirs:
            for path in sorted(directory.rglob("*.rs")):
                if "target" in path.parts:
                    continue
                findings += undocumented_unsafe(str(path), path.read_text())
        return _report(findings)
    if args.command == "yanked":
        crates = locked_crates(args.lock)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            try:
                results = list(pool.map(lambda c: (c, is_yanked(*c)), crates))
            except Unreachable as err:
                print(f"crates.io sparse index unreachable: {err}", file=sys.stderr)
                return UNREACHABLE
        print(f"{len(crates)} crates checked against the crates.io index", file=sys.stderr)
        return _report([f"{n} {v} is yanked" for (n, v), y in results if y])
    if args.command == "pip-audit-report":
        findings, skipped, audited = pip_audit_report(json.load(sys.stdin))
        print(f"pip-audit: {audited} packages audited, {len(skipped)} skipped", file=sys.stderr)
        if audited == 0 and skipped:
            print(
                f"PyPI's JSON API (pip-audit's vulnerability service) knew none of the "
                f"{len(skipped)} packages, e.g. {skipped[0]}",
                file=sys.stderr,
            )
            return UNREACHABLE
        for line in skipped:
            print(f"  not audited: {line}", file=sys.stderr)
        return _report(findings)
    if args.command == "requirements":
        print("\n".join(requirements(root / "pyproject.toml")))
        return 0
    raise AssertionError(args.command)  # pragma: no cover - argparse allows only the above


if __name__ == "__main__":
    sys.exit(main())
