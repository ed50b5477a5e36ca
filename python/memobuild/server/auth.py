"""Bearer tokens: who may read the cache server and who may write to it.

The token file holds one token per line, ``<token> ro|rw``; blank lines and lines starting with
``#`` are ignored. Tokens are RFC 6750 ``b64token`` strings of at least 16 characters (use
``openssl rand -hex 32``). Only their sha256 is kept in memory, and a presented token is checked
against every configured one with ``hmac.compare_digest`` over those fixed-length digests, with no
early exit: the time a check takes says nothing about how much of a token was right, nor which
token matched.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

from memobuild.errors import InputError
from memobuild.logging import logger

__all__ = ["MIN_TOKEN_LENGTH", "Access", "TokenSet"]

MIN_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class Access(enum.IntEnum):
    """What a client may do; a higher value includes the lower ones."""

    NONE = 0
    READ = 1
    WRITE = 2


_ACCESS = {"ro": Access.READ, "rw": Access.WRITE}


def _fingerprint(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class TokenSet:
    """The configured tokens, as (sha256 of the token, access) pairs."""

    tokens: tuple[tuple[bytes, Access], ...]

    @classmethod
    def parse(cls, text: str, where: str = "token file") -> TokenSet:
        """Read the token file format; InputError naming ``where:line`` on a bad line."""
        seen: set[bytes] = set()
        tokens: list[tuple[bytes, Access]] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in _ACCESS:
                raise InputError(f"{where}:{number}: expected '<token> ro' or '<token> rw'")
            token, access = parts
            if not _TOKEN.fullmatch(token) or len(token) < MIN_TOKEN_LENGTH:
                raise InputError(
                    f"{where}:{number}: a token must be at least {MIN_TOKEN_LENGTH} characters of "
                    "A-Z a-z 0-9 - . _ ~ + / (e.g. the output of 'openssl rand -hex 32')"
                )
            fingerprint = _fingerprint(token)
            if fingerprint in seen:
                raise InputError(f"{where}:{number}: this token is listed twice")
            seen.add(fingerprint)
            tokens.append((fingerprint, _ACCESS[access]))
        if not tokens:
            raise InputError(f"{where}: no tokens (expected lines '<token> ro|rw')")
        return cls(tuple(tokens))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TokenSet:
        """Read a token file; warns if other users can read it."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except FileNotFoundError as err:
            raise InputError(f"{path}: token file does not exist") from err
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: cannot read token file: {err}") from err
        if mode & 0o077:
            logger.warning(f"{path}: token file is readable by other users; chmod 600 it")
        return cls.parse(text, str(path))

    def check(self, authorization: str | None) -> Access:
        """The access an ``Authorization`` header grants (NONE if missing or wrong)."""
        if authorization is None:
            return Access.NONE
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return Access.NONE
        presented = _fingerprint(credentials.strip())
        granted = Access.NONE
        for fingerprint, access in self.tokens:
            if hmac.compare_digest(presented, fingerprint):
                granted = access
        return granted
