"""A build's registry client, made only when the build first needs a registry.

A build that finds every base image in the local store (a no-change rebuild) never talks to a
registry, and should not pay for getting ready to: ``RegistrySession`` holds what the client
will need (``--insecure-registry`` hosts; the CA bundle and the retry policy come from the
environment, see ``registry.py``) and makes the one ``RegistryClient`` of the build on first
call, importing the HTTP stack then. Pulls (``build/base.py``) and pushes
(``build/outputs.py``) share it, so a registry's TLS, authentication challenge and tokens are
found out once per build. ``close`` closes the client if there is one.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from memobuild.errors import InputError

if TYPE_CHECKING:
    from memobuild.oci.registry import RegistryClient

__all__ = ["RegistrySession", "check_registry_host"]

# host[:port] as an image reference names a registry: a DNS name or IPv4 address, or a
# bracketed IPv6 address, and an optional port (distribution/reference's domain grammar).
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?"
)


def check_registry_host(text: str, flag: str = "--insecure-registry") -> str:
    """``text`` if it is a registry ``host[:port]`` as image references name one
    (``localhost:5000``, ``registry.example.com``, ``[::1]:5000``); InputError otherwise."""
    if not _HOST.fullmatch(text):
        hint = ""
        if "://" in text:
            hint = " (without a scheme: the registry as image references name it)"
        raise InputError(
            f"{flag} {text!r}: expected HOST[:PORT], e.g. localhost:5000 or "
            f"registry.example.com{hint}"
        )
    return text


class RegistrySession:
    """The build's ``RegistryClient``, made on the first call (thread-safe) and closed by
    ``close``. ``insecure``: registries that may be spoken to over plain HTTP or unverified
    TLS; ``environ``: where ``MEMOBUILD_REGISTRY_CA`` and the retry settings are read."""

    def __init__(
        self, insecure: Sequence[str] = (), *, environ: Mapping[str, str] | None = None
    ) -> None:
        self.insecure = tuple(check_registry_host(host) for host in insecure)
        self._environ = environ
        self._client: RegistryClient | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def opened(self) -> bool:
        """Whether a client was made (whether the build needed a registry at all)."""
        return self._client is not None

    def __call__(self) -> RegistryClient:
        with self._lock:
            if self._closed:
                raise RuntimeError("the registry session is closed")
            if self._client is None:
                from memobuild.oci.registry import RegistryClient, RegistryOptions

                options = RegistryOptions.from_env(self._environ, insecure=self.insecure)
                self._client = RegistryClient(options)
            return self._client

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> RegistrySession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
