"""Image references as Docker reads them: ``alpine`` is ``docker.io/library/alpine:latest``.

The grammar and the normalisation are distribution/reference's (``ParseNormalizedNamed``), the
code every docker, containerd and BuildKit client shares:

- ``[domain/]path[:tag][@digest]``; the first component is a registry domain only if it contains
  ``.`` or ``:``, is ``localhost``, or has an upper-case letter (``myhost/app`` is the Docker Hub
  repository ``myhost/app``; ``myhost:5000/app`` and ``localhost/app`` are registries);
- no domain means Docker Hub (``docker.io``, also spelled ``index.docker.io``), where a
  one-component path is an official image under ``library/``;
- the path is lower case, ``/``-separated components of ``[a-z0-9]`` joined by ``.``, ``_``,
  ``__`` or dashes; the whole name (domain included) is at most 255 characters;
- a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; no tag and no digest means ``latest``;
- with both a tag and a digest the digest decides what is pulled (the tag is informational).

MemoBuild's blob store is addressed by sha256, so a digest in a reference must be sha256.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memobuild.errors import InputError

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_API",
    "MAX_NAME_LENGTH",
    "Reference",
    "parse_reference",
]

DOCKER_HUB = "docker.io"
# Where Docker Hub's Distribution API answers: docker.io itself only redirects.
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
MAX_NAME_LENGTH = 255

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_HEX64 = re.compile(r"[a-f0-9]{64}")

_EXAMPLES = "e.g. alpine, alpine:3.20, ghcr.io/org/app:1.0 or localhost:5000/app@sha256:<64 hex>"


def _invalid(text: str, reason: str) -> InputError:
    return InputError(f"invalid image reference {text!r}: {reason} ({_EXAMPLES})")


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised image reference.

    ``domain`` is the registry as named (``docker.io`` for Docker Hub, ``localhost:5000``,
    ``[::1]:5000``); ``path`` the repository inside it (``library/alpine``). ``tag`` and
    ``digest`` are None when absent; :func:`parse_reference` fills in ``latest`` when both are.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        if not _DOMAIN.fullmatch(self.domain):
            raise _invalid(str(self), f"{self.domain!r} is not a registry host[:port]")
        if not _PATH.fullmatch(self.path):
            raise _invalid(str(self), f"{self.path!r} is not a lower-case repository path")
        if len(self.name) > MAX_NAME_LENGTH:
            raise _invalid(str(self), f"the name is longer than {MAX_NAME_LENGTH} characters")
        if self.tag is not None and not _TAG.fullmatch(self.tag):
            raise _invalid(str(self), f"{self.tag!r} is not a tag")
        if self.digest is not None and not _SHA256.fullmatch(self.digest):
            raise _invalid(str(self), f"{self.digest!r} is not a sha256 digest")

    @property
    def name(self) -> str:
        """``domain/path``: the repository's full name (``docker.io/library/alpine``)."""
        return f"{self.domain}/{self.path}"

    @property
    def registry(self) -> str:
        """The host[:port] whose Distribution API serves this repository (Docker Hub's API
        host for ``docker.io``)."""
        return DOCKER_HUB_API if self.domain == DOCKER_HUB else self.domain

    @property
    def is_docker_hub(self) -> bool:
        return self.domain == DOCKER_HUB

    @property
    def identifier(self) -> str:
        """What a manifest request names: the digest when there is one, else the tag."""
        if self.digest is not None:
            return self.digest
        return self.tag if self.tag is not None else "latest"

    @property
    def familiar(self) -> str:
        """The short spelling docker prints and MemoBuild's image store uses as a name
        (``alpine:latest``, ``user/app:1``, ``ghcr.io/org/app@sha256:...``)."""
        domain = "" if self.is_docker_hub else self.domain + "/"
        path = self.path
        if self.is_docker_hub and path.startswith("library/") and path.count("/") == 1:
            path = path[len("library/") :]
        return domain + path + self._suffix()

    def _suffix(self) -> str:
        out = f":{self.tag}" if self.tag is not None else ""
        return out + (f"@{self.digest}" if self.digest is not None else "")

    def __str__(self) -> str:
        return self.name + self._suffix()

    def with_digest(self, digest: str) -> Reference:
        """This repository and tag, pinned to ``digest``."""
        return Reference(self.domain, self.path, self.tag, digest)

    def with_tag(self, tag: str) -> Reference:
        """This repository at ``tag`` (any digest dropped)."""
        return Reference(self.domain, self.path, tag, None)

    def scope(self, actions: str = "pull") -> str:
        """The token scope for ``actions`` (``pull``, ``pull,push``) on this repository."""
        return f"repository:{self.path}:{actions}"


def _split_domain(text: str) -> tuple[str, str]:
    """(domain, remainder) by Docker's rule; the domain is normalised for Docker Hub."""
    head, slash, rest = text.partition("/")
    if slash and ("." in head or ":" in head or head == "localhost" or head.lower() != head):
        domain, remainder = head, rest
    else:
        domain, remainder = DOCKER_HUB, text
    if domain in _HUB_ALIASES:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in remainder:
        remainder = f"library/{remainder}"
    return domain, remainder


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse ``text`` as docker does; InputError saying what is wrong with an invalid one.

    With ``default_tag`` (the default), a reference with neither tag nor digest gets ``latest``.
    """
    if not isinstance(text, str) or not text:
        raise _invalid(str(text), "it is empty")
    if _HEX64.fullmatch(text):
        raise _invalid(text, "a 64-hex string is an image ID, not a repository name")
    if text != text.strip() or any(c.isspace() for c in text):
        raise _invalid(text, "it contains white space")
    domain, remainder = _split_domain(text)
    path_and_tag, at, digest = remainder.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise _invalid(text, f"{digest!r} is not a digest (algorithm:hex)")
    if at and not _SHA256.fullmatch(digest):
        raise _invalid(text, f"{digest!r}: MemoBuild pulls by sha256 digests only")
    path, tag = path_and_tag, None
    colon = path_and_tag.rfind(":")
    if colon > path_and_tag.rfind("/"):
        path, tag = path_and_tag[:colon], path_and_tag[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _invalid(text, f"{tag!r} is not a tag (up to 128 letters, digits, '_', '.', '-')")
    if path.lower() != path:
        raise _invalid(text, "repository name must be lowercase")
    if not _PATH.fullmatch(path):
        raise _invalid(text, f"{path!r} is not a repository path")
    if not _DOMAIN.fullmatch(domain):
        raise _invalid(text, f"{domain!r} is not a registry host[:port]")
    if len(f"{domain}/{path}") > MAX_NAME_LENGTH:
        raise _invalid(text, f"repository name must not be more than {MAX_NAME_LENGTH} characters")
    if tag is None and not at and default_tag:
        tag = "latest"
    return Reference(domain, path, tag, digest if at else None)
