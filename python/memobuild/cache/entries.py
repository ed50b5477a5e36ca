"""Action entries and named records: their schema and their msgpack form on disk.

An action entry is keyed by its cache key, not by its content, so a flipped bit in one could not
be caught by looking the entry up. Every stored entry and record is therefore wrapped in an
*envelope*: a msgpack map holding the body (itself msgpack) and the BLAKE3 digest of the body.
Reading checks the digest in Rust (``memobuild.verify``) before the body is unpacked, then
validates every field, so a torn, truncated or bit-flipped file is always refused as a whole and
never half-believed. The envelope names its type ("action", "record") and format version; a
format this MemoBuild does not know is reported as unsupported rather than corrupt, so an older
MemoBuild sharing a cache dir with a newer one skips the newer entries without destroying them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]  # msgpack ships no type information

from memobuild.errors import (
    CASIntegrityError,
    CorruptEntryError,
    InputError,
    InvalidDigestError,
    UnsupportedEntryError,
)
from memobuild.verify import digest_bytes, parse_digest, verify_bytes

__all__ = [
    "ENVELOPE_FORMAT",
    "MAX_ENTRY_BYTES",
    "OCI_LAYER_GZIP",
    "ActionEntry",
    "LayerRef",
    "decode_action",
    "decode_named_record",
    "decode_record",
    "encode_action",
    "encode_record",
]

ENVELOPE_FORMAT = "memobuild.envelope.v1"
ACTION_SCHEMA = 1
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# An entry holds digests and a few config fields; a record holds one build plan. Anything larger
# than this on disk is not something MemoBuild wrote, and unpacking it would only waste memory.
MAX_ENTRY_BYTES = 64 << 20


def _check_digest(value: object, algorithm: str, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str digest, not {type(value).__name__}")
    algo, _ = parse_digest(value)
    if algo != algorithm:
        raise InvalidDigestError(value, f"{what} must be a {algorithm} digest")
    return value


def _check_number(value: object, what: str, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise ValueError(f"{what} must be a finite number >= {minimum}, not {value!r}")
    return number


@dataclass(frozen=True)
class LayerRef:
    """One layer a step produced, as the image manifest will list it."""

    digest: str  # "sha256:<hex>" of the compressed blob
    diff_id: str  # "sha256:<hex>" of the uncompressed tar
    size: int  # bytes of the compressed blob
    media_type: str = OCI_LAYER_GZIP

    def __post_init__(self) -> None:
        _check_digest(self.digest, "sha256", "layer digest")
        _check_digest(self.diff_id, "sha256", "layer diff_id")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"layer size must be an int >= 0, not {self.size!r}")
        if not isinstance(self.media_type, str) or not self.media_type:
            raise ValueError(f"layer media_type must be a non-empty str, not {self.media_type!r}")


@dataclass(frozen=True)
class ActionEntry:
    """The cached result of one build step, stored under the step's cache key.

    ``config`` holds the image-config changes the step made (Env, Cmd, WorkingDir, ...). It must
    be msgpack-able with str keys; use lists rather than tuples inside it, since msgpack reads
    every array back as a list. ``preimage`` is what the key was computed from, so that
    ``memobuild explain`` can say which input changed.
    """

    key: str  # "blake3:<hex>"
    layers: tuple[LayerRef, ...]
    config: dict[str, Any]
    preimage: tuple[tuple[str, str], ...]
    created: float  # unix time
    duration: float = 0.0  # seconds the step took to run
    schema: int = ACTION_SCHEMA

    def __post_init__(self) -> None:
        _check_digest(self.key, "blake3", "action key")
        if self.schema != ACTION_SCHEMA:
            raise ValueError(f"action entry schema must be {ACTION_SCHEMA}, not {self.schema!r}")
        layers = tuple(self.layers)
        for layer in layers:
            if not isinstance(layer, LayerRef):
                raise TypeError(f"layers must be LayerRef, not {type(layer).__name__}")
        if not isinstance(self.config, dict) or not all(isinstance(k, str) for k in self.config):
            raise TypeError("config must be a dict with str keys")
        preimage = tuple(tuple(pair) for pair in self.preimage)
        for pair in preimage:
            if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
                raise TypeError(f"preimage items must be (name, value) str pairs, not {pair!r}")
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "preimage", preimage)
        object.__setattr__(self, "created", _check_number(self.created, "created"))
        object.__setattr__(self, "duration", _check_number(self.duration, "duration", minimum=0.0))

    @property
    def layer_bytes(self) -> int:
        """Total size of the entry's layer blobs."""
        return sum(layer.size for layer in self.layers)


def _pack(value: Any, what: str) -> bytes:
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as err:
        raise InputError(f"{what}: value cannot be stored as msgpack: {err}") from err
    return packed


def _envelope(kind: str, body: bytes) -> bytes:
    return _pack(
        {
            "format": ENVELOPE_FORMAT,
            "type": kind,
            "blake3": digest_bytes(body, "blake3"),
            "body": body,
        },
        kind,
    )


