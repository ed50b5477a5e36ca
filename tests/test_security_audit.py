"""scripts/security-audit.sh finds what it claims to find, and fails the build when it does.

The fake secrets are assembled at run time, so this file holds none for the audit to find.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "security-audit.sh"
HELPER = ROOT / "scripts" / "security_audit.py"


def _load_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("security_audit", HELPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["security_audit"] = module
    spec.loader.exec_module(module)
    return module


audit = _load_helper()


def _pem() -> str:
    body = base64.b64encode(secrets.token_bytes(96)).decode()
    kind = "RSA " + "PRIVATE KEY"
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----\n"


def _repo(tmp_path: Path) -> Path:
    """A git repository holding the audit scripts, as a checkout of the project would."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, repo / "scripts")
    shutil.copy2(HELPER, repo / "scripts")
    (repo / "README.md").write_text("nothing to see\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def _audit(repo: Path, *sections: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [str(repo / "scripts" / "security-audit.sh"), *sections],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


# --- the script as CI runs it -------------------------------------------------------------------


def test_a_committed_private_key_fails_the_audit_and_removing_it_passes(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    clean = _audit(repo, "secrets")
    assert clean.returncode == 0, clean.stderr
    assert "no findings" in clean.stdout

    (repo / "deploy").mkdir()
    (repo / "deploy" / "notes.txt").write_text("ssh access:\n" + _pem())
    subprocess.run(["git", "-C", str(repo), "add", "deploy/notes.txt"], check=True)
    found = _audit(repo, "secrets")
    assert found.returncode == 1
    assert "FINDING: secrets: deploy/notes.txt:2: private key" in found.stderr


def test_an_untracked_env_file_is_found_before_it_is_committed(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / ".env").write_text("DEBUG=1\n")
    found = _audit(repo, "secrets")
    assert found.returncode == 1
    assert ".env: a file of a kind that holds secrets" in found.stderr
    (repo / ".gitignore").write_text(".env\n")  # ignored files cannot be committed by accident
    assert _audit(repo, "secrets").returncode == 0


def test_an_unknown_section_is_a_usage_error(tmp_path: Path) -> None:
    result = _audit(_repo(tmp_path), "everything")
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_a_cache_directory_left_group_readable_fails_the_audit(tmp_path: Path) -> None:
    """The permissions section checks what a real build left; a memobuild that loosens one
    directory after the build must be caught."""
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    real = shutil.which("memobuild")
    assert real is not None
    shim = shim_dir / "memobuild"
    shim.write_text(
        "#!/bin/sh\n"
        f'"{real}" "$@"; rc=$?\n'
        'if [ "$1" = build ]; then chmod 0755 "$MEMOBUILD_CACHE_DIR/blobs"; fi\n'
        "exit $rc\n"
    )
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim_dir}:{os.environ['PATH']}"}
    result = _audit(_repo(tmp_path), "permissions", env=env)
    assert result.returncode == 1, result.stderr
    assert "cache not private: 755 " in result.stderr
    assert result.stderr.count("FINDING") == 1  # the server's storage was private


def test_the_real_cache_and_server_storage_pass_the_permissions_audit(tmp_path: Path) -> None:
    result = _audit(_repo(tmp_path), "permissions")
    assert result.returncode == 0, result.stderr


# --- the rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        ("AKIA" + "Q3EGRXQ5NOW4ZK2B", "AWS access key id"),
        (
            "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "9sTq2LkVz1",
            "AWS secret",
        ),
        ("token: ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8", "GitHub token"),
        ("SLACK=" + "xoxb-" + "1234567890-abcdefghij", "Slack token"),
        ("key=AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q", "Google API key"),
        (
            'API_TOKEN = "'
            + "9f86d081884c7d659a2feaa0c55ad015"
            + 'a3bf4f1b2b0b822cd15d6c15b0f00a08"',
            "random",
        ),
        ("password: '" + "Zx8Kq2Lm9Vt4Rw7Yp3Nb6Hs1" + "'", "random"),
    ],
)
def test_each_secret_rule_finds_its_kind(line: str, rule: str) -> None:
    found = list(audit.scan_text("f.py", "x = 1\n" + line + "\n"))
    assert len(found) == 1
    assert found[0].startswith("f.py:2: ")
    assert rule.lower() in found[0].lower()


@pytest.mark.parametrize(
    "line",
    [
        'ENV_TOKEN = "MEMOBUILD_REGISTRY_TOKEN"',  # a variable's name
        'RW_TOKEN = "rw-token-0123456789abcdef"',  # a readable test token
        'password = "changeme-changeme-changeme"',
        'token = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"',
        "api_key = os.environ['API_KEY']",
    ],
)
def test_names_placeholders_and_lookups_are_not_secrets(line: str) -> None:
    assert list(audit.scan_text("f.py", line)) == []


