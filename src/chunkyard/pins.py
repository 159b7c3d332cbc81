"""Reference URIs and pins: what a reference version records about each source object.

A *pin* is what lets a later reader tell "the bytes that were registered" from "whatever
the URI holds now": the object's size, its ETag, its version id where the store keeps
versions (S3 VersionId, GCS generation, Azure versionId) and its last-modified time.
This module is pure (no I/O): parsing and normalising URIs, the allow-list rule, pin ids,
the drift rule and the pin digest of an unhashed reference version (FORMAT.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import blake3

from .errors import InvalidReference, ReferenceDrifted, ReferenceNotAllowed

STORE_SCHEMES = ("s3", "gs", "az")
HTTP_SCHEMES = ("http", "https")
MAX_URI = 8192
#: S3 bucket, GCS bucket or Azure container names (lenient: each service checks its own)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{0,221}")
#: version ids S3 reports for objects written while versioning was off or suspended:
#: such a "version" is overwritten in place, so it pins nothing
UNVERSIONED = {"", "null"}


@dataclass(frozen=True)
class RefURI:
    """A parsed, normalised reference URI.

    ``bucket`` is the bucket/container (stores) or ``host[:port]`` (http); ``key`` the
    object key or prefix (stores) or path and query (http)."""

    scheme: str
    bucket: str
    key: str

    @property
    def is_http(self) -> bool:
        return self.scheme in HTTP_SCHEMES

    @property
    def is_prefix(self) -> bool:
        """``s3://bucket/dir/`` (or a whole bucket) names every object under it."""
        return not self.is_http and (self.key == "" or self.key.endswith("/"))

    @property
    def store_url(self) -> str:
        """The store holding the object(s): ``s3://bucket`` (not for http)."""
        return f"{self.scheme}://{self.bucket}"

    def object_uri(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}"

    def __str__(self) -> str:
        if self.is_http:
            return f"{self.scheme}://{self.bucket}{self.key}"
        return self.object_uri(self.key)