def _unpack(data: bytes, where: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as err:  # msgpack raises ValueError, FormatError, StackError, ExtraData...
        raise CorruptEntryError(where, f"not valid msgpack ({type(err).__name__}: {err})") from err


def _open_envelope(data: bytes, kind: str, where: str) -> Any:
    """Check the envelope's shape and checksum, then return the unpacked body."""
    if len(data) > MAX_ENTRY_BYTES:
        raise CorruptEntryError(
            where, f"{len(data)} bytes is larger than any entry MemoBuild writes"
        )
    outer = _unpack(data, where)
    if not isinstance(outer, dict):
        raise CorruptEntryError(where, "not a MemoBuild envelope")
    fmt = outer.get("format")
    if fmt != ENVELOPE_FORMAT:
        if isinstance(fmt, str) and fmt.startswith("memobuild.envelope."):
            raise UnsupportedEntryError(where, fmt, ENVELOPE_FORMAT)
        raise CorruptEntryError(where, "not a MemoBuild envelope")
    if outer.get("type") != kind:
        raise CorruptEntryError(where, f"holds a {outer.get('type')!r}, expected a {kind!r}")
    body, checksum = outer.get("body"), outer.get("blake3")
    if not isinstance(body, bytes) or not isinstance(checksum, str):
        raise CorruptEntryError(where, "envelope lacks its body or checksum")
    try:
        verify_bytes(body, checksum)
    except CASIntegrityError as err:
        raise CorruptEntryError(
            where, f"checksum mismatch: expected {err.expected}, got {err.actual}"
        ) from err
    except InvalidDigestError as err:
        raise CorruptEntryError(where, f"bad checksum field: {err}") from err
    return _unpack(body, where)


def encode_action(entry: ActionEntry) -> bytes:
    """The bytes stored for ``entry``: raises InputError if its config is not msgpack-able."""
    body = {
        "schema": entry.schema,
        "key": entry.key,
        "layers": [
            {
                "digest": layer.digest,
                "diff_id": layer.diff_id,
                "size": layer.size,
                "media_type": layer.media_type,
            }
            for layer in entry.layers
        ],
        "config": entry.config,
        "preimage": [list(pair) for pair in entry.preimage],
        "created": entry.created,
        "duration": entry.duration,
    }
    return _envelope("action", _pack(body, f"action entry {entry.key}"))


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CorruptEntryError(where, f"field {name!r} is missing or has the wrong type")
    return value


def decode_action(
    data: bytes, where: str | os.PathLike[str], key: str | None = None
) -> ActionEntry:
    """Read an action entry from its stored bytes, validating every field.

    ``key``, when given, is the key the entry was looked up under; an entry holding another key
    is refused (a file copied or renamed into the wrong place must not answer for that key).
    Raises CorruptEntryError naming ``where``, or UnsupportedEntryError.
    """
    where = os.fspath(where)
    body = _open_envelope(data, "action", where)
    if not isinstance(body, dict):
        raise CorruptEntryError(where, "body is not a map")
    schema = body.get("schema")
    if schema != ACTION_SCHEMA:
        if isinstance(schema, int) and not isinstance(schema, bool):
            raise UnsupportedEntryError(where, f"action schema {schema}", f"schema {ACTION_SCHEMA}")
        raise CorruptEntryError(where, "field 'schema' is missing or has the wrong type")
    raw_layers = _field(body, "layers", list, where)
    preimage = _field(body, "preimage", list, where)
    try:
        layers = tuple(
            LayerRef(
                digest=item["digest"],
                diff_id=item["diff_id"],
                size=item["size"],
                media_type=item["media_type"],
            )
            for item in raw_layers
        )
        entry = ActionEntry(
            key=_field(body, "key", str, where),
            layers=layers,
            config=_field(body, "config", dict, where),
            preimage=tuple(tuple(pair) for pair in preimage),
            created=_field(body, "created", (int, float), where),
            duration=_field(body, "duration", (int, float), where),
        )
    except (TypeError, ValueError, KeyError) as err:
        # KeyError: a layer map lacks a field; TypeError/ValueError: ActionEntry's own checks.
        reason = f"missing layer field {err}" if isinstance(err, KeyError) else str(err)
        raise CorruptEntryError(where, reason) from err
    if key is not None and entry.key != key:
        raise CorruptEntryError(where, f"holds the entry for {entry.key}, not {key}")
    return entry


def encode_record(kind: str, name: str, value: Any) -> bytes:
    """The bytes stored for a named record: raises InputError if ``value`` is not msgpack-able."""
    body = _pack({"kind": kind, "name": name, "value": value}, f"record {kind}/{name!r}")
    return _envelope("record", body)


def decode_named_record(data: bytes, where: str | os.PathLike[str], kind: str) -> tuple[str, Any]:
    """(name, value) of a stored record of ``kind``, for callers that list records rather than
    look one up by name; refuses a record of another kind."""
    where = os.fspath(where)
    body = _open_envelope(data, "record", where)
    if not isinstance(body, dict) or "value" not in body:
        raise CorruptEntryError(where, "record body is not a map with a value")
    name = body.get("name")
    if body.get("kind") != kind or not isinstance(name, str):
        raise CorruptEntryError(
            where, f"holds record {body.get('kind')!r}/{name!r}, not a {kind!r} record"
        )
    return name, body["value"]


def decode_record(data: bytes, where: str | os.PathLike[str], kind: str, name: str) -> Any:
    """The value of a stored record; refuses a record filed under another kind or name."""
    where = os.fspath(where)
    body = _open_envelope(data, "record", where)
    if not isinstance(body, dict) or "value" not in body:
        raise CorruptEntryError(where, "record body is not a map with a value")
    if body.get("kind") != kind or body.get("name") != name:
        raise CorruptEntryError(
            where, f"holds record {body.get('kind')!r}/{body.get('name')!r}, not {kind!r}/{name!r}"
        )
    return body["value"]
