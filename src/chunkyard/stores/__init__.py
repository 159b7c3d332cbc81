"""Pick a store from a URL; cloud backends are imported only when asked for, so a
gateway on a local directory needs none of the cloud SDKs installed."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from ..errors import InvalidRequest
from .base import CompletedPart, ObjectInfo, PartPlan, PresignedRequest, Store

__all__ = ["CompletedPart", "ObjectInfo", "PartPlan", "PresignedRequest", "Store", "open_store"]


def _gcs_xml(url: str) -> Store:
    """``gs://bucket/prefix?api=xml``: GCS's S3-compatible XML multipart API, signed with
    HMAC keys (GCS_HMAC_ACCESS_ID / GCS_HMAC_SECRET); parts carry Content-MD5, which
    that API checks. CHUNKYARD_GCS_XML_ENDPOINT points it elsewhere (tests: SeaweedFS)."""
    import os

    from .s3 import S3Store

    parsed = urlparse(url)
    access, secret = os.environ.get("GCS_HMAC_ACCESS_ID"), os.environ.get("GCS_HMAC_SECRET")
    if not (access and secret):
        raise InvalidRequest("gs://…?api=xml needs GCS_HMAC_ACCESS_ID and GCS_HMAC_SECRET")
    store = S3Store(
        f"s3://{parsed.netloc}{parsed.path}",
        endpoint_url=os.environ.get("CHUNKYARD_GCS_XML_ENDPOINT", "https://storage.googleapis.com"),
        region="auto",
        access_key=access,
        secret_key=secret,
        checksum="md5",
    )
    store.url = url
    return store


def _s3(url: str) -> Store:
    """``s3://bucket/prefix``, optionally ``?checksum=crc32c|sha256|md5``: the checksum
    every part carries (CRC32C by default; SHA-256 or MD5 for S3-compatible stores that
    do not check CRC32C)."""
    from .s3 import S3Store

    parsed = urlparse(url)
    query = parse_qs(parsed.query, keep_blank_values=True)
    unknown = set(query) - {"checksum"}
    if unknown or len(query.get("checksum", [""])) != 1:
        raise InvalidRequest(f"s3:// store URLs take only ?checksum=…, got {url!r}")
    if "checksum" not in query:
        return S3Store(url)
    store = S3Store(parsed._replace(query="").geturl(), checksum=query["checksum"][0])
    store.url = url
    return store


def open_store(url: str, *, blob_url: str = "", secret: bytes = b"") -> Store:
    """``file:///dir`` or a plain path → local; ``s3://``, ``gs://``, ``az://`` → cloud.

    ``blob_url`` and ``secret`` matter only to the local store, whose presigned URLs
    point at the gateway's own blob endpoint (``blob_url``), signed with ``secret``.
    """
    scheme = urlparse(url).scheme.lower()
    if scheme == "s3":
        return _s3(url)
    if scheme == "gs":
        query = parse_qs(urlparse(url).query)
        if query.get("api") == ["xml"]:
            return _gcs_xml(url)
        from .gcs import GCSStore

        return GCSStore(url)
    if scheme == "az":
        from .azure import AzureStore

        return AzureStore(url)
    if scheme == "file":
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise InvalidRequest(f"file:// store URLs must be local, got {url!r}")
        root = Path(unquote(parsed.path))
    elif scheme == "" or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):  # C:\ on Windows
        root = Path(url).expanduser()
    else:
        raise InvalidRequest(
            f"unknown store URL scheme {scheme!r} in {url!r} "
            "(use a path, file://, s3://, gs:// or az://)"
        )
    from .local import LocalStore

    return LocalStore(root, blob_url=blob_url, secret=secret)
