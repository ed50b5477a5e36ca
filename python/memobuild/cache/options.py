"""What ``--cache-from`` and ``--cache-to`` say, and the build's cache made from them.

The spelling is ``docker buildx build``'s: comma-separated ``key=value`` fields with a
``type`` (``type=memobuild,url=http://cache:8080``), and for a memobuild server a bare
``http(s)://`` URL as well. ``$MEMOBUILD_REMOTE_URL`` takes the same values and, when neither
flag is given, serves as both. Each type has one parser in ``_PARSERS``: a new backend adds
its own parser there and its remote in :func:`open_build_cache`.

This module stays cheap to import: a build with no remote configured never loads the HTTP
client (``httpx``) or the hybrid cache.
"""

from __future__ import annotations

import csv
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memobuild.errors import InputError

if TYPE_CHECKING:
    from memobuild.cache.hybrid import HybridCache
    from memobuild.cache.remote_events import RemoteCacheEventCallback
    from memobuild.cache.store import LocalStore

__all__ = [
    "MEMOBUILD",
    "TOKEN_ENV",
    "URL_ENV",
    "CacheOption",
    "open_build_cache",
    "parse_cache_option",
    "remote_configured",
]

URL_ENV = "MEMOBUILD_REMOTE_URL"
TOKEN_ENV = "MEMOBUILD_REMOTE_TOKEN"  # noqa: S105 - the variable's name, not a token
MEMOBUILD = "memobuild"  # the type of a ``memobuild server``


@dataclass(frozen=True)
class CacheOption:
    """One parsed ``--cache-from``/``--cache-to`` value.

    ``type`` names the backend; ``url`` is where it is (a memobuild server's base URL);
    ``attrs`` holds any further ``key=value`` fields a type accepts, in the order given.
    """

    type: str
    url: str
    attrs: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        extra = "".join(f",{key}={value}" for key, value in self.attrs)
        return f"type={self.type},url={self.url}{extra}"


def _fields(text: str, where: str) -> dict[str, str]:
    """``key=value,key=value`` (csv quoting allowed, as buildx reads it) as a dict."""
    try:
        rows = list(csv.reader([text], skipinitialspace=True))
    except csv.Error as err:
        raise InputError(f"{where} {text!r}: {err}") from None
    fields: dict[str, str] = {}
    for part in rows[0] if rows else []:
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or not key:
            raise InputError(f"{where} {text!r}: expected key=value fields, not {part!r}")
        if key in fields:
            raise InputError(f"{where} {text!r}: {key}= is given twice")
        fields[key] = value.strip()
    return fields


def _check_url(url: str, where: str) -> str:
    """A plain ``http(s)://HOST[:PORT][/PATH]``: checked here without the HTTP client, so a
    mistyped flag fails before anything runs (the client checks it again)."""
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as err:
        raise InputError(f"{where}: invalid URL: {err}") from None
    if parsed.username is not None or parsed.password is not None:
        raise InputError(f"{where}: the URL must not hold credentials: set {TOKEN_ENV} instead")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError(
            f"{where}: {url!r} is not a memobuild cache URL (http://HOST[:PORT] or https://...)"
        )
    if parsed.query or parsed.fragment:
        raise InputError(f"{where}: a memobuild cache URL has no query or fragment")
    return url


def _memobuild(fields: dict[str, str], where: str) -> CacheOption:
    url = fields.pop("url", "")
    if not url:
        raise InputError(f"{where}: type=memobuild needs url=http://HOST:PORT")
    if fields:
        raise InputError(
            f"{where}: type=memobuild takes only url=, not {', '.join(f'{k}=' for k in fields)}"
        )
    return CacheOption(MEMOBUILD, _check_url(url, where))


# type -> parser of the remaining fields (``type`` removed)
_PARSERS: dict[str, Callable[[dict[str, str], str], CacheOption]] = {MEMOBUILD: _memobuild}


def parse_cache_option(text: str, where: str = "--cache-from") -> CacheOption:
    """Parse a ``--cache-from``/``--cache-to`` value; ``where`` names it in errors
    (InputError: a usage error, raised before anything runs)."""
    value = text.strip()
    if not value:
        raise InputError(f"{where}: empty value")
    if "://" in value.split(",", 1)[0] and "=" not in value.split("://", 1)[0]:
        return CacheOption(MEMOBUILD, _check_url(value, where))  # a bare URL
    fields = _fields(value, where)
    kind = fields.pop("type", "")
    parser = _PARSERS.get(kind)
    if parser is None:
        known = ", ".join(f"type={name}" for name in _PARSERS)
        said = f"unknown cache type {kind!r}" if kind else "no type= given"
        raise InputError(f"{where} {value!r}: {said} (supported: {known}, or a bare http(s) URL)")
    return parser(fields, where)


def _option(value: str | CacheOption | None, where: str) -> CacheOption | None:
    if value is None or isinstance(value, CacheOption):
        return value
    return parse_cache_option(value, where)


def remote_configured(
    cache_from: str | CacheOption | None,
    cache_to: str | CacheOption | None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Whether a build with these options talks to a remote cache at all."""
    env = os.environ if environ is None else environ
    return cache_from is not None or cache_to is not None or bool(env.get(URL_ENV, "").strip())


def open_build_cache(
    local: LocalStore,
    cache_from: str | CacheOption | None = None,
    cache_to: str | CacheOption | None = None,
    *,
    token: str | None = None,
    on_event: RemoteCacheEventCallback | None = None,
    environ: Mapping[str, str] | None = None,
) -> HybridCache | None:
    """The hybrid cache for a build's options, or None when no remote is configured (the
    build then uses ``local`` alone). ``--cache-from`` pulls, ``--cache-to`` pushes; with
    neither, ``$MEMOBUILD_REMOTE_URL`` does both. ``token`` defaults to
    ``$MEMOBUILD_REMOTE_TOKEN``. Raises InputError for a malformed value; never touches the
    network (the first lookup does)."""
    env = os.environ if environ is None else environ
    pull = _option(cache_from, "--cache-from")
    push = _option(cache_to, "--cache-to")
    if pull is None and push is None:
        shared = env.get(URL_ENV, "").strip()
        if not shared:
            return None
        pull = push = parse_cache_option(shared, URL_ENV)
    for option in (pull, push):
        if option is not None and option.type != MEMOBUILD:
            raise InputError(f"cache type {option.type!r} is not supported by this build")
    from memobuild.cache.hybrid import HybridCache

    return HybridCache.open(
        local,
        cache_from=pull.url if pull is not None else None,
        cache_to=push.url if push is not None else None,
        token=token,
        on_event=on_event,
        environ=env,
    )
