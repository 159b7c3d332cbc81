"""Reference URIs and pins: what a reference version records about each source object.

A *pin* is what lets a later reader tell "the bytes that were registered" from "whatever
the URI holds now": the object's size, its ETag, its version id where the store keeps
versions (S3 VersionId, GCS generation, Azure versionId) and its last-modified time.
This module is pure (no I/O): parsing and normalising URIs, the allow-list rule, pin ids,
the drift rule and the pin digest of an unhashed reference version (FORMAT.md).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import blake3
import idna

from .errors import InvalidReference, ReferenceDrifted, ReferenceNotAllowed

STORE_SCHEMES = ("s3", "gs", "az")
HTTP_SCHEMES = ("http", "https")
MAX_URI = 8192
#: S3 bucket, GCS bucket or Azure container names (lenient: each service checks its own)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{0,221}")
#: one host name label, as sent: letters, digits, hyphens inside, underscores (some
#: real hosts have them)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
#: a last label that makes a host an IPv4 address (WHATWG URL "ends in a number"):
#: decimal, octal (leading 0) or hexadecimal (0x) digits
_NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]*")
_RADIX = {8: re.compile(r"[0-7]+"), 10: re.compile(r"[0-9]+"), 16: re.compile(r"[0-9a-f]*")}
MAX_HOST = 253
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


def parse_uri(text: object, redirect: bool = False) -> RefURI:
    """Parse and normalise (lower-case scheme and host, no default port) a reference URI;
    refuse anything ambiguous: user info, fragments, ``..`` or empty key segments,
    control characters.

    An http(s) host comes out in the one form that the allow-list, the address guard
    and the request all see: an IPv4 address as a dotted quad (``0177.0.0.1``,
    ``0x7f.1``, ``2130706433`` and ``127.1`` are all ``127.0.0.1``, as browsers and the
    C resolver read them), an IPv6 address in brackets, compressed, or a domain name in
    lower-case ASCII (IDNA 2008, UTS 46 mapping: ``Bücher.example`` is
    ``xn--bcher-kva.example``). A host that is none of these is refused here rather
    than left for the http client or the resolver to read its own way.

    ``redirect``: a URL a source redirected to; it may end with ``/`` or hold empty
    path segments (it names what a server chose, not a file of a version)."""
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
        netloc = http_netloc(scheme, parts.netloc, text)
        path = parts.path or "/"
        if path.endswith("/") and not redirect:
            raise InvalidReference(
                f"{text[:200]!r} ends with '/': an http(s) reference names one file"
            )
        segments = unquote(path).split("/")[1:]
        if redirect:
            segments = [s for s in segments if s]
        _check_segments(segments, text, http=True)
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


def _check_segments(segments: list[str], text: str, http: bool = False) -> None:
    for seg in segments:
        if http:  # "..;x" is ".." to servlet containers, a backslash "/" to some servers
            if "\\" in seg:
                raise InvalidReference(f"{text[:200]!r} has a backslash in its path")
            seg = seg.partition(";")[0]
        if seg in ("", ".", ".."):
            raise InvalidReference(
                f"{text[:200]!r} has an empty, '.' or '..' path segment", uri=text[:200]
            )


def http_netloc(scheme: str, netloc: str, text: str = "") -> str:
    """``host[:port]`` of an http(s) URL in its normal form (see :func:`parse_uri`): no
    default port, a port of 1 to 65535; :class:`InvalidReference` for anything else."""
    where = repr((text or netloc)[:200])
    if "@" in netloc:
        raise InvalidReference("reference URIs must not carry user info (credentials)")
    if netloc.startswith("["):
        inside, bracket, rest = netloc[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InvalidReference(f"{where}: malformed IPv6 address in brackets")
        host, port_text = f"[{_ipv6(inside, where)}]", rest[1:] if rest else ""
    else:
        name, _, port_text = netloc.partition(":")
        host = _host(name, where)
    if port_text:
        port = int(port_text) if port_text.isascii() and port_text.isdigit() else 0
        if not 0 < port <= 65535 or len(port_text) > 5:
            raise InvalidReference(f"{where}: the port must be a number from 1 to 65535")
        if port != (443 if scheme == "https" else 80):
            host += f":{port}"
    return host


def _ipv6(text: str, where: str) -> str:
    if "%" in text:
        raise InvalidReference(f"{where}: IPv6 zone ids are not accepted")
    try:
        ip = ipaddress.IPv6Address(text)
    except ValueError:
        raise InvalidReference(f"{where}: {text[:60]!r} is not an IPv6 address") from None
    if ip.ipv4_mapped is not None:  # one spelling whatever the Python version prints
        return f"::ffff:{ip.ipv4_mapped}"
    return ip.compressed


def _host(text: str, where: str) -> str:
    """A host name or IPv4 address in its normal form."""
    if not text:
        raise InvalidReference(f"{where} has no host")
    if any(c in text for c in "%[]"):
        raise InvalidReference(f"{where}: the host must not be percent-encoded or hold brackets")
    host = text
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True, transitional=False).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError) as exc:
            raise InvalidReference(
                f"{where}: {text[:100]!r} is not a valid internationalised host name ({exc})"
            ) from None
    host = host.lower()
    labels = host.split(".")
    if len(host) > MAX_HOST or any(len(label) > 63 for label in labels):
        raise InvalidReference(
            f"{where}: a host name has at most {MAX_HOST} characters, 63 per label"
        )
    if _NUMERIC.fullmatch(labels[-1]):
        return _ipv4(labels, where)
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidReference(
            f"{where}: {host[:100]!r} is not a host name (letters, digits, '-' and '_' in "
            "dot-separated labels, none empty) or an IP address"
        )
    return host


def _ipv4(labels: list[str], where: str) -> str:
    """A host ending in a number is an IPv4 address in one of the notations the C
    library accepts (WHATWG URL's IPv4 parser): 1 to 4 parts, each decimal, octal
    (leading 0) or hexadecimal (0x), the last one filling the remaining bytes."""
    bad = InvalidReference(f"{where}: {'.'.join(labels)[:100]!r} is not an IPv4 address")
    if len(labels) > 4:
        raise bad
    numbers = []
    for label in labels:
        radix, digits = 10, label
        if label.startswith("0x"):
            radix, digits = 16, label[2:]
        elif len(label) > 1 and label.startswith("0"):
            radix, digits = 8, label[1:]
        if not _RADIX[radix].fullmatch(digits):
            raise bad
        numbers.append(int(digits or "0", radix))
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        raise bad
    value = sum(n << (8 * (3 - i)) for i, n in enumerate(head)) + last
    return str(ipaddress.IPv4Address(value))


def check_allowed(uri: RefURI, prefixes: Iterable[str], redirected_from: str = "") -> None:
    """The gateway registers only URIs under a configured prefix (CHUNKYARD_REF_ALLOW).
    A prefix matches at a path boundary: ``s3://w`` does not admit ``s3://w2/…`` and
    ``https://models.example.com`` does not admit ``https://models.example.com.evil/``.
    ``redirected_from``: ``uri`` is where that reference redirected to; every hop of a
    redirect must be under a prefix too."""
    text = str(uri)
    for prefix in prefixes:
        if text == prefix or (
            text.startswith(prefix) and (prefix.endswith("/") or text[len(prefix)] in "/?")
        ):
            return
    rule = "any prefix this gateway may register (CHUNKYARD_REF_ALLOW)"
    if redirected_from:
        raise ReferenceNotAllowed(
            f"{redirected_from[:200]} redirects to {text[:200]}, which is not under {rule}",
            uri=text[:200],
            redirected_from=redirected_from[:200],
        )
    raise ReferenceNotAllowed(f"{text[:200]} is not under {rule}", uri=text[:200])


def normalize_prefix(prefix: str) -> str:
    """An allow-list entry normalised as URIs are (an http(s) host and port as
    :func:`parse_uri` writes them). A bare ``s3://bucket`` is fine, and so is a bare
    scheme (``https://``: any public https URL, the address guard still applies)."""
    scheme, sep, rest = prefix.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in STORE_SCHEMES + HTTP_SCHEMES:
        raise ValueError(f"CHUNKYARD_REF_ALLOW entry {prefix!r} is not an s3/gs/az/http(s) URI")
    host, slash, path = rest.partition("/")
    if scheme in HTTP_SCHEMES and host:
        try:
            host = http_netloc(scheme, host, prefix)
        except InvalidReference as exc:
            raise ValueError(f"CHUNKYARD_REF_ALLOW entry {prefix!r}: {exc.message}") from None
    return f"{scheme}://{host.lower()}{slash}{path}"


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


def response_confirms(pin: Pin, headers: Mapping[str, str]) -> bool:
    """Whether a source's answer to a pinned GET names the pinned bytes itself (the
    pinned version id, or the pinned ETag where the two are comparable). When it does
    not (a store that ignores a version asked for in the URL and names none in its
    answer, such as the GCS emulator), only a look at the object afterwards can tell."""
    scheme = pin.uri.partition("://")[0]
    served = headers.get(_VERSION_HEADERS.get(scheme, ""), "")
    if pin.version_id and served:
        return served == pin.version_id
    if scheme == "gs":  # the XML API's ETag is not the JSON API's one we recorded
        return False
    etag = headers.get("etag", "")
    return bool(pin.etag and etag and strip_etag(etag) == pin.etag)


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
