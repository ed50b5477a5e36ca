"""Build secrets: ``--secret id=ID,src=FILE|env=VAR``, read when a RUN mounts them.

A secret reaches a RUN step only as a file bound read-only into the sandbox (or as an
environment variable the executor adds to that one step), never as part of a layer and never
in a cache key: the sandbox writes the bytes to a private temporary file outside the rootfs and
removes it after the step. So that the value cannot leak through logs either, nothing here keeps
the bytes longer than :meth:`SecretSource.read` takes, and the dataclasses never print them.

The flag syntax and defaults are docker buildx's:

* ``id=ID,src=FILE`` (``source=`` too) reads a file; ``id=ID,env=VAR`` an environment variable;
* ``type=file`` or ``type=env`` may be given; ``type=env,src=VAR`` means ``env=VAR``;
* ``id=ID`` alone reads the environment variable ``ID`` when it is set, else the file ``ID``;
* a secret is at most 500 KiB, BuildKit's limit.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from memobuild.errors import InputError

__all__ = ["MAX_SECRET_SIZE", "SecretSource", "load_secrets", "parse_secret_flag"]

MAX_SECRET_SIZE = 500 * 1024
"""BuildKit refuses larger secrets; so do we, so that a build does not pass here and fail there."""


@dataclass(frozen=True)
class SecretSource:
    """Where the value of secret ``id`` comes from: a file, an environment variable, or (neither
    given) the variable ``id`` if set, else the file ``id``."""

    id: str
    path: Path | None = None
    env: str | None = None

    def read(self, environ: Mapping[str, str] | None = None) -> bytes:
        """The secret's bytes; a missing variable or file, or an oversized one, is InputError."""
        env = os.environ if environ is None else environ
        if self.env is not None:
            return self._from_env(env, self.env)
        if self.path is not None:
            return self._from_file(self.path)
        if self.id in env:
            return self._from_env(env, self.id)
        path = Path(self.id)
        if not path.exists():
            raise InputError(
                f"secret {self.id!r}: no environment variable {self.id} and no file {self.id} "
                f"(give --secret id={self.id},src=FILE or id={self.id},env=VAR)"
            )
        return self._from_file(path)

    def _from_env(self, environ: Mapping[str, str], name: str) -> bytes:
        value = environ.get(name)
        if value is None:
            raise InputError(f"secret {self.id!r}: environment variable {name} is not set")
        return self._checked(os.fsencode(value))

    def _from_file(self, path: Path) -> bytes:
        try:
            size = path.stat().st_size
            if size > MAX_SECRET_SIZE:
                raise InputError(self._too_big(size))
            return self._checked(path.read_bytes())
        except FileNotFoundError as err:
            raise InputError(f"secret {self.id!r}: {path} does not exist") from err
        except IsADirectoryError as err:
            raise InputError(f"secret {self.id!r}: {path} is a directory, not a file") from err
        except PermissionError as err:
            raise InputError(f"secret {self.id!r}: cannot read {path}: {err.strerror}") from err

    def _checked(self, data: bytes) -> bytes:
        if len(data) > MAX_SECRET_SIZE:
            raise InputError(self._too_big(len(data)))
        return data

    def _too_big(self, size: int) -> str:
        return (
            f"secret {self.id!r} is {size} bytes; secrets are limited to {MAX_SECRET_SIZE} "
            "bytes (500 KiB)"
        )


def parse_secret_flag(value: str) -> SecretSource:
    """Parse one ``--secret`` value (a CSV record of ``key=value`` fields) as buildx does.

    Keys are case-insensitive: ``id``, ``src``/``source``, ``env``, ``type`` (``file``/``env``).
    A missing id, an unknown key or a field without ``=`` is an :class:`InputError`.
    """
    try:
        fields = next(csv.reader([value], strict=True), [])
    except csv.Error as err:
        raise InputError(f"--secret {value!r}: cannot parse it as CSV: {err}") from err
    secret_id = ""
    src: str | None = None
    env: str | None = None
    kind: str | None = None
    for field in fields:
        key, eq, val = field.partition("=")
        key = key.strip().lower()
        if not eq:
            raise InputError(f"--secret {value!r}: field {field!r} must be a key=value pair")
        if key == "type":
            if val not in ("file", "env"):
                raise InputError(
                    f"--secret {value!r}: unsupported secret type {val!r} (expected file or env)"
                )
            kind = val
        elif key == "id":
            secret_id = val
        elif key in ("src", "source"):
            src = val
        elif key == "env":
            env = val
        else:
            raise InputError(
                f"--secret {value!r}: unexpected key {key!r} (expected id, src, source, env "
                "or type)"
            )
    if kind == "env" and env is None:
        env, src = src, None
    if not secret_id:
        raise InputError(f"--secret {value!r}: the secret has no id (write id=NAME)")
    if env == "":
        raise InputError(f"--secret {value!r}: env= names no variable")
    if src == "":
        raise InputError(f"--secret {value!r}: src= names no file")
    return SecretSource(id=secret_id, path=Path(src) if src is not None else None, env=env)


def load_secrets(
    sources: Iterable[SecretSource], environ: Mapping[str, str] | None = None
) -> dict[str, bytes]:
    """Read every source once, by id (a later ``--secret`` with the same id wins, as in buildx).

    Reading them all at the start of a build makes a missing secret fail before any step runs.
    """
    by_id = {source.id: source for source in sources}
    return {secret_id: source.read(environ) for secret_id, source in by_id.items()}
