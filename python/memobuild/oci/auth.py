"""Registry credentials: where they come from, and how a registry is made to accept them.

Where (first found wins), for a registry host such as ``ghcr.io`` or ``localhost:5000``:

1. ``MEMOBUILD_REGISTRY_TOKEN`` (a registry bearer token, sent as is), or
   ``MEMOBUILD_REGISTRY_USER`` with ``MEMOBUILD_REGISTRY_PASSWORD``, for the hosts listed in
   ``MEMOBUILD_REGISTRY_HOST`` (comma-separated host[:port]) and no others. That list is
   required: credentials set without it are an InputError, never sent to whatever registry a
   build happens to talk to (a public base image on Docker Hub, a registry named in a
   Dockerfile someone else wrote).
2. The Docker config file, ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``, read as
   the docker CLI reads it: ``credHelpers[host]`` names a ``docker-credential-<helper>`` to ask;
   else ``credsStore`` names one for every registry; else ``auths[host]`` holds ``auth``
   (base64 ``user:password``), or ``username``/``password``, ``identitytoken`` (an OAuth2
   refresh token) or ``registrytoken``. Docker Hub is ``https://index.docker.io/v1/`` there.
3. None: anonymous, which is all public images need.

How (``Authenticator``): a registry that wants credentials answers 401 with a
``WWW-Authenticate`` challenge. ``Basic`` means send the user and password with each request.
``Bearer realm=...,service=...,scope=...`` means ask the realm for a token for the scopes
(``repository:<path>:pull`` or ``pull,push``), with the credentials when there are any (an
anonymous token otherwise, as Docker Hub gives for public images), and send that token. Tokens
are cached per registry and scope set until they expire, and the challenge per registry, so
after the first 401 a new scope costs one token request and no further 401.

Secrets never reach a log or an error message: messages name the *source* of the credentials
(``MEMOBUILD_REGISTRY_PASSWORD``, the config file, the helper), and ``Credentials`` leaves its
secrets out of its repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from memobuild.errors import InputError, NetworkError, RegistryAuthError, RegistryError
from memobuild.logging import logger
from memobuild.oci.reference import DOCKER_HUB, DOCKER_HUB_API

__all__ = [
    "ENV_HOST",
    "ENV_PASSWORD",
    "ENV_TOKEN",
    "ENV_USER",
    "Authenticator",
    "Challenge",
    "Credentials",
    "credentials_from_docker_config",
    "credentials_from_env",
    "docker_config_path",
    "parse_challenges",
    "resolve_credentials",
]

ENV_USER = "MEMOBUILD_REGISTRY_USER"
ENV_PASSWORD = "MEMOBUILD_REGISTRY_PASSWORD"  # noqa: S105 - a variable name, not a password
ENV_TOKEN = "MEMOBUILD_REGISTRY_TOKEN"  # noqa: S105 - a variable name, not a token
ENV_HOST = "MEMOBUILD_REGISTRY_HOST"
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
# Tokens without expires_in live 60 s (the token spec's default); renew a little early.
DEFAULT_TOKEN_LIFETIME = 60.0
TOKEN_MARGIN = 10.0
HELPER_TIMEOUT = 60.0
MAX_TOKEN_RESPONSE = 1 << 20
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HUB_HOSTS = frozenset({DOCKER_HUB, "index.docker.io", DOCKER_HUB_API})


@dataclass(frozen=True)
class Credentials:
    """What to authenticate with, and where it came from (for messages: never the secret)."""

    source: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)  # OAuth2 refresh token
    registry_token: str | None = field(default=None, repr=False)  # bearer token, sent as is

    @property
    def has_basic(self) -> bool:
        return self.username is not None and self.password is not None

    def basic_header(self) -> str:
        if self.username is None or self.password is None:
            raise RegistryAuthError(f"{self.source}: no user name and password to send")
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


# --- where credentials come from ----------------------------------------------------------------


def _canonical_host(host: str) -> str:
    """A registry as docker config keys name it, reduced to host[:port] (scheme, path and case
    of the host dropped; Docker Hub's many names made one)."""
    text = host.strip()
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
    text = text.split("/", 1)[0].lower()
    return DOCKER_HUB if text in _HUB_HOSTS else text


def credentials_from_env(
    registry: str, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """The ``MEMOBUILD_REGISTRY_*`` credentials, if set and meant for ``registry`` (one of the
    hosts ``MEMOBUILD_REGISTRY_HOST`` lists). InputError when they are set without that list,
    or a user without a password."""
    env = os.environ if environ is None else environ
    token = env.get(ENV_TOKEN)
    user, password = env.get(ENV_USER), env.get(ENV_PASSWORD)
    if not token and not user and password is None:
        return None
    hosts = {_canonical_host(h) for h in env.get(ENV_HOST, "").split(",") if h.strip()}
    if not hosts:
        given = ENV_TOKEN if token else ENV_USER if user else ENV_PASSWORD
        raise InputError(
            f"{given} is set but {ENV_HOST} is not: set {ENV_HOST} to the registries the "
            f"credentials are for (comma-separated host[:port], e.g. {ENV_HOST}={registry}); "
            "MemoBuild sends them to no registry you did not name"
        )
    if _canonical_host(registry) not in hosts:
        return None
    if token:
        return Credentials(source=ENV_TOKEN, registry_token=token)
    if user and password is not None:
        return Credentials(source=f"{ENV_USER}/{ENV_PASSWORD}", username=user, password=password)
    if user or password:
        missing = ENV_PASSWORD if user else ENV_USER
        raise InputError(f"{ENV_USER} and {ENV_PASSWORD} go together: {missing} is not set")
    return None


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
    env = os.environ if environ is None else environ
    directory = env.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".docker" / "config.json"


def _read_docker_config(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise InputError(f"{path}: cannot read the Docker config: {err.strerror or err}") from None
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise InputError(f"{path}: the Docker config is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise InputError(f"{path}: the Docker config is not a JSON object")
    return doc


def _find_entry(mapping: object, host: str) -> Any:
    """The value whose key names ``host`` (keys may carry a scheme or a path, as docker login
    and older docker versions wrote them)."""
    if not isinstance(mapping, dict):
        return None
    if host == DOCKER_HUB and DOCKER_HUB_CONFIG_KEY in mapping:
        return mapping[DOCKER_HUB_CONFIG_KEY]
    if host in mapping:
        return mapping[host]
    for key, value in mapping.items():
        if isinstance(key, str) and _canonical_host(key) == host:
            return value
    return None


def _from_auths_entry(entry: dict[str, Any], source: str) -> Credentials | None:
    def text(key: str) -> str | None:
        value = entry.get(key)
        return value if isinstance(value, str) and value else None

    username, password = text("username"), text("password")
    encoded = text("auth")
    if encoded is not None:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise InputError(f"{source}: 'auth' is not base64 of user:password") from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise InputError(f"{source}: 'auth' is not base64 of user:password")
    identity, registry_token = text("identitytoken"), text("registrytoken")
    if registry_token is not None:
        return Credentials(source=source, registry_token=registry_token)
    if identity is not None:
        return Credentials(source=source, username=username, identity_token=identity)
    if username and password is not None:
        return Credentials(source=source, username=username, password=password)
    return None


def _run_helper(helper: str, server: str, config: Path) -> Credentials | None:
    """Ask ``docker-credential-<helper> get`` for ``server``'s credentials (the credential
    helper protocol: the server URL on stdin, JSON out)."""
    if not _HELPER_NAME.fullmatch(helper):
        raise InputError(f"{config}: {helper!r} is not a credential helper name")
    program = f"docker-credential-{helper}"
    executable = shutil.which(program)
    if executable is None:
        raise RegistryAuthError(
            f"{config} says to get the credentials for {server} from {program}, which is not "
            "installed (on PATH)"
        )
    try:
        done = subprocess.run(  # noqa: S603 - a helper the user's config names, no shell
            [executable, "get"],
            input=server.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RegistryAuthError(f"{program} get failed: {err}") from None
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        # The protocol's "no credentials" answer; anything else is a helper failure. Only the
        # helper's error text is shown, never its stdout, which could hold a secret.
        message = (out.strip() or done.stderr.decode("utf-8", "replace").strip())[:200]
        if "credentials not found" in message.lower():
            return None
        raise RegistryAuthError(f"{program} get failed with exit code {done.returncode}: {message}")
    try:
        doc = json.loads(out)
    except ValueError:
        raise RegistryAuthError(f"{program} get did not answer with JSON") from None
    if not isinstance(doc, dict):
        raise RegistryAuthError(f"{program} get did not answer with a JSON object")
    username, secret = doc.get("Username"), doc.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        return None
    if username == "<token>":  # the protocol's marker for an identity token
        return Credentials(source=program, identity_token=secret)
    return Credentials(source=program, username=username, password=secret)


def credentials_from_docker_config(
    registry: str, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """``registry``'s credentials from the Docker config file (helpers included), or None."""
    path = docker_config_path(environ)
    doc = _read_docker_config(path)
    if doc is None:
        return None
    host = _canonical_host(registry)
    server = DOCKER_HUB_CONFIG_KEY if host == DOCKER_HUB else host
    helper = _find_entry(doc.get("credHelpers"), host)
    if isinstance(helper, str) and helper:
        return _run_helper(helper, server, path)
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        found = _run_helper(store, server, path)
        if found is not None:
            return found
    entry = _find_entry(doc.get("auths"), host)
    if isinstance(entry, dict):
        return _from_auths_entry(entry, f"{path} (auths {server})")
    return None


def resolve_credentials(
    registry: str, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """The credentials for ``registry`` (host[:port]) by the order in the module docstring."""
    return credentials_from_env(registry, environ) or credentials_from_docker_config(
        registry, environ
    )


# --- challenges ---------------------------------------------------------------------------------

_SCHEME = re.compile(r"[ \t,]*([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*)")
_PARAM = re.compile(r'[ \t]*([A-Za-z0-9_.-]+)[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|[^\s,"]*)[ \t]*,?')


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: its scheme (lower case) and parameters."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        return dict(self.params).get(name.lower())


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (RFC 9110 section 11.6.1): challenges, each a scheme
    followed by comma-separated ``name=value`` or ``name="quoted"`` parameters. A scheme is
    told from a parameter by what follows it: a parameter name is followed by ``=``."""
    out: list[Challenge] = []
    pos = 0
    while pos < len(header):
        scheme = _SCHEME.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: list[tuple[str, str]] = []
        while (param := _PARAM.match(header, pos)) is not None:
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params.append((param.group(1).lower(), value))
            pos = param.end()
        out.append(Challenge(scheme.group(1).lower(), tuple(params)))
        # Skip what this parser does not read (a token68 credential) up to the next challenge.
        while pos < len(header) and header[pos] not in " \t,":
            pos += 1
    return out


# --- the authenticator ---------------------------------------------------------------------------


@dataclass
class _Token:
    header: str
    expires: float


class Authenticator:
    """Authorization headers for registry requests, shared by every thread of a client.

    ``credentials_for(host)`` finds a registry's credentials (default: ``resolve_credentials``),
    asked at most once per host. ``send`` is how token requests go out: the registry client's,
    so TLS and insecure settings apply to the token service too.
    """

    def __init__(
        self,
        send: Callable[[httpx.Request], httpx.Response],
        credentials_for: Callable[[str], Credentials | None] | None = None,
    ) -> None:
        self._send = send
        self._credentials_for = credentials_for or resolve_credentials
        self._lock = threading.Lock()
        self._credentials: dict[str, Credentials | None] = {}
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, frozenset[str]], _Token] = {}
        self._fetching: dict[tuple[str, frozenset[str]], threading.Lock] = {}

    def credentials(self, registry: str) -> Credentials | None:
        with self._lock:
            if registry not in self._credentials:
                self._credentials[registry] = self._credentials_for(registry)
            return self._credentials[registry]

    def knows(self, registry: str) -> bool:
        """Whether ``registry``'s challenge (or its lack of one) has been seen."""
        with self._lock:
            return registry in self._challenges

    def learn(self, registry: str, response: httpx.Response) -> None:
        """Remember the challenge of a 401 ``registry`` answered (to a ``GET /v2/``), so that
        requests to it carry credentials from the start."""
        challenges = parse_challenges(response.headers.get("www-authenticate", ""))
        by_scheme = {c.scheme: c for c in challenges}
        challenge = by_scheme.get("bearer") or by_scheme.get("basic")
        if challenge is not None:
            with self._lock:
                self._challenges[registry] = challenge

    def no_challenge(self, registry: str) -> None:
        """``registry`` answered without asking for credentials."""
        with self._lock:
            self._challenges.setdefault(registry, Challenge("none"))

    def header(self, registry: str, scopes: Iterable[str]) -> str | None:
        """The Authorization header for a request needing ``scopes``, fetching a token if the
        registry's challenge is known to ask for one; None when none is needed (yet)."""
        creds = self.credentials(registry)
        if creds is not None and creds.registry_token is not None:
            return f"Bearer {creds.registry_token}"
        with self._lock:
            challenge = self._challenges.get(registry)
        if challenge is None or challenge.scheme == "none":
            return None
        if challenge.scheme == "basic":
            return creds.basic_header() if creds is not None and creds.has_basic else None
        if challenge.scheme == "bearer":
            return self._bearer(registry, challenge, frozenset(scopes), creds)
        return None

    def challenged(self, registry: str, scopes: Iterable[str], response: httpx.Response) -> str:
        """A 401 from ``registry``: learn its challenge and return the header to retry with.
        RegistryAuthError when it cannot be met (no credentials, refused, unknown scheme)."""
        wanted = frozenset(scopes)
        creds = self.credentials(registry)
        challenges = parse_challenges(response.headers.get("www-authenticate", ""))
        by_scheme = {c.scheme: c for c in challenges}
        challenge = by_scheme.get("bearer") or by_scheme.get("basic")
        with self._lock:
            if challenge is not None:
                self._challenges[registry] = challenge
            for key in [k for k in self._tokens if k[0] == registry and k[1] == wanted]:
                del self._tokens[key]  # the token just sent was not good enough
        if challenge is None:
            raise RegistryAuthError(
                f"{registry}: the registry asks for authentication with a scheme MemoBuild does "
                f"not speak ({response.headers.get('www-authenticate', 'no challenge')!r})",
                status=401,
            )
        if creds is not None and creds.registry_token is not None:
            raise self._refused(registry, creds, wanted)
        if challenge.scheme == "basic":
            if creds is None or not creds.has_basic:
                raise self._needs_credentials(registry, creds)
            return creds.basic_header()
        return self._bearer(registry, challenge, wanted, creds)

    def refused(self, registry: str, scopes: Iterable[str]) -> RegistryAuthError:
        """The error for a request that was refused again with the header ``challenged`` gave."""
        creds = self.credentials(registry)
        if creds is None:
            return self._needs_credentials(registry, creds)
        return self._refused(registry, creds, scopes)

    def _bearer(
        self,
        registry: str,
        challenge: Challenge,
        scopes: frozenset[str],
        creds: Credentials | None,
    ) -> str:
        key = (registry, scopes)
        with self._lock:
            cached = self._tokens.get(key)
            fetching = self._fetching.setdefault(key, threading.Lock())
        if cached is not None and cached.expires > time.monotonic():
            return cached.header
        with fetching:  # threads needing the same token wait for one fetch, then share it
            with self._lock:
                cached = self._tokens.get(key)
            if cached is not None and cached.expires > time.monotonic():
                return cached.header
            return self._new_token(registry, challenge, key, creds)

    def _new_token(
        self,
        registry: str,
        challenge: Challenge,
        key: tuple[str, frozenset[str]],
        creds: Credentials | None,
    ) -> str:
        scopes = key[1]
        now = time.monotonic()
        realm = challenge.get("realm")
        if not realm:
            raise RegistryAuthError(f"{registry}: Bearer challenge without a realm", status=401)
        service = challenge.get("service")
        token, lifetime = self._fetch_token(registry, realm, service, scopes, creds)
        header = f"Bearer {token}"
        with self._lock:
            self._tokens[key] = _Token(header, now + max(lifetime - TOKEN_MARGIN, 1.0))
        return header

    def _fetch_token(
        self,
        registry: str,
        realm: str,
        service: str | None,
        scopes: frozenset[str],
        creds: Credentials | None,
    ) -> tuple[str, float]:
        params: list[tuple[str, str | int | float | bool | None]] = []
        if service:
            params.append(("service", service))
        params += [("scope", scope) for scope in sorted(scopes)]
        if creds is not None and creds.identity_token is not None:
            form = {key: str(value) for key, value in params}
            form.update(
                grant_type="refresh_token",
                refresh_token=creds.identity_token,
                client_id="memobuild",
            )
            if len(scopes) > 1:
                form["scope"] = " ".join(sorted(scopes))
            request = httpx.Request("POST", realm, data=form)
        else:
            headers = {}
            if creds is not None and creds.has_basic:
                headers["Authorization"] = creds.basic_header()
            request = httpx.Request("GET", realm, params=params, headers=headers)
        try:
            response = self._send(request)
        except httpx.HTTPError as err:
            raise NetworkError(f"{registry}: token service {realm}: {err}") from None
        if response.status_code in (401, 403):
            if creds is None:
                raise self._needs_credentials(registry, creds)
            raise self._refused(registry, creds, scopes)
        if response.status_code != 200:
            raise RegistryError(
                f"{registry}: token service {realm} answered HTTP {response.status_code}",
                status=response.status_code,
                retryable=response.status_code in (429, 500, 502, 503, 504),
            )
        try:
            doc = json.loads(response.content[:MAX_TOKEN_RESPONSE])
        except ValueError:
            raise RegistryError(f"{registry}: token service {realm} did not answer JSON") from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{registry}: token service {realm} gave no token")
        lifetime = doc.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        logger.debug(f"{registry}: token for {' '.join(sorted(scopes))} from {realm}")
        return token, float(lifetime)

    @staticmethod
    def _needs_credentials(registry: str, creds: Credentials | None) -> RegistryAuthError:
        return RegistryAuthError(
            f"{registry}: the registry requires authentication and there are no credentials "
            f"for it: run docker login {registry}, or set {ENV_USER} and {ENV_PASSWORD} "
            f"(or {ENV_TOKEN}) with {ENV_HOST}={registry}",
            status=401,
        )

    @staticmethod
    def _refused(registry: str, creds: Credentials, scopes: Iterable[str]) -> RegistryAuthError:
        what = ", ".join(sorted(scopes)) or "access"
        who = f" as {creds.username!r}" if creds.username else ""
        return RegistryAuthError(
            f"{registry}: the registry refused the credentials from {creds.source}{who} "
            f"for {what} (wrong user name or password, or no access)",
            status=401,
        )
