"""Reference URIs, the allow-list rule, pins and the drift rule (pure, no I/O)."""

import pytest

from chunkyard.config import parse_ref_allow
from chunkyard.errors import InvalidReference, ReferenceDrifted, ReferenceNotAllowed
from chunkyard.pins import (
    Pin,
    check_allowed,
    drift,
    drifted,
    make_pin,
    parse_uri,
    pins_digest,
    response_drift,
)


@pytest.mark.parametrize(
    ("text", "scheme", "bucket", "key", "prefix"),
    [
        ("s3://weights/llama/model.safetensors", "s3", "weights", "llama/model.safetensors", False),
        ("s3://weights/llama/", "s3", "weights", "llama/", True),
        ("s3://weights", "s3", "weights", "", True),
        ("S3://weights/a", "s3", "weights", "a", False),
        ("gs://b/x/y", "gs", "b", "x/y", False),
        ("az://container/dir/", "az", "container", "dir/", True),
        (
            "https://Models.Example.com:443/m/w.bin",
            "https",
            "models.example.com",
            "/m/w.bin",
            False,
        ),
        ("http://127.0.0.1:8000/w.bin?sig=1", "http", "127.0.0.1:8000", "/w.bin?sig=1", False),
        ("http://[::1]:9/w", "http", "[::1]:9", "/w", False),
    ],
)
def test_parse_uri(text, scheme, bucket, key, prefix):
    u = parse_uri(text)
    assert (u.scheme, u.bucket, u.key, u.is_prefix) == (scheme, bucket, key, prefix)
    assert parse_uri(str(u)) == u  # normal form is a fixed point


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ftp://host/x",
        "file:///etc/passwd",
        "s3://",
        "s3://Bad_Bucket!/x",
        "s3://b/a/../c",
        "s3://b/a//c",
        "s3://b/x?versionId=1",
        "https://user:pw@host/x",
        "https://host/x#frag",
        "https://host/dir/",
        "https://host/a b",
        "https://host/a\x00b",
        "https:///x",
        None,
        17,
    ],
)
def test_parse_uri_refuses(text):
    with pytest.raises(InvalidReference):
        parse_uri(text)


def test_allow_list_matches_at_boundaries():
    allow = parse_ref_allow(" s3://weights , https://Models.Example.com/public/,gs:// ")
    assert allow == ("s3://weights", "https://models.example.com/public/", "gs://")
    for ok in (
        "s3://weights/x",
        "s3://weights/",
        "https://models.example.com/public/w",
        "gs://a/b",
    ):
        check_allowed(parse_uri(ok), allow)
    for bad in (
        "s3://weights2/x",
        "s3://other/x",
        "https://models.example.com/private/w",
        "https://models.example.com.evil.net/public/w",
        "az://weights/x",
    ):
        with pytest.raises(ReferenceNotAllowed):
            check_allowed(parse_uri(bad), allow)
    with pytest.raises(ReferenceNotAllowed):  # nothing configured: nothing allowed
        check_allowed(parse_uri("s3://weights/x"), ())
    with pytest.raises(ValueError):
        parse_ref_allow("ftp://x/")


def test_pins_and_drift():
    p = make_pin("s3://b/k", 10, '"abc"', "null", "2024-01-01")
    assert p.etag == "abc" and p.version_id is None  # "null" pins nothing
    assert drift(p, 10, "abc") == "ok"
    assert drift(p, 10, '"abc"') == "ok"
    assert drift(p, 10, "abd") == "changed"
    assert drift(p, 11, "abc") == "changed"
    assert drift(p, None) == "missing"
    v = make_pin("s3://b/k", 10, "abc", "v1", None)
    assert drift(v, 10, "abc", "v1") == "ok"
    assert drift(v, 10, "abc", "v2") == "changed"  # a store that ignored the version asked
    h = make_pin("https://h/w", 10, "", None, "Mon, 01 Jan 2024 00:00:00 GMT")
    assert drift(h, 10, "", None, "Mon, 01 Jan 2024 00:00:00 GMT") == "ok"
    assert drift(h, 10, "", None, "Tue, 02 Jan 2024 00:00:00 GMT") == "changed"
    with pytest.raises(InvalidReference):  # nothing to pin with
        make_pin("https://h/w", 10, "", None, None)
    # pin ids: stable, and sensitive to everything that pins
    assert p.id == make_pin("s3://b/k", 10, "abc", None, "other date").id
    assert len({p.id, v.id, h.id, make_pin("s3://b/k", 10, "abc", "v2", None).id}) == 4


def test_response_drift():
    p = Pin("s3://b/k", 5, "abc")
    assert response_drift(p, 200, {"content-length": "5", "etag": '"abc"'}) is None
    assert response_drift(p, 412, {}) == "changed"
    assert response_drift(p, 404, {}) == "missing"
    assert response_drift(p, 200, {"content-length": "6"}) == "changed"
    assert response_drift(p, 200, {"etag": '"zzz"'}) == "changed"
    assert response_drift(p, 206, {"content-range": "bytes 0-1/7"}) == "changed"
    assert response_drift(p, 206, {"content-range": "bytes 0-1/5"}) is None
    assert response_drift(p, 500, {}) is None  # an error, not drift
    g = Pin("gs://b/k", 5, "CJjw", "123")
    assert response_drift(g, 200, {"etag": '"md5-of-xml-api"'}) is None
    assert response_drift(g, 200, {"x-goog-generation": "124"}) == "changed"
    err = drifted(p, "missing", path="k")
    assert isinstance(err, ReferenceDrifted) and err.code == "reference_drifted"
    assert "s3://b/k" in err.message and err.detail["path"] == "k"


def test_pins_digest_is_not_a_tree_digest():
    files = [("b", Pin("s3://x/b", 1, "e1")), ("a", Pin("s3://x/a", 2, "e2"))]
    d = pins_digest(files)
    assert d == pins_digest(list(reversed(files))) and len(d) == 64
    assert d != pins_digest([("b", Pin("s3://x/b", 1, "e3")), files[1]])
