"""What ``--cache-from`` and ``--cache-to`` say, and the build's cache made from them.

The spelling is ``docker buildx build``'s: comma-separated ``key=value`` fields with a
``type``, and for a memobuild server a bare ``http(s)://`` URL as well:

- ``type=memobuild,url=http://cache:8080``: a ``memobuild server`` (``remote.py``);
- ``type=registry,ref=REF[,mode=max|min]``: a tag of a registry repository
  (``registry_cache.py``), reached with the build's registry client (``oci/session.py``:
  ``--insecure-registry``, the CA bundle, credentials from the Docker config). ``mode`` is for
  ``--cache-to``, as in BuildKit: ``max`` (the default) exports every step's entry, ``min``
  only those of the steps whose layers are in the image (the target stage and the stages it
  is built FROM).

``$MEMOBUILD_REMOTE_URL`` takes the same values and, when neither flag is given, serves as
both. Each type has one parser in ``_PARSERS``: a new backend adds its own parser there and its
remote in :func:`_open_remote`.

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
    from memobuild.cache.hybrid import CacheRemote, HybridCache
    from memobuild.cache.remote_events import RemoteCacheEventCallback
    from memobuild.cache.store import LocalStore
    from memobuild.oci.session import RegistrySession

__all__ = [
    "EXPORT_MODES",
    "MEMOBUILD",
    "REGISTRY",
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
REGISTRY = "registry"  # the type of a registry cache
EXPORT_MODES = ("max", "min")  # what --cache-to exports: every step, or the image's steps


@dataclass(frozen=True)
class CacheOption:
    """One parsed ``--cache-from``/``--cache-to`` value.

    ``type`` names the backend; ``url`` is where it is (a memobuild server's base URL, or a
    registry cache's reference, normalised as Docker does); ``attrs`` holds any further
    ``key=value`` fields a type accepts, in the order given.
    """

    type: str
    url: str
    attrs: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        extra = "".join(f",{key}={value}" for key, value in self.attrs)
        where = "ref" if self.type == REGISTRY else "url"
        return f"type={self.type},{where}={self.url}{extra}"

    @property
    def mode(self) -> str:
        """What a ``--cache-to`` exports: ``max`` (every step) or ``min`` (the image's)."""
        return dict(self.attrs).get("mode", "max")


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


def _registry(fields: dict[str, str], where: str) -> CacheOption:
    from memobuild.oci.reference import parse_reference  # plain parsing, no HTTP client

    ref = fields.pop("ref", "")
    if not ref:
        raise InputError(f"{where}: type=registry needs ref=REGISTRY/REPOSITORY:TAG")
    mode = fields.pop("mode", "max")
    if mode not in EXPORT_MODES:
        raise InputError(f"{where}: mode must be max or min, not {mode!r}")
    if fields:
        raise InputError(
            f"{where}: type=registry takes ref= and mode=, not {', '.join(f'{k}=' for k in fields)}"
        )
    try:
        reference = parse_reference(ref)
    except InputError as err:
        raise InputError(f"{where}: ref={ref}: {err}") from None
    if reference.digest is not None:
        raise InputError(f"{where}: ref={ref}: a cache ref is a tag, not a digest")
    return CacheOption(REGISTRY, str(reference), (("mode", mode),))


# type -> parser of the remaining fields (``type`` removed)
_PARSERS: dict[str, Callable[[dict[str, str], str], CacheOption]] = {
    MEMOBUILD: _memobuild,
    REGISTRY: _registry,
}


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
    registry: RegistrySession | None = None,
) -> HybridCache | None:
    """The hybrid cache for a build's options, or None when no remote is configured (the
    build then uses ``local`` alone). ``--cache-from`` pulls, ``--cache-to`` pushes; with
    neither, ``$MEMOBUILD_REMOTE_URL`` does both; one value for both is one remote (one
    client, one circuit breaker). ``token`` (a memobuild server's; default
    ``$MEMOBUILD_REMOTE_TOKEN``). ``registry``: the build's registry session, whose client a
    registry cache shares (default: a client of its own, configured from ``environ``). Raises
    InputError for a malformed value; never touches the network (the first lookup does)."""
    env = os.environ if environ is None else environ
    pull = _option(cache_from, "--cache-from")
    push = _option(cache_to, "--cache-to")
    if pull is None and push is None:
        shared = env.get(URL_ENV, "").strip()
        if not shared:
            return None
        pull = push = parse_cache_option(shared, URL_ENV)
    from memobuild.cache.hybrid import HybridCache

    mode = push.mode if push is not None else "max"
    if all(option is None or option.type == MEMOBUILD for option in (pull, push)):
        return HybridCache.open(
            local,
            cache_from=pull.url if pull is not None else None,
            cache_to=push.url if push is not None else None,
            token=token,
            on_event=on_event,
            environ=env,
        )
    pull_remote = _open_remote(pull, token, env, registry) if pull is not None else None
    if push is None:
        push_remote = None
    elif pull is not None and (push.type, push.url) == (pull.type, pull.url):
        push_remote = pull_remote  # one cache both ways: it lists what it pulled and pushed
    else:
        push_remote = _open_remote(push, token, env, registry)
    return HybridCache(
        local,
        pull_remote,
        pull=pull is not None,
        push=push is not None,
        push_remote=push_remote,
        on_event=on_event,
        export_mode=mode,
    )


def _open_remote(
    option: CacheOption,
    token: str | None,
    env: Mapping[str, str],
    registry: RegistrySession | None,
) -> CacheRemote:
    """The client of one remote cache (no network yet)."""
    if option.type == REGISTRY:
        from memobuild.cache.registry_cache import RegistryCache
        from memobuild.oci.registry import RegistryOptions

        if registry is not None:
            return RegistryCache(option.url, client=registry())
        return RegistryCache(option.url, options=RegistryOptions.from_env(env))
    from memobuild.cache.remote import RemoteCache

    return RemoteCache(option.url, token, environ=env)