def test_key_files_are_findings_whatever_they_hold(tmp_path: Path) -> None:
    for name in ("id_ed25519", "server.pem", "deploy/.env.production", ".env.example"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    found = list(
        audit.scan_files(
            tmp_path, ["id_ed25519", "server.pem", "deploy/.env.production", ".env.example"]
        )
    )
    assert [f.split(":")[0] for f in found] == [
        "id_ed25519",
        "server.pem",
        "deploy/.env.production",
    ]


def test_security_suppressions_need_a_reason() -> None:
    noqa = "no" + "qa"  # spelled apart, so that this file holds no suppression of its own
    text = "\n".join(
        [
            f"a = 1  # {noqa}: S101",
            f"b = 2  # {noqa}: S101 - checked above",
            f"c = 3  # {noqa}: S311  (jitter, not a secret)",
            f"d = 4  # {noqa}: E501",
            f"e = 5  # {noqa}",
            f"f = 6  # {noqa}: E501, S603",
            f"# ruff: {noqa}: S108",
            f"g = 7  # {noqa}: S105 -",
        ]
    )
    found = list(audit.bare_suppressions("m.py", text))
    assert found == [
        "m.py:1: noqa: S101 without a reason after it",
        "m.py:5: a blanket noqa silences the security rules too",
        "m.py:6: noqa: E501 S603 without a reason after it",
        "m.py:7: noqa: S108 without a reason after it",
        "m.py:8: noqa: S105 without a reason after it",
    ]


def test_per_file_ignores_of_security_rules_need_a_comment() -> None:
    text = "\n".join(
        [
            "[tool.ruff.lint.per-file-ignores]",
            '"a/**" = ["S101"]',
            "# b runs its tools from PATH",
            '"b/**" = ["S607"]',
            '"c/**" = ["E501"]',
            '"d/**" = ["S603"]  # fixed argv',
            "[tool.mypy]",
            'x = ["S101"]',
        ]
    )
    assert list(audit.bare_per_file_ignores("pyproject.toml", text)) == [
        "pyproject.toml:2: per-file ignore of S rules without a comment saying why"
    ]


def test_unsafe_rust_needs_a_safety_comment() -> None:
    text = "\n".join(
        [
            "fn a() {",
            "    unsafe { f() }",  # 2: undocumented
            "    // SAFETY: f has no preconditions.",
            "    unsafe { f() }",
            '    #[cfg(target_arch = "x86_64")]',
            "    // SAFETY: a hint only.",
            "    #[allow(unused)]",
            "    unsafe { g() }",
            '    let s = "unsafe entries are refused";',
            "    // unsafe in a comment is fine",
            "}",
            "/// Does it.",
            "///",
            "/// # Safety",
            "/// The caller keeps p valid.",
            "pub unsafe fn h(p: *const u8) {}",
            "unsafe impl Send for X {}",  # 17: undocumented
            "let x = unsafe { y() }; // SAFETY: y is pure.",
        ]
    )
    found = list(audit.undocumented_unsafe("lib.rs", text))
    assert [f.split(":")[1] for f in found] == ["2", "17"]


def test_the_project_itself_is_clean() -> None:
    assert list(audit.scan_files(ROOT, audit.git_files(ROOT))) == []
    for path in sorted((ROOT / "rust").rglob("*.rs")):
        assert list(audit.undocumented_unsafe(str(path), path.read_text())) == []


def test_sparse_index_paths() -> None:
    assert audit.sparse_index_path("a") == "1/a"
    assert audit.sparse_index_path("cc") == "2/cc"
    assert audit.sparse_index_path("hex") == "3/h/hex"
    assert audit.sparse_index_path("Serde_JSON") == "se/rd/serde_json"


def test_pip_audit_report() -> None:
    report = {
        "dependencies": [
            {"name": "a", "version": "1.0", "vulns": []},
            {
                "name": "b",
                "version": "2.0",
                "vulns": [{"id": "PYSEC-1", "fix_versions": ["2.1"]}],
            },
            {"name": "c", "skip_reason": "Dependency not found on PyPI"},
        ]
    }
    findings, skipped, audited = audit.pip_audit_report(report)
    assert findings == ["b 2.0: PYSEC-1 (fixed in 2.1)"]
    assert skipped == ["c: Dependency not found on PyPI"]
    assert audited == 2