def parse_uri(text: object) -> RefURI:
    """Parse and normalise (lower-case scheme and host, no default port) a reference URI;
    refuse anything ambiguous: user info, fragments, ``..`` or empty key segments,
    control characters."""
    if not isinstance(text, str) or not text or len(text) > MAX_URI:
        raise InvalidReference(f"a reference URI is a string of 1 to {MAX_URI} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in text):
        raise InvalidReference("a reference URI holds no spaces or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidReference(f"unparsable reference URI {text[:200]!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in STORE_SCHEMES + HTTP_SCHEMES:
        raise InvalidReference(
            f"unsupported reference URI {text[:200]!r}: use s3://, gs://, az://, https:// "
            "or http://"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidReference("reference URIs must not carry user info (credentials)")
    if parts.fragment or text.endswith("#"):
        raise InvalidReference("reference URIs must not have a #fragment")
    if scheme in HTTP_SCHEMES:
        host = (parts.hostname or "").lower()
        if not host:
            raise InvalidReference(f"{text[:200]!r} has no host")
        netloc = f"[{host}]" if ":" in host else host
        if port is not None and port != (443 if scheme == "https" else 80):
            netloc += f":{port}"
        path = parts.path or "/"
        if path.endswith("/"):
            raise InvalidReference(
                f"{text[:200]!r} ends with '/': an http(s) reference names one file"
            )
        _check_segments(unquote(path).split("/")[1:], text)
        return RefURI(scheme, netloc, path + (f"?{parts.query}" if parts.query else ""))
    if parts.query or port is not None or not _BUCKET.fullmatch(parts.netloc):
        raise InvalidReference(
            f"expected {scheme}://bucket/key or {scheme}://bucket/prefix/, got {text[:200]!r}"
        )
    key = parts.path[1:] if parts.path.startswith("/") else parts.path
    if key:
        segments = key.split("/")
        _check_segments(segments[:-1] if key.endswith("/") else segments, text)
    return RefURI(scheme, parts.netloc, key)


def _check_segments(segments: list[str], text: str) -> None:
    for seg in segments:
        if seg in ("", ".", ".."):
            raise InvalidReference(
                f"{text[:200]!r} has an empty, '.' or '..' path segment", uri=text[:200]
            )


def check_allowed(uri: RefURI, prefixes: Iterable[str]) -> None:
    """The gateway registers only URIs under a configured prefix (CHUNKYARD_REF_ALLOW).
    A prefix matches at a path boundary: ``s3://w`` does not admit ``s3://w2/…`` and
    ``https://models.example.com`` does not admit ``https://models.example.com.evil/``."""
    text = str(uri)
    for prefix in prefixes:
        if text == prefix or (
            text.startswith(prefix) and (prefix.endswith("/") or text[len(prefix)] in "/?")
        ):
            return
    raise ReferenceNotAllowed(
        f"{text[:200]} is not under any prefix this gateway may register (CHUNKYARD_REF_ALLOW)",
        uri=text[:200],
    )


def normalize_prefix(prefix: str) -> str:
    """An allow-list entry normalised as URIs are. A bare ``s3://bucket`` is fine, and so
    is a bare scheme (``https://``: any public https URL, the address guard still
    applies)."""
    scheme, sep, rest = prefix.strip().partition("://")
    if not sep or scheme.lower() not in STORE_SCHEMES + HTTP_SCHEMES:
        raise ValueError(f"CHUNKYARD_REF_ALLOW entry {prefix!r} is not an s3/gs/az/http(s) URI")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}"


def strip_etag(etag: str | None) -> str:
    """ETags as stores report them differ in quoting; compare them bare."""
    return (etag or "").strip().removeprefix("W/").strip('"')


@dataclass(frozen=True)
class Pin:
    """What a reference records about one source object."""

    uri: str
    size: int
    etag: str = ""
    version_id: str | None = None
    last_modified: str | None = None
    weak_etag: bool = False  # http W/"…": cannot be sent as If-Match

    @property
    def id(self) -> str:
        """BLAKE3 of the canonical pin (FORMAT.md, "Reference versions"); names the
        pinned object in the catalog and, once indexed, as a chunk source."""
        validator = "" if (self.etag or self.version_id) else (self.last_modified or "")
        text = "\0".join(
            ["chunkyard-ref-object-1", self.uri, str(self.size), self.etag]
            + [self.version_id or "", validator]
        )
        return blake3.blake3(text.encode()).hexdigest()

    def to_json(self) -> dict:
        return {
            "uri": self.uri,
            "size": self.size,
            "etag": self.etag,
            "version_id": self.version_id,
            "last_modified": self.last_modified,
        }


def make_pin(
    uri: str,
    size: int,
    etag: str | None,
    version_id: str | None,
    last_modified: str | None,
    weak_etag: bool = False,
) -> Pin:
    """A pin from what a store or server reported; refuses objects nothing can pin."""
    version = None if (version_id or "") in UNVERSIONED else version_id
    pin = Pin(uri, int(size), strip_etag(etag), version, last_modified or None, weak_etag)
    if not (pin.etag or pin.version_id or pin.last_modified):
        raise InvalidReference(
            f"{uri[:200]} cannot be pinned: the source reports no ETag, version id or "
            "last-modified time",
            uri=uri[:200],
        )
    return pin


def drift(
    pin: Pin,
    size: int | None,
    etag: str = "",
    version_id: str | None = None,
    last_modified: str | None = None,
) -> str:
    """``ok``, ``changed`` or ``missing``: does what the source reports now (``size``
    None: nothing there) still match the pin? The version id decides where there is one
    (a store that ignores the id we asked for is caught by the id it answers with); else
    the ETag; else, for http sources without one, the last-modified time."""
    if size is None:
        return "missing"
    if size != pin.size:
        return "changed"
    now_etag = strip_etag(etag)
    if pin.version_id is not None:
        if version_id != pin.version_id:
            return "changed"
        return "changed" if (pin.etag and now_etag and now_etag != pin.etag) else "ok"
    if pin.etag:
        return "ok" if now_etag == pin.etag else "changed"
    return "ok" if last_modified == pin.last_modified else "changed"


def pins_digest(files: Iterable[tuple[str, Pin]]) -> str:
    """Digest of a reference version whose content was not hashed: BLAKE3 of
    ``path \\0 size \\0 pin id \\n`` per file, sorted by path (UTF-8 bytes), after a
    header line, so it can never equal a tree digest of content."""
    h = blake3.blake3(b"chunkyard-ref-pins-1\n")
    for path, pin in sorted(files, key=lambda f: f[0].encode()):
        h.update(f"{path}\0{pin.size}\0{pin.id}\n".encode())
    return h.hexdigest()


#: response headers naming the version a store served
_VERSION_HEADERS = {"s3": "x-amz-version-id", "az": "x-ms-version-id", "gs": "x-goog-generation"}


def response_drift(pin: Pin, status: int, headers: Mapping[str, str]) -> str | None:
    """Drift visible in a source's answer to a pinned GET (``missing`` or ``changed``),
    or None when the answer matches the pin or says nothing either way. Catches the
    stores and servers that ignore a pin's conditions (If-Match, version id) they were
    sent, as far as their headers tell."""
    if status in (404, 410):
        return "missing"
    if status == 412:
        return "changed"
    if status not in (200, 206):
        return None
    if status == 200:
        length = headers.get("content-length", "")
        total = int(length) if length.isdigit() else None
    else:
        length = headers.get("content-range", "").rpartition("/")[2]
        total = int(length) if length.isdigit() else None
    if total is not None and total != pin.size:
        return "changed"
    scheme = pin.uri.partition("://")[0]
    served = headers.get(_VERSION_HEADERS.get(scheme, ""), "")
    if pin.version_id and served and served != pin.version_id:
        return "changed"
    if scheme == "gs":  # the XML API's ETag is not the JSON API's one we recorded
        return None
    etag = headers.get("etag", "")
    if pin.etag and etag:
        return "changed" if strip_etag(etag) != pin.etag else None
    modified = headers.get("last-modified")
    if not pin.etag and pin.last_modified and modified and modified != pin.last_modified:
        return "changed"
    return None


def drifted(pin: Pin, state: str, path: str | None = None, **found: object) -> ReferenceDrifted:
    """The error for an object that no longer matches its pin, naming it."""
    what = {"missing": "is gone", "content": "no longer has the registered content"}.get(
        state, "changed"
    )
    held = f"version {pin.version_id}" if pin.version_id else f"ETag {pin.etag or '-'}"
    return ReferenceDrifted(
        f"reference drifted: {pin.uri} {what} since it was registered "
        f"(pinned {held}, {pin.size} bytes)",
        uri=pin.uri,
        state=state,
        pin=pin.to_json(),
        **({"path": path} if path else {}),
        **{k: v for k, v in found.items() if v is not None},
    )
